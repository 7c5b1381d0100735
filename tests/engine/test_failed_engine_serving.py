"""A local engine that keeps crashing, as the API sees it: /ready, /status.json, the metrics, a chat
answered in the caller's shape, and passthrough unaffected. The engine process is the stand-in of
tests/engine/crashing_worker.py, dying by SIGSEGV while it starts (as llama.cpp does on a CPU whose
AMX kernels cannot run); everything else is the real app."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from hotspare.app import create_app
from hotspare.config import Settings
from hotspare.engine import process
from hotspare.upstream.config import UpstreamConfig
from tests.fakes.upstreams import FakeUpstream

from .crashing_worker import crashing_worker


@pytest.fixture(autouse=True)
def crashing_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process, "engine_main", crashing_worker)
    monkeypatch.setenv("STAND_IN_CRASH", "start")


def _client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(
        create_app(settings), raise_server_exceptions=False, base_url="http://localhost"
    ) as client:
        for _ in range(200):  # the lifespan loads in the background: wait for its verdict
            if client.get("/ready").json()["status"] not in ("loading", "restarting"):
                break
            time.sleep(0.05)
        yield client


def _metric(client: TestClient, line_start: str) -> str:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(line_start):
            return line
    raise AssertionError(f"no metric line {line_start}")


def test_local_only_ready_says_failed_with_the_cause_and_chats_get_503() -> None:
    for client in _client(Settings()):
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["status"] == "failed"
        assert "SIGSEGV" in ready.json()["error"] and "hotspare doctor" in ready.json()["error"]
        client.portal.call(client.app.state.monitor.refresh_engine, client.app.state)  # type: ignore[union-attr]
        assert _metric(client, 'hotspare_engine_state{state="failed"}').endswith(" 1.0")
        status = client.get("/status.json").json()["local"]
        assert status["state"] == "failed" and "SIGSEGV" in status["failure"]
        chat = client.post(
            "/v1/chat/completions",
            json={"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert chat.status_code == 503
        assert "error" in chat.json()
        message = client.post(
            "/v1/messages",
            json={"model": "x", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
        )
        assert message.status_code == 503 and message.json()["type"] == "error"


def test_with_an_upstream_ready_stays_200_and_passthrough_serves() -> None:
    with FakeUpstream("anthropic") as upstream:
        settings = Settings(
            upstreams=(
                UpstreamConfig(name="cloud", kind="anthropic", base_url=upstream.url, api_key="forward"),
            )
        )
        for client in _client(settings):
            ready = client.get("/ready")
            assert ready.status_code == 200
            assert ready.json()["local"] == "failed" and "SIGSEGV" in ready.json()["error"]
            answer = client.post(
                "/v1/messages",
                headers={"x-api-key": "sk-ant-test-key-0123456789"},
                json={"model": "claude-x", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
            )
            assert answer.status_code == 200, answer.text
            assert answer.headers.get("x-hotspare-backend") == "cloud"
