
// hotspare: grouped flash attention (ops.cpp, ggml_compute_forward_flash_attn_ext_grouped).
// Queries of fewer than HS_FA_MAX_Q tokens are computed per range of KV cells ("chunk"), all KV
// heads, all query heads that share each (GQA) and all query tokens together, over KV tiles of
// HS_FA_KV cells; per-chunk partial results are merged at the end. The sizes below are used both by
// the work-buffer plan (ggml-cpu.c) and by the kernel: keep them in one place.
#define HS_FA_KV 64
// the most query tokens the kernel takes (the engine's steps are at most 512 tokens); larger batches
// keep llama.cpp's tiled kernel. Scratch and partials grow linearly with the tokens.
#define HS_FA_MAX_Q 1024

// whether the kernel takes n_tokens query tokens over n_kv cells: every batch of fewer than 64 (the
// stock kernel walks every cell once per row); a larger one only when the cells are at least twice
// the tokens, a batch after a cached context. Measured (2 threads, one layer, GQA 9/3): 64 tokens
// after 2.2k took 3.7 ms instead of 7.5, 512 after 4.3k 56 instead of 71; but 512 tokens over 520
// cells, a prompt's first chunk, took 8.3 instead of 6.4 (the merge of the chunks' partial results
// costs more than the little attention there is).
static inline bool hs_fa_grouped_takes(int64_t n_tokens, int64_t n_kv) {
    return n_tokens < 64 || (n_tokens < HS_FA_MAX_Q && n_kv >= 2*n_tokens);
}

// chunks of the KV range: several per thread, so that threads finishing early take more work
static inline int64_t hs_fa_grouped_nchunks(int64_t nth, int64_t n_kv) {
    int64_t want = 4*nth;
    const int64_t tiles = (n_kv + HS_FA_KV - 1) / HS_FA_KV;
    if (want > tiles) {
        want = tiles;
    }
    return want < 1 ? 1 : want;
}

// floats of scratch per thread: n_tokens query tokens, n_head query heads over n_kv_heads KV heads
static inline int64_t hs_fa_grouped_scratch(int64_t n_tokens, int64_t n_head, int64_t n_kv_heads,
                                            int64_t DK, int64_t DV) {
    const int64_t R = n_tokens*(n_head/n_kv_heads), all = R*n_kv_heads;
    return all*DK                   // scaled queries, every KV head
         + R*DK                     // one head's active rows gathered (GEMM path)
         + HS_FA_KV*(2*DK + DV)     // a K tile, the same transposed, a V tile, in f32 (GEMM path)
         + all*HS_FA_KV             // scores, row-major, every KV head
         + R*DV                     // values of one head's rows (GEMM path)
         + (n_tokens + 1)*HS_FA_KV  // the tile's mask rows in f32, one head's
         + all + n_tokens + n_kv_heads  // int32: active rows, active tokens, one per KV head
         + 64;
}

// floats of partial results (max, sum, DV accumulators) for every query row and KV chunk
static inline int64_t hs_fa_grouped_partials(int64_t n_head, int64_t n_tokens, int64_t nch, int64_t DV) {
    return n_head*n_tokens*nch*(2 + DV);
}
