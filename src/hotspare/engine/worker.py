"""The engine process: one model, one scheduling loop, commands in and events out over a Pipe.

The loop is: take the commands that arrived, run one `EngineCore.step()` (engine/core.py: schedule,
the KV operations, one decode, post-processing), send the step's events as one message. It blocks on
the pipe only when there is no work. `load` makes the core on llama.cpp (backends/llama_cpp.py):
this is the module that brings llama_cpp into the engine process, and only there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.connection import Connection

from hotspare.core.logs import LOG_FORMAT
from hotspare.engine.backends.llama_cpp import LlamaCppModel
from hotspare.engine.calibrate import choose_attention
from hotspare.engine.config import EngineConfig
from hotspare.engine.core import EngineCore, num_slots
from hotspare.engine.inbox import Inbox
from hotspare.engine.protocol import (
    Cancel,
    Delta,
    EngineCommand,
    EngineEvent,
    GetStats,
    LoadFailed,
    Ready,
    Reply,
    Shutdown,
    Submit,
    Tokenize,
)
from hotspare.engine.selftest import WARM_UP, exercise
from hotspare.engine.weights import prepare_weights

log = logging.getLogger(__name__)


def _handle(core: EngineCore, cmd: EngineCommand, events: list[EngineEvent]) -> bool:
    """Apply one command; False means shut down."""
    if isinstance(cmd, Submit):
        events.extend(core.submit(cmd))
    elif isinstance(cmd, Cancel):
        core.cancel(cmd.request_id)
    elif isinstance(cmd, Tokenize):
        tokens = core.tokenize_prompt(cmd.prompt)
        events.append(Reply(cmd.request_id, tokens if cmd.ids else len(tokens)))
    elif isinstance(cmd, GetStats):
        events.append(Reply(cmd.request_id, core.stats()))
    elif isinstance(cmd, Shutdown):
        core.persist()
        return False
    return True


def load(config: EngineConfig) -> tuple[EngineCore, Ready]:
    started = time.monotonic()
    probe_ctx = config.context_tokens or 0
    kv = config.kv_cache_tokens
    weights = prepare_weights(
        config.model_path,
        quantization=config.quantization,
        source_sha256=config.model_sha256,
        cache_dir=config.weights_dir,
        num_threads=config.num_threads,
    )
    attention = choose_attention(config, weights.path)
    model = LlamaCppModel(
        weights.path,
        kv_cache_tokens=kv or max(2 * (probe_ctx or 8192), 4096),
        max_slots=num_slots(config),
        batch_tokens=config.step_tokens,
        num_threads=config.num_threads,
        flash_attention=attention.flash_attention,
    )
    if model.repacked_mib:
        log.info("%.0f MiB of weights repacked for this CPU's matrix kernels", model.repacked_mib)
    context = min(config.context_tokens or model.info.context_train_tokens, model.info.kv_capacity_tokens)
    # From here on the loaded file is the model: saved prefixes are filed under its name (KV computed
    # with the re-encoded weights is not the source's).
    core = EngineCore(model, dataclasses.replace(config, model_path=weights.path), context)
    _warm_up(model)
    restored = core.restore()
    return core, Ready(model.info, context, time.monotonic() - started, restored, weights.note, attention)


def _warm_up(model: LlamaCppModel) -> None:
    """The engine's real kernels once before it says ready: a prefill of more than 64 tokens in one
    batch and a batched decode step (engine/selftest.py). A build that cannot run them on this CPU
    dies here, while the engine is still starting, not on the first real prompt. It also spares the
    first request llama.cpp's lazy allocations."""
    exercise(model, WARM_UP)


PERSIST_IDLE_S = 2.0
"""Quiet time after the last request before the prefix cache is saved to disk."""

FLUSH_INTERVAL_S = 0.02
"""Deltas are sent at most this often. Each message wakes the API process, and on a machine with as
many engine threads as cores every wake-up stalls llama.cpp's spinning thread pool: coalescing 1-token
steps into ~20 ms messages is invisible to a reader and keeps single-stream decoding at full speed."""


