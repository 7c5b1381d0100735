"""`create_app(settings)`: the ASGI app hotspare serves, and the lifespan that warms the local model.

The app listens before the model is ready: `/health` answers at once, `/ready` says 503 until the
model is loaded and has decoded a warm-up token, and chat requests until then get 503 in their API's
shape. `app.state` holds what the routes serve from (see api/routes.py):

    settings      Settings
    backend       the ChatBackend that answers chats; None until the local engine exists
    router        the failover Router in front of it when upstreams are configured (mode auto or
                  upstream-only), else None; it gets the local engine as its last backend when ready
    started_at    unix time the app was created
    load_error    why the local model could not be started, or None
    on_fatal      called (if set) when the local model cannot be started; `hotspare serve` sets it
                  to shut the server down
    monitor       the operations hub (ops/monitor.py): metrics, status board, early warning, alerts
    unknown_fields  reports request fields the local path ignores (api/unknown_fields.py)

Around every route: the request log (ops/requestlog.py, outermost), then access control (ops/access.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response

from hotspare import __version__
from hotspare.api.errors import install_error_handlers
from hotspare.api.responses.routes import close_store
from hotspare.api.responses.routes import router as responses_router
from hotspare.api.routes import router
from hotspare.api.unknown_fields import UnknownFieldLog
from hotspare.config import Settings
from hotspare.core.environment import mark_secret
from hotspare.core.errors import HotspareError
from hotspare.core.types import ChatBackend
from hotspare.engine.attention import CALIBRATION_DIR_NAME
from hotspare.engine.config import EngineConfig
from hotspare.engine.local import LocalEngine
from hotspare.engine.protocol import LocalBackend
from hotspare.engine.vllm import vllm_backend
from hotspare.engine.weights import WEIGHTS_DIR_NAME
from hotspare.home import hotspare_home
from hotspare.models.catalog import ModelEntry, load_catalog, resolve_weights
from hotspare.models.hardware import serving_choice
from hotspare.models.locate import expected_weights
from hotspare.ops import routes as ops_routes
from hotspare.ops.access import AccessGuard, startup_keys
from hotspare.ops.engine_stats import EngineState
from hotspare.ops.monitor import Monitor
from hotspare.ops.requestlog import RequestLog
from hotspare.router.config import Mode
from hotspare.router.router import Router

logger = logging.getLogger("hotspare")


def create_app(settings: Settings, backend: ChatBackend | None = None) -> FastAPI:
    """The app serving `settings`. With `backend` given, it answers chats and nothing is loaded (tests,
    or a caller that manages its own backend); without, the lifespan starts the local engine.
    Raises ConfigError if it would listen beyond loopback without client keys."""
    keys = startup_keys(settings.access, settings.server.host, settings.forwarding_upstreams())
    for upstream in settings.upstreams:  # children never inherit these (core/environment.py)
        if upstream.api_key.startswith("env:"):
            mark_secret(upstream.api_key.removeprefix("env:"))
    app = FastAPI(
        title="hotspare",
        version=__version__,
        lifespan=_lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    app.state.serving = settings.serving()  # what api/ reads (api/config.py)
    app.state.backend = backend
    app.state.started_at = time.time()
    app.state.load_error = None
    app.state.on_fatal = None
    app.state.router = None
    app.state.monitor = monitor = Monitor(settings.router_config(), settings.early_warning, settings.alerts)
    app.state.unknown_fields = UnknownFieldLog(monitor.on_unknown_field)
    app.state.response_store = None  # the Responses API's conversation store, opened on first use
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(responses_router)
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/ready", ready, methods=["GET"])
    app.add_api_route("/", ops_routes.root, methods=["GET", "HEAD"])
    app.add_api_route("/status", ops_routes.status, methods=["GET"])
    app.add_api_route("/status.json", ops_routes.status_json, methods=["GET"])
    app.add_api_route("/metrics", ops_routes.metrics, methods=["GET"])
    app.add_middleware(
        AccessGuard,
        settings=settings.access,
        keys=keys,
        denied=monitor.on_denied,
        server_host=settings.server.host,
    )
    log = settings.log
    app.add_middleware(
        RequestLog,
        on_record=monitor.on_request,
        log_requests=log.requests,
        include_prompts=log.include_prompts,
    )
    return app


async def health(request: Request) -> Response:
    """The process is alive and serving HTTP."""
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    """200 once the backend can answer (for the local engine: loaded and warm), else 503 saying why:
    loading (not loaded yet), restarting (loaded once, its process is being replaced) or failed. A
    local engine that failed (it died repeatedly) leaves /ready at 200 when upstreams are configured:
    passthrough still serves."""
    state = request.app.state
    backend = state.backend
    if state.router is not None and state.router.mode is Mode.UPSTREAM_ONLY:
        return JSONResponse({"status": "ready", "model": None})
    local = backend if isinstance(backend, LocalBackend) else None
    if backend is not None and (local is None or local.is_ready):
        return JSONResponse({"status": "ready", "model": state.settings.local.model})
    failure = local.failure if local is not None else None
    if failure is not None and state.router is not None:
        # The gateway still works (passthrough serves): load balancers keep it; /status says why not local.
        return JSONResponse({"status": "ready", "model": None, "local": "failed", "error": failure})
    if failure is not None:
        return JSONResponse({"status": "failed", "error": failure}, status_code=503)
    if state.load_error is not None:
        return JSONResponse({"status": "failed", "error": state.load_error}, status_code=503)
    # The backend is installed once it has started (_start_local), so one that is not ready restarts.
    status = EngineState.LOADING if backend is None else EngineState.RESTARTING
    return JSONResponse({"status": str(status)}, status_code=503)


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with _monitoring(app), _failover(app), _response_store(app):
        if app.state.backend is not None or _mode(app) is Mode.UPSTREAM_ONLY:
            yield
            return
        engine_box: list[LocalBackend] = []
        loading = asyncio.create_task(_start_local(app, engine_box), name="hotspare-load-model")
        try:
            yield
        finally:
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loading
            for engine in engine_box:
                await engine.stop()
            logger.info("hotspare stopped")


@contextlib.asynccontextmanager
async def _response_store(app: FastAPI) -> AsyncIterator[None]:
    try:
        yield
    finally:
        close_store(app)


@contextlib.asynccontextmanager
async def _monitoring(app: FastAPI) -> AsyncIterator[None]:
    """The ops monitor's engine poller and alert sender, for the life of the app."""
    monitor: Monitor = app.state.monitor
    await monitor.start(app.state)
    try:
        yield
    finally:
        await monitor.aclose()


