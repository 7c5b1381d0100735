"""Operations end to end: a real `hotspare serve` (real local model) with client keys, in front of the
fake providers, alerting a real webhook receiver; metrics scraped, the status page in headless
Chromium, early warning, the JSON request log, and no secret anywhere it could leak."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from hotspare.engine.attention import WORKLOADS
from hotspare.ops.status_page import GREEN, RED
from tests.fakes.serve_config import QUICK_TIMEOUTS, upstream_table
from tests.fakes.upstreams import Behavior, FakeUpstream
from tests.sdk_clients import anthropic_client, openai_client
from tests.serving import RunningServer, start_server, stop_server

from .browser import dump_dom, screenshot
from .png import hex_rgb, pixel_counts
from .webhook import WebhookReceiver

pytestmark = pytest.mark.real  # `hotspare serve` as a subprocess (see tests/conftest.py)

CLIENT_KEY = "hs-client-key-0001"
UPSTREAM_KEY = "sk-upstream-secret-0001"
PROMPT = "Say hello, zebra-marker-7"  # must never reach the request log
USER_A: list[anthropic.types.MessageParam] = [{"role": "user", "content": PROMPT}]
USER_O: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": PROMPT}]

ops_upstream = partial(
    upstream_table, api_key="env:HS_TEST_UPSTREAM_KEY", timeouts=QUICK_TIMEOUTS | {"first_token_s": 2}
)
NEVER_OPENS = {"consecutive_failures": 50, "min_requests": 1000}
CONFIG = (
    """
mode = "auto"
[local]
hedge = false
[access]
public_ops = true
[alerts]
webhook_url = "{webhook}"
backoff_s = 0.05
failover_cooldown_s = 0.5
[early_warning]
min_requests = 4
max_error_rate = 0.25
shed_share = 0.5

"""
    + ops_upstream("anth", "anthropic", "{anthropic}", ["claude-*"])
    + ops_upstream("oai", "openai", "{openai}", ["gpt-*"], breaker=NEVER_OPENS)
    # only the early-warning test sends requests to "ew"
    + ops_upstream("ew", "openai", "{openai}", ["ew-*"], timeouts=None, breaker=NEVER_OPENS)
)


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as hook:
        yield hook


@pytest.fixture(scope="module")
def hotspare(
    anthropic_server: FakeUpstream,
    openai_server: FakeUpstream,
    receiver: WebhookReceiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningServer]:
    workdir = tmp_path_factory.mktemp("ops")
    config = workdir / "hotspare.toml"
    config.write_text(
        CONFIG.format(anthropic=anthropic_server.url, openai=openai_server.url, webhook=receiver.url)
    )
    saved = dict(os.environ)
    os.environ.update({"HOTSPARE_API_KEYS": CLIENT_KEY, "HS_TEST_UPSTREAM_KEY": UPSTREAM_KEY})
    try:
        running = start_server(Path(workdir), "--config", str(config))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    yield running
    stop_server(running)


def claude(server: RunningServer) -> anthropic.Anthropic:
    return anthropic_client(server, CLIENT_KEY)


def gpt(server: RunningServer) -> openai.OpenAI:
    return openai_client(server, CLIENT_KEY)


def claude_stream(server: RunningServer) -> str:
    with claude(server).messages.stream(model="claude-x", max_tokens=8, messages=USER_A) as stream:
        stream.get_final_message()
        return stream.response.headers["x-hotspare-backend"]


def gpt_stream(server: RunningServer, model: str = "gpt-x") -> str:
    stream = gpt(server).chat.completions.create(
        model=model, max_tokens=8, messages=USER_O, stream=True, stream_options={"include_usage": True}
    )
    assert [c for c in stream]
    return stream.response.headers["x-hotspare-backend"]


def scrape(server: RunningServer) -> dict[str, float]:
    """Every sample of /metrics, keyed by its name and labels as exposed."""
    text = httpx.get(f"{server.base_url}/metrics").text
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def status(server: RunningServer) -> dict[str, Any]:
    response = httpx.get(f"{server.base_url}/status.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def wait_until(check: Any, timeout_s: float = 20.0) -> None:
    """Poll another process's state (nothing to await across processes)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_status_names_the_weights_and_the_attention_the_engine_runs(hotspare: RunningServer) -> None:
    local = status(hotspare)["local"]
    assert local["weights"] == "Q8_0, re-encoded from Q4_1"
    # A fresh home: timed at this start, or left on when the machine was too busy to time it.
    attention = local["attention"]
    assert attention["flash_attention"] in ("on", "off") and attention["source"] in ("calibrated", "default")
    if attention["source"] == "calibrated":
        assert set(attention["on_ms"]) == set(attention["off_ms"]) == set(WORKLOADS)
    page = httpx.get(f"{hotspare.base_url}/status", headers={"accept": "text/html"}).text
    assert "(Q8_0, re-encoded from Q4_1)" in page
    assert f"flash {attention['flash_attention']} ({attention['source']})" in page


