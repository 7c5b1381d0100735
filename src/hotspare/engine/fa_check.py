"""Check the installed llama.cpp's CPU flash attention against a float64 reference.

Contract: `max_error(shape)` builds one `ggml_flash_attn_ext` node through the ggml C API of the
installed llama-cpp-python (ctypes on its libggml-base / libggml-cpu), on random queries, an f16
KV cache and a mask shaped like the engine's (a causal edge, a band of cells that belong to another
conversation, -inf past the used cells; or, with `streams`, each query token its own conversation, as
in a batched decode step), with K and V laid out as llama.cpp's KV cache holds them (`cell_major`:
one cell's heads side by side) or head by head, computes it on `threads` threads and returns the largest
absolute difference from the same attention computed with numpy in float64. `node_seconds` times the
same node (scripts/bench_raw.py `node`).

Why: hotspare builds llama.cpp with a kernel of its own for short queries (engine/llama_patch.py).
A kernel that is fast and wrong would not crash; it would answer worse. This makes "right" a
number that tests and the self-test can hold the build to. The grouped kernel is within ~1e-6 of
the reference; llama.cpp's stock short-query path, which rounds queries and its running sums to
f16, is ~2e-3 off on the same inputs (HOTSPARE_FA_GROUPED=0).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

GGML_TYPE_F32 = 0
GGML_TYPE_F16 = 1
KV_PAD = 256  # llama.cpp pads the attended KV range
MASK_ROWS_PAD = 64


@dataclass(frozen=True, slots=True)
class Shape:
    n_tokens: int
    n_kv: int  # used cells; the padded range after them is masked
    n_head: int = 9
    n_head_kv: int = 3
    head_dim: int = 64
    threads: int = 2
    streams: bool = False  # token t is the next token of its own conversation: sees only its cells
    cell_major: bool = False  # K/V as the KV cache stores them: [cell][KV head][dim]


class InitParams(ctypes.Structure):
    """ggml_init's argument."""

    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


