"""The engine core: the scheduler, the model and the per-request state between them, one step at a
time. `step()` is the loop's body: `schedule()`, the KV operations in order, one decode, one sample
per sequence that reached its end, `_postprocess` (text, stop checks, finish). Synchronous, no I/O
but the model's; owned by one thread (the engine process's loop, engine/worker.py).

Typed against `EngineModel` (engine/model.py): llama.cpp in the engine process, a fake in tests.
"""

from __future__ import annotations

import bisect
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

from hotspare.core.errors import Overloaded
from hotspare.core.types import FinishReason
from hotspare.engine import persist, repetition
from hotspare.engine.config import EngineConfig
from hotspare.engine.kv_ops import Copy, KvOp, Remove, Restore, Save
from hotspare.engine.model import DecodeItem, EngineModel, Sampler
from hotspare.engine.protocol import Delta, Done, EngineEvent, Failed, Submit
from hotspare.engine.scheduler import Scheduler, SchedulerConfig, SchedulerOutput
from hotspare.engine.sequence import Sequence
from hotspare.engine.text_output import TextOutput
from hotspare.engine.threads import GovernorConfig, ThreadGovernor, sample_cpu

log = logging.getLogger(__name__)

BATCH_SIZE_BOUNDS = (1, 2, 4, 8, 16, 32, 64)
"""Upper bounds of the batch-size buckets counted per decode step (a Prometheus histogram's `le`)."""


@dataclass(slots=True)
class _Live:
    seq: Sequence
    sampler: Sampler | None
    text: TextOutput = field(default_factory=TextOutput)
    noise: repetition.NoiseMeter | None = None  # None: not measured (off, or under a grammar)


