"""A fuzz pass over both APIs' request schemas (hypothesis): whatever the body, the answer is never a
5xx, and an error is always in the caller's API shape."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from hotspare.app import create_app
from hotspare.config import Settings
from tests.api.fakes import FakeBackend

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=False),
    st.text(max_size=20),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
ROLES = st.sampled_from(["system", "developer", "user", "assistant", "tool", "function", "bogus"])
CONTENT = st.one_of(
    st.text(max_size=40),
    st.lists(
        st.fixed_dictionaries(
            {"type": st.sampled_from(["text", "image", "image_url", "tool_result", "x"])},
            optional={"text": JSON, "source": JSON, "image_url": JSON, "cache_control": JSON},
        ),
        max_size=3,
    ),
    JSON,
)
MESSAGE = st.fixed_dictionaries(
    {"role": ROLES}, optional={"content": CONTENT, "name": JSON, "tool_calls": JSON}
)
FIELDS = {
    "model": st.one_of(st.text(max_size=20), JSON),
    "messages": st.one_of(st.lists(MESSAGE, max_size=4), JSON),
    "max_tokens": st.one_of(st.integers(min_value=-5, max_value=10), JSON),
    "max_completion_tokens": st.integers(min_value=-5, max_value=10),
    "stream": st.one_of(st.booleans(), JSON),
    "temperature": st.one_of(st.floats(allow_nan=False), JSON),
    "top_p": st.floats(allow_nan=False),
    "top_k": st.integers(min_value=-5, max_value=100),
    "stop": st.one_of(st.text(max_size=5), st.lists(st.text(max_size=5), max_size=5), JSON),
    "stop_sequences": JSON,
    "system": st.one_of(st.text(max_size=20), JSON),
    "n": st.integers(min_value=-2, max_value=3),
    "seed": JSON,
    "tools": JSON,
    "tool_choice": JSON,
    "stream_options": JSON,
    "metadata": JSON,
    "response_format": JSON,
    "unknown_field": JSON,
    "input": st.one_of(st.text(max_size=20), st.lists(MESSAGE, max_size=3), JSON),
    "instructions": JSON,
    "previous_response_id": JSON,
    "max_output_tokens": st.one_of(st.integers(min_value=-5, max_value=10), JSON),
}
BODY = st.one_of(st.fixed_dictionaries({}, optional=FIELDS), JSON)
PATHS = ["/v1/chat/completions", "/v1/messages", "/v1/messages/count_tokens", "/v1/responses"]


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    backend = FakeBackend()
    settings = Settings.model_validate({"responses": {"store_path": ":memory:"}})  # nothing on disk
    with TestClient(
        create_app(settings, backend=backend), raise_server_exceptions=False, base_url="http://localhost"
    ) as c:
        yield c


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(PATHS), body=BODY, raw=st.booleans())
def test_no_body_gets_a_5xx(client: TestClient, path: str, body: Any, raw: bool) -> None:
    content = json.dumps(body).encode() if not raw else json.dumps(body).encode()[:-1]  # raw: cut JSON
    response = client.post(path, content=content, headers={"content-type": "application/json"})
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code >= 400:
        error = response.json()
        if path.startswith("/v1/messages"):
            assert error["type"] == "error" and isinstance(error["error"]["message"], str)
        else:
            assert isinstance(error["error"]["message"], str) and "type" in error["error"]


SEGMENT = st.text(min_size=0, max_size=12)  # any Unicode: spaces, controls, surrogate-free non-ASCII
HEADER_VALUE = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    prefix=st.sampled_from(["/v1/responses/", "/v1/models/", "/v1/messages/", "/v1/", "/"]),
    segment=SEGMENT,
    method=st.sampled_from(["GET", "POST", "DELETE"]),
    host=st.one_of(st.none(), HEADER_VALUE),
    origin=st.one_of(st.none(), HEADER_VALUE),
    content_type=st.one_of(st.none(), HEADER_VALUE),
    body=st.one_of(st.binary(max_size=40), st.just(b"[" * 3000), st.just(b'{"n": 1' + b"0" * 5000 + b"}")),
)
def test_no_request_target_or_header_gets_a_5xx(
    client: TestClient,
    prefix: str,
    segment: str,
    method: str,
    host: str | None,
    origin: str | None,
    content_type: str | None,
    body: bytes,
) -> None:
    """Issue 17 points 7, 15, 18: odd paths (percent-encoded as a client would send them), Host and
    Origin values, content types and hostile bodies are refused in the API's shape, never a 5xx."""
    headers = {
        name: value
        for name, value in (("host", host), ("origin", origin), ("content-type", content_type))
        if value is not None
    }
    path = prefix + quote(segment, safe="")
    response = client.request(method, path, content=body if method == "POST" else None, headers=headers)
    assert response.status_code < 500 or response.status_code == 503, (
        path,
        response.status_code,
        response.text,
    )
    if response.status_code >= 400:
        assert isinstance(response.json(), dict)
