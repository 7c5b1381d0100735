"""The ops state in process: engine samples, the status board, the metrics the monitor feeds, and the
status page's HTML -- exact values from tiny inputs."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from hotspare.config import Settings
from hotspare.core.errors import FailureClass
from hotspare.ops.engine_stats import EngineSample, EngineState, sample_from_stats
from hotspare.ops.monitor import Monitor
from hotspare.ops.requestlog import RequestRecord, api_of
from hotspare.ops.status import BUCKET_S, StatusBoard
from hotspare.ops.status_page import render_page
from hotspare.router.breaker import CircuitState, Transition
from hotspare.router.observe import Stage

STATS = {
    "num_running": 2,
    "num_waiting": 1,
    "kv_used_tokens": 256,
    "kv_capacity_tokens": 1024,
    "prefix_prompt_tokens": 100,
    "prefix_cached_tokens": 75,
    "num_steps": 10,
    "num_generated_tokens": 40,
    "num_preemptions": 0,
    "batch_size_bounds": [1, 2, 4],
    "steps_by_batch_size": [4, 3, 2, 1],
    "num_batched_sequences": 21,
}


def samples(text: bytes) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def test_engine_sample_rates_and_ratios() -> None:
    first = sample_from_stats(STATS, at=10.0, previous=None, num_restarts=0)
    assert (first.queue_depth, first.running, first.kv_used_ratio, first.prefix_hit_ratio) == (
        1,
        2,
        0.25,
        0.75,
    )
    assert first.tokens_per_s == 0.0
    later = sample_from_stats({**STATS, "num_generated_tokens": 60}, at=12.0, previous=first, num_restarts=0)
    assert later.tokens_per_s == 10.0
    restarted = sample_from_stats(
        {**STATS, "num_generated_tokens": 5}, at=13.0, previous=later, num_restarts=1
    )
    assert restarted.tokens_per_s == 0.0


def test_metrics_expose_the_engine_and_the_upstreams() -> None:
    upstream = {"name": "up", "kind": "openai", "base_url": "http://127.0.0.1:9", "api_key": "env:K"}
    monitor = monitor_for(Settings.model_validate({"upstreams": [upstream]}))
    monitor.engine = sample_from_stats(STATS, at=1.0, previous=None, num_restarts=2)
    monitor.on_attempt("up", "failed", FailureClass.SERVER_ERROR)
    monitor.on_attempt("up", "ok", None)
    monitor.on_first_token("up", 0.3)
    monitor.on_failover("up", "server_error", Stage.BEFORE_FIRST_BYTE)
    monitor.on_transition(Transition("up", CircuitState.HALF_OPEN, CircuitState.CLOSED, 0.0, "2 successes"))
    record = RequestRecord(
        "id", "openai_chat", "POST", "/v1/chat/completions", 200, "up", "ok", True, 120.0, 500.0, 10, 7, 3
    )
    monitor.on_request(record)
    monitor.on_request(RequestRecord("id", "anthropic_messages", "POST", "/v1/messages", 200, "made-up"))
    monitor.on_denied("unauthorized")
    m = samples(monitor.metrics.render())
    assert m['hotspare_upstream_requests_total{failure="server_error",outcome="failed",upstream="up"}'] == 1
    assert m['hotspare_upstream_requests_total{failure="none",outcome="ok",upstream="up"}'] == 1
    assert m['hotspare_upstream_time_to_first_token_seconds_count{upstream="up"}'] == 1
    assert m['hotspare_failovers_total{cause="server_error",stage="before_first_byte",upstream="up"}'] == 1
    assert m['hotspare_failbacks_total{cause="circuit_closed",upstream="up"}'] == 1
    assert m['hotspare_requests_total{api="openai_chat",backend="up",outcome="ok"}'] == 1
    assert m['hotspare_requests_total{api="anthropic_messages",backend="other",outcome="ok"}'] == 1
    assert m['hotspare_time_to_first_token_seconds_sum{backend="up"}'] == 0.12
    assert (
        m['hotspare_tokens_total{backend="up",direction="in"}'],
        m['hotspare_tokens_total{backend="up",direction="out"}'],
    ) == (7, 3)
    assert m['hotspare_access_denied_total{reason="unauthorized"}'] == 1
    assert m['hotspare_engine_state{state="ready"}'] == 1 and m["hotspare_engine_restarts_total"] == 2
    assert (m["hotspare_engine_queue_depth"], m["hotspare_engine_running_sequences"]) == (1, 2)
    assert (m["hotspare_engine_kv_cache_used_ratio"], m["hotspare_engine_prefix_cache_hit_ratio"]) == (
        0.25,
        0.75,
    )
    buckets = [m[f'hotspare_engine_batch_size_bucket{{le="{le}"}}'] for le in ("1.0", "2.0", "4.0", "+Inf")]
    assert buckets == [4, 7, 9, 10] and m["hotspare_engine_batch_size_sum"] == 21
    assert "env:K" not in monitor.metrics.render().decode()


def test_status_board_buckets_and_timeline() -> None:
    now = [1000.0]
    board = StatusBoard(clock=lambda: now[0])
    board.record_attempt("a", failed=True)
    board.record_attempt("a", failed=False)
    board.record_ttft("a", 0.2)
    now[0] += BUCKET_S
    board.record_attempt("a", failed=False)
    board.record_ttft("a", 0.4)
    summary = board.upstream_summary("a", minutes=1)
    assert (summary["attempts"], summary["failures"], summary["error_rate"]) == (3, 1, 1 / 3)
    assert summary["ttft_mean_s"] == 0.30000000000000004
    series = summary["series"]
    assert (
        isinstance(series, dict)
        and series["error_rate"][-2:] == [0.5, 0.0]
        and len(series["error_rate"]) == 6
    )
    for _ in range(3):
        board.add_event("failover", "a", "server_error", coalesce_s=10)
    board.add_event("breaker_open", "a", "5 consecutive failures")
    assert [e["kind"] for e in board.timeline()] == ["breaker_open", "failover"]
    board.record_served("local")
    assert board.served_summary(1)["requests_by_backend"] == {"local": 1}


def test_status_page_escapes_and_colours() -> None:
    upstream = {
        "state": "open",
        "health": "healthy",
        "error_rate": 1.0,
        "ttft_mean_s": None,
        "attempts": 2,
        "series": {"error_rate": [1.0], "ttft_s": [None], "attempts": [2]},
    }
    doc = {
        "generated_at": 0.0,
        "mode": "auto",
        "minutes": 5,
        "bucket_s": 10.0,
        "serving_now": "local",
        "upstreams": {"<b>x</b>": upstream},
        "local": {
            "model": "m",
            "state": "ready",
            "running": 0,
            "queue_depth": 0,
            "tokens_per_s": 0.0,
            "kv_used_ratio": 0.0,
            "prefix_hit_ratio": 0.0,
            "restarts": 0,
        },
        "requests": {
            "requests_by_backend": {},
            "series": {"requests": [0], "local_requests": [0], "engine_running": [0]},
        },
        "timeline": [{"at": 0.0, "kind": "breaker_open", "subject": "<b>x</b>", "detail": "<script>"}],
    }
    html = render_page(doc)
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html and "<script>" not in html
    assert 'style="background:#d32f2f">open</span>' in html
    assert "<script" not in html and "http://" not in html.replace("http-equiv", "")  # no external assets


def test_api_of_paths() -> None:
    assert [
        api_of(p)
        for p in (
            "/v1/chat/completions",
            "/v1/messages",
            "/v1/messages/count_tokens",
            "/v1/responses",
            "/v1/models",
        )
    ] == ["openai_chat", "anthropic_messages", "anthropic_messages", "openai_responses", "other"]


def test_engine_absent_in_upstream_only_mode() -> None:
    upstream = {"name": "up", "kind": "openai", "base_url": "http://127.0.0.1:9", "api_key": "env:K"}
    monitor = monitor_for(Settings.model_validate({"mode": "upstream-only", "upstreams": [upstream]}))
    assert monitor.engine == EngineSample(EngineState.ABSENT)


def test_each_takeover_is_counted_between_the_backends_it_joined() -> None:
    upstream = {"name": "up", "kind": "openai", "base_url": "http://127.0.0.1:9", "api_key": "env:K"}
    monitor = monitor_for(Settings.model_validate({"upstreams": [upstream]}))
    record = RequestRecord("id", "openai_chat", "POST", "/v1/chat/completions", 200, "up")
    record.backends = ["up", "local"]
    monitor.on_request(record)
    monitor.on_request(RequestRecord("id2", "openai_chat", "POST", "/v1/chat/completions", 200, "up"))
    m = samples(monitor.metrics.render())
    assert m['hotspare_takeovers_total{api="openai_chat",from_backend="up",to_backend="local"}'] == 1
    assert [name for name in m if name.startswith("hotspare_takeovers_total")] == [
        'hotspare_takeovers_total{api="openai_chat",from_backend="up",to_backend="local"}'
    ]


def monitor_for(settings: Settings) -> Monitor:
    return Monitor(settings.router_config(), settings.early_warning, settings.alerts)