class EngineCore:
    """Model + scheduler + the per-request state between them. Synchronous; owned by one thread."""

    def __init__(self, model: EngineModel, config: EngineConfig, context_tokens: int) -> None:
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
        self.num_prompts = 0  # Submits (answers, warm-ups), each tokenized once whatever its choices
        self.num_generated_tokens = 0
        self.num_repetition_stops = 0  # answers ended because they looped (engine/repetition.py)
        self.num_noise_stops = 0  # answers ended because they turned to noise (engine/repetition.py)
        # Steps by how many sequences they decoded: steps_by_batch_size[i] counts steps whose batch
        # size was at most BATCH_SIZE_BOUNDS[i] (and above the bound before it); the last is the rest.
        self.steps_by_batch_size = [0] * (len(BATCH_SIZE_BOUNDS) + 1)
        self.num_batched_sequences = 0
        self.has_urgent_events = False
        self.governor: ThreadGovernor | None = None
        self._last_step_s = 0.0  # when the last decode step ended (monotonic)
        if config.adapt_threads and model.max_threads > 1:
            cpus = psutil.cpu_count() or model.max_threads
            self.governor = ThreadGovernor(GovernorConfig(model.max_threads, cpus), sample_cpu())
        self.is_cache_dirty = False

    def submit(self, cmd: Submit) -> list[EngineEvent]:
        """Queue `cmd`'s sequences: one per request id (`Submit.request_ids`), all of one prompt,
        tokenized once; the siblings start from the first's cells (engine/scheduler.py)."""
        tokens = self.tokenize_prompt(cmd.prompt)
        self.num_prompts += 1
        if not cmd.warmup and len(tokens) >= self.context_tokens:
            error = (len(tokens), self.context_tokens)
            return [Failed(rid, "ContextOverflow", error) for rid in cmd.request_ids]
        if cmd.warmup:
            tokens = tokens[: self.context_tokens - 1]
        seqs = [self._sequence(cmd, rid, tokens) for rid in cmd.request_ids]
        try:
            self.scheduler.add(seqs[0], seqs[1:])
        except Overloaded as exc:
            return [Failed(rid, "Overloaded", (exc.message, exc.retry_after_s)) for rid in cmd.request_ids]
        if cmd.warmup:
            self.live[cmd.request_id] = _Live(seqs[0], None, TextOutput(stop=cmd.sampling.stop))
            return []
        try:
            for index, seq in enumerate(seqs):
                self.live[seq.request_id] = _Live(
                    seq, self._sampler(cmd, index), TextOutput(cmd.sampling.stop), self._noise_meter(cmd)
                )
        except ValueError as exc:
            for rid in cmd.request_ids:
                self.cancel(rid)
            return [Failed(rid, "InvalidRequest", (str(exc),)) for rid in cmd.request_ids]
        return []

    def _sequence(self, cmd: Submit, request_id: int, tokens: list[int]) -> Sequence:
        room = self.context_tokens - len(tokens)
        wanted = cmd.sampling.max_tokens
        return Sequence(
            request_id=request_id,
            tokens=list(tokens),
            num_prompt_tokens=len(tokens),
            max_new_tokens=0 if cmd.warmup else min(room, wanted if wanted is not None else room),
            sampling=cmd.sampling,
            is_warmup=cmd.warmup,
        )

    def _sampler(self, cmd: Submit, index: int) -> Sampler:
        """The sampler of choice `index` of `cmd`. A request's seed seeds choice 0; choice i gets seed
        + i, so that n choices with a seed are n different answers, and reproducible."""
        seed = cmd.sampling.seed if cmd.sampling.seed is not None else self.config.seed + cmd.request_id
        return self.model.new_sampler(cmd.sampling, seed + index)

    def _noise_meter(self, cmd: Submit) -> repetition.NoiseMeter | None:
        """A meter for an answer the model chooses freely: none when the noise stop is off or a
        grammar constrains the whole answer (a lazy grammar's meter ends at its trigger)."""
        sampling = cmd.sampling
        if self.config.noise_stop_nats <= 0 or (sampling.grammar and not sampling.grammar_triggers):
            return None
        return repetition.NoiseMeter(self.config.noise_stop_nats)

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
        now = time.monotonic()
        if governor is None or not governor.is_due(now):
            return
        was_idle = now - self._last_step_s > governor.config.window_s  # no step for a window
        threads = governor.observe(sample_cpu(), was_idle=was_idle)
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
        self._last_step_s = time.monotonic()
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
            if live.noise is not None and live.noise.wants(seq.num_output_tokens):
                live.noise.add(self.model.entropy(row))
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
                elif seq.num_output_tokens >= seq.max_new_tokens or self._is_degenerate(live):
                    reason = FinishReason.LENGTH  # a loop is cut, not finished: never end_turn
                    text += live.text.flush()
            if text:
                events.append(Delta(seq.request_id, text))
                # A request's first text is its time to first token: never hold it back.
                self.has_urgent_events |= len(live.text.text) == len(text)
            if reason is not None:
                events.append(self._finish(live, reason))
        return events

    def _is_degenerate(self, live: _Live) -> bool:
        """The answer has fallen into a loop or into noise (engine/repetition.py); counted."""
        seq = live.seq
        if not repetition.should_check(seq.num_output_tokens):
            return False
        if repetition.is_degenerate(seq.tokens[seq.num_prompt_tokens :]):
            self.num_repetition_stops += 1
            return True
        if self._is_noise(live):
            self.num_noise_stops += 1
            return True
        return False

    @staticmethod
    def _is_noise(live: _Live) -> bool:
        meter = live.noise
        if meter is None:
            return False
        if any(trigger in live.text.text for trigger in live.seq.sampling.grammar_triggers):
            live.noise = None  # a lazy grammar constrains from its trigger on: not the model's choice
            return False
        return meter.is_noise

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
            "num_waiting": len(s.waiting) + s.num_held,
            "num_prompts": self.num_prompts,
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
            "num_noise_stops": self.num_noise_stops,
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


def host_cache_bytes(config: EngineConfig) -> int:
    """The host cache budget: as configured, but never more than a fifth of the machine's RAM."""
    return min(config.host_cache_mib * 2**20, int(psutil.virtual_memory().total) // 5)


def num_slots(config: EngineConfig) -> int:
    """llama.cpp sequence ids: the running sequences plus idle ones kept as prefix cache (at most 256)."""
    return min(256, max(config.max_running * 4, config.max_running + 8))
