
// hotspare: grouped flash attention (ops.cpp, ggml_compute_forward_flash_attn_ext_grouped).
// Queries of fewer than HS_FA_MAX_Q tokens are computed per range of KV cells ("chunk"), all KV
// heads, all query heads that share each (GQA) and all query tokens together, over KV tiles of
// HS_FA_KV cells; per-chunk partial results are merged at the end. The sizes below are used both by
// the work-buffer plan (ggml-cpu.c) and by the kernel: keep them in one place.
#define HS_FA_KV 64
// the most query tokens the kernel takes (the engine's steps are at most 512 tokens); larger batches
// keep llama.cpp's tiled kernel. Scratch and partials grow linearly with the tokens.
#define HS_FA_MAX_Q 1024

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

// whether the kernel takes n_tokens query tokens over n_kv cells (n_head query heads, DV-wide values,
// nth threads): every batch of fewer than 64 (the stock kernel walks every cell once per row); a
// larger one only when the cells are at least twice the tokens, a batch after a cached context, and
// its partial results fit HS_FA_MAX_PARTIALS (they grow with tokens x chunks, and the chunks with the
// threads). Measured (2 threads, one layer, GQA 9/3): 64 tokens after 2.2k took 4.2 ms instead of
// 6.8, 512 after 6.1k 77 instead of 96; but 512 tokens over 520 cells, a prompt's first chunk, took
// 8.3 instead of 6.4 (the merge of the chunks' partial results costs more than the little attention
// there is).
#define HS_FA_MAX_PARTIALS ((int64_t) 64 << 20)

static inline bool hs_fa_grouped_takes(int64_t n_tokens, int64_t n_kv, int64_t n_head, int64_t DV, int64_t nth) {
    if (n_tokens < 64) {
        return true;
    }
    if (n_tokens >= HS_FA_MAX_Q || n_kv < 2*n_tokens) {
        return false;
    }
    const int64_t nch = hs_fa_grouped_nchunks(nth, n_kv);
    return hs_fa_grouped_partials(n_head, n_tokens, nch, DV)*(int64_t) sizeof(float) <= HS_FA_MAX_PARTIALS;
}
