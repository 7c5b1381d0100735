"""llama.cpp through llama-cpp-python's low-level API: the only module that imports llama_cpp.

`LlamaCppModel` owns one model, one context with a unified KV cache shared by up to `max_slots`
sequence ids, one reusable batch, and per-request sampler chains. It is not thread-safe: the engine
worker calls it from its one loop. Every ctypes object a batch or sampler points to is owned by this
object and lives as long as it does.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import re
from collections.abc import Sequence as Seq
from pathlib import Path

import llama_cpp as llama
import numpy as np
import numpy.typing as npt
import psutil

from hotspare.core.errors import ModelError
from hotspare.core.types import SamplingParams
from hotspare.engine.model import DecodeItem
from hotspare.engine.prompt_tokens import PromptTokenizer, SpecialToken, cut_texts
from hotspare.engine.protocol import ModelInfo

log = logging.getLogger(__name__)

_GGML_LOG_LEVEL_ERROR = 4


@ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)  # type: ignore[untyped-decorator]
def _forward_llama_log(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
    # llama.cpp is chatty on stderr; keep its errors only, in our own log.
    if level == _GGML_LOG_LEVEL_ERROR and text:
        log.error("llama.cpp: %s", text.decode("utf-8", "replace").rstrip())
    elif text and _REPACKED_LINE in text:
        _repacked.append(text)


_REPACKED_LINE = b"CPU_REPACK model buffer size ="
_repacked: list[bytes] = []
"""llama.cpp's load lines that size the weights it repacked (for Q8_0 on AVX-512 VNNI: hotspare's
layout, engine/patches/q8_repack.cpp)."""


def _take_repacked_mib() -> float:
    """MiB of weights the last load put in the CPU backend's repacked layout (0 if none)."""
    lines, _repacked[:] = list(_repacked), []
    total = 0.0
    for line in lines:
        with contextlib.suppress(ValueError, IndexError):
            total += float(line.split(b"=", 1)[1].split()[0])
    return total


REQUANTIZE_TYPES = {"Q8_0": llama.LLAMA_FTYPE_MOSTLY_Q8_0}
"""Target weight types `requantize` can write, by the catalogue's name for them."""

LLAMA_CPP_VERSION: str = llama.__version__

KV_TYPES = {"f16": llama.GGML_TYPE_F16, "q8_0": llama.GGML_TYPE_Q8_0}
"""KV cache element types by name (the engine uses f16; scripts/bench_raw.py measures q8_0)."""


def requantize(source: Path, target: Path, weight_type: str, num_threads: int) -> None:
    """Write `source`'s weights re-encoded as `weight_type` (a REQUANTIZE_TYPES key) to `target`.
    Takes seconds per GB on a CPU. Raises ModelError if llama.cpp fails (the target may then hold a
    partial file: the caller writes to a temporary name)."""
    llama.llama_log_set(_forward_llama_log, ctypes.c_void_p(0))  # a line per tensor otherwise
    params = llama.llama_model_quantize_default_params()
    params.ftype = REQUANTIZE_TYPES[weight_type]
    params.allow_requantize = True  # the source is already quantized: that is the point
    params.nthread = num_threads
    rc = llama.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if rc != 0:
        raise ModelError(f"llama.cpp could not re-encode {source} as {weight_type} (code {rc})")


def resolve_threads(num_threads: int) -> int:
    """The threads llama.cpp gets for the setting `num_threads`: 0 = the physical cores (llama.cpp's
    spinning threads gain nothing from SMT siblings)."""
    return num_threads or psutil.cpu_count(logical=False) or os.cpu_count() or 1


