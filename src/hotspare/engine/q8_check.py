"""Check the installed llama.cpp's Q8_0 matrix product against an exact reference.

Contract: `active()` says whether this build multiplies Q8_0 weights in hotspare's repacked layout
(engine/patches/q8_repack.cpp: compiled for AVX-512 VNNI, HOTSPARE_Q8_REPACK not 0).
`max_error(shape)` builds one `ggml_mul_mat` node through the ggml C API of the installed
llama-cpp-python (ctypes, as engine/fa_check.py does): random Q8_0 weights, placed in the CPU
backend's repack buffer when `shape.repacked` (which repacks them on upload) or in a plain buffer
(llama.cpp's own kernel), times random f32 activations, on `threads` threads, and returns the largest
difference from numpy's float64 product, relative to the largest magnitude of that product.

The activations are exact Q8_0 values (each block a power-of-two scale times integers in
[-127, 127], with 127 or -127 in it), so quantizing them is exact and the reference is the true
product: what is left is float32 summation (~1e-7 relative). A wrong lane, row, block or offset
shows as an error of order 1.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

import numpy as np

from hotspare.engine.fa_check import InitParams, declare, ggml_libraries

GGML_TYPE_F32 = 0
GGML_TYPE_Q8_0 = 8
QK = 32
BLOCK_BYTES = 2 + QK  # f16 scale, 32 int8


@dataclass(frozen=True, slots=True)
class Shape:
    rows: int  # weight rows (outputs); a multiple of 16 for the repacked layout
    k: int  # inputs; a multiple of 32
    tokens: int
    threads: int = 2
    repacked: bool = True


@functools.cache
def _libs() -> tuple[ctypes.CDLL, ctypes.CDLL]:
    base, cpu = ggml_libraries()
    p, i64, i, sz = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_size_t
    declare(base.ggml_new_tensor_2d, [p, i, i64, i64], p)
    declare(base.ggml_mul_mat, [p, p, p], p)
    declare(base.ggml_backend_alloc_ctx_tensors_from_buft, [p, p], p)
    declare(base.ggml_backend_tensor_set, [p, p, sz, sz], None)
    declare(base.ggml_backend_buffer_free, [p], None)
    declare(cpu._Z35ggml_backend_cpu_repack_buffer_typev, [], p)  # C++ name, exported
    return base, cpu


def active() -> bool:
    """Whether the installed build has hotspare's Q8_0 layout and uses it."""
    _, cpu = _libs()
    probe = getattr(cpu, "hotspare_q8_repack_active", None)
    return probe is not None and bool(probe())


def _weights(shape: Shape, rng: np.random.Generator) -> tuple[bytes, np.ndarray]:
    """Q8_0 rows as llama.cpp stores them, and their values in float64."""
    nb = shape.k // QK
    q = rng.integers(-127, 128, size=(shape.rows, nb, QK), dtype=np.int8)
    magnitude = 2.0 ** rng.integers(-8, -3, size=(shape.rows, nb))
    d = (rng.uniform(0.5, 2.0, size=(shape.rows, nb)) * magnitude).astype(np.float16)
    blocks = np.zeros((shape.rows, nb, BLOCK_BYTES), dtype=np.uint8)
    blocks[:, :, :2] = d.view(np.uint8).reshape(shape.rows, nb, 2)
    blocks[:, :, 2:] = q.view(np.uint8)
    values = q.astype(np.float64) * d.astype(np.float64)[:, :, None]
    return blocks.tobytes(), values.reshape(shape.rows, shape.k)


def _activations(shape: Shape, rng: np.random.Generator) -> np.ndarray:
    """[tokens, k] float32 values that Q8_0 holds exactly."""
    nb = shape.k // QK
    q = rng.integers(-127, 128, size=(shape.tokens, nb, QK))
    q[:, :, 0] = np.where(rng.integers(0, 2, size=(shape.tokens, nb)) == 1, 127, -127)
    scale = 2.0 ** rng.integers(-6, 2, size=(shape.tokens, nb, 1))
    return (q * scale).reshape(shape.tokens, shape.k).astype(np.float32)


def max_error(shape: Shape, seed: int = 0) -> float:
    if shape.repacked and shape.rows % 16:
        raise ValueError("the repacked layout holds rows in groups of 16")
    base, cpu = _libs()
    rng = np.random.default_rng(seed)
    w_bytes, w = _weights(shape, rng)
    x = _activations(shape, rng)
    wctx = base.ggml_init(InitParams(1024 * 1024, None, True))
    room = 64 * 1024 * 1024 + 8 * x.nbytes + 8 * shape.rows * shape.tokens
    ctx = base.ggml_init(InitParams(room, None, False))
    buffer = None
    try:
        if shape.repacked:
            tw = base.ggml_new_tensor_2d(wctx, GGML_TYPE_Q8_0, shape.k, shape.rows)
            repack_type = cpu._Z35ggml_backend_cpu_repack_buffer_typev()
            buffer = base.ggml_backend_alloc_ctx_tensors_from_buft(wctx, repack_type)
            if not buffer:
                raise RuntimeError("could not allocate the repack buffer")
            base.ggml_backend_tensor_set(tw, w_bytes, 0, len(w_bytes))
        else:
            tw = base.ggml_new_tensor_2d(ctx, GGML_TYPE_Q8_0, shape.k, shape.rows)
            ctypes.memmove(base.ggml_get_data(tw), w_bytes, len(w_bytes))
        tx = base.ggml_new_tensor_2d(ctx, GGML_TYPE_F32, shape.k, shape.tokens)
        ctypes.memmove(base.ggml_get_data(tx), x.ctypes.data, x.nbytes)
        out = base.ggml_mul_mat(ctx, tw, tx)
        graph = base.ggml_new_graph(ctx)
        base.ggml_build_forward_expand(graph, out)
        if cpu.ggml_graph_compute_with_ctx(ctx, graph, shape.threads) != 0:
            raise RuntimeError("ggml_graph_compute_with_ctx failed")
        pointer = ctypes.cast(base.ggml_get_data(out), ctypes.POINTER(ctypes.c_float))
        got = np.ctypeslib.as_array(pointer, (shape.tokens, shape.rows)).astype(np.float64)
    finally:
        if buffer:
            base.ggml_backend_buffer_free(buffer)
        base.ggml_free(ctx)
        base.ggml_free(wctx)
    want = x.astype(np.float64) @ w.T
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
