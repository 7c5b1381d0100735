"""Prometheus metrics of requests, upstreams and the local engine, in a registry of their own (one per
app; the router's circuit metrics live in router/metrics.py and are exposed beside these).

Requests, as clients saw them (`api`: openai_chat | anthropic_messages | openai_responses | other;
`backend`: an upstream's configured name | local | none; `outcome`: see ops/requestlog.py):

    hotspare_requests_total{api,backend,outcome}
    hotspare_request_duration_seconds{api,backend}            histogram, request to last byte
    hotspare_time_to_first_token_seconds{backend}             histogram, streaming requests
    hotspare_tokens_total{backend,direction}                  direction: in | out
    hotspare_takeovers_total{api,from_backend,to_backend}     an answer taken over mid-stream
    hotspare_access_denied_total{reason}                      unauthorized | rate_limited | too_large | ...
    hotspare_unknown_fields_total{api,part}                   request fields ignored (api/unknown_fields.py);
                                                              part: the request model's class name
    hotspare_response_store_errors_total                      Responses-store writes that failed

Upstreams, per attempt (`failure`: a FailureClass value, or none):

    hotspare_upstream_requests_total{upstream,outcome,failure}   outcome: ok | failed | cancelled | skipped
    hotspare_upstream_time_to_first_token_seconds{upstream}      histogram
    hotspare_upstream_degraded{upstream}                         1 while early warning degrades it
    hotspare_failovers_total{upstream,cause,stage}               a request moved on from `upstream`
    hotspare_failbacks_total{upstream,cause}                     traffic returned (circuit_closed | recovered)

The local engine, from the latest sample (see ops/engine_stats.py):

    hotspare_engine_state{state}                     1 for the current state, 0 for the others
    hotspare_engine_queue_depth, hotspare_engine_running_sequences
    hotspare_engine_kv_cache_used_tokens, hotspare_engine_kv_cache_used_ratio
    hotspare_engine_prefix_cache_hit_ratio           cached prompt tokens / prompt tokens
    hotspare_engine_tokens_per_second
    hotspare_engine_generated_tokens_total, hotspare_engine_steps_total, hotspare_engine_restarts_total,
    hotspare_engine_repetition_stops_total, hotspare_engine_noise_stops_total
    hotspare_engine_batch_size                       histogram of sequences per decode step
    hotspare_engine_threads                          llama.cpp threads in use (engine/threads.py)
    hotspare_engine_host_cache_bytes                 host RAM holding evicted conversations' KV
    hotspare_engine_host_cache_restores_total, hotspare_engine_host_cache_restored_tokens_total
    hotspare_engine_kv_idle_tokens                   KV cells only idle (cached) conversations hold
    hotspare_engine_kv_demotions_total               idle conversations moved out for max_idle_kv_tokens

Label values come from a closed set (config names, enums); nothing a client sends becomes a label.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from hotspare.ops.engine_stats import EngineSample, EngineState

LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS_S = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class OpsMetrics:
    def __init__(self, engine_sample: Callable[[], EngineSample]) -> None:
        self.registry = CollectorRegistry()
        counter = partial(Counter, registry=self.registry)
        ttft_histogram = partial(Histogram, buckets=TTFT_BUCKETS_S, registry=self.registry)
        self.requests = counter(
            "hotspare_requests", "Client requests by API, backend and outcome.", ["api", "backend", "outcome"]
        )
        self.duration = Histogram(
            "hotspare_request_duration_seconds",
            "Client request to last byte.",
            ["api", "backend"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.ttft = ttft_histogram(
            "hotspare_time_to_first_token_seconds", "Streaming request to first answer byte.", ["backend"]
        )
        self.tokens = counter(
            "hotspare_tokens", "Tokens reported in answers' usage.", ["backend", "direction"]
        )
        self.takeovers = counter(
            "hotspare_takeovers",
            "Answers taken over mid-stream, by the backend that broke off and the one that took over.",
            ["api", "from_backend", "to_backend"],
        )
        self.denied = counter("hotspare_access_denied", "Requests refused before routing.", ["reason"])
        self.unknown_fields = counter(
            "hotspare_unknown_fields",
            "Request fields the local path does not know, ignored.",
            ["api", "part"],
        )
        self.store_errors = counter(
            "hotspare_response_store_errors", "Responses delivered but not stored (the store's write failed)."
        )
        self.upstream_requests = counter(
            "hotspare_upstream_requests",
            "Upstream attempts by outcome and failure class.",
            ["upstream", "outcome", "failure"],
        )
        self.upstream_ttft = ttft_histogram(
            "hotspare_upstream_time_to_first_token_seconds",
            "Upstream request to first content.",
            ["upstream"],
        )
        self.degraded = Gauge(
            "hotspare_upstream_degraded",
            "1 while early warning degrades the upstream.",
            ["upstream"],
            registry=self.registry,
        )
        self.failovers = counter(
            "hotspare_failovers",
            "Requests that moved on from an upstream, by cause and stage.",
            ["upstream", "cause", "stage"],
        )
        self.failbacks = counter(
            "hotspare_failbacks", "Traffic returning to an upstream, by cause.", ["upstream", "cause"]
        )
        self.registry.register(_EngineCollector(engine_sample))

    def add_upstream(self, name: str) -> None:
        """Export an upstream's series at zero before anything happens to it."""
        self.degraded.labels(name).set(0)
        self.upstream_requests.labels(name, "ok", "none")

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCollector(Collector):
    """Reads the latest engine sample at scrape time (collect() is synchronous; the sample is kept
    fresh by the monitor's poller)."""

    def __init__(self, sample: Callable[[], EngineSample]) -> None:
        self._sample = sample

    def collect(self) -> Iterator[Metric]:
        s = self._sample()
        state = GaugeMetricFamily("hotspare_engine_state", "Local engine load state.", labels=["state"])
        for value in EngineState:
            state.add_metric([str(value)], 1.0 if s.state is value else 0.0)
        yield state
        yield _gauge("hotspare_engine_queue_depth", "Requests waiting for admission.", s.queue_depth)
        yield _gauge("hotspare_engine_running_sequences", "Sequences being decoded.", s.running)
        yield _gauge("hotspare_engine_kv_cache_used_tokens", "KV cells in use.", s.kv_used_tokens)
        yield _gauge("hotspare_engine_kv_cache_used_ratio", "KV cells in use / capacity.", s.kv_used_ratio)
        yield _gauge(
            "hotspare_engine_prefix_cache_hit_ratio",
            "Cached prompt tokens / prompt tokens.",
            s.prefix_hit_ratio,
        )
        yield _gauge("hotspare_engine_tokens_per_second", "Generated tokens per second.", s.tokens_per_s)
        yield _counter("hotspare_engine_generated_tokens", "Tokens generated.", s.num_generated_tokens)
        yield _counter(
            "hotspare_engine_repetition_stops",
            "Local answers ended (reported as length) because they fell into a loop.",
            s.num_repetition_stops,
        )
        yield _counter("hotspare_engine_steps", "Decode steps.", s.num_steps)
        yield _counter("hotspare_engine_restarts", "Engine process restarts.", s.num_restarts)
        yield _batch_histogram(s)
        for make, name, doc, key in _RAW_STATS:
            yield make(name, doc, float(s.raw.get(key, 0)))


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