@functools.cache
def ggml_libraries() -> tuple[ctypes.CDLL, ctypes.CDLL]:
    """The installed libggml-base and libggml-cpu, with the calls every check makes declared (the
    context, its data, a graph's compute); each check declares the rest (engine/q8_check.py too)."""
    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    base = ctypes.CDLL(str(lib_dir / "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
    cpu = ctypes.CDLL(str(lib_dir / "libggml-cpu.so"), mode=ctypes.RTLD_GLOBAL)
    p, i = ctypes.c_void_p, ctypes.c_int
    declare(base.ggml_init, [InitParams], p)
    declare(base.ggml_free, [p], None)
    declare(base.ggml_get_data, [p], p)
    declare(base.ggml_new_graph, [p], p)
    declare(base.ggml_build_forward_expand, [p, p], None)
    declare(cpu.ggml_graph_compute_with_ctx, [p, p, i], i)
    return base, cpu


@functools.cache
def _libs() -> tuple[ctypes.CDLL, ctypes.CDLL]:
    """The ggml libraries with this check's calls declared, once per process."""
    base, cpu = ggml_libraries()
    p, i64, f, i = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
    declare(base.ggml_new_tensor_4d, [p, i, i64, i64, i64, i64], p)
    declare(base.ggml_permute, [p, p, i, i, i, i], p)
    declare(base.ggml_flash_attn_ext, [p, p, p, p, p, f, f, f], p)
    return base, cpu


def declare(function: Any, argtypes: list[Any], restype: Any) -> None:
    function.argtypes, function.restype = argtypes, restype


def _mask(shape: Shape, n_kv_padded: int) -> np.ndarray:
    """Token t sees cells up to its own position, except, for odd t, a band of 200 cells that
    stands for another conversation's; nothing past the used cells. With `streams`, token t sees
    only the t-th of n_tokens equal runs of the used cells."""
    mask = np.full((shape.n_tokens, n_kv_padded), -np.inf, dtype=np.float32)
    if shape.streams:
        run = shape.n_kv // shape.n_tokens
        for t in range(shape.n_tokens):
            mask[t, t * run : (t + 1) * run] = 0.0
        return mask
    for t in range(shape.n_tokens):
        mask[t, : shape.n_kv - shape.n_tokens + t + 1] = 0.0
        if t % 2:
            start = shape.n_kv // 3
            mask[t, start : start + 200] = -np.inf
    return mask


def _reference(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray, scale: float) -> np.ndarray:
    """q [H, N, D], k/v [HKV, NKV, D] -> [N, H, D] in float64."""
    group = q.shape[0] // k.shape[0]
    kk = np.repeat(k.astype(np.float64), group, axis=0)
    vv = np.repeat(v.astype(np.float64), group, axis=0)
    scores = np.einsum("hnd,hcd->hnc", q.astype(np.float64), kk) * scale + mask[None, :, :]
    scores -= scores.max(axis=2, keepdims=True)
    weights = np.exp(scores)
    weights /= weights.sum(axis=2, keepdims=True)
    return np.einsum("hnc,hcd->nhd", weights, vv)  # type: ignore[no-any-return]


def _kv_tensor(base: ctypes.CDLL, ctx: int, kv: np.ndarray, cell_major: bool) -> tuple[int, int]:
    """The K or V operand [dim, cells, KV heads] and the tensor that holds its data: itself, or
    for `cell_major` a [dim, KV heads, cells] tensor seen through a permuted view."""
    hkv, cells, d = kv.shape
    if not cell_major:
        tensor = base.ggml_new_tensor_4d(ctx, GGML_TYPE_F16, d, cells, hkv, 1)
        return tensor, tensor
    data = base.ggml_new_tensor_4d(ctx, GGML_TYPE_F16, d, hkv, cells, 1)
    return base.ggml_permute(ctx, data, 0, 2, 1, 3), data


def _kv_layout(kv: np.ndarray, shape: Shape) -> np.ndarray:
    """[KV heads, cells, dim] in the memory order of `_kv_tensor`'s data tensor."""
    return kv.transpose(1, 0, 2) if shape.cell_major else kv


@dataclass(frozen=True, slots=True)
class _Node:
    """One `ggml_flash_attn_ext` node on random inputs, its graph, and the inputs for the reference."""

    ctx: int
    graph: int
    out: int
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    mask: np.ndarray
    scale: float


@contextlib.contextmanager
def _node(shape: Shape, seed: int) -> Iterator[_Node]:
    base, _ = _libs()
    rng = np.random.default_rng(seed)
    n_kv_padded = -(-shape.n_kv // KV_PAD) * KV_PAD
    d, h, hkv, n = shape.head_dim, shape.n_head, shape.n_head_kv, shape.n_tokens
    q = rng.standard_normal((h, n, d), dtype=np.float32)
    k = rng.standard_normal((hkv, n_kv_padded, d)).astype(np.float16)
    v = rng.standard_normal((hkv, n_kv_padded, d)).astype(np.float16)
    mask = _mask(shape, n_kv_padded)
    mask_rows = -(-n // MASK_ROWS_PAD) * MASK_ROWS_PAD
    mask_padded = np.full((mask_rows, n_kv_padded), -np.inf, dtype=np.float32)
    mask_padded[:n] = mask
    scale = 1.0 / float(np.sqrt(d))
    ctx = base.ggml_init(InitParams(256 * 1024 * 1024, None, False))
    try:
        tq = base.ggml_new_tensor_4d(ctx, GGML_TYPE_F32, d, n, h, 1)
        tk, k_data = _kv_tensor(base, ctx, k, shape.cell_major)
        tv, v_data = _kv_tensor(base, ctx, v, shape.cell_major)
        tm = base.ggml_new_tensor_4d(ctx, GGML_TYPE_F16, n_kv_padded, mask_rows, 1, 1)
        for tensor, array in ((tq, q), (k_data, _kv_layout(k, shape)), (v_data, _kv_layout(v, shape))):
            data = np.ascontiguousarray(array)
            ctypes.memmove(base.ggml_get_data(tensor), data.ctypes.data, data.nbytes)
        data = np.ascontiguousarray(mask_padded.astype(np.float16))
        ctypes.memmove(base.ggml_get_data(tm), data.ctypes.data, data.nbytes)
        out = base.ggml_flash_attn_ext(ctx, tq, tk, tv, tm, scale, 0.0, 0.0)
        graph = base.ggml_new_graph(ctx)
        base.ggml_build_forward_expand(graph, out)
        yield _Node(ctx, graph, out, q, k, v, mask, scale)
    finally:
        base.ggml_free(ctx)


def _compute(node: _Node, threads: int) -> None:
    _, cpu = _libs()
    if cpu.ggml_graph_compute_with_ctx(node.ctx, node.graph, threads) != 0:
        raise RuntimeError("ggml_graph_compute_with_ctx failed")


def max_error(shape: Shape, seed: int = 0) -> float:
    base, _ = _libs()
    with _node(shape, seed) as node:
        _compute(node, shape.threads)
        pointer = ctypes.cast(base.ggml_get_data(node.out), ctypes.POINTER(ctypes.c_float))
        got = np.ctypeslib.as_array(pointer, (shape.n_tokens, shape.n_head, shape.head_dim))
        want = _reference(node.q, node.k, node.v, node.mask, node.scale)
        return float(np.abs(got.astype(np.float64) - want).max())


def node_seconds(shape: Shape, runs: int) -> float:
    """The median time of computing the node `runs` times (for scripts/bench_raw.py's `node`)."""
    with _node(shape, seed=0) as node:
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            _compute(node, shape.threads)
            times.append(time.perf_counter() - started)
    return statistics.median(times)
