"""`hotspare serve --config` (real subprocess, real local model) in front of the fake providers,
driven by the official SDKs: passthrough, failover before the first byte, mid-stream takeover, the
circuit breaker with probes and failback, Retry-After, client faults, non-streaming. Answers cross
formats here (and a client's own key goes only to its own vendor), so the upstreams have operator
keys (`env:`), holding the clients' key value."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.fakes.serve_config import serving, upstream_table
from tests.fakes.upstreams import Behavior, FakeUpstream, key_hash
from tests.sdk_clients import anthropic_client, openai_client
from tests.serving import RunningServer

pytestmark = pytest.mark.real  # `hotspare serve` as a subprocess (see tests/conftest.py)

CLAUDE = "claude-test"  # served by the anthropic fake
GPT = "gpt-test"  # served by the openai fake
KEY = "sk-test-client"
UPSTREAM_TEXT = "Hello from the fake upstream."

CONFIG = (
    """
mode = "auto"
[local]
hedge = false
[early_warning]
enabled = false  # its shedding is probabilistic; these tests pin each failure's exact handling

"""
    + upstream_table("anth", "anthropic", "{anthropic}", ["claude-*"], api_key="env:HS_FAILOVER_KEY")
    + upstream_table("oai", "openai", "{openai}", ["gpt-*"], api_key="env:HS_FAILOVER_KEY")
)


@pytest.fixture(scope="module")
def hotspare(
    anthropic_server: FakeUpstream, openai_server: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    config = CONFIG.format(anthropic=anthropic_server.url, openai=openai_server.url)
    os.environ["HS_FAILOVER_KEY"] = KEY
    try:
        with serving(config, tmp_path_factory.mktemp("failover")) as running:
            yield running
    finally:
        del os.environ["HS_FAILOVER_KEY"]


def circuit_states(server: RunningServer) -> dict[str, str]:
    upstreams = httpx.get(f"{server.base_url}/status").json()["upstreams"]
    return {name: state["state"] for name, state in upstreams.items()}


@pytest.fixture(autouse=True)
def healthy(
    hotspare: RunningServer, anthropic_fake: FakeUpstream, openai_fake: FakeUpstream
) -> Iterator[None]:
    """Each test starts with healthy fakes, closed circuits and empty attempt records."""
    deadline = time.monotonic() + 30
    while (states := circuit_states(hotspare)) != {"anth": "closed", "oai": "closed"}:
        assert time.monotonic() < deadline, states
        if "half_open" in states.values():  # a real success closes it
            claude(hotspare).messages.create(model=CLAUDE, max_tokens=8, messages=USER_A)
            gpt(hotspare).chat.completions.create(model=GPT, max_tokens=8, messages=USER_O)
        time.sleep(0.05)  # waiting on another process's probes: nothing to await
    anthropic_fake.clear()
    openai_fake.clear()
    yield


USER_A: list[anthropic.types.MessageParam] = [{"role": "user", "content": "Say hello"}]
USER_O: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello"}]


def claude(server: RunningServer) -> anthropic.Anthropic:
    return anthropic_client(server, KEY)


def gpt(server: RunningServer) -> openai.OpenAI:
    return openai_client(server, KEY)


def claude_stream(server: RunningServer) -> tuple[str, anthropic.types.Message, str]:
    with claude(server).messages.stream(model=CLAUDE, max_tokens=16, messages=USER_A) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        backend = stream.response.headers["x-hotspare-backend"]
    return text, final, backend


def gpt_stream(server: RunningServer) -> tuple[str, list[openai.types.chat.ChatCompletionChunk], str]:
    stream = gpt(server).chat.completions.create(
        model=GPT,
        max_tokens=16,
        messages=USER_O,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks, stream.response.headers["x-hotspare-backend"]


def request_record(server: RunningServer, request_id: str) -> dict[str, Any]:
    """The request log line of `request_id` (written just after the response's last byte)."""
    deadline = time.monotonic() + 10
    while True:
        for line in server.log().splitlines():
            if line.startswith("{") and f'"id": "{request_id}"' in line:
                record: dict[str, Any] = json.loads(line)
                return record
        assert time.monotonic() < deadline, f"no request log line for {request_id}"
        time.sleep(0.05)  # another process's log file: nothing to await


# --- healthy passthrough ----------------------------------------------------------------------------


def test_streaming_passthrough_is_byte_identical(
    hotspare: RunningServer, anthropic_fake: FakeUpstream
) -> None:
    body = {"model": CLAUDE, "max_tokens": 16, "stream": True, "messages": USER_A}
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    direct = httpx.post(f"{anthropic_fake.url}/v1/messages", json=body, headers=headers)
    via = httpx.post(f"{hotspare.base_url}/v1/messages", json=body, headers=headers)
    assert via.status_code == 200 and via.headers["x-hotspare-backend"] == "anth"
    assert via.content == direct.content
    assert anthropic_fake.attempts()[-1].headers["x-api-key"] == key_hash(KEY)


def test_sdk_streams_pass_through(hotspare: RunningServer) -> None:
    text, final, backend = claude_stream(hotspare)
    assert (text, final.stop_reason, final.usage.output_tokens, backend) == (
        UPSTREAM_TEXT,
        "end_turn",
        6,
        "anth",
    )
    text, chunks, backend = gpt_stream(hotspare)
    assert (text, backend) == (UPSTREAM_TEXT, "oai")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6


def test_non_streaming_passthrough(hotspare: RunningServer) -> None:
    raw = claude(hotspare).messages.with_raw_response.create(model=CLAUDE, max_tokens=16, messages=USER_A)
    message = raw.parse()
    assert raw.headers["x-hotspare-backend"] == "anth"
    block = message.content[0]
    assert isinstance(block, anthropic.types.TextBlock)
    assert (block.text, message.stop_reason) == (UPSTREAM_TEXT, "end_turn")
    completion = gpt(hotspare).chat.completions.create(model=GPT, max_tokens=16, messages=USER_O)
    assert completion.choices[0].message.content == UPSTREAM_TEXT


def test_cross_format_and_unrouted_models_are_answered(hotspare: RunningServer) -> None:
    completion = gpt(hotspare).chat.completions.with_raw_response.create(
        model=CLAUDE,
        max_tokens=16,
        messages=USER_O,
    )
    assert completion.headers["x-hotspare-backend"] == "anth"
    assert completion.parse().choices[0].message.content == UPSTREAM_TEXT
    local = gpt(hotspare).chat.completions.with_raw_response.create(
        model="other", max_tokens=8, messages=USER_O
    )
    assert local.headers["x-hotspare-backend"] == "local"
    assert local.parse().choices[0].finish_reason in ("stop", "length")


# --- failures before the first byte ------------------------------------------------------------------

BEFORE_FIRST_BYTE = {
    "reset": Behavior(reset=True),
    "hang": Behavior(hang=True),
    "first-token": Behavior(first_delay_s=10),
    "500": Behavior(status=500),
    "529": Behavior(status=529),
    "429-no-hint": Behavior(status=429),
    "malformed": Behavior(malformed_after=0),
    "error-event": Behavior(error_after=0),
    "no-terminator-empty": Behavior(deltas=(), omit_terminator=True),
}


@pytest.mark.parametrize("case", list(BEFORE_FIRST_BYTE))
def test_failure_before_first_byte_is_served_locally(
    hotspare: RunningServer, anthropic_fake: FakeUpstream, case: str
) -> None:
    behavior = BEFORE_FIRST_BYTE[case]
    anthropic_fake.script(behavior, behavior)  # the quick retry (where allowed) fails too
    text, final, backend = claude_stream(hotspare)
    assert backend == "local"
    assert text and final.stop_reason in ("end_turn", "max_tokens")
    assert final.usage.output_tokens >= 1
    assert UPSTREAM_TEXT not in text


def test_refused_connection_openai(hotspare: RunningServer, openai_fake: FakeUpstream) -> None:
    openai_fake.refuse()
    text, chunks, backend = gpt_stream(hotspare)
    assert backend == "local" and text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1


def test_auth_outage_after_success_fails_over(hotspare: RunningServer, openai_fake: FakeUpstream) -> None:
    openai_fake.script(Behavior(), Behavior(status=401), Behavior(status=401))
    assert gpt_stream(hotspare)[2] == "oai"
    text, _, backend = gpt_stream(hotspare)
    assert backend == "local" and text


# --- mid-stream takeover -------------------------------------------------------------------------------

MID_STREAM = {
    "cut": Behavior(cut_after=3),
    "stall": Behavior(stall_after=3),
    "error-event": Behavior(error_after=3),
    "no-terminator": Behavior(omit_terminator=True, deltas=("Hello", " from", " the")),
}


@pytest.mark.parametrize("case", list(MID_STREAM))
def test_anthropic_mid_stream_takeover(
    hotspare: RunningServer, anthropic_fake: FakeUpstream, case: str
) -> None:
    anthropic_fake.script(MID_STREAM[case])
    text, final, backend = claude_stream(hotspare)
    assert backend == "anth"
    assert text.startswith("Hello from the") and len(text) > len("Hello from the")
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert final.usage.output_tokens > 3


@pytest.mark.parametrize("case", ["cut", "stall", "error-event"])
def test_openai_mid_stream_takeover(hotspare: RunningServer, openai_fake: FakeUpstream, case: str) -> None:
    openai_fake.script(MID_STREAM[case])
    text, chunks, backend = gpt_stream(hotspare)
    assert backend == "oai"
    assert text.startswith("Hello from the") and len(text) > len("Hello from the")
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 3


def test_non_streaming_cut_and_hang_are_served_locally(
    hotspare: RunningServer, openai_fake: FakeUpstream
) -> None:
    openai_fake.script(Behavior(cut_after=2), Behavior(hang=True))
    for _ in range(2):
        raw = gpt(hotspare).chat.completions.with_raw_response.create(
            model=GPT, max_tokens=8, messages=USER_O
        )
        assert raw.headers["x-hotspare-backend"] == "local"
        assert raw.parse().choices[0].message.content


def test_a_whole_answer_taken_over_names_the_backend_that_finished_it(
    hotspare: RunningServer, anthropic_fake: FakeUpstream
) -> None:
    anthropic_fake.script(Behavior(cut_after=3))  # converted (OpenAI client, Anthropic upstream)
    raw = gpt(hotspare).chat.completions.with_raw_response.create(
        model=CLAUDE, max_tokens=16, messages=USER_O
    )
    assert raw.headers["x-hotspare-backend"] == "local"
    text = raw.parse().choices[0].message.content
    assert text is not None and text.startswith("Hello from the") and len(text) > len("Hello from the")
    record = _request_record(hotspare, raw.headers["x-request-id"])
    assert record["backend"] == "local" and record["backends"] == ["anth", "local"]


def _request_record(hotspare: RunningServer, request_id: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """The request log's record of `request_id`. It is written once the response has been sent, so
    a client that has read the whole answer may look before it is there: wait for it."""
    deadline = time.monotonic() + timeout_s
    while True:
        for line in hotspare.log().splitlines():
            if line.startswith("{") and (record := json.loads(line)).get("id") == request_id:
                return record  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, f"no request-log record of {request_id}"
        time.sleep(0.05)


# --- client faults, Retry-After ---------------------------------------------------------------------


def test_client_400_is_passed_through_unchanged_and_not_retried(
    hotspare: RunningServer, anthropic_fake: FakeUpstream
) -> None:
    anthropic_fake.script(Behavior(status=400, error_message="max_tokens: must be at most 8192"))
    with pytest.raises(anthropic.BadRequestError) as info:
        claude_stream(hotspare)
    assert info.value.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: must be at most 8192"},
        "request_id": "req_fake",
    }
    assert len(anthropic_fake.attempts()) == 1


def test_short_retry_after_is_honoured(hotspare: RunningServer, openai_fake: FakeUpstream) -> None:
    openai_fake.script(Behavior(status=429, retry_after="1"))
    text, _, backend = gpt_stream(hotspare)
    assert (text, backend) == (UPSTREAM_TEXT, "oai")
    first, second = openai_fake.attempts()
    assert second.at - first.at >= 1.0


# --- circuit breaker ------------------------------------------------------------------------------------


def test_breaker_opens_skips_probes_and_fails_back(
    hotspare: RunningServer, anthropic_fake: FakeUpstream
) -> None:
    anthropic_fake.refuse()
    for _ in range(2):  # two requests x (attempt + quick retry) = 4 consecutive failures
        assert claude_stream(hotspare)[2] == "local"
    assert circuit_states(hotspare)["anth"] == "open"
    anthropic_fake.accept()
    anthropic_fake.probe_status = 503  # stays open while the probes fail
    anthropic_fake.clear()
    assert claude_stream(hotspare)[2] == "local"
    assert anthropic_fake.attempts() == []  # zero attempts while open
    probes = anthropic_fake.wait_for(2, probes=True)
    # a real 1-token request for the model whose circuit is open, not GET /v1/models
    assert {(p.method, p.path) for p in probes} == {("POST", "/v1/messages")}
    assert probes[0].body is not None and probes[0].body["model"] == CLAUDE
    assert probes[0].body["max_tokens"] == 1 and not probes[0].body.get("stream")
    assert probes[0].headers.get("x-api-key") == key_hash(KEY)  # the key that last worked
    anthropic_fake.probe_status = 200
    deadline = time.monotonic() + 10
    while circuit_states(hotspare)["anth"] != "half_open":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    text, _, backend = claude_stream(hotspare)  # the half-open trial
    assert (text, backend) == (UPSTREAM_TEXT, "anth")
    assert circuit_states(hotspare)["anth"] == "closed"
    metrics = httpx.get(f"{hotspare.base_url}/metrics").text
    assert 'hotspare_upstream_circuit_transitions_total{to="open",upstream="anth"}' in metrics
    assert "circuit anth: closed -> open" in hotspare.log()
