"""The `hotspare` command: `serve`, plus the model commands (`models`, `bundle`, `doctor`)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import uvicorn

from hotspare import __version__
from hotspare import cli_models as model_commands
from hotspare.app import create_app
from hotspare.config import DEFAULT_HOST, DEFAULT_PORT, Settings, load_settings
from hotspare.core.errors import HotspareError, ModelError
from hotspare.core.logs import LOG_FORMAT
from hotspare.models.catalog import DEFAULT_MODEL, load_catalog
from hotspare.models.hardware import Choice, serving_choice
from hotspare.ops.access import startup_keys
from hotspare.ops.requestlog import configure_log as configure_request_log
from hotspare.router.config import Mode

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C

Command = Callable[[argparse.Namespace], int]

SERVE_HELP = f"""\
Load a model, warm it up, and serve the OpenAI and Anthropic chat APIs:

  POST /v1/chat/completions          OpenAI Chat Completions (streaming and not)
  POST /v1/messages                  Anthropic Messages (streaming and not)
  POST /v1/messages/count_tokens     Anthropic token counting
  GET  /v1/models                    the model names served
  GET  /health                       200 while the process is alive
  GET  /ready                        200 once the model is loaded and warm, 503 before

The server listens at once; /ready turns 200 when the model is warm, and one log line then says
where it listens, which model it serves and how long loading took. Flags override the config file.
Default: http://{DEFAULT_HOST}:{DEFAULT_PORT}, and the most capable installed model that fits this
machine with headroom (`hotspare doctor` says which and why; after a plain install that is
{DEFAULT_MODEL}, embedded, no download). A model named with --model or [local] model that would
not fit is refused before anything is loaded ([local] check_fit = false loads it anyway).
A catalogue model with backend "vllm" runs in a supervised vLLM process on the GPU (README: GPU).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hotspare",
        description="A warm local LLM behind the OpenAI and Anthropic APIs.",
    )
    parser.add_argument("--version", action="version", version=f"hotspare {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve the OpenAI and Anthropic APIs from a warm local model",
        description=SERVE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "--host", help=f"address to listen on (default: {DEFAULT_HOST}, this machine only; [server] host)"
    )
    serve.add_argument(
        "--port", type=_port, help=f"TCP port to listen on (default: {DEFAULT_PORT}; [server] port)"
    )
    serve.add_argument(
        "--model",
        help="catalogue name of the local model (default: the best installed model that fits; "
        "[local] model); `hotspare models list` shows the names",
    )
    serve.add_argument(
        "--config", type=Path, metavar="FILE", help="TOML settings file (see README: Configuration)"
    )
    serve.set_defaults(run=serve_command)
    model_commands.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Command = args.run
    return run(args)


def serve_command(args: argparse.Namespace) -> int:
    """`hotspare serve`: returns when the server stops (Ctrl-C), or when the model cannot be loaded."""
    try:
        settings = _settings(args)
        # Before binding: an unknown name, or a model that would not fit, is refused now.
        settings, choice = _with_model(settings)
        # beyond loopback without client keys: refused before binding
        startup_keys(settings.access, settings.server.host, settings.forwarding_upstreams())
    except ModelError as exc:
        print(f"hotspare: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    except HotspareError as exc:
        print(f"hotspare: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per upstream request is noise
    configure_request_log()  # one bare JSON line per request
    if choice is not None:
        logging.getLogger("hotspare").info("model %s: %s", choice.entry.name, choice.reason)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    logging.getLogger("uvicorn.error").addFilter(_quiet_forced_exit)
    app.state.on_fatal = lambda: setattr(server, "should_exit", True)
    try:
        # After a graceful shutdown uvicorn re-raises the signal that stopped it, so SIGTERM ends the
        # process as SIGTERM does (what service managers expect) and Ctrl-C arrives here.
        server.run()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if app.state.load_error is not None else EXIT_OK


def _quiet_forced_exit(record: logging.LogRecord) -> bool:
    """Drop the report of a cancelled lifespan. A second Ctrl-C makes uvicorn skip the lifespan's
    shutdown; asyncio then cancels the lifespan task, whose cleanup still runs (the engine is stopped,
    "hotspare stopped" is logged), and Starlette passed the cancellation's traceback to uvicorn, which
    logged it as an ERROR. Every other record passes."""
    text = record.getMessage()
    return not (text.startswith("Traceback") and text.rstrip().endswith("CancelledError"))


def _settings(args: argparse.Namespace) -> Settings:
    """The config file's settings with the command-line flags on top."""
    settings = load_settings(args.config)
    server = settings.server.model_copy(
        update={key: value for key, value in (("host", args.host), ("port", args.port)) if value is not None}
    )
    local = settings.local if args.model is None else settings.local.model_copy(update={"model": args.model})
    return settings.model_copy(update={"server": server, "local": local})


def _with_model(settings: Settings) -> tuple[Settings, Choice | None]:
    """`settings` serving the model `serve` runs: the one named by `--model` or `[local] model`, else
    the best installed model that fits (models/hardware.py). None when no local model runs."""
    if settings.router_config().effective_mode is Mode.UPSTREAM_ONLY:
        return settings, None
    local = settings.local
    requested = local.model if "model" in local.model_fields_set else None
    choice = serving_choice(load_catalog(), requested, check_fit=local.check_fit)
    local = local.model_copy(update={"model": choice.entry.name})
    return settings.model_copy(update={"local": local}), choice


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is a number from 1 to 65535, not {text!r}")
    return port