def _mode(app: FastAPI) -> Mode:
    settings: Settings = app.state.settings
    return settings.router_config().effective_mode


@contextlib.asynccontextmanager
async def _failover(app: FastAPI) -> AsyncIterator[None]:
    """The Router in front of the local backend while the app runs, when upstreams are configured.
    It serves from the upstreams at once; the local engine joins as the last backend when ready."""
    if _mode(app) is Mode.LOCAL_ONLY:
        yield
        return
    settings: Settings = app.state.settings
    failover = Router.from_config(settings.router_config(), app.state.backend)
    failover.observers.append(app.state.monitor)
    failover.advisor = app.state.monitor.warning
    await failover.start()
    app.state.router = failover
    try:
        yield
    finally:
        app.state.router = None
        await failover.aclose()


async def _start_local(app: FastAPI, engine_box: list[LocalBackend]) -> None:
    """Resolve, load and warm the local model, then install it as the backend (or report why not)."""
    settings: Settings = app.state.settings
    began = time.monotonic()
    try:
        engine = await asyncio.to_thread(local_backend, settings)
        engine_box.append(engine)
        await engine.start()
    except HotspareError as exc:
        _fail(app, exc.message)
        return
    except Exception as exc:  # a bug or a native failure: report it, never hang in "loading"
        logger.exception("the local model could not be started")
        _fail(app, f"{type(exc).__name__}: {exc}")
        return
    app.state.backend = engine
    if app.state.router is not None:
        app.state.router.attach_local(engine)
    server = settings.server
    failure = engine.failure
    if failure is not None:
        logger.error(
            "hotspare listening on http://%s:%d without its local model: %s",
            server.host,
            server.port,
            failure,
        )
        return
    logger.info(
        "hotspare listening on http://%s:%d, model %s, ready in %.1f s",
        server.host,
        server.port,
        engine.model_name,
        time.monotonic() - began,
    )


def _fail(app: FastAPI, message: str) -> None:
    app.state.load_error = message
    logger.error("hotspare cannot serve: %s", message)
    on_fatal: Callable[[], Any] | None = app.state.on_fatal
    if on_fatal is not None:
        on_fatal()


def local_backend(settings: Settings) -> LocalBackend:
    """The backend for `settings.local.model`, not yet started: a supervised vLLM process for a
    catalogue entry with backend "vllm", else the llama.cpp engine. A model that would not fit this
    machine is refused before anything is loaded (unless [local] check_fit is off). Verifies the
    weights (this hashes them). Raises NotFound or ModelError."""
    local = settings.local
    entry = serving_choice(load_catalog(), local.model, check_fit=local.check_fit).entry
    if entry.backend == "vllm":
        return vllm_backend(entry, local.context_tokens)
    return LocalEngine(engine_config(settings, entry), context_policy=local.context_policy)


def engine_config(settings: Settings, entry: ModelEntry) -> EngineConfig:
    """The llama.cpp engine's config: `entry`, its weights verified (this hashes the file), and the
    local overrides. Raises ModelError."""
    path = resolve_weights(entry)
    local = settings.local
    return EngineConfig(
        model_path=path,
        model_name=entry.name,
        context_tokens=local.context_tokens or entry.context_tokens,
        kv_cache_tokens=local.kv_cache_tokens,
        max_running=local.max_running,
        max_queued=local.max_queued,
        step_tokens=local.step_tokens,
        num_threads=local.num_threads,
        adapt_threads=local.adapt_threads,
        host_cache_mib=local.host_cache_mib,
        max_idle_kv_tokens=local.max_idle_kv_tokens,
        persist_max_mib=local.persist_max_mib,
        chat_template=entry.chat_template,
        stop=entry.stop,
        persist_dir=hotspare_home() / "kvcache" if local.persist_prefixes else None,
        model_sha256=expected_weights(entry).sha256,
        quantization=entry.quantization,
        weights_dir=hotspare_home() / WEIGHTS_DIR_NAME if local.fast_weights else None,
        max_answer_tokens=local.max_answer_tokens,
        noise_stop_nats=local.noise_stop_nats,
        default_min_p=local.default_min_p,
        flash_attention=local.flash_attention,
        calibration_dir=hotspare_home() / CALIBRATION_DIR_NAME,
    )
