"""The installed llama.cpp's CPU flash attention against a float64 numpy reference
(engine/fa_check.py): the shapes the engine meets -- one decode token, a short turn, just under and
over the 64-row tile threshold, prefill chunks of 300 and 512 tokens after a cached context (the
grouped kernel) and at a prompt's start (llama.cpp's tiled kernel), GQA and plain multi-head, one and
two threads, masks with another conversation's cells and a partial last tile. The build hotspare
installs carries its grouped kernel (engine/llama_patch.py); llama.cpp's stock short path is ~2e-3
off here, so these fail on a build without it."""

from __future__ import annotations

import pytest

from hotspare.engine.build import read_marker
from hotspare.engine.fa_check import Shape, max_error
from hotspare.engine.llama_patch import DIGEST

TOLERANCE = 1e-4


@pytest.mark.parametrize("n_tokens", [1, 2, 19, 63, 64, 100, 300, 512])
@pytest.mark.parametrize("n_kv", [40, 700, 2100])
@pytest.mark.parametrize("threads", [1, 2])
def test_flash_attention_matches_the_reference(n_tokens: int, n_kv: int, threads: int) -> None:
    if n_tokens > n_kv:
        pytest.skip("more query tokens than cells")
    error = max_error(Shape(n_tokens, n_kv, threads=threads), seed=n_tokens * 7 + n_kv)
    assert error < TOLERANCE


@pytest.mark.parametrize(("n_head", "n_head_kv", "head_dim"), [(4, 4, 64), (8, 1, 128), (6, 2, 80)])
def test_other_head_layouts_match_the_reference(n_head: int, n_head_kv: int, head_dim: int) -> None:
    for n_tokens in (1, 7, 33, 200):
        shape = Shape(n_tokens, 900, n_head=n_head, n_head_kv=n_head_kv, head_dim=head_dim)
        assert max_error(shape, seed=n_tokens) < TOLERANCE


@pytest.mark.parametrize("n_tokens", [1, 3, 8, 16])
@pytest.mark.parametrize("threads", [1, 2])
def test_a_batch_of_streams_matches_the_reference(n_tokens: int, threads: int) -> None:
    """A batched decode step: every query token belongs to its own conversation, so each KV tile
    has one token's rows active (hotspare's few-rows path) whatever the batch size; K/V laid out
    as the KV cache holds them."""
    shape = Shape(n_tokens, 3000, threads=threads, streams=True, cell_major=True)
    assert max_error(shape, seed=n_tokens) < TOLERANCE


@pytest.mark.parametrize("n_tokens", [1, 4, 19, 40, 130])
def test_the_kv_cache_layout_matches_the_reference(n_tokens: int) -> None:
    """K and V as llama.cpp's KV cache stores them (one cell's heads side by side), as in the engine."""
    for head_layout in ((9, 3, 64), (8, 1, 128), (6, 2, 80)):
        n_head, n_head_kv, head_dim = head_layout
        shape = Shape(n_tokens, 1500, n_head=n_head, n_head_kv=n_head_kv, head_dim=head_dim, cell_major=True)
        assert max_error(shape, seed=n_tokens) < TOLERANCE


def test_a_batch_whose_partial_results_would_not_fit_is_still_right() -> None:
    """512 tokens on 16 threads: 64 KV chunks of partial results would take 78 MB, over the kernel's
    64 MB (patches/common_sizes.h), so llama.cpp's tiled kernel takes it; a wrong work-buffer plan
    for that choice would crash or corrupt here."""
    assert max_error(Shape(512, 3000, threads=16, cell_major=True), seed=5) < TOLERANCE


def test_the_installed_build_carries_this_patch() -> None:
    """scripts/install builds llama.cpp through engine/build.py, which records the patch it applied."""
    assert read_marker().get("patch") == DIGEST
