"""Hostile and broken input at the API edge (issue 17): every case gets a clear 400 in the caller's API
shape, never a 500 or a hang, and n > 1 choices are bounded and fail together."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from starlette.testclient import TestClient

from hotspare.app import create_app
from hotspare.config import LocalSettings, Settings
from hotspare.core.errors import Overloaded
from hotspare.core.types import ChatRequest, StreamEvent

from .conftest import MakeClient
from .fakes import FakeBackend, answer

HEADERS = {"content-type": "application/json"}
OPENAI_HEAD = b'{"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "x": '
ANTHROPIC_HEAD = (
    b'{"model": "fake-model", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}], "x": '
)


@pytest.mark.parametrize(
    ("path", "head"), [("/v1/chat/completions", OPENAI_HEAD), ("/v1/messages", ANTHROPIC_HEAD)]
)
@pytest.mark.parametrize(
    ("tail", "message"),
    [
        (b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
        (b"[" * 200 + b"]" * 200 + b"}", "nested too deeply"),
        (b"1" + b"0" * 5000 + b"}", "a number hotspare cannot read"),
    ],
    ids=["recursion", "over-the-cap", "digits"],
)
def test_deep_nesting_and_huge_numbers_are_400(
    client: TestClient, path: str, head: bytes, tail: bytes, message: str
) -> None:
    """Before: the recursion and the 5,000-digit number were 500s, and 200 levels were accepted."""
    response = client.post(path, content=head + tail, headers=HEADERS)
    assert response.status_code == 400, response.text
    assert message in response.text


def test_nesting_up_to_the_cap_is_served(client: TestClient) -> None:
    response = client.post(
        "/v1/chat/completions", content=OPENAI_HEAD + b"[" * 120 + b"]" * 120 + b"}", headers=HEADERS
    )
    assert response.status_code == 200, response.text


def test_n_over_128_is_400_as_openai_does(client: TestClient, backend: FakeBackend) -> None:
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "n": 129}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "n: 129 choices; at most 128 are accepted"
    assert backend.requests == []


@dataclass
class CountingBackend(FakeBackend):
    """Records how many streams run at once; the `fail_at`-th stream raises Overloaded after a pause,
    the others wait until cancelled unless `finishes`."""

    fail_at: int = -1
    finishes: bool = True
    running: int = 0
    max_running_seen: int = 0
    num_started: int = 0

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        number = self.num_started
        self.num_started += 1
        self.running += 1
        self.max_running_seen = max(self.max_running_seen, self.running)
        try:
            await asyncio.sleep(0.01)
            if number == self.fail_at:
                raise Overloaded("queue full")
            if not self.finishes and number != 0:
                await asyncio.Event().wait()
            for event in answer("ok"):
                yield event
        except asyncio.CancelledError:
            self.num_cancelled += 1
            raise
        finally:
            self.running -= 1


def n_client(backend: FakeBackend, max_running: int) -> TestClient:
    settings = Settings(local=LocalSettings(max_running=max_running))
    return TestClient(
        create_app(settings, backend=backend), raise_server_exceptions=False, base_url="http://localhost"
    )


def test_n_choices_run_at_most_max_running_at_a_time() -> None:
    backend = CountingBackend()
    with n_client(backend, max_running=3) as http:
        body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "n": 10}
        response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert [c["message"]["content"] for c in response.json()["choices"]] == ["ok"] * 10
    assert backend.num_started == 10 and backend.max_running_seen == 3


def test_the_first_failing_choice_cancels_its_siblings() -> None:
    """Before: gather() returned the error and left the other choices generating for nobody."""
    backend = CountingBackend(fail_at=2, finishes=False)
    with n_client(backend, max_running=4) as http:
        body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "n": 6}
        response = http.post("/v1/chat/completions", json=body)
        assert response.status_code == 429
        assert backend.running == 0  # every sibling was cancelled before the answer went out
    # choice 0 finished at once, so choice 4 took its place; choice 5 never started
    assert backend.num_started == 5


def test_a_local_cap_in_the_anthropic_api(make_client: MakeClient) -> None:
    http = make_client(FakeBackend())
    body = {"model": "fake-model", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    response = http.post("/v1/messages", json={**body, "stop_sequences": ["x"] * 65})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        "stop_sequences: 65 stop sequences; the local model accepts at most 64"
    )