class LlamaCppModel:
    def __init__(
        self,
        path: Path,
        *,
        kv_cache_tokens: int,
        max_slots: int,
        batch_tokens: int,
        num_threads: int,
        flash_attention: bool = True,
        kv_type: str = "f16",
    ) -> None:
        llama.llama_log_set(_forward_llama_log, ctypes.c_void_p(0))
        llama.llama_backend_init()
        mparams = llama.llama_model_default_params()
        _take_repacked_mib()
        self._model = llama.llama_model_load_from_file(str(path).encode(), mparams)
        if not self._model:
            raise ModelError(f"llama.cpp could not load the model file {path}")
        self.repacked_mib = _take_repacked_mib()
        """MiB of weights in a repacked layout (hotspare's Q8_0 one on AVX-512 VNNI hosts)."""
        threads = resolve_threads(num_threads)
        self.max_threads = threads
        cparams = llama.llama_context_default_params()
        cparams.n_ctx = kv_cache_tokens
        cparams.n_batch = batch_tokens
        cparams.n_ubatch = batch_tokens
        cparams.n_seq_max = max_slots
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.kv_unified = True  # one cell pool for all slots: prefix sharing is a tag, not a copy
        # Which attention kernels are faster depends on the host (engine/attention.py chooses).
        cparams.flash_attn_type = (
            llama.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attention else llama.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        self.flash_attention = flash_attention
        cparams.type_k = cparams.type_v = KV_TYPES[kv_type]  # quantized V needs flash attention
        cparams.no_perf = True
        self._ctx = llama.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            llama.llama_model_free(self._model)
            raise ModelError(f"llama.cpp could not create a context of {kv_cache_tokens} tokens")
        self._vocab = llama.llama_model_get_vocab(self._model)
        self._mem = llama.llama_get_memory(self._ctx)
        self.num_vocab = llama.llama_vocab_n_tokens(self._vocab)
        self.batch_tokens = batch_tokens
        self._batch = llama.llama_batch_init(batch_tokens, 0, 1)
        self._pieces: dict[int, bytes] = {}
        self._piece_buf = ctypes.create_string_buffer(256)
        self.add_bos = bool(llama.llama_vocab_get_add_bos(self._vocab))
        self.info = self._read_info()
        self._prompt_tokens = self._prompt_tokenizer()

    @property
    def threads(self) -> int:
        """The threads llama.cpp decodes with now."""
        return int(llama.llama_n_threads(self._ctx))

    def set_threads(self, num_threads: int) -> None:
        """Use `num_threads` threads from the next decode on (both for decoding and prefill)."""
        llama.llama_set_n_threads(self._ctx, num_threads, num_threads)

    def close(self) -> None:
        llama.llama_batch_free(self._batch)
        llama.llama_free(self._ctx)
        llama.llama_model_free(self._model)

    # ----- metadata and text -----

    def _read_info(self) -> ModelInfo:
        template = llama.llama_model_chat_template(self._model, None)
        desc = ctypes.create_string_buffer(256)
        llama.llama_model_desc(self._model, desc, len(desc))
        return ModelInfo(
            chat_template=template.decode("utf-8") if template else None,
            bos_token=self._special_text(llama.llama_vocab_bos(self._vocab)),
            eos_token=self._special_text(llama.llama_vocab_eos(self._vocab)),
            context_train_tokens=llama.llama_model_n_ctx_train(self._model),
            kv_capacity_tokens=llama.llama_n_ctx(self._ctx),
            num_vocab=self.num_vocab,
            description=desc.value.decode("utf-8", "replace"),
        )

    def _special_text(self, token: int) -> str:
        if token < 0:
            return ""
        n = llama.llama_token_to_piece(self._vocab, token, self._piece_buf, len(self._piece_buf), 0, True)
        return self._piece_buf.raw[: max(n, 0)].decode("utf-8", "replace")

    def tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        """`text`'s tokens, special tokens' texts parsed as them; `add_bos`: with the BOS token first
        if the model adds one. Piece by piece when the vocabulary allows it (engine/prompt_tokens.py):
        the same tokens, only the pieces not seen before tokenized."""
        if self._prompt_tokens is None:
            return self._tokenize_whole(text, add_bos)
        tokens = self._prompt_tokens.tokenize(text)
        return [llama.llama_vocab_bos(self._vocab), *tokens] if add_bos and self.add_bos else tokens

    def _tokenize_whole(self, text: str, add_bos: bool) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buf = (llama.llama_token * capacity)()
        n = llama.llama_tokenize(self._vocab, data, len(data), buf, capacity, add_bos, True)
        if n < 0:
            buf = (llama.llama_token * -n)()
            n = llama.llama_tokenize(self._vocab, data, len(data), buf, -n, add_bos, True)
        return list(buf[:n])

    def _prompt_tokenizer(self) -> PromptTokenizer | None:
        """Piecewise tokenization where it gives llama.cpp's own tokens: SPM and BPE vocabularies
        that add no end token, with control tokens to cut at; checked once here on a sample."""
        vocab_type = llama.llama_vocab_type(self._vocab)
        if vocab_type not in (llama.LLAMA_VOCAB_TYPE_SPM, llama.LLAMA_VOCAB_TYPE_BPE):
            return None
        if llama.llama_vocab_get_add_eos(self._vocab):
            return None
        cuts = cut_texts(self._special_tokens())
        if not cuts:
            return None
        tokenizer = PromptTokenizer(lambda piece: self._tokenize_whole(piece, False), cuts, 0)
        sample = "".join(f"a{c}b {c}\n\n{c}  \u00e9{c}x\t" for c in cuts) + " end"
        if tokenizer.tokenize(sample) != self._tokenize_whole(sample, False):
            log.warning("piecewise tokenization differs from llama.cpp's on this model: off")
            return None
        return PromptTokenizer(lambda piece: self._tokenize_whole(piece, False), cuts)

    def _special_tokens(self) -> list[SpecialToken]:
        """The tokens llama.cpp carves out of a text before tokenizing it (14 ms for SmolLM2's 49k)."""
        carved = (
            llama.LLAMA_TOKEN_ATTR_CONTROL
            | llama.LLAMA_TOKEN_ATTR_USER_DEFINED
            | llama.LLAMA_TOKEN_ATTR_UNKNOWN
        )
        get_attr, get_text, vocab = llama.llama_vocab_get_attr, llama.llama_vocab_get_text, self._vocab
        specials = []
        for token in range(self.num_vocab):
            attr = get_attr(vocab, token)
            if attr & carved:
                specials.append(
                    SpecialToken(
                        get_text(vocab, token).decode("utf-8", "replace"),
                        is_control=bool(attr & llama.LLAMA_TOKEN_ATTR_CONTROL),
                        strips_left=bool(attr & llama.LLAMA_TOKEN_ATTR_LSTRIP),
                    )
                )
        return specials

    def piece(self, token: int) -> bytes:
        """The bytes a sampled token stands for (special tokens render as nothing)."""
        cached = self._pieces.get(token)
        if cached is None:
            n = llama.llama_token_to_piece(
                self._vocab, token, self._piece_buf, len(self._piece_buf), 0, False
            )
            cached = self._piece_buf.raw[: max(n, 0)]
            self._pieces[token] = cached
        return cached

    def is_end_of_generation(self, token: int) -> bool:
        return bool(llama.llama_vocab_is_eog(self._vocab, token))

    # ----- KV cache -----

    def copy_prefix(self, src: int, dst: int, num_tokens: int) -> None:
        llama.llama_memory_seq_cp(self._mem, src, dst, 0, num_tokens)

    def remove(self, slot: int) -> None:
        llama.llama_memory_seq_rm(self._mem, slot, -1, -1)

    def clear(self) -> None:
        llama.llama_memory_clear(self._mem, True)

    def save_state(self, slot: int) -> tuple[ctypes.Array[ctypes.c_uint8] | None, int]:
        """`slot`'s cells as llama.cpp's sequence state, kept in host RAM, and its size in bytes."""
        size = int(llama.llama_state_seq_get_size(self._ctx, slot))
        if size <= 0:
            return None, 0
        state = (ctypes.c_uint8 * size)()
        written = int(llama.llama_state_seq_get_data(self._ctx, state, size, slot))
        return (state, written) if written > 0 else (None, 0)

    def restore_state(self, slot: int, state: ctypes.Array[ctypes.c_uint8], num_bytes: int) -> bool:
        """Fill the empty `slot` from `save_state`'s output; False if the cache has no room for it."""
        if int(llama.llama_state_seq_set_data(self._ctx, state, num_bytes, slot)) == 0:
            self.remove(slot)
            return False
        return True

    def shift(self, slot: int, delta: int) -> None:
        """Move all of `slot`'s cells `delta` positions on (their keys are re-rotated at the next decode)."""
        llama.llama_memory_seq_add(self._mem, slot, -1, -1, delta)

    def trim(self, slot: int, start: int, end: int) -> None:
        """Drop `slot`'s cells at positions start <= pos < end (end -1: to the end)."""
        llama.llama_memory_seq_rm(self._mem, slot, start, end)

    # ----- one forward pass -----

    def decode(self, items: Seq[DecodeItem]) -> list[int]:
        """Run one llama_decode over all items. Returns, per item with wants_logits, its batch index.

        Raises MemoryError when the KV cache has no room for the batch (llama.cpp leaves the cache as
        it was), RuntimeError on any other failure.
        """
        batch = self._batch
        i = 0
        rows = []
        for item in items:
            for offset, token in enumerate(item.tokens):
                batch.token[i] = token
                batch.pos[i] = item.start + offset
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = item.slot
                batch.logits[i] = 0
                i += 1
            if item.wants_logits:
                batch.logits[i - 1] = 1
                rows.append(i - 1)
        batch.n_tokens = i
        rc = llama.llama_decode(self._ctx, batch)
        if rc == 1:
            raise MemoryError("no KV cache room for the batch")
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc}")
        return rows

    def logits(self, row: int) -> npt.NDArray[np.float32]:
        """A copy of the logits of batch row `row` of the last decode."""
        ptr = llama.llama_get_logits_ith(self._ctx, row)
        return np.ctypeslib.as_array(ptr, shape=(self.num_vocab,)).copy()

    # ----- sampling -----

    def new_sampler(self, params: SamplingParams, seed: int) -> ctypes.c_void_p:
        """A sampler chain for one request; free it with `free_sampler`."""
        chain = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())
        add = llama.llama_sampler_chain_add
        if params.grammar:
            grammar = self._grammar_sampler(params.grammar, params.grammar_triggers)
            if not grammar:
                llama.llama_sampler_free(chain)
                raise ValueError("the grammar could not be parsed")
            add(chain, grammar)
        if params.repeat_penalty != 1.0 or params.frequency_penalty or params.presence_penalty:
            add(
                chain,
                llama.llama_sampler_init_penalties(
                    self.num_vocab,
                    64,
                    params.repeat_penalty,
                    params.frequency_penalty,
                    params.presence_penalty,
                ),
            )
        if params.temperature <= 0:
            add(chain, llama.llama_sampler_init_greedy())
            return chain  # type: ignore[no-any-return]
        if params.top_k > 0:
            add(chain, llama.llama_sampler_init_top_k(params.top_k))
        if params.top_p < 1.0:
            add(chain, llama.llama_sampler_init_top_p(params.top_p, 1))
        if params.min_p > 0:
            add(chain, llama.llama_sampler_init_min_p(params.min_p, 1))
        add(chain, llama.llama_sampler_init_temp(params.temperature))
        add(chain, llama.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain  # type: ignore[no-any-return]

    def _grammar_sampler(self, grammar: str, triggers: Seq[str]) -> ctypes.c_void_p | None:
        if not triggers:
            return llama.llama_sampler_init_grammar(self._vocab, grammar.encode(), b"root")  # type: ignore[no-any-return]
        # Lazy: llama.cpp matches all output so far against the pattern and, once it matches,
        # constrains from the start of its first group (the trigger) on.
        pattern = "[\\s\\S]*?(" + "|".join(re.escape(t) for t in triggers) + ")[\\s\\S]*"
        patterns = (ctypes.c_char_p * 1)(pattern.encode())
        return llama.llama_sampler_init_grammar_lazy_patterns(  # type: ignore[no-any-return]
            self._vocab, grammar.encode(), b"root", patterns, 1, None, 0
        )

    def sample(self, sampler: ctypes.c_void_p, row: int) -> int:
        """Sample from batch row `row` of the last decode (also records the token in the chain)."""
        return int(llama.llama_sampler_sample(sampler, self._ctx, row))

    def entropy(self, row: int) -> float:
        """See EngineModel.entropy. ~57 us for 49k logits (float32 numpy)."""
        logits = np.ctypeslib.as_array(llama.llama_get_logits_ith(self._ctx, row), shape=(self.num_vocab,))
        shifted = logits - logits.max()  # a new array: llama.cpp's logits stay as they are
        weights = np.exp(shifted)
        total = float(weights.sum())
        return math.log(total) - float(weights @ shifted) / total

    def free_sampler(self, sampler: ctypes.c_void_p) -> None:
        llama.llama_sampler_free(sampler)
