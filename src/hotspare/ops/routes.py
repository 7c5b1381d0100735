"""The operations endpoints: `/metrics` (Prometheus text), `/status.json`, `/status` (the HTML page
for a browser, the same JSON for anything that does not ask for HTML), and `/` (the status page for a
browser, a small JSON naming the endpoints for anything else).

They read `app.state.monitor` (ops/monitor.py), `app.state.router` (circuit states; None without
upstreams) and `app.state.backend`. Nothing here shows a key, a header or a base URL.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from hotspare.engine.protocol import LocalBackend
from hotspare.ops.monitor import Monitor
from hotspare.ops.status import BUCKET_S
from hotspare.ops.status_page import render_page
from hotspare.router.router import Router

CHART_MINUTES = 5


async def metrics(request: Request) -> Response:
    """The router's circuit metrics and the ops metrics, in one text exposition."""
    failover: Router | None = request.app.state.router
    monitor: Monitor = request.app.state.monitor
    body = (failover.metrics.render() if failover is not None else b"") + monitor.metrics.render()
    return Response(body, media_type=CONTENT_TYPE_LATEST)


async def root(request: Request) -> Response:
    """`GET /` and `HEAD /`: so that a browser pointed at hotspare sees its status page and a
    load balancer's or a person's first request gets a 200 that says where to look."""
    if "text/html" in request.headers.get("accept", ""):
        return await status(request)
    return JSONResponse(
        {
            "service": "hotspare",
            "status": "/status",
            "health": "/health",
            "ready": "/ready",
            "metrics": "/metrics",
            "apis": ["/v1/chat/completions", "/v1/messages", "/v1/responses", "/v1/models"],
        }
    )


async def status_json(request: Request) -> Response:
    return JSONResponse(status_document(request.app.state), headers={"cache-control": "no-store"})


async def status(request: Request) -> Response:
    document = status_document(request.app.state)
    if "text/html" in request.headers.get("accept", ""):
        return HTMLResponse(render_page(document), headers={"cache-control": "no-store"})
    return JSONResponse(document, headers={"cache-control": "no-store"})


def status_document(state: Any) -> dict[str, Any]:
    """What serves now, each upstream's circuit and recent health, the local engine, the timeline."""
    monitor: Monitor = state.monitor
    failover: Router | None = state.router
    circuits = failover.snapshot() if failover is not None else {}
    upstreams: dict[str, Any] = {}
    for name in monitor.upstream_names:
        upstreams[name] = {
            **circuits.get(name, {"state": "closed"}),
            "health": str(monitor.warning.health(name)),
            **monitor.board.upstream_summary(name, CHART_MINUTES),
        }
    return {
        "generated_at": time.time(),
        "mode": str(monitor.mode),
        "serving_now": _serving_now(monitor, upstreams),
        "bucket_s": BUCKET_S,
        "minutes": CHART_MINUTES,
        "local": _local(state, monitor),
        "upstreams": upstreams,
        "requests": monitor.board.served_summary(CHART_MINUTES),
        "timeline": monitor.board.timeline(),
    }


def _serving_now(monitor: Monitor, upstreams: dict[str, Any]) -> str:
    """The first backend of the chain that takes requests now: an upstream with a circuit that is not
    open (degraded ones still take most), else the local model."""
    for name, info in upstreams.items():
        if info["state"] != "open":
            return name
    return "local" if monitor.engine.state.value == "ready" else "none"


def _attention(backend: LocalBackend | None) -> dict[str, Any] | None:
    attention = backend.attention if backend is not None else None
    return attention.as_status() if attention is not None else None


def _local(state: Any, monitor: Monitor) -> dict[str, Any]:
    s = monitor.engine
    local = state.backend if isinstance(state.backend, LocalBackend) else None
    return {
        "model": state.settings.local.model,
        # How the loaded weights differ from the catalogue's file ("" = they are that file).
        "weights": local.weights_note if local is not None else "",
        # Flash attention on or off, why, and the timings it was chosen by (engine/attention.py).
        "attention": _attention(local),
        "ready": state.backend is not None and (local is None or local.is_ready),
        "state": str(s.state),
        "queue_depth": s.queue_depth,
        "running": s.running,
        "tokens_per_s": round(s.tokens_per_s, 2),
        "kv_used_tokens": s.kv_used_tokens,
        "kv_capacity_tokens": s.kv_capacity_tokens,
        "kv_used_ratio": round(s.kv_used_ratio, 4),
        "prefix_hit_ratio": round(s.prefix_hit_ratio, 4),
        "restarts": s.num_restarts,
        # Why the engine is failed (it died repeatedly; engine/supervision.py), else null.
        "failure": local.failure if local is not None else None,
        "poison_requests": local.num_poison_requests if local is not None else 0,
    }
