"""The engine process: one model, one scheduling loop, commands in and events out over a Pipe.

The loop is: take the commands that arrived, `schedule()`, run the model (the KV operations in order,
one decode, one sample per sequence that reached its end), `postprocess` (text, stop checks), send the
step's events as one message. It blocks on the pipe only when there is no work.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import dataclasses
import logging
import multiprocessing
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import psutil

from hotspare.core.errors import Overloaded
from hotspare.core.logs import LOG_FORMAT
from hotspare.core.types import FinishReason
from hotspare.engine import persist, repetition
from hotspare.engine.backends.llama_cpp import DecodeItem, LlamaCppModel
from hotspare.engine.calibrate import choose_attention
from hotspare.engine.config import EngineConfig
from hotspare.engine.inbox import Inbox
from hotspare.engine.kv_ops import Copy, KvOp, Remove, Restore, Save
from hotspare.engine.protocol import (
    Cancel,
    Delta,
    Done,
    EngineCommand,
    EngineEvent,
    Failed,
    GetStats,
    LoadFailed,
    Ready,
    Reply,
    Shutdown,
    Submit,
    Tokenize,
)
from hotspare.engine.scheduler import Scheduler, SchedulerConfig, SchedulerOutput
from hotspare.engine.selftest import WARM_UP, exercise
from hotspare.engine.sequence import Sequence
from hotspare.engine.text_output import TextOutput
from hotspare.engine.threads import GovernorConfig, ThreadGovernor, sample_cpu
from hotspare.engine.weights import prepare_weights

log = logging.getLogger(__name__)

BATCH_SIZE_BOUNDS = (1, 2, 4, 8, 16, 32, 64)
"""Upper bounds of the batch-size buckets counted per decode step (a Prometheus histogram's `le`)."""


@dataclass(slots=True)
class _Live:
    seq: Sequence
    sampler: ctypes.c_void_p | None
    text: TextOutput = field(default_factory=TextOutput)


class EngineCore:
    """Model + scheduler + the per-request state between them. Synchronous; owned by one thread."""

    def __init__(self, model: LlamaCppModel, config: EngineConfig, context_tokens: int) -> None:
        self.model = model
        self.config = config
        self.context_tokens = context_tokens
        max_slots = num_slots(config)
        self.scheduler = Scheduler(
            SchedulerConfig(
                capacity_tokens=model.info.kv_capacity_tokens,
                max_slots=max_slots,
                max_running=config.max_running,
                max_queued=config.max_queued,
                step_tokens=model.batch_tokens,
                host_cache_bytes=host_cache_bytes(config),
                max_idle_tokens=config.max_idle_kv_tokens,
            )
        )
        self.live: dict[int, _Live] = {}
        self.num_steps = 0
        self.num_generated_tokens = 0
        self.num_repetition_stops = 0  # answers ended because they looped (engine/repetition.py)
        # Steps by how many sequences they decoded: steps_by_batch_size[i] counts steps whose batch
        # size was at most BATCH_SIZE_BOUNDS[i] (and above the bound before it); the last is the rest.
        self.steps_by_batch_size = [0] * (len(BATCH_SIZE_BOUNDS) + 1)
        self.num_batched_sequences = 0
        self.has_urgent_events = False
        self.governor: ThreadGovernor | None = None
        if config.adapt_threads and model.max_threads > 1:
            cpus = psutil.cpu_count() or model.max_threads
            self.governor = ThreadGovernor(GovernorConfig(model.max_threads, cpus), sample_cpu())
        self.is_cache_dirty = False

    def submit(self, cmd: Submit) -> list[EngineEvent]:
        tokens = self.tokenize_prompt(cmd.prompt)
        if not cmd.warmup and len(tokens) >= self.context_tokens:
            return [Failed(cmd.request_id, "ContextOverflow", (len(tokens), self.context_tokens))]
        if cmd.warmup:
            tokens = tokens[: self.context_tokens - 1]
        room = self.context_tokens - len(tokens)
        wanted = cmd.sampling.max_tokens
        seq = Sequence(
            request_id=cmd.request_id,
            tokens=tokens,
            num_prompt_tokens=len(tokens),
            max_new_tokens=0 if cmd.warmup else min(room, wanted if wanted is not None else room),
            sampling=cmd.sampling,
            is_warmup=cmd.warmup,
        )
        try:
            self.scheduler.add(seq)
        except Overloaded as exc:
            return [Failed(cmd.request_id, "Overloaded", (exc.message, exc.retry_after_s))]
        sampler = None
        if not cmd.warmup:
            seed = cmd.sampling.seed if cmd.sampling.seed is not None else self.config.seed + cmd.request_id
            try:
                sampler = self.model.new_sampler(cmd.sampling, seed)
            except ValueError as exc:
                self.scheduler.cancel(cmd.request_id)
                return [Failed(cmd.request_id, "InvalidRequest", (str(exc),))]
        self.live[cmd.request_id] = _Live(seq, sampler, TextOutput(stop=cmd.sampling.stop))
        return []

    def tokenize_prompt(self, prompt: str) -> list[int]:
        """Tokens of a rendered prompt; BOS is added only if the model wants one and the template did
        not already write it."""
        bos = self.model.info.bos_token
        add_bos = self.model.add_bos and not (bos and prompt.startswith(bos))
        return self.model.tokenize(prompt, add_bos=add_bos)

    def cancel(self, request_id: int) -> None:
        self.scheduler.cancel(request_id)
        self._forget(request_id)

    def adapt_threads(self) -> None:
        """Follow the machine's load with the thread count (cheap: samples twice a second)."""
        governor = self.governor
        if governor is None or not governor.is_due(time.monotonic()):
            return
        threads = governor.observe(sample_cpu())
        if threads is not None:
            self.model.set_threads(threads)
            log.info(
                "llama.cpp threads now %d (other processes use %.1f cores)", threads, governor.others_cores
            )

    def step(self) -> list[EngineEvent]:
        self.adapt_threads()
        out = self.scheduler.schedule()
        for seq in out.finished:
            self._forget(seq.request_id)
        self._apply_kv_ops(out)
        if not out.items:
            return []
        try:
            rows = self.model.decode(
                [
                    DecodeItem(i.seq.slot, i.start, i.seq.tokens[i.start : i.start + i.count], i.wants_logits)
                    for i in out.items
                ]
            )
        except MemoryError:
            self.scheduler.on_decode_failed(out)
            return []
        self.num_steps += 1
        self._count_batch(len(out.items))
        to_sample = self.scheduler.update_from_output(out)
        return self._postprocess(to_sample, rows)

    def _apply_kv_ops(self, out: SchedulerOutput) -> None:
        model, host = self.model, self.scheduler.host
        for i, op in enumerate(out.kv_ops):
            if isinstance(op, Copy):
                model.copy_prefix(op.src, op.dst, op.num_tokens)
            elif isinstance(op, Remove):
                model.remove(op.slot)
            elif isinstance(op, Save):
                assert host is not None
                state, num_bytes = model.save_state(op.slot)
                host.fill(op.entry_id, state, num_bytes)
            elif not self._restore(op):
                # The scheduler made room for the state, so this is not expected. Recover when
                # nothing else in this step builds on the slot; otherwise the mirror is wrong: stop
                # (the engine process is restarted, requests in flight get a clean error).
                if any(_builds_on(o, op.slot) for o in out.kv_ops[i + 1 :]):
                    raise RuntimeError("a prefix restored from host RAM was copied before it failed")
                log.warning("could not restore a prefix from host RAM; computing it instead")
                self.scheduler.on_restore_failed(out, op)

    def _restore(self, op: Restore) -> bool:
        host = self.scheduler.host
        entry = host.entries.get(op.entry_id) if host is not None else None
        if entry is None or host is None:
            return False
        host.unpin(op.entry_id)
        if not self.model.restore_state(op.slot, entry.state, entry.num_bytes):
            return False
        self.model.trim(op.slot, op.num_tokens, -1)
        if op.num_shared:
            self.model.trim(op.slot, 0, op.num_shared)
            self.model.copy_prefix(op.shared_src, op.slot, op.num_shared)
        return True

    def _count_batch(self, size: int) -> None:
        self.num_batched_sequences += size
        self.steps_by_batch_size[bisect.bisect_left(BATCH_SIZE_BOUNDS, size)] += 1

    def _postprocess(self, seqs: list[Sequence], rows: list[int]) -> list[EngineEvent]:
        events: list[EngineEvent] = []
        for seq, row in zip(seqs, rows, strict=True):
            live = self.live[seq.request_id]
            assert live.sampler is not None
            token = self.model.sample(live.sampler, row)
            seq.tokens.append(token)
            self.num_generated_tokens += 1
            reason = None
            if self.model.is_end_of_generation(token):
                reason = FinishReason.END_TURN
                text = live.text.flush()
            else:
                text = live.text.push(self.model.piece(token))
                if live.text.matched_stop is not None:
                    reason = FinishReason.STOP_SEQUENCE
                elif seq.num_output_tokens >= seq.max_new_tokens or self._is_looping(seq):
                    reason = FinishReason.LENGTH  # a loop is cut, not finished: never end_turn
                    text += live.text.flush()
            if text:
                events.append(Delta(seq.request_id, text))
                # A request's first text is its time to first token: never hold it back.
                self.has_urgent_events |= len(live.text.text) == len(text)
            if reason is not None:
                events.append(self._finish(live, reason))
        return events

    def _is_looping(self, seq: Sequence) -> bool:
        """The answer has fallen into a loop (engine/repetition.py); counted."""
        if not repetition.should_check(seq.num_output_tokens):
            return False
        if not repetition.is_degenerate(seq.tokens[seq.num_prompt_tokens :]):
            return False
        self.num_repetition_stops += 1
        return True

    def _finish(self, live: _Live, reason: FinishReason) -> Done:
        seq = live.seq
        self.scheduler.finish(seq, reason)
        self.is_cache_dirty = True
        self._forget(seq.request_id)
        return Done(
            seq.request_id,
            reason,
            seq.num_prompt_tokens,
            seq.num_output_tokens,
            seq.num_cached_tokens,
            live.text.matched_stop,
        )

    def _forget(self, request_id: int) -> None:
        live = self.live.pop(request_id, None)
        if live is not None and live.sampler is not None:
            self.model.free_sampler(live.sampler)

    def persist(self) -> None:
        """Save the hottest prefixes if persistence is on (called when idle and at shutdown)."""
        if self.config.persist_dir is not None and self.is_cache_dirty:
            directory = persist.cache_dir(self.config.persist_dir, self.config.model_path)
            max_bytes = self.config.persist_max_mib * 2**20
            persist.save(self.model, self.scheduler, directory, self.config.persist_slots, max_bytes)
        self.is_cache_dirty = False

    def restore(self) -> int:
        if self.config.persist_dir is None:
            return 0
        directory = persist.cache_dir(self.config.persist_dir, self.config.model_path)
        return persist.restore(self.model, self.scheduler, directory, self.context_tokens)

    def forget_cache(self) -> None:
        """Drop every cached prefix, from the KV cache and from host RAM, while nothing runs: the next
        request computes from scratch. For tests and measurements that need a cold start."""
        while self.scheduler.kv.evict_one():
            pass
        self.step()  # applies the evictions planned above
        host = self.scheduler.host
        if host is not None:
            for entry_id in list(host.entries):
                host.drop(entry_id)

    def stats(self) -> dict[str, Any]:
        s = self.scheduler
        return {
            "num_running": len(s.running),
            "num_waiting": len(s.waiting),
            "num_warmups_waiting": len(s.warmups),
            "kv_used_tokens": s.cache.num_used_tokens,
            "kv_capacity_tokens": s.config.capacity_tokens,
            "num_idle_slots": len(s.cache.idle_slots),
            "kv_idle_tokens": s.cache.num_idle_tokens,
            "kv_demotions": s.stats.num_demotions,
            "kv_demoted_tokens": s.stats.num_demoted_tokens,
            "kv_repacks": s.stats.num_repacks,
            "prefix_prompt_tokens": s.stats.num_prompt_tokens,
            "prefix_cached_tokens": s.stats.num_cached_tokens,
            "num_preemptions": s.stats.num_preemptions,
            "num_steps": self.num_steps,
            "num_generated_tokens": self.num_generated_tokens,
            "num_repetition_stops": self.num_repetition_stops,
            "batch_size_bounds": list(BATCH_SIZE_BOUNDS),
            "steps_by_batch_size": list(self.steps_by_batch_size),
            "num_batched_sequences": self.num_batched_sequences,
            "num_threads": self.governor.threads if self.governor else self.model.max_threads,
            "max_threads": self.model.max_threads,
            "num_thread_changes": self.governor.num_changes if self.governor else 0,
            "flash_attention": self.model.flash_attention,
            **self._host_stats(),
            "others_cpu_cores": round(self.governor.others_cores, 2) if self.governor else None,
        }

    def _host_stats(self) -> dict[str, int]:
        host = self.scheduler.host
        if host is None:
            return {}
        return {
            "host_cache_entries": sum(1 for e in host.entries.values() if e.state is not None),
            "host_cache_bytes": host.num_bytes,
            "host_cache_budget_bytes": host.budget_bytes,
            "host_saves": host.stats.num_saved,
            "host_restores": host.stats.num_restored,
            "host_restored_tokens": host.stats.num_restored_tokens,
        }


def _builds_on(op: KvOp, slot: int) -> bool:
    """`op` shares cells of `slot`."""
    return (isinstance(op, Copy) and op.src == slot) or (
        isinstance(op, Restore) and op.num_shared > 0 and op.shared_src == slot
    )


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


def host_cache_bytes(config: EngineConfig) -> int:
    """The host cache budget: as configured, but never more than a fifth of the machine's RAM."""
    return min(config.host_cache_mib * 2**20, int(psutil.virtual_memory().total) // 5)


def num_slots(config: EngineConfig) -> int:
    """llama.cpp sequence ids: the running sequences plus idle ones kept as prefix cache (at most 256)."""
    return min(256, max(config.max_running * 4, config.max_running + 8))


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
                conn.send(events)  # possibly empty: a sign of life
            events = []
            last_flush = time.monotonic()


def _exit_with_parent() -> None:
    """Exit as soon as the API process is gone, however it went (SIGKILL, out of memory). The closed
    pipe tells the loop only when it reads it: not while the model loads, nor while a native call hangs."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        parent.join()
        os._exit(1)
