"""Prometheus metrics of the failover router, in a registry of its own (one per Router).

hotspare_upstream_circuit_state{upstream}                0 closed, 1 half-open, 2 open
hotspare_upstream_circuit_transitions_total{upstream,to}
hotspare_upstream_attempts_total{upstream,outcome}      ok | failed | cancelled | skipped
hotspare_served_total{backend,how}                      passthrough | events | takeover | hedge
"""

from __future__ import annotations

from functools import partial

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from hotspare.router.breaker import CircuitState, Transition

_STATE_VALUES = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        counter = partial(Counter, registry=self.registry)
        self._state = Gauge(
            "hotspare_upstream_circuit_state",
            "Circuit state: 0 closed, 1 half-open, 2 open.",
            ["upstream"],
            registry=self.registry,
        )
        self._transitions = counter(
            "hotspare_upstream_circuit_transitions", "Circuit state changes.", ["upstream", "to"]
        )
        self._attempts = counter(
            "hotspare_upstream_attempts", "Upstream attempts by outcome.", ["upstream", "outcome"]
        )
        self._served = counter("hotspare_served", "Answers started, by backend and how.", ["backend", "how"])

    def add_upstream(self, name: str) -> None:
        self._state.labels(name).set(0)

    def on_transition(self, transition: Transition) -> None:
        self._state.labels(transition.upstream).set(_STATE_VALUES[transition.new])
        self._transitions.labels(transition.upstream, str(transition.new)).inc()

    def attempt(self, upstream: str, outcome: str) -> None:
        self._attempts.labels(upstream, outcome).inc()

    def served(self, backend: str, how: str) -> None:
        self._served.labels(backend, how).inc()

    def render(self) -> bytes:
        """The text exposition format (content type `prometheus_client.CONTENT_TYPE_LATEST`)."""
        return generate_latest(self.registry)
