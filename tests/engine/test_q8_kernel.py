"""The installed llama.cpp's Q8_0 matrix product against the exact product (engine/q8_check.py):
hotspare's repacked layout (engine/patches/q8_repack.cpp) for every tile shape its dispatch picks --
1 to 9 tokens (the remainder tiles, with 1, 2 or 4 row groups per pass), a turn of 19 or 28, a
prefill chunk of 130 or 512 -- on 1 to 4 threads (the row groups are shared out in chunks), and
llama.cpp's own kernel on the same inputs as a check on the harness. The engine's weights file must
load into the layout on a host that has it.

The layout exists only in builds for AVX-512 VNNI: elsewhere those tests skip, and say so."""

from __future__ import annotations

import pytest

from hotspare.engine.q8_check import Shape, active, max_error

TOLERANCE = 1e-5  # float32 summation is ~3e-7 here; a wrong lane, row or block is off by ~1

needs_layout = pytest.mark.skipif(not active(), reason="no repacked Q8_0 layout here (AVX-512 VNNI)")


@needs_layout
@pytest.mark.parametrize("tokens", [1, 2, 3, 4, 5, 6, 7, 8, 9, 19, 28, 130])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_the_repacked_product_is_exact_up_to_rounding(tokens: int, threads: int) -> None:
    for rows, k in ((16, 32), (80, 576), (576, 1536)):
        assert max_error(Shape(rows, k, tokens, threads=threads), seed=rows + tokens) < TOLERANCE


@needs_layout
def test_a_prefill_chunk_and_many_threads() -> None:
    assert max_error(Shape(1536, 576, 512, threads=2)) < TOLERANCE
    assert max_error(Shape(192, 576, 64, threads=16)) < TOLERANCE  # more threads than row chunks


@pytest.mark.parametrize("tokens", [1, 8, 19])
def test_llamas_own_q8_product_is_exact_up_to_rounding(tokens: int) -> None:
    assert max_error(Shape(80, 576, tokens, repacked=False), seed=tokens) < TOLERANCE


def test_rows_not_in_groups_of_16_are_refused() -> None:
    with pytest.raises(ValueError, match="groups of 16"):
        max_error(Shape(24, 64, 1))
