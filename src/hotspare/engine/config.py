"""Settings of the local engine, fixed for the life of one engine process."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hotspare.engine.attention import FlashAttention
from hotspare.engine.repetition import NOISE_NATS


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """How the local engine loads and runs its model.

    model_path: the GGUF file, already verified against the catalogue's sha256.
    model_name: the catalogue name reported to clients as the model that answered.
    context_tokens: the longest sequence (prompt + answer) one request may use; 0 = the model's own.
    kv_cache_tokens: KV cells shared by all sequences and the prefix cache; 0 = 2x context_tokens.
    max_running: sequences decoded together in one step.
    max_queued: requests waiting for admission before new ones get "overloaded".
    step_tokens: token budget of one decode step (running tokens + chunked prefill).
    num_threads: CPU threads for llama.cpp (the most it uses); 0 = all physical cores.
    adapt_threads: use fewer threads while other processes keep cores busy (engine/threads.py).
    chat_template: a Jinja template overriding the GGUF's own; None = use the GGUF's.
    stop: the model's own stop strings (the catalogue's `stop`), added to every request's.
    persist_dir: where the hottest cached prefixes are saved when the engine is idle and restored at
        start, so a restart is warm too; None = off.
    persist_slots: how many cached prefixes to keep on disk.
    persist_max_mib: the most disk those files may take together (the hottest are kept within it).
    host_cache_mib: host RAM for the KV state of conversations evicted from the KV cache, restored
        when they come back (engine/host_cache.py); 0 = off. At most a fifth of the machine's RAM.
    cache_work_quiet_s: demotions and repacks for `max_idle_kv_tokens` wait until the engine has had
        no request to run for this long: each save in them stalls the engine for tens of milliseconds,
        and a conversation's next turn usually comes right after its last answer.
    model_sha256: the weights' verified sha256 (names and checks the re-encoded copy); None = unknown.
    quantization: the weights' type as the catalogue names it ("Q4_1"), for engine/weights.py.
    weights_dir: where re-encoded copies of the weights are kept (engine/weights.py); None = load the
        catalogue's file as it is.
    max_answer_tokens: the most tokens one local answer may generate, whatever the client asks (agents ask
        for 32k-64k, and an OpenAI request may set no limit); an answer it ends reports `length`. 0 = none.
    default_min_p: the min_p of a request that asks for no truncation (engine/local.py); 0 = none. An
        engine made directly samples what it is asked; `hotspare serve` passes the setting, 0.05.
    noise_stop_nats: an answer whose model's next-token entropy averages more than this over 64 tokens
        has turned to noise and is cut, reported as `length` (engine/repetition.py); 0 = never.
    max_idle_kv_tokens: idle (cached, not running) KV cells beyond which the least recently used idle
        conversations are demoted to host RAM (dropped without a host cache) between steps, those kept
        packed at the bottom of the cache when nothing runs; idle cells slow every decode step. 0 = only
        when cells run out.
    flash_attention: llama.cpp's flash-attention kernels on, off, or "auto": timed both ways on this
        host and the faster taken (engine/attention.py). On here: an engine made directly (tests,
        scripts) runs as before; `hotspare serve` passes the setting, auto by default.
    calibration_dir: where "auto" keeps its measurements, so only the first start on a host pays for
        them; None = measure at every start.
    """

    model_path: Path
    model_name: str
    context_tokens: int = 0
    kv_cache_tokens: int = 0
    max_running: int = 16
    max_queued: int = 64
    step_tokens: int = 512
    num_threads: int = 0
    adapt_threads: bool = True
    chat_template: str | None = None
    stop: tuple[str, ...] = ()
    seed: int = 0
    persist_dir: Path | None = None
    persist_slots: int = 4
    persist_max_mib: int = 512
    host_cache_mib: int = 0
    max_idle_kv_tokens: int = 0
    cache_work_quiet_s: float = 1.0
    model_sha256: str | None = None
    quantization: str | None = None
    weights_dir: Path | None = None
    max_answer_tokens: int = 0
    noise_stop_nats: float = NOISE_NATS
    default_min_p: float = 0.0
    flash_attention: FlashAttention = FlashAttention.ON
    calibration_dir: Path | None = None