# Engine counters read straight from the engine's stats (EngineSample.raw): (kind, name, help, key).
_RAW_STATS: tuple[tuple[Callable[[str, str, float], Metric], str, str, str], ...] = (
    (
        _counter,
        "hotspare_engine_noise_stops",
        "Local answers ended (reported as length) because they turned to noise (engine/repetition.py).",
        "num_noise_stops",
    ),
    (
        _gauge,
        "hotspare_engine_threads",
        "llama.cpp threads in use (fewer while other processes hold the cores).",
        "num_threads",
    ),
    (
        _gauge,
        "hotspare_engine_host_cache_bytes",
        "Host RAM holding the KV state of conversations evicted from the KV cache.",
        "host_cache_bytes",
    ),
    (
        _counter,
        "hotspare_engine_host_cache_restores",
        "Conversations restored from host RAM instead of computed.",
        "host_restores",
    ),
    (
        _counter,
        "hotspare_engine_host_cache_restored_tokens",
        "Prompt tokens restored from host RAM instead of computed.",
        "host_restored_tokens",
    ),
    (
        _gauge,
        "hotspare_engine_kv_idle_tokens",
        "KV cells held only by idle (cached, not running) conversations.",
        "kv_idle_tokens",
    ),
    (
        _counter,
        "hotspare_engine_kv_demotions",
        "Idle conversations moved out of the KV cache (to host RAM if on) for max_idle_kv_tokens.",
        "kv_demotions",
    ),
    (
        _counter,
        "hotspare_engine_prompts_prepared",
        "Requests rendered (budgeted, fitted, templated) for the engine: answers and warm-ups; one per "
        "request, whatever its number of choices.",
        "num_prompts_prepared",
    ),
    (
        _counter,
        "hotspare_engine_prompts",
        "Prompts the engine took (answers and warm-ups, since it started), each tokenized once, whatever "
        "its number of choices.",
        "num_prompts",
    ),
)


def _batch_histogram(s: EngineSample) -> HistogramMetricFamily:
    buckets: list[tuple[str, float]] = []
    total = 0
    for bound, count in zip(s.batch_size_bounds, s.steps_by_batch_size, strict=False):
        total += count
        buckets.append((str(float(bound)), float(total)))
    total = sum(s.steps_by_batch_size)
    buckets.append(("+Inf", float(total)))
    return HistogramMetricFamily(
        "hotspare_engine_batch_size",
        "Sequences decoded per step.",
        buckets=buckets,
        sum_value=float(s.num_batched_sequences),
    )