def test_metrics_and_request_log_cover_requests_upstreams_and_engine(
    hotspare: RunningServer, anthropic_fake: FakeUpstream, openai_fake: FakeUpstream
) -> None:
    assert claude_stream(hotspare) == "anth"
    assert gpt(hotspare).chat.completions.create(model="gpt-x", max_tokens=8, messages=USER_O).choices
    anthropic_fake.script(Behavior(status=500), Behavior(status=500))  # the attempt and its quick retry
    assert claude_stream(hotspare) == "local"
    assert claude_stream(hotspare) == "anth"
    openai_fake.script(Behavior(cut_after=3))
    assert gpt_stream(hotspare) == "oai"  # the local model finished the answer
    assert gpt_stream(hotspare, model="other") == "local"
    wait_until(lambda: scrape(hotspare)["hotspare_engine_generated_tokens_total"] > 0)
    m = scrape(hotspare)
    expected = [
        'hotspare_requests_total{api="anthropic_messages",backend="anth",outcome="ok"}',
        'hotspare_requests_total{api="openai_chat",backend="local",outcome="ok"}',
        'hotspare_request_duration_seconds_count{api="openai_chat",backend="oai"}',
        'hotspare_time_to_first_token_seconds_count{backend="anth"}',
        'hotspare_tokens_total{backend="anth",direction="in"}',
        'hotspare_tokens_total{backend="local",direction="out"}',
        'hotspare_upstream_requests_total{failure="none",outcome="ok",upstream="anth"}',
        'hotspare_upstream_requests_total{failure="server_error",outcome="failed",upstream="anth"}',
        'hotspare_upstream_requests_total{failure="stream_cut",outcome="failed",upstream="oai"}',
        'hotspare_upstream_time_to_first_token_seconds_count{upstream="oai"}',
        'hotspare_failovers_total{cause="server_error",stage="before_first_byte",upstream="anth"}',
        'hotspare_failovers_total{cause="stream_cut",stage="mid_stream",upstream="oai"}',
        'hotspare_takeovers_total{api="openai_chat",from_backend="oai",to_backend="local"}',
        "hotspare_engine_steps_total",
        "hotspare_engine_batch_size_count",
    ]
    assert [name for name in expected if m.get(name, 0) < 1] == []
    assert m['hotspare_upstream_circuit_state{upstream="anth"}'] == 0
    assert m['hotspare_engine_state{state="ready"}'] == 1 and m['hotspare_engine_state{state="loading"}'] == 0
    assert m['hotspare_engine_batch_size_bucket{le="+Inf"}'] == m["hotspare_engine_steps_total"]
    for gauge in (
        "queue_depth",
        "running_sequences",
        "kv_cache_used_ratio",
        "kv_cache_used_tokens",
        "prefix_cache_hit_ratio",
        "tokens_per_second",
        "restarts_total",
        "host_cache_bytes",
        "host_cache_restores_total",
        "host_cache_restored_tokens_total",
        "kv_idle_tokens",
        "kv_demotions_total",
        "repetition_stops_total",
        "noise_stops_total",
    ):
        assert f"hotspare_engine_{gauge}" in m
    assert m["hotspare_engine_threads"] >= 1
    assert 'hotspare_upstream_degraded{upstream="anth"}' in m
    records = [json.loads(line) for line in hotspare.log().splitlines() if line.startswith("{")]
    served = [r for r in records if r["path"] in ("/v1/messages", "/v1/chat/completions")]
    assert {(r["api"], r["backend"]) for r in served} >= {
        ("anthropic_messages", "anth"),
        ("openai_chat", "local"),
    }
    taken_over = [r for r in served if r.get("backends") == ["oai", "local"]]
    assert len(taken_over) == 1 and taken_over[0]["backend"] == "oai" and taken_over[0]["stream"] is True
    assert [r["backends"] for r in served if r["backend"] == "anth"] == [["anth"], ["anth"]]
    first = served[0]
    assert set(first) >= {
        "id",
        "api",
        "method",
        "path",
        "status",
        "backend",
        "backends",
        "outcome",
        "stream",
        "duration_ms",
    }
    assert first["key"] == "key-1" and first["id"].startswith("req_") and first["outcome"] == "ok"


