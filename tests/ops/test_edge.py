"""The edge's refusals of issue 17 (points 7, 18, 20), in process and against a real server: a keyless
server turns away web pages (Host, Origin, Content-Type), bad request paths are a 400 never a 500,
short keys are refused at startup, and an address guessing keys is slowed down."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from hotspare.app import create_app
from hotspare.config import Settings
from hotspare.ops.auth_throttle import MAX_FAILURES, AuthThrottle
from tests.api.fakes import FakeBackend
from tests.serving import RunningServer, start_server, stop_server

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
KEY = "hs-test-key-0001"


def keyless(base_url: str = "http://localhost", **access: object) -> TestClient:
    settings = Settings.model_validate({"access": access})
    return TestClient(
        create_app(settings, backend=FakeBackend()), raise_server_exceptions=False, base_url=base_url
    )


@pytest.mark.parametrize(
    "host", ["localhost", "localhost:8080", "127.0.0.1:8000", "[::1]:8000", "app.localhost"]
)
def test_a_keyless_server_serves_loopback_host_names(host: str) -> None:
    with keyless() as client:
        assert client.post("/v1/chat/completions", json=CHAT, headers={"host": host}).status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "127.0.0.1.nip.io", "0.0.0.0"])
def test_a_keyless_server_refuses_a_foreign_host(host: str) -> None:
    """DNS rebinding: a page at evil.example whose name now resolves to 127.0.0.1."""
    with keyless() as client:
        response = client.post("/v1/messages", json={**CHAT, "max_tokens": 4}, headers={"host": host})
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "permission_error"
    assert "has no client keys" in response.json()["error"]["message"]


def test_allowed_hosts_and_the_configured_host_are_served() -> None:
    with keyless(allowed_hosts=["myllm"]) as client:
        assert client.get("/v1/models", headers={"host": "myllm:8000"}).status_code == 200
        assert client.get("/v1/models", headers={"host": "other"}).status_code == 403


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://127.0.0.1.evil.example"])
def test_a_keyless_server_refuses_a_foreign_origin(origin: str) -> None:
    with keyless() as client:
        response = client.post("/v1/chat/completions", json=CHAT, headers={"origin": origin})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"


def test_a_local_origin_is_served() -> None:
    with keyless() as client:
        headers = {"origin": "http://localhost:3000"}
        assert client.post("/v1/chat/completions", json=CHAT, headers=headers).status_code == 200


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_keyless_server_wants_json_bodies(content_type: str | None) -> None:
    """A page can POST text/plain anywhere without a preflight: the old server parsed it as JSON."""
    body = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
    headers = {"content-type": content_type} if content_type else {}
    with keyless() as client:
        response = client.post("/v1/chat/completions", content=body, headers=headers)
        assert response.status_code == 400
        assert "Content-Type: application/json" in response.json()["error"]["message"]
        ok = client.post(
            "/v1/chat/completions", content=body, headers={"content-type": "application/json; charset=utf-8"}
        )
        assert ok.status_code == 200


def test_with_keys_the_browser_checks_are_off() -> None:
    settings = Settings.model_validate({"access": {"api_keys": [KEY]}})
    app = create_app(settings, backend=FakeBackend())
    with TestClient(app, raise_server_exceptions=False, base_url="http://hotspare.internal") as client:
        headers = {"x-api-key": KEY, "origin": "https://tool.example"}
        assert client.post("/v1/chat/completions", json=CHAT, headers=headers).status_code == 200


def test_keys_shorter_than_16_characters_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 16 characters") as info:
        Settings.model_validate({"access": {"api_keys": ["hs-short-key-01"]}})  # 15 characters
    assert "hs-short-key-01" not in str(info.value)


def test_an_address_with_repeated_bad_keys_is_throttled() -> None:
    settings = Settings.model_validate({"access": {"api_keys": [KEY], "public_ops": True}})
    with TestClient(create_app(settings, backend=FakeBackend()), raise_server_exceptions=False) as client:
        bad = {"x-api-key": "hs-wrong-key-00000"}
        statuses = [client.get("/v1/models", headers=bad).status_code for _ in range(MAX_FAILURES)]
        assert statuses == [401] * MAX_FAILURES
        throttled = client.get("/v1/models", headers={"x-api-key": KEY})  # even the right key waits
        assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) >= 1
        assert 'hotspare_access_denied_total{reason="auth_throttled"} 1.0' in client.get("/metrics").text


def test_the_throttle_backs_off_exponentially_and_forgets_on_success() -> None:
    now = [0.0]
    throttle = AuthThrottle(clock=lambda: now[0])
    waits = []
    for _ in range(3):
        for _ in range(MAX_FAILURES):
            assert throttle.wait_s("a") is None
            throttle.failed("a")
        waits.append(throttle.wait_s("a"))
        now[0] += 1000.0
    assert waits == [1.0, 2.0, 4.0]
    assert throttle.wait_s("b") is None  # per address
    throttle.succeeded("a")
    for _ in range(MAX_FAILURES - 1):
        throttle.failed("a")
    assert throttle.wait_s("a") is None


@pytest.mark.parametrize(
    "path",
    ["/v1/responses/%E9", "/v1/responses/a%20b", "/v1/models/%C3%A9", "/v1/responses/x%0D%0AHost:%20a"],
)
def test_bad_request_paths_are_400_in_process(path: str) -> None:
    with keyless() as client:
        response = client.get(path)
    assert response.status_code == 400
    assert "must be printable ASCII without spaces" in response.json()["error"]["message"]


@pytest.fixture(scope="module")
def upstream_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A real server (no model: upstream-only) whose one upstream is never reached."""
    workdir: Path = tmp_path_factory.mktemp("edge")
    config = workdir / "hotspare.toml"
    config.write_text(
        'mode = "upstream-only"\n[[upstreams]]\nname = "u"\nkind = "openai"\n'
        'base_url = "http://127.0.0.1:9"\napi_key = "forward"\nmodels = ["gpt-*"]\n'
    )
    running = start_server(workdir, "--config", str(config))
    yield running
    stop_server(running)


@pytest.mark.real
@pytest.mark.parametrize(
    "target",
    [b"/v1/responses/%E9", b"/v1/responses/a%20b", b"/v1/mo dels", "/v1/modèls".encode(), b"/v1/models\xff"],
)
def test_bad_request_targets_never_get_a_500(upstream_only: RunningServer, target: bytes) -> None:
    """Before: `/v1/responses/%E9` was a 500 (UnicodeEncodeError forwarding it upstream)."""
    head = b"GET " + target + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", upstream_only.port), timeout=10) as sock:
        sock.sendall(head)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    status = int(reply.split(b" ", 2)[1])
    assert status == 400, reply[:300]
