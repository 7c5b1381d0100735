"""The request log's outcome of a stream, in process: the real app and routes in front of a scripted
local backend, or of the fake providers over HTTP (passthrough, nothing to take over). A stream that
ends with its API's error event is `stream_error`, whatever the bytes of that event look like; a
whole one is `ok`. Read from `hotspare_requests_total`, which the same record feeds."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from hotspare.app import create_app
from hotspare.config import ResponsesSettings, Settings
from hotspare.core.errors import BackendUnavailable
from hotspare.core.types import ChatRequest, StreamEvent, TextDelta
from tests.api.fakes import FakeBackend
from tests.fakes.upstreams import Behavior, FakeUpstream
from tests.router.factories import upstream_config

MESSAGES = [{"role": "user", "content": "hi"}]
BODIES = {
    "/v1/chat/completions": {"model": "m", "messages": MESSAGES, "stream": True},
    "/v1/messages": {"model": "m", "max_tokens": 8, "messages": MESSAGES, "stream": True},
    "/v1/responses": {"model": "m", "input": "hi", "stream": True},
}
APIS = {"/v1/chat/completions": "openai_chat", "/v1/messages": "anthropic_messages"}
APIS["/v1/responses"] = "openai_responses"


class FailsMidStream(FakeBackend):
    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        yield TextDelta("partial")
        raise BackendUnavailable("the local engine process died; it is being restarted")


def outcomes(client: TestClient) -> dict[tuple[str, str], float]:
    """`hotspare_requests_total` by (api, outcome)."""
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "hotspare_requests_total":
                labels = sample.labels
                out[labels["api"], labels["outcome"]] = sample.value
    return out


def local_client(backend: FakeBackend) -> TestClient:
    settings = Settings(responses=ResponsesSettings(store_path=":memory:"))
    return TestClient(create_app(settings, backend=backend), base_url="http://localhost")


@pytest.mark.parametrize("path", list(BODIES))
@pytest.mark.parametrize(
    ("backend", "outcome"),
    [
        (FakeBackend(), "ok"),
        (FailsMidStream(), "stream_error"),
        (FakeBackend(events=[TextDelta("Hel")]), "stream_error"),  # ended without its Finish
    ],
    ids=["whole", "raised", "unfinished"],
)
def test_a_local_stream_that_ends_with_an_error_event_is_a_stream_error(
    path: str, backend: FakeBackend, outcome: str
) -> None:
    with local_client(backend) as client:
        reply = client.post(path, json=BODIES[path])
        assert reply.status_code == 200
        assert outcomes(client) == {(APIS[path], outcome): 1.0}


def test_the_further_choices_of_a_stream_are_watched_too() -> None:
    class FailsSecondChoice(FakeBackend):
        num_opened: int = 0

        async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
            self.num_opened += 1
            if self.num_opened == 2:
                raise BackendUnavailable("the local engine process died; it is being restarted")
            async for event in super().stream(request):
                yield event

    with local_client(FailsSecondChoice()) as client:
        reply = client.post("/v1/chat/completions", json={**BODIES["/v1/chat/completions"], "n": 2})
        assert reply.text.rstrip().endswith('"code":null}}')
        assert outcomes(client) == {("openai_chat", "stream_error"): 1.0}


@pytest.fixture
def passthrough(openai_fake: FakeUpstream, anthropic_fake: FakeUpstream) -> Iterator[TestClient]:
    """Upstream-only: one upstream per format, so a broken stream has no one to take it over."""
    settings = Settings(
        mode="upstream-only",
        upstreams=(
            upstream_config(openai_fake, name="oai", models=("gpt-*",)),
            upstream_config(anthropic_fake, name="anth", models=("claude-*",)),
        ),
        responses=ResponsesSettings(store_path=":memory:"),
    )
    with TestClient(create_app(settings), base_url="http://localhost") as client:
        yield client


@pytest.mark.parametrize(
    ("path", "model", "upstream"),
    [
        ("/v1/chat/completions", "gpt-4o", "oai"),
        ("/v1/messages", "claude-x", "anth"),
        ("/v1/responses", "gpt-4o", "oai"),
    ],
)
@pytest.mark.parametrize(
    ("behavior", "outcome"),
    [(Behavior(), "ok"), (Behavior(error_after=1), "stream_error"), (Behavior(cut_after=1), "stream_error")],
    ids=["whole", "error-event", "cut"],
)
def test_a_passthrough_that_ends_with_an_error_event_is_a_stream_error(
    passthrough: TestClient,
    openai_fake: FakeUpstream,
    anthropic_fake: FakeUpstream,
    path: str,
    model: str,
    upstream: str,
    behavior: Behavior,
    outcome: str,
) -> None:
    fake = anthropic_fake if upstream == "anth" else openai_fake
    fake.script(behavior)
    body: dict[str, Any] = {**BODIES[path], "model": model}
    reply = passthrough.post(path, json=body, headers={"authorization": "Bearer k", "x-api-key": "k"})
    assert reply.status_code == 200 and reply.headers["x-hotspare-backend"] == upstream
    assert outcomes(passthrough) == {(APIS[path], outcome): 1.0}