def test_no_secret_reaches_metrics_status_or_logs(hotspare: RunningServer) -> None:
    assert claude_stream(hotspare) in ("anth", "local")
    exposed = [httpx.get(f"{hotspare.base_url}/metrics").text, json.dumps(status(hotspare)), hotspare.log()]
    exposed.append(httpx.get(f"{hotspare.base_url}/status", headers={"accept": "text/html"}).text)
    for text in exposed:
        assert CLIENT_KEY not in text and UPSTREAM_KEY not in text and PROMPT not in text
    wrong = httpx.post(f"{hotspare.base_url}/v1/messages", headers={"x-api-key": "hs-guess-0000"}, json={})
    assert wrong.status_code == 401 and "hs-guess-0000" not in wrong.text


def test_breaker_alerts_timeline_and_the_status_page_in_a_browser(
    hotspare: RunningServer, anthropic_fake: FakeUpstream, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    page = f"{hotspare.base_url}/status"
    anthropic_fake.refuse()
    # Two requests x (attempt + quick retry) = 4 consecutive failures open it; more if early warning
    # (degraded by an earlier test's failures) sends some of them past it unattempted.
    for _ in range(8):
        assert claude_stream(hotspare) == "local"
        if status(hotspare)["upstreams"]["anth"]["state"] == "open":
            break
    assert status(hotspare)["upstreams"]["anth"]["state"] == "open"
    assert claude_stream(hotspare) == "local"  # skipped: zero attempts while open
    dom = dump_dom(page)
    assert 'data-upstream="anth" data-state="open"' in dom
    assert '<div class="now" id="serving-now">oai</div>' in dom
    assert "breaker open" in dom and "connect_error" in dom
    opened = pixel_counts(screenshot(page, tmp_path / "open.png"))
    assert opened[hex_rgb(RED)] > 300  # the red "open" badge is on screen
    receiver.wait_for(
        lambda bodies: any(b["event"] == "breaker_open" and b["upstream"] == "anth" for b in bodies)
    )
    anthropic_fake.accept()
    wait_until(lambda: status(hotspare)["upstreams"]["anth"]["state"] == "half_open")
    assert claude_stream(hotspare) == "anth"  # the half-open trial closes it
    assert status(hotspare)["upstreams"]["anth"]["state"] == "closed"
    bodies = receiver.wait_for(lambda bodies: any(b["event"] == "failback" for b in bodies))
    events = {(b["event"], b["upstream"]) for b in bodies}
    assert {
        ("breaker_open", "anth"),
        ("failover", "anth"),
        ("breaker_close", "anth"),
        ("failback", "anth"),
    } <= events
    for body in bodies:
        assert CLIENT_KEY not in json.dumps(body) and UPSTREAM_KEY not in json.dumps(body)
    kinds = [e["kind"] for e in status(hotspare)["timeline"] if e["subject"] == "anth"]
    assert {"breaker_open", "breaker_half_open", "breaker_closed", "failback", "failover"} <= set(kinds)
    m = scrape(hotspare)
    assert m['hotspare_failbacks_total{cause="circuit_closed",upstream="anth"}'] >= 1
    assert m['hotspare_failovers_total{cause="circuit_open",stage="before_first_byte",upstream="anth"}'] >= 1
    after = pixel_counts(screenshot(page, tmp_path / "closed-again.png"))
    assert after[hex_rgb(RED)] == 0 and after[hex_rgb(GREEN)] > 100  # three closed circuits again


def test_early_warning_degrades_and_sheds_before_the_breaker_trips(
    hotspare: RunningServer, openai_fake: FakeUpstream, receiver: WebhookReceiver
) -> None:
    openai_fake.script(Behavior(malformed_after=0), Behavior(), Behavior(), Behavior())
    backends = [gpt_stream(hotspare, model="ew-1") for _ in range(4)]
    assert backends == ["local", "ew", "ew", "ew"]  # 1 failure in 4 attempts: 25 %
    assert status(hotspare)["upstreams"]["ew"]["health"] == "degraded"
    assert scrape(hotspare)['hotspare_upstream_degraded{upstream="ew"}'] == 1
    receiver.wait_for(lambda bodies: any(b["event"] == "degraded" and b["upstream"] == "ew" for b in bodies))
    openai_fake.clear()
    backends = [gpt_stream(hotspare, model="ew-2") for _ in range(4)]
    assert sorted(backends) == ["ew", "ew", "local", "local"]  # half of them go past it, unattempted
    assert len(openai_fake.attempts()) == 2
    assert status(hotspare)["upstreams"]["ew"]["state"] == "closed"  # the breaker never tripped
    m = scrape(hotspare)
    assert m['hotspare_failovers_total{cause="degraded",stage="before_first_byte",upstream="ew"}'] == 2
