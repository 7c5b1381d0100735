"""engine/llama_patch.py on stand-in source trees: each edit lands at its anchor, a patched tree is
left alone, and a tree whose anchors moved is refused rather than patched blindly."""

from __future__ import annotations

from pathlib import Path

import pytest

from hotspare.engine import llama_patch
from hotspare.engine.llama_patch import CPU_DIR, FA_DISPATCH, PLAN_LINE, REPACK_CHOICE, PatchError, apply

OPS_TAIL = (
    "    const bool kv_is_f32_or_f16 = (k->type == GGML_TYPE_F32 || k->type == GGML_TYPE_F16);\n"
    "    const bool use_split_kv_path = true;\n"
)


def _tree(root: Path, ops_anchor: str = FA_DISPATCH) -> Path:
    cpu = root / CPU_DIR
    cpu.mkdir(parents=True)
    (cpu / "common.h").write_text("#pragma once\n#define GGML_FA_TILE_KV 64\nrest\n")
    (cpu / "ops.cpp").write_text(f"before\n{ops_anchor}    body\n{OPS_TAIL}}}\n")
    (cpu / "ggml-cpu.c").write_text(f"plan\n{PLAN_LINE}after\n")
    (cpu / "repack.cpp").write_text(f"traits\n{REPACK_CHOICE}    // instance for Q1_0\n}}\n")
    return root


def test_each_edit_lands_at_its_anchor(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    assert apply(root) is True
    cpu = root / CPU_DIR
    common = (cpu / "common.h").read_text()
    sizes = common.index("hs_fa_grouped_nchunks")
    assert common.index("#define GGML_FA_TILE_KV 64") < sizes < common.index("rest")
    ops = (cpu / "ops.cpp").read_text()
    assert ops.index("ggml_compute_forward_flash_attn_ext_grouped(const") < ops.index(FA_DISPATCH)
    assert ops.index("if (hs_fa_grouped_applies(params, dst))") < ops.index("const bool kv_is_f32_or_f16")
    plan = (cpu / "ggml-cpu.c").read_text()
    assert "cur += MAX(MAX(prefill, decode), grouped);" in plan
    assert PLAN_LINE not in plan
    assert plan.index("size_t grouped = 0;") < plan.index("MAX(MAX(prefill")
    repack = (cpu / "repack.cpp").read_text()
    assert repack.index("namespace hs_q8 {") < repack.index(REPACK_CHOICE)  # the layout, then its choice
    hook = repack.index("return &q8_0_16x4;")
    assert repack.index(REPACK_CHOICE) < hook < repack.index("instance for Q1_0")


def test_a_patched_tree_is_left_alone(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    apply(root)
    before = {p: p.read_text() for p in (root / CPU_DIR).iterdir()}
    assert apply(root) is False
    assert {p: p.read_text() for p in (root / CPU_DIR).iterdir()} == before


def test_a_moved_anchor_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    root = _tree(tmp_path, ops_anchor="static void renamed_dispatch(\n")
    before = {p: p.read_text() for p in (root / CPU_DIR).iterdir()}
    with pytest.raises(PatchError, match=r"ops\.cpp"):
        apply(root)
    assert {p: p.read_text() for p in (root / CPU_DIR).iterdir()} == before


def test_not_a_source_tree_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PatchError, match="missing"):
        apply(tmp_path)


def test_the_digest_names_the_patch_text() -> None:
    assert len(llama_patch.DIGEST) == 12
    assert llama_patch._digest() == llama_patch.DIGEST
