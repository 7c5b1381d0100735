"""Requests about a response an upstream made, in-process: the real routes and router in front of the
fake OpenAI provider over HTTP (upstream-only, an in-memory store), driven by the official openai SDK.
What reaches the provider is built from the route's id and the known query parameters only."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from starlette.testclient import TestClient

from hotspare.app import create_app
from hotspare.config import ResponsesSettings, Settings
from hotspare.core.types import ApiFormat
from tests.fakes.upstreams import FakeUpstream
from tests.router.factories import upstream_config

API = ApiFormat.OPENAI_RESPONSES


@pytest.fixture
def http(openai_fake: FakeUpstream) -> Iterator[TestClient]:
    settings = Settings(
        mode="upstream-only",
        upstreams=(upstream_config(openai_fake, name="oai", api_key="forward", models=("gpt-*",)),),
        responses=ResponsesSettings(store_path=":memory:"),
    )
    with TestClient(
        create_app(settings), raise_server_exceptions=False, base_url="http://localhost"
    ) as client:
        yield client


@pytest.fixture
def oai(http: TestClient) -> openai.OpenAI:
    return openai.OpenAI(
        base_url="http://localhost/v1", api_key="sk-client-key-1", http_client=http, max_retries=0
    )


def test_only_known_query_parameters_are_forwarded(
    oai: openai.OpenAI, http: TestClient, openai_fake: FakeUpstream
) -> None:
    made = oai.responses.create(model="gpt-4o", input="Say hello")
    openai_fake.clear()
    headers = {"authorization": "Bearer sk-client-key-1"}
    http.get(f"/v1/responses/{made.id}?stream=false&admin=1&include[]=usage", headers=headers)
    http.get(f"/v1/responses/{made.id}/input_items?limit=5&x=y", headers=headers)
    http.delete(f"/v1/responses/{made.id}?purge=all", headers=headers)
    assert [(a.method, a.path) for a in openai_fake.attempts()] == [
        ("GET", f"/v1/responses/{made.id}?stream=false&include%5B%5D=usage"),
        ("GET", f"/v1/responses/{made.id}/input_items?limit=5"),
        ("DELETE", f"/v1/responses/{made.id}"),
    ]


def test_an_id_stays_one_path_segment(http: TestClient, openai_fake: FakeUpstream) -> None:
    openai_fake.clear()
    headers = {"authorization": "Bearer sk-client-key-1"}
    reply = http.get("/v1/responses/resp_x%3Fadmin%3D1%26a", headers=headers)  # "resp_x?admin=1&a"
    assert reply.status_code == 404
    assert [a.path for a in openai_fake.attempts()] == ["/v1/responses/resp_x%3Fadmin%3D1%26a"]
    # a decoded id with a space never gets that far: the edge refuses the path (ops/access.py)
    openai_fake.clear()
    assert http.get("/v1/responses/resp_x%20b", headers=headers).status_code == 400
    assert openai_fake.attempts() == []


def test_another_keys_upstream_response_is_never_asked_of_the_upstream(
    oai: openai.OpenAI, openai_fake: FakeUpstream
) -> None:
    made = oai.responses.create(model="gpt-4o", input="Say hello")
    openai_fake.clear()
    bob = oai.with_options(api_key="sk-bob-key-0000002")
    with pytest.raises(openai.NotFoundError):
        bob.responses.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        bob.responses.delete(made.id)
    with pytest.raises(openai.NotFoundError):
        bob.responses.create(model="gpt-4o", input="go on", previous_response_id=made.id)
    assert openai_fake.attempts() == []
    assert oai.responses.retrieve(made.id).id == made.id
