"""Access control from the outside, in process: keys in either header, 401/413/400/429 in the caller's
API shape, keys never echoed, and the refusal to listen beyond loopback without keys."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import openai
import pytest
from starlette.testclient import TestClient

from hotspare.app import create_app
from hotspare.cli import main
from hotspare.config import Settings
from hotspare.core.errors import ConfigError
from hotspare.ops.access import KeyRing, RateLimiter, check_exposure, is_loopback, startup_keys
from tests.api.fakes import FakeBackend

KEY = "hs-test-key-0001"
OTHER = "hs-test-key-0002"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
MESSAGE = {**CHAT, "max_tokens": 5}


def make_client(**access: object) -> TestClient:
    settings = Settings.model_validate({"access": {"api_keys": [KEY, OTHER], **access}})
    return TestClient(
        create_app(settings, backend=FakeBackend()),
        raise_server_exceptions=False,
        base_url="http://localhost",
    )


@pytest.fixture
def client() -> Iterator[TestClient]:
    with make_client(max_requests_per_minute=3, max_body_bytes=2048, max_messages=4) as c:
        yield c


def test_sdks_with_the_right_key_are_served(client: TestClient) -> None:
    oai = openai.OpenAI(base_url="http://localhost/v1", api_key=KEY, http_client=client, max_retries=0)
    assert oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}]).choices
    claude = anthropic.Anthropic(
        base_url="http://localhost", api_key=OTHER, http_client=client, max_retries=0
    )
    assert claude.messages.create(
        model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    ).content


def test_wrong_or_missing_keys_get_401_in_the_callers_shape(client: TestClient) -> None:
    wrong = client.post("/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {KEY}x"})
    assert wrong.status_code == 401 and wrong.json() == {
        "error": {
            "message": "invalid API key",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    missing = client.post("/v1/messages", json=MESSAGE)
    assert missing.status_code == 401
    assert missing.json()["type"] == "error" and missing.json()["error"]["type"] == "authentication_error"
    assert missing.json()["request_id"] == missing.headers["request-id"]
    claude = anthropic.Anthropic(
        base_url="http://localhost", api_key="sk-ant-wrong-key", http_client=client, max_retries=0
    )
    with pytest.raises(anthropic.AuthenticationError) as info:
        claude.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert "sk-ant-wrong-key" not in str(info.value.body)
    assert client.get("/v1/models").status_code == 401
    assert client.get("/status.json").status_code == 401 and client.get("/metrics").status_code == 401
    assert client.get("/health").status_code == 200 and client.get("/ready").status_code == 200


def test_per_key_request_limit(client: TestClient) -> None:
    for _ in range(3):
        assert client.post("/v1/messages", json=MESSAGE, headers={"x-api-key": KEY}).status_code == 200
    limited = client.post("/v1/messages", json=MESSAGE, headers={"x-api-key": KEY})
    assert limited.status_code == 429 and limited.json()["error"]["type"] == "rate_limit_error"
    assert int(limited.headers["retry-after"]) >= 1
    openai_limited = client.post("/v1/chat/completions", json=CHAT, headers={"x-api-key": KEY})
    assert (
        openai_limited.status_code == 429 and openai_limited.json()["error"]["code"] == "rate_limit_exceeded"
    )
    assert client.post("/v1/messages", json=MESSAGE, headers={"x-api-key": OTHER}).status_code == 200
    assert client.get("/metrics", headers={"x-api-key": KEY}).status_code == 200  # not counted


def test_body_size_and_message_count_limits(client: TestClient) -> None:
    headers = {"x-api-key": KEY}
    big = {**MESSAGE, "messages": [{"role": "user", "content": "x" * 4000}]}
    too_large = client.post("/v1/messages", json=big, headers=headers)
    assert too_large.status_code == 413
    error = too_large.json()["error"]
    assert error["type"] == "request_too_large" and error["message"].endswith("; at most 2048 are accepted")
    assert client.post("/v1/chat/completions", json=big, headers=headers).json()["error"]["code"] == (
        "request_too_large"
    )
    many = {**CHAT, "messages": [{"role": "user", "content": "hi"}] * 5}
    refused = client.post("/v1/chat/completions", json=many, headers=headers)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "messages"
    assert refused.json()["error"]["message"] == "messages: 5 items; at most 4 are accepted"


def test_ops_pages_may_be_public() -> None:
    with make_client(public_ops=True) as c:
        assert c.get("/status.json").status_code == 200 and c.get("/metrics").status_code == 200
        assert c.get("/v1/models").status_code == 401


def test_key_ring_and_rate_limiter() -> None:
    ring = KeyRing((KEY, OTHER))
    assert (ring.identify(KEY), ring.identify(OTHER), ring.identify(KEY[:-1]), ring.identify("")) == (
        "key-1",
        "key-2",
        None,
        None,
    )
    now = [0.0]
    limiter = RateLimiter(2, clock=lambda: now[0])
    assert [limiter.try_take("k"), limiter.try_take("k")] == [None, None]
    assert limiter.try_take("k") == pytest.approx(30.0)
    now[0] = 30.0
    assert limiter.try_take("k") is None


def test_listening_beyond_loopback_needs_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.1")
    check_exposure("127.0.0.1", ())
    check_exposure("0.0.0.0", (KEY,))
    with pytest.raises(ConfigError, match=r"refusing to listen on 0\.0\.0\.0 without client keys"):
        check_exposure("0.0.0.0", ())
    monkeypatch.setenv("HOTSPARE_API_KEYS", f" {KEY} ,{OTHER}")
    assert _keys(Settings.model_validate({"server": {"host": "0.0.0.0"}})) == (KEY, OTHER)
    monkeypatch.setenv("HOTSPARE_API_KEYS", "short")
    with pytest.raises(ConfigError) as info:
        _keys(Settings())
    assert "short" not in info.value.message


def test_serve_refuses_to_start_exposed_without_keys(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("HOTSPARE_API_KEYS", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "refusing to listen on 0.0.0.0 without client keys" in err and "HOTSPARE_API_KEYS" in err


def test_keys_with_a_forwarding_upstream_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    upstream = {"name": "u", "kind": "openai", "base_url": "http://127.0.0.1:9", "api_key": "forward"}
    settings = Settings.model_validate({"access": {"api_keys": [KEY]}, "upstreams": [upstream]})
    with pytest.raises(ConfigError, match="forwards the client's key"):
        _keys(settings)


def test_a_literal_key_in_the_config_error_is_hidden() -> None:
    with pytest.raises(ValueError) as info:
        Settings.model_validate({"access": {"api_keys": ["a key with spaces"]}})
    assert "a key with spaces" not in str(info.value)


def _keys(settings: Settings) -> tuple[str, ...]:
    return startup_keys(settings.access, settings.server.host, settings.forwarding_upstreams())
