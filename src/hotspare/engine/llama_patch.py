"""hotspare's changes to the llama.cpp that it builds: a CPU flash-attention kernel for the batches
the engine runs after a cached context, and a repacked layout for Q8_0 weights on AVX-512 VNNI.

Contract: `apply(source_root)` edits the llama.cpp tree vendored in the llama-cpp-python sdist in
place, at anchors that must each occur exactly once (PatchError otherwise: a new llama.cpp is read
again, never patched blindly), and is a no-op on a tree it patched already. `DIGEST` names the
change; engine/build.py keys its build cache on it, so a new patch is a new build.

Why (measured, docs/engine.md "Short queries at long context"): llama.cpp's CPU flash attention walks
every cached cell once per query row and head when a batch has fewer than 64 query rows -- a decode
step, a tool result, the next turn of a conversation. At 4k cached tokens that cost ~50 ms per row on
a 2-core host: 19 new tokens took 0.9 s, 7x the non-flash path. Its tiled kernel for larger batches
converts each K/V tile once per query head: 64 tokens after 2.2k cells took twice what this kernel
takes. The grouped kernel (patches/grouped_fa.cpp) splits the KV range into chunks and computes, per
chunk, all query rows of every KV head together: a tile with few active rows (a decode step, one
stream's tile in a batch) takes dot products straight from the f16 KV cache, reading each cell's K
row once; a tile with many (a turn of several tokens, a prefill chunk) takes two small GEMMs. Tiles
no row may attend (other conversations' idle cells) are skipped. It takes every batch under 64
tokens and larger ones over at least twice as many cells (patches/common_sizes.h); a prompt's first
chunk keeps the tiled kernel. It accumulates in f32 where the stock short path rounds Q and the
running sum to f16. `HOTSPARE_FA_GROUPED=0` in the environment turns it off at run time (A/B).

Why the weights' layout (patches/q8_repack.cpp, docs/engine.md "Q8_0 weights in a repacked layout"):
on x86 llama.cpp multiplies Q8_0 weights with tinyBLAS, which handles the scales once per weight
row, token and block of 32, and has no repacked layout for them. Once attention was fast, those
products were most of a short turn: 19 new tokens after a short context took 43 ms, 28 took 59 ms.
The layout interleaves 16 rows so one VPDPBUSD works on 16 rows at once and the scales are applied
once per 16 rows: 17-22 and 22-31 ms. It plugs into the CPU backend's repack buffer type
(ggml_repack_get_optimal_repack_type), as llama.cpp's own Q4_0 layouts do. `HOTSPARE_Q8_REPACK=0`
keeps llama.cpp's layout (A/B).

Standard library only: engine/build.py runs before hotspare's dependencies are installed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

PATCH_DIR = Path(__file__).with_name("patches")
CPU_DIR = Path("vendor/llama.cpp/ggml/src/ggml-cpu")
DONE_MARK = "hotspare: grouped flash attention"


class PatchError(Exception):
    """The llama.cpp tree is not the one this patch was written against."""


@dataclass(frozen=True, slots=True)
class Edit:
    """Insert the text of `piece` (a file in patches/) before or after `anchor` in `path`."""

    path: Path
    anchor: str
    piece: str
    after: bool

    def text(self) -> str:
        return (PATCH_DIR / self.piece).read_text()


FA_DISPATCH = "static void ggml_compute_forward_flash_attn_ext_f16(\n"
REPACK_CHOICE = (
    "static const ggml::cpu::tensor_traits * "
    "ggml_repack_get_optimal_repack_type(const struct ggml_tensor * cur) {\n"
)
PLAN_LINE = "                        cur += MAX(prefill, decode);\n"

EDITS = (
    Edit(CPU_DIR / "common.h", "#define GGML_FA_TILE_KV 64\n", "common_sizes.h", after=True),
    Edit(CPU_DIR / "ops.cpp", FA_DISPATCH, "grouped_fa.cpp", after=False),
    Edit(
        CPU_DIR / "ops.cpp",
        "    const bool kv_is_f32_or_f16 = (k->type == GGML_TYPE_F32 || k->type == GGML_TYPE_F16);\n"
        "    const bool use_split_kv_path",
        "dispatch_hook.cpp",
        after=False,
    ),
    Edit(CPU_DIR / "ggml-cpu.c", PLAN_LINE, "plan_size.c", after=False),
    Edit(CPU_DIR / "repack.cpp", REPACK_CHOICE, "q8_repack.cpp", after=False),
    Edit(CPU_DIR / "repack.cpp", REPACK_CHOICE, "q8_hook.cpp", after=True),
)
"""In order. The third edit calls the kernel at the top of the dispatcher; the fourth makes room for
the kernel's scratch in the work buffer, and the line after it is changed by REPLACE. The last two
define the Q8_0 layout and make it llama.cpp's choice for 2-D Q8_0 weights."""

REPLACE = (
    CPU_DIR / "ggml-cpu.c",
    PLAN_LINE,
    "                        cur += MAX(MAX(prefill, decode), grouped);\n",
)


def _digest() -> str:
    h = hashlib.sha256()
    for edit in EDITS:
        h.update(f"{edit.path}\0{edit.anchor}\0{edit.after}\0".encode())
        h.update(edit.text().encode())
    h.update("\0".join(str(part) for part in REPLACE).encode())
    return h.hexdigest()[:12]


DIGEST = _digest()


def apply(source_root: Path) -> bool:
    """Patch the llama-cpp-python source tree at `source_root`. True if it changed anything."""
    ops = source_root / CPU_DIR / "ops.cpp"
    if not ops.exists():
        raise PatchError(f"{ops} is missing: not a llama-cpp-python source tree")
    if DONE_MARK in ops.read_text():
        return False
    files: dict[Path, str] = {}
    for edit in EDITS:
        path = source_root / edit.path
        text = files.get(path) or path.read_text()
        files[path] = _insert(text, edit)
    path, old, new = source_root / REPLACE[0], REPLACE[1], REPLACE[2]
    files[path] = _replace_once(files[path], old, new)
    for path, text in files.items():
        path.write_text(text)
    return True


def _insert(text: str, edit: Edit) -> str:
    _check_once(text, edit.anchor, edit.path)
    piece = edit.text()
    return text.replace(edit.anchor, edit.anchor + piece if edit.after else piece + edit.anchor, 1)


def _replace_once(text: str, old: str, new: str) -> str:
    _check_once(text, old, REPLACE[0])
    return text.replace(old, new, 1)


def _check_once(text: str, anchor: str, where: Path) -> None:
    count = text.count(anchor)
    if count != 1:
        first = anchor.strip().splitlines()[0]
        raise PatchError(f"{where}: expected the line {first!r} once, found it {count} times")
