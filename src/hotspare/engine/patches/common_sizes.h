
// hotspare: grouped short-query flash attention (ops.cpp, ggml_compute_forward_flash_attn_ext_grouped).
// Queries with fewer than GGML_FA_TILE_Q rows are computed per range of KV cells ("chunk"), all KV
// heads, all query heads that share each (GQA) and all query tokens together, over KV tiles of
// HS_FA_KV cells; per-chunk partial results are merged at the end. The sizes below are used both by
// the work-buffer plan (ggml-cpu.c) and by the kernel: keep them in one place.
#define HS_FA_KV 64

// chunks of the KV range: several per thread, so that threads finishing early take more work
static inline int64_t hs_fa_grouped_nchunks(int64_t nth, int64_t n_kv) {
    int64_t want = 4*nth;
    const int64_t tiles = (n_kv + HS_FA_KV - 1) / HS_FA_KV;
    if (want > tiles) {
        want = tiles;
    }
    return want < 1 ? 1 : want;
}

// query-row columns of one KV head's score GEMM: padded to a multiple of 64 (full register blocking)
// when that wastes at most a quarter, else to a multiple of 16
static inline int64_t hs_fa_grouped_cols(int64_t rows) {
    const int64_t p64 = (rows + 63)/64*64;
    return p64 - rows <= rows/4 ? p64 : (rows + 15)/16*16;
}

// floats of scratch per thread: n_tokens query tokens, n_head query heads over n_kv_heads KV heads
static inline int64_t hs_fa_grouped_scratch(int64_t n_tokens, int64_t n_head, int64_t n_kv_heads,
                                            int64_t DK, int64_t DV) {
    const int64_t R = n_tokens*(n_head/n_kv_heads), all = R*n_kv_heads, cols = hs_fa_grouped_cols(R);
    return all*DK                   // scaled queries, every KV head
         + n_kv_heads*cols*DK       // transposed queries per KV head (score GEMM)
         + HS_FA_KV*(DK + DV)       // a K and a V tile in f32 (GEMM path)
         + HS_FA_KV*cols            // scores, tile-major (GEMM path)
         + all*HS_FA_KV             // scores, row-major, every KV head
         + cols*DV                  // values of one head's rows (GEMM path)
         + (n_tokens + 1)*HS_FA_KV  // the tile's mask rows in f32, one head's
         + all + n_tokens + 2*n_kv_heads  // int32: active rows, active tokens, two per KV head
         + 64;
}

// floats of partial results (max, sum, DV accumulators) for every query row and KV chunk
static inline int64_t hs_fa_grouped_partials(int64_t n_head, int64_t n_tokens, int64_t nch, int64_t DV) {
    return n_head*n_tokens*nch*(2 + DV);
}