ALIVE_INTERVAL_S = 5.0
"""With work but nothing to say (a long prefill produces no events), the engine still sends an empty
message this often: the API side kills an engine that stays silent with work in flight."""


def _should_flush(events: list[EngineEvent], core: EngineCore, last_flush: float) -> bool:
    if (
        core.has_urgent_events
        or not core.scheduler.has_work
        or time.monotonic() - last_flush >= FLUSH_INTERVAL_S
    ):
        core.has_urgent_events = False
        return True
    # Anything but a text delta is waited on by someone (an answer's end, an error, a reply).
    return any(not isinstance(e, Delta) for e in events)


def coalesce(events: list[EngineEvent]) -> list[EngineEvent]:
    """The events of one message, each request's text deltas since its last other event joined into
    one. Every delta becomes a chunk the API process renders and writes, and the client reads: with
    two 1-token steps per message (decoding after a 2k prompt takes ~16 ms a step) the API process and
    the client did twice the work for the same text. Order within a request is kept; between
    requests it does not matter (each has its own queue in the API process)."""
    out: list[EngineEvent] = []
    growing: dict[int, tuple[int, Delta]] = {}  # request id -> its delta in `out` that may still grow
    for event in events:
        if not isinstance(event, Delta):
            growing.pop(event.request_id, None)
        elif (last := growing.get(event.request_id)) is not None:
            at, delta = last
            out[at] = merged = Delta(event.request_id, delta.text + event.text)
            growing[event.request_id] = (at, merged)
            continue
        else:
            growing[event.request_id] = (len(out), event)
        out.append(event)
    return out


def worker_main(conn: Connection, config: EngineConfig, log_level: int = logging.WARNING) -> None:
    """Entry point of the engine process (spawned: it logs to stderr at the API process's level)."""
    logging.basicConfig(level=log_level, format=LOG_FORMAT)
    # Ctrl-C in a terminal and `kill -- -PGID` signal the whole process group. The API process shuts
    # the engine down in order (Shutdown: the prefix cache is saved); dying first would lose that and
    # look like a crash. The engine still exits with its parent (_exit_with_parent) and to SIGKILL.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, name="hotspare-engine-parent-watch", daemon=True).start()
    try:
        core, ready = load(config)
    except Exception as exc:  # any load failure is reported, not raised into the void
        conn.send(LoadFailed(f"{type(exc).__name__}: {exc}"))
        return
    conn.send(ready)
    inbox = Inbox(conn)  # commands are received while a step decodes (engine/inbox.py)
    events: list[EngineEvent] = []
    running = True
    last_flush = 0.0
    last_busy = 0.0  # when the engine last had a request to run
    while running:
        idle = not core.scheduler.has_work and not events
        if idle and not core.scheduler.has_cache_work:
            # Idle: save the prefix cache once it has been quiet for a moment, then sleep.
            if core.is_cache_dirty and config.persist_dir is not None and not inbox.poll(PERSIST_IDLE_S):
                core.persist()
                continue
            inbox.poll(None)
        elif idle:  # cache work waits for a quiet moment (or a command, which comes first)
            inbox.poll(max(0.0, config.cache_work_quiet_s - (time.monotonic() - last_busy)))
        while running and inbox.poll(0):
            try:
                running = _handle(core, inbox.recv(), events)
            except EOFError:
                running = False
        if core.scheduler.has_work:
            last_busy = time.monotonic()
            events.extend(core.step())
        elif core.scheduler.has_cache_work and time.monotonic() - last_busy >= config.cache_work_quiet_s:
            events.extend(core.step())  # one demotion or a repack; commands are checked between
        is_alive_due = core.scheduler.has_work and time.monotonic() - last_flush >= ALIVE_INTERVAL_S
        if (events and _should_flush(events, core, last_flush)) or is_alive_due:
            with contextlib.suppress(BrokenPipeError, OSError):
                conn.send(coalesce(events))  # possibly empty: a sign of life
            events = []
            last_flush = time.monotonic()


def _exit_with_parent() -> None:
    """Exit as soon as the API process is gone, however it went (SIGKILL, out of memory). The closed
    pipe tells the loop only when it reads it: not while the model loads, nor while a native call hangs."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        parent.join()
        os._exit(1)
