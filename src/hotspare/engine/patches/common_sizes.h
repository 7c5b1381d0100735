
// hotspare: grouped short-query flash attention (ops.cpp, ggml_compute_forward_flash_attn_ext_grouped).
// Queries with fewer than GGML_FA_TILE_Q rows are computed per KV head, all query heads that share it
// (GQA) and all query tokens together, over KV tiles of HS_FA_KV cells, with the KV range split into
// chunks so that every thread has work; per-chunk partial results are merged at the end. The sizes
// below are used both by the work-buffer plan (ggml-cpu.c) and by the kernel: keep them in one place.
#define HS_FA_KV 64

static inline int64_t hs_fa_grouped_nchunks(int64_t nth, int64_t n_kv_heads, int64_t n_kv) {
    int64_t want = (2*nth + n_kv_heads - 1) / n_kv_heads;
    const int64_t tiles = (n_kv + HS_FA_KV - 1) / HS_FA_KV;
    if (want > tiles) {
        want = tiles;
    }
    return want < 1 ? 1 : want;
}

// floats of scratch per thread for `rows` query rows of one KV head
static inline int64_t hs_fa_grouped_scratch(int64_t rows, int64_t DK, int64_t DV) {
    return rows*(2*DK + 2*HS_FA_KV + DV + 1) + HS_FA_KV*(DK + DV) + 16;
}

// floats of partial results (max, sum, DV accumulators) for every query row and KV chunk
static inline int64_t hs_fa_grouped_partials(int64_t n_head, int64_t n_tokens, int64_t nch, int64_t DV) {
    return n_head*n_tokens*nch*(2 + DV);
}
