"""A fuzz pass over both APIs' request schemas (hypothesis): whatever the body, the answer is never a
5xx, and an error is always in the caller's API shape."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from api.fakes import FakeBackend
from hotspare.app import create_app
from hotspare.config import Settings

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
