// ---- hotspare: grouped flash attention ------------------------------------------------------
//
// The stock CPU path for fewer than GGML_FA_TILE_Q query rows walks every KV cell once per query
// row and head (a 64-wide dot product, an expf and a 64-wide f16 multiply-add per cell, one call
// each). At a few thousand cached tokens that costs ~50 ms per query row on a 2-core host, so a
// 19-token turn after a 4k context took ~1 s while the non-flash path took ~0.12 s. Its tiled path
// for larger batches converts every K/V tile once per query head (not once per KV head) and pads
// each head's rows to 64: 64 tokens after 2.2k cells took twice as long as this kernel.
//
// This kernel takes every batch of fewer than 64 tokens, and larger ones (up to HS_FA_MAX_Q) over at
// least twice as many cells (hs_fa_grouped_takes). It splits the KV range into chunks (several per
// thread, taken dynamically) and computes, for one chunk, every KV head and all query rows that read
// it -- every query token times the query heads that share the KV head (GQA) -- tile by tile
// (HS_FA_KV cells). Per tile and KV head it finds the rows the mask lets see the tile (other
// sequences' cells, idle cells and padding are left out; a tile no row attends is skipped before
// anything is read), then takes one of two paths:
// - few rows (a decode step: one token times GQA rows; a batch of streams, where each tile belongs
//   to one stream): the scores are dot products straight from the f16 K rows, converted in
//   registers, and the values are accumulated from the f16 V rows the same way. No tile is copied or
//   transposed, and a cell's K row (all KV heads) is read once, front to back: reading each head's
//   slice in a separate pass ran at half the memory bandwidth here (measured: 13.1 vs 6.8 ms for the
//   same bytes on one thread). At 6k cached tokens one decode step's attention took 33 ms on one
//   thread with the GEMM path and 15 ms with this one.
// - many rows (a turn of several tokens, a prefill chunk): the K tile is converted to f32 and
//   transposed, the V tile converted, the scores of all active rows come from one GEMM and the
//   values from a second, both 64 columns wide (whole register blocks of hs_gemm).
// Each (chunk, KV head) keeps a running (max, sum, accumulator) per row, merged at the end like the
// stock decode path does. Accumulation is f32 throughout.
//
// HOTSPARE_FA_GROUPED=0 in the environment turns it off (the stock kernels run), for A/B timing.

static bool hs_fa_grouped_enabled() {
    static const bool enabled = [] {
        const char * e = getenv("HOTSPARE_FA_GROUPED");
        return e == nullptr || strcmp(e, "0") != 0;
    }();
    return enabled;
}

static bool hs_fa_grouped_applies(const ggml_compute_params * params, const ggml_tensor * dst) {
    const ggml_tensor * q = dst->src[0];
    const ggml_tensor * k = dst->src[1];
    const ggml_tensor * v = dst->src[2];
    const ggml_tensor * mask = dst->src[3];
    return !params->use_ref && hs_fa_grouped_enabled() &&
           q->type == GGML_TYPE_F32 && k->type == v->type &&
           (k->type == GGML_TYPE_F16 || k->type == GGML_TYPE_F32) &&
           hs_fa_grouped_takes(q->ne[1], k->ne[1], q->ne[2], v->ne[0], params->nth) && q->ne[3] == 1 && k->ne[3] == 1 && v->ne[3] == 1 &&
           k->ne[2] > 0 && k->ne[2] == v->ne[2] && q->ne[2] % k->ne[2] == 0 &&
           (mask == nullptr || (mask->type == GGML_TYPE_F16 && mask->ne[0] >= k->ne[1] && mask->ne[1] >= q->ne[1]));
}

// one KV row (f16 or f32) to f32
static inline void hs_fa_row_f32(const char * src, ggml_type type, float * out, int64_t n) {
    if (type == GGML_TYPE_F16) {
        ggml_cpu_fp16_to_fp32((const ggml_fp16_t *) src, out, n);
    } else {
        memcpy(out, src, n*sizeof(float));
    }
}

// ---- vectors for the few-rows path: f16 loaded and converted in registers ----
// x86 only (AVX-512, or AVX2 with F16C and FMA); elsewhere every tile takes the GEMM path.
#if defined(__AVX512F__)
#define HS_FA_DOT 1
#define HS_FA_EPR 16
#define HS_FA_NREG 32
typedef __m512 hs_vec;
static inline hs_vec hs_load_f16(const ggml_fp16_t * p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) p)); }
static inline hs_vec hs_load(const float * p) { return _mm512_loadu_ps(p); }
static inline void   hs_store(float * p, hs_vec x) { _mm512_storeu_ps(p, x); }
static inline hs_vec hs_set1(float x) { return _mm512_set1_ps(x); }
static inline hs_vec hs_zero() { return _mm512_setzero_ps(); }
static inline hs_vec hs_add(hs_vec a, hs_vec b) { return _mm512_add_ps(a, b); }
static inline hs_vec hs_madd(hs_vec a, hs_vec b, hs_vec c) { return _mm512_fmadd_ps(a, b, c); }
static inline float  hs_hsum(hs_vec x) { return _mm512_reduce_add_ps(x); }
static inline hs_vec hs_max(hs_vec a, hs_vec b) { return _mm512_max_ps(a, b); }
static inline float  hs_hmax(hs_vec x) { return _mm512_reduce_max_ps(x); }
// dst[c*ds + r] = src[r*ss + c] for a 16 x 16 block (interleave 32-bit, 64-bit, 128-bit, 256-bit)
static inline void hs_transpose_block(const float * src, int64_t ss, float * dst, int64_t ds) {
    __m512 r[16], t[16];
    for (int i = 0; i < 16; ++i) {
        r[i] = _mm512_loadu_ps(src + i*ss);
    }
    for (int i = 0; i < 16; i += 2) {
        t[i]     = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i]     = _mm512_shuffle_ps(t[i],     t[i + 2], 0x44);
        r[i + 1] = _mm512_shuffle_ps(t[i],     t[i + 2], 0xEE);
        r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 16; i += 8) {
        for (int j = 0; j < 4; ++j) {
            t[i + j]     = _mm512_shuffle_f32x4(r[i + j], r[i + j + 4], 0x88);
            t[i + j + 4] = _mm512_shuffle_f32x4(r[i + j], r[i + j + 4], 0xDD);
        }
    }
    for (int j = 0; j < 8; ++j) {
        r[j]     = _mm512_shuffle_f32x4(t[j], t[j + 8], 0x88);
        r[j + 8] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0xDD);
    }
    for (int i = 0; i < 16; ++i) {
        _mm512_storeu_ps(dst + i*ds, r[i]);
    }
}
#elif defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)
#define HS_FA_DOT 1
#define HS_FA_EPR 8
#define HS_FA_NREG 16
typedef __m256 hs_vec;
static inline hs_vec hs_load_f16(const ggml_fp16_t * p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) p)); }
static inline hs_vec hs_load(const float * p) { return _mm256_loadu_ps(p); }
static inline void   hs_store(float * p, hs_vec x) { _mm256_storeu_ps(p, x); }
static inline hs_vec hs_set1(float x) { return _mm256_set1_ps(x); }
static inline hs_vec hs_zero() { return _mm256_setzero_ps(); }
static inline hs_vec hs_add(hs_vec a, hs_vec b) { return _mm256_add_ps(a, b); }
static inline hs_vec hs_madd(hs_vec a, hs_vec b, hs_vec c) { return _mm256_fmadd_ps(a, b, c); }
static inline float  hs_hsum(hs_vec x) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
static inline hs_vec hs_max(hs_vec a, hs_vec b) { return _mm256_max_ps(a, b); }
static inline float  hs_hmax(hs_vec x) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
// dst[c*ds + r] = src[r*ss + c] for an 8 x 8 block
static inline void hs_transpose_block(const float * src, int64_t ss, float * dst, int64_t ds) {
    __m256 r[8], t[8];
    for (int i = 0; i < 8; ++i) {
        r[i] = _mm256_loadu_ps(src + i*ss);
    }
    for (int i = 0; i < 8; i += 2) {
        t[i]     = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        r[i]     = _mm256_shuffle_ps(t[i],     t[i + 2], 0x44);
        r[i + 1] = _mm256_shuffle_ps(t[i],     t[i + 2], 0xEE);
        r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int j = 0; j < 4; ++j) {
        t[j]     = _mm256_permute2f128_ps(r[j], r[j + 4], 0x20);
        t[j + 4] = _mm256_permute2f128_ps(r[j], r[j + 4], 0x31);
    }
    for (int i = 0; i < 8; ++i) {
        _mm256_storeu_ps(dst + i*ds, t[i]);
    }
}
#else
#define HS_FA_DOT 0
#endif

#if HS_FA_DOT
// C[M x N] = A[M x K] B[K x N] (overwritten, not accumulated), N a multiple of HS_GEMM_RN vectors:
// the GEMM path's two products. llama.cpp's simd_gemm blocks 4 rows x 4 vectors on AVX-512 and
// adds into C (so C is cleared first); measured alone on the AMD host (57 x 64 x 64, the shape of a
// 19-token turn's tile), its block reaches 2.7 G vector FMAs/s of the core's 3.5, a 6 x 4 block 3.35.
#if defined(__AVX512F__)
#define HS_GEMM_RM 6
#define HS_GEMM_RN 4
#else
#define HS_GEMM_RM 6
#define HS_GEMM_RN 2
#endif

template <int RM>
static inline void hs_gemm_block(float * C, const float * A, const float * B, int64_t K, int64_t N) {
    hs_vec acc[RM][HS_GEMM_RN];
    for (int i = 0; i < RM; ++i) {
        for (int r = 0; r < HS_GEMM_RN; ++r) {
            acc[i][r] = hs_zero();
        }
    }
    for (int64_t kk = 0; kk < K; ++kk) {
        hs_vec b[HS_GEMM_RN];
        for (int r = 0; r < HS_GEMM_RN; ++r) {
            b[r] = hs_load(B + kk*N + r*HS_FA_EPR);
        }
        for (int i = 0; i < RM; ++i) {
            const hs_vec a = hs_set1(A[i*K + kk]);
            for (int r = 0; r < HS_GEMM_RN; ++r) {
                acc[i][r] = hs_madd(a, b[r], acc[i][r]);
            }
        }
    }
    for (int i = 0; i < RM; ++i) {
        for (int r = 0; r < HS_GEMM_RN; ++r) {
            hs_store(C + i*N + r*HS_FA_EPR, acc[i][r]);
        }
    }
}

template <int RM>
static inline void hs_gemm_rows(float * C, const float * A, const float * B, int64_t K, int64_t N) {
    for (int64_t j = 0; j < N; j += HS_GEMM_RN*HS_FA_EPR) {
        hs_gemm_block<RM>(C + j, A, B + j, K, N);
    }
}

static bool hs_gemm_fits(int64_t N) { return N % (HS_GEMM_RN*HS_FA_EPR) == 0; }

static void hs_gemm(float * C, const float * A, const float * B, int64_t M, int64_t K, int64_t N) {
    int64_t i = 0;
    for (; i + HS_GEMM_RM <= M; i += HS_GEMM_RM) {
        hs_gemm_rows<HS_GEMM_RM>(C + i*N, A + i*K, B, K, N);
    }
    switch (M - i) {
        case 5: hs_gemm_rows<5>(C + i*N, A + i*K, B, K, N); break;
        case 4: hs_gemm_rows<4>(C + i*N, A + i*K, B, K, N); break;
        case 3: hs_gemm_rows<3>(C + i*N, A + i*K, B, K, N); break;
        case 2: hs_gemm_rows<2>(C + i*N, A + i*K, B, K, N); break;
        case 1: hs_gemm_rows<1>(C + i*N, A + i*K, B, K, N); break;
        default: break;
    }
}
#endif

// C[M x N] = A[M x K] B[K x N]
static void hs_fa_product(float * C, const float * A, const float * B, int64_t M, int64_t K, int64_t N) {
#if HS_FA_DOT
    if (hs_gemm_fits(N)) {
        hs_gemm(C, A, B, M, K, N);
        return;
    }
#endif
    memset(C, 0, M*N*sizeof(float));
    simd_gemm(C, A, B, (int) M, (int) K, (int) N);
}

// a tile takes the few-rows path when no KV head has more active rows than this
#define HS_FA_DOT_ROWS 12
// widest K/V row (in vectors) the few-rows path keeps in registers
#define HS_FA_DOT_VECS 8

struct hs_fa_shape {
    int64_t DK, DV, N, G, R, HK;  // key/value width, query tokens, heads per KV head, rows per KV head, KV heads
    int64_t nek1, nch, cs;        // KV cells, KV chunks, cells per chunk
    float scale, softcap, max_bias, m0, m1;
    uint32_t n_head_log2;
    bool dot;                     // the few-rows path is available for these shapes and types
};

static inline float hs_fa_slope(const hs_fa_shape & s, int64_t h) {
    if (s.max_bias <= 0.0f) {
        return 1.0f;
    }
    return h < s.n_head_log2 ? powf(s.m0, h + 1) : powf(s.m1, 2*(h - s.n_head_log2) + 1);
}

// (max, sum, DV accumulators) of KV head h's rows in chunk c
static inline float * hs_fa_partial(const hs_fa_shape & s, float * partials, int64_t h, int64_t c) {
    return partials + (h*s.nch + c)*s.R*(2 + s.DV);
}

static inline const ggml_fp16_t * hs_fa_mask_row(const ggml_tensor * mask, int64_t t, int64_t h) {
    return (const ggml_fp16_t *) ((const char *) mask->data + t*mask->nb[1] + (h % mask->ne[2])*mask->nb[2]);
}

// what the mask says about cells [ic, ic + n) for one row: HS_FA_NONE (all -inf: the row skips the
// tile), HS_FA_OPEN (all 0: nothing to add) or HS_FA_MIXED. One pass without early exit, so it
// vectorizes; f16 -inf is 0xFC00, +0 and -0 are 0x0000 and 0x8000.
enum { HS_FA_NONE = 0, HS_FA_OPEN = 1, HS_FA_MIXED = 2 };

static inline int32_t hs_fa_mask_kind(const ggml_fp16_t * mp, int64_t ic, int64_t n) {
    const uint16_t * m = (const uint16_t *) mp + ic;
    uint32_t seen = 0, nonzero = 0;
    for (int64_t j = 0; j < n; ++j) {
        seen    |= m[j] != 0xFC00;
        nonzero |= (m[j] & 0x7FFF) != 0;
    }
    return !seen ? HS_FA_NONE : nonzero ? HS_FA_MIXED : HS_FA_OPEN;
}

// rows of every KV head that the mask lets see at least one cell of [ic, ic + n): act + h*R holds
// KV head h's, na[h] of them. Returns the largest count. With one mask for all heads (the usual),
// each query token's mask row is read once: kind[t] is its HS_FA_* and, when mixed, mf + t*HS_FA_KV
// holds its values in f32.
static int64_t hs_fa_active_rows(const hs_fa_shape & s, const ggml_tensor * mask, int64_t ic, int64_t n,
                                 int32_t * act, int32_t * na, int32_t * kind, float * mf) {
    int64_t most = 0;
    if (mask != nullptr && mask->ne[2] == 1) {
        for (int64_t t = 0; t < s.N; ++t) {
            const ggml_fp16_t * mp = hs_fa_mask_row(mask, t, 0);
            kind[t] = hs_fa_mask_kind(mp, ic, n);
            if (kind[t] == HS_FA_MIXED) {
                ggml_cpu_fp16_to_fp32(mp + ic, mf + t*HS_FA_KV, n);
            }
        }
    }
    for (int64_t h = 0; h < s.HK; ++h) {
        int32_t * ah = act + h*s.R;
        int32_t cnt = 0;
        for (int64_t r = 0; r < s.R; ++r) {
            const int64_t t = r / s.G;
            const bool sees = mask == nullptr ? true
                            : mask->ne[2] == 1 ? kind[t] != HS_FA_NONE
                            : hs_fa_mask_kind(hs_fa_mask_row(mask, t, h*s.G + r % s.G), ic, n) != HS_FA_NONE;
            if (sees) {
                ah[cnt++] = (int32_t) r;
            }
        }
        na[h] = cnt;
        most = std::max<int64_t>(most, cnt);
    }
    return most;
}

static inline float hs_fa_max(const float * x, int64_t n) {
#if HS_FA_DOT
    int64_t j = 0;
    float m = -INFINITY;
    if (n >= HS_FA_EPR) {
        hs_vec v = hs_load(x);
        for (j = HS_FA_EPR; j + HS_FA_EPR <= n; j += HS_FA_EPR) {
            v = hs_max(v, hs_load(x + j));
        }
        m = hs_hmax(v);
    }
    for (; j < n; ++j) {
        m = fmaxf(m, x[j]);
    }
    return m;
#else
    float m;
    ggml_vec_max_f32((int) n, &m, x);
    return m;
#endif
}

// softcap and mask of one active row's raw scores over a tile, then the online-softmax step: `row`
// becomes exp(score - max), the row's running (max, sum, accumulator) in `pr` is rescaled. Cells
// from n to width get zero weight. `kind`/`mf`: the row's token's mask over the tile as
// hs_fa_active_rows left it; a per-head mask is read here, into `tmp`.
static void hs_fa_softmax_row(const hs_fa_shape & s, const ggml_tensor * mask, int64_t ik2, int64_t r,
                              int64_t ic, int64_t n, int64_t width, const int32_t * kind, const float * mf,
                              float * tmp, float * row, float * pr) {
    const int64_t t = r / s.G, h = ik2*s.G + r % s.G;
    if (s.softcap != 0.0f) {
        for (int64_t j = 0; j < n; ++j) {
            row[j] = s.softcap*tanhf(row[j]);
        }
    }
    const float * add = nullptr;
    if (mask != nullptr && mask->ne[2] != 1) {
        ggml_cpu_fp16_to_fp32(hs_fa_mask_row(mask, t, h) + ic, tmp, n);
        add = tmp;
    } else if (mask != nullptr && kind[t] == HS_FA_MIXED) {
        add = mf + t*HS_FA_KV;
    }
    if (add != nullptr) {
        ggml_vec_mad_f32((int) n, row, add, hs_fa_slope(s, h));
    }
    for (int64_t j = n; j < width; ++j) {
        row[j] = -INFINITY;
    }
    const float tile_max = hs_fa_max(row, width);
    if (tile_max == -INFINITY) {
        memset(row, 0, width*sizeof(float));
        return;
    }
    const float m_new = fmaxf(pr[0], tile_max);
    if (m_new > pr[0]) {
        const float ms = expf(pr[0] - m_new);
        ggml_vec_scale_f32((int) s.DV, pr + 2, ms);
        pr[1] *= ms;
    }
    pr[0] = m_new;
    pr[1] += (float) ggml_vec_soft_max_f32((int) width, row, row, m_new);
}

#if HS_FA_DOT
// scores of every KV head's active rows against the f16 K rows of cells [ic, ic + n), all heads of
// a cell read together; S + (h*R + a)*HS_FA_KV is active row a of head h. The V rows the next pass
// reads are prefetched meanwhile (measured: a decode step's attention at 6k cells took 23-26 ms
// on one thread without, 18 with).
template <int NK>
static void hs_fa_dot_scores(const hs_fa_shape & s, const ggml_tensor * k, const ggml_tensor * v, int64_t ic,
                             int64_t n, const float * Qall, const int32_t * act, const int32_t * na, float * S) {
    for (int64_t j = 0; j < n; ++j) {
        const char * cell = (const char *) k->data + (ic + j)*k->nb[1];
        const char * vcell = (const char *) v->data + (ic + j)*v->nb[1];
        for (int64_t h = 0; h < s.HK; ++h) {
            if (na[h] == 0) {
                continue;
            }
            for (int64_t o = 0; o < s.DV*(int64_t) sizeof(ggml_fp16_t); o += 64) {
                _mm_prefetch(vcell + h*v->nb[2] + o, _MM_HINT_T0);
            }
            const ggml_fp16_t * kr = (const ggml_fp16_t *) (cell + h*k->nb[2]);
            hs_vec kv[NK];
            for (int i = 0; i < NK; ++i) {
                kv[i] = hs_load_f16(kr + i*HS_FA_EPR);
            }
            const int32_t * ah = act + h*s.R;
            for (int32_t a = 0; a < na[h]; ++a) {
                const float * q = Qall + (h*s.R + ah[a])*s.DK;
                hs_vec x = hs_zero(), y = hs_zero();
                for (int i = 0; i + 1 < NK; i += 2) {
                    x = hs_madd(kv[i], hs_load(q + i*HS_FA_EPR), x);
                    y = hs_madd(kv[i + 1], hs_load(q + (i + 1)*HS_FA_EPR), y);
                }
                if (NK % 2) {
                    x = hs_madd(kv[NK - 1], hs_load(q + (NK - 1)*HS_FA_EPR), x);
                }
                S[(h*s.R + a)*HS_FA_KV + j] = hs_hsum(hs_add(x, y));
            }
        }
    }
}

// acc[b] += sum over cells j of w[b][j] * V row j, for RB rows, V rows f16 of NV vectors
template <int NV, int RB>
static void hs_fa_dot_values(const char * vcell, size_t stride, int64_t n, const float * const * w, float * const * acc) {
    hs_vec A[RB][NV];
    for (int b = 0; b < RB; ++b) {
        for (int i = 0; i < NV; ++i) {
            A[b][i] = hs_load(acc[b] + i*HS_FA_EPR);
        }
    }
    for (int64_t j = 0; j < n; ++j) {
        const ggml_fp16_t * vr = (const ggml_fp16_t *) (vcell + j*stride);
        hs_vec vv[NV];
        for (int i = 0; i < NV; ++i) {
            vv[i] = hs_load_f16(vr + i*HS_FA_EPR);
        }
        for (int b = 0; b < RB; ++b) {
            const hs_vec p = hs_set1(w[b][j]);
            for (int i = 0; i < NV; ++i) {
                A[b][i] = hs_madd(vv[i], p, A[b][i]);
            }
        }
    }
    for (int b = 0; b < RB; ++b) {
        for (int i = 0; i < NV; ++i) {
            hs_store(acc[b] + i*HS_FA_EPR, A[b][i]);
        }
    }
}

// rows per register block: RB x NV accumulators plus NV values and a weight fit the registers
template <int NV>
static void hs_fa_dot_values_rows(const char * vcell, size_t stride, int64_t n, const float * const * w,
                                  float * const * acc, int64_t rows) {
    constexpr int RB = (HS_FA_NREG - NV - 2)/NV >= 4 ? 4 : (HS_FA_NREG - NV - 2)/NV >= 2 ? 2 : 1;
    int64_t b = 0;
    for (; b + RB <= rows; b += RB) {
        hs_fa_dot_values<NV, RB>(vcell, stride, n, w + b, acc + b);
    }
    for (; b < rows; ++b) {
        hs_fa_dot_values<NV, 1>(vcell, stride, n, w + b, acc + b);
    }
}

static bool hs_fa_dot_supported(int64_t d) {
    return d % HS_FA_EPR == 0 && d/HS_FA_EPR >= 1 && d/HS_FA_EPR <= HS_FA_DOT_VECS;
}

// the few-rows path over one tile of chunk c, every KV head
static void hs_fa_dot_tile(const hs_fa_shape & s, const ggml_tensor * dst, int64_t ic, int64_t n,
                           const float * Qall, const int32_t * act, const int32_t * na, const int32_t * kind,
                           const float * mf, float * tmp, float * S, float * partials, int64_t c) {
    const ggml_tensor * k = dst->src[1];
    const ggml_tensor * v = dst->src[2];
    const ggml_tensor * mask = dst->src[3];
    switch (s.DK/HS_FA_EPR) {
        case 1: hs_fa_dot_scores<1>(s, k, v, ic, n, Qall, act, na, S); break;
        case 2: hs_fa_dot_scores<2>(s, k, v, ic, n, Qall, act, na, S); break;
        case 3: hs_fa_dot_scores<3>(s, k, v, ic, n, Qall, act, na, S); break;
        case 4: hs_fa_dot_scores<4>(s, k, v, ic, n, Qall, act, na, S); break;
        case 5: hs_fa_dot_scores<5>(s, k, v, ic, n, Qall, act, na, S); break;
        case 6: hs_fa_dot_scores<6>(s, k, v, ic, n, Qall, act, na, S); break;
        case 7: hs_fa_dot_scores<7>(s, k, v, ic, n, Qall, act, na, S); break;
        default: hs_fa_dot_scores<8>(s, k, v, ic, n, Qall, act, na, S); break;
    }
    for (int64_t h = 0; h < s.HK; ++h) {
        const int32_t * ah = act + h*s.R;
        const float * w[HS_FA_DOT_ROWS];
        float * acc[HS_FA_DOT_ROWS];
        for (int32_t a = 0; a < na[h]; ++a) {
            float * row = S + (h*s.R + a)*HS_FA_KV;
            float * pr = hs_fa_partial(s, partials, h, c) + ah[a]*(2 + s.DV);
            hs_fa_softmax_row(s, mask, h, ah[a], ic, n, n, kind, mf, tmp, row, pr);
            w[a] = row;
            acc[a] = pr + 2;
        }
        if (na[h] == 0) {
            continue;
        }
        const char * vcell = (const char *) v->data + ic*v->nb[1] + h*v->nb[2];
        switch (s.DV/HS_FA_EPR) {
            case 1: hs_fa_dot_values_rows<1>(vcell, v->nb[1], n, w, acc, na[h]); break;
            case 2: hs_fa_dot_values_rows<2>(vcell, v->nb[1], n, w, acc, na[h]); break;
            case 3: hs_fa_dot_values_rows<3>(vcell, v->nb[1], n, w, acc, na[h]); break;
            case 4: hs_fa_dot_values_rows<4>(vcell, v->nb[1], n, w, acc, na[h]); break;
            case 5: hs_fa_dot_values_rows<5>(vcell, v->nb[1], n, w, acc, na[h]); break;
            case 6: hs_fa_dot_values_rows<6>(vcell, v->nb[1], n, w, acc, na[h]); break;
            case 7: hs_fa_dot_values_rows<7>(vcell, v->nb[1], n, w, acc, na[h]); break;
            default: hs_fa_dot_values_rows<8>(vcell, v->nb[1], n, w, acc, na[h]); break;
        }
    }
}
#endif // HS_FA_DOT

// the GEMM path over one tile and one KV head: the active rows' queries (gathered when some rows
// are not active) times the K tile, transposed into f32, give the row-major scores in one GEMM; the
// weights times the V tile in f32 give the values in a second. Both GEMMs have the tile's 64 cells
// or the 64-wide value rows as their columns, whole register blocks of hs_gemm, so no
// query or score is transposed.
// KT (DK x HS_FA_KV) = cells [ic, ic + n) of KV head ik2's K in f32, transposed; columns past n zero.
// Rows are converted into `rows` (HS_FA_KV x DK) and transposed block by block where the vector
// width divides DK: measured, the element-by-element transpose cost a fifth of a 19-token turn's
// attention after 4.3k cells.
static void hs_fa_k_transposed(const ggml_tensor * k, int64_t ik2, int64_t ic, int64_t n, int64_t DK,
                               float * rows, float * KT) {
    const int64_t KVT = HS_FA_KV;
#if HS_FA_DOT
    if (DK % HS_FA_EPR == 0) {
        for (int64_t j = 0; j < n; ++j) {
            hs_fa_row_f32((const char *) k->data + (ic + j)*k->nb[1] + ik2*k->nb[2], k->type, rows + j*DK, DK);
        }
        memset(rows + n*DK, 0, (KVT - n)*DK*sizeof(float));
        for (int64_t rb = 0; rb < KVT; rb += HS_FA_EPR) {
            for (int64_t cb = 0; cb < DK; cb += HS_FA_EPR) {
                hs_transpose_block(rows + rb*DK + cb, DK, KT + cb*KVT + rb, KVT);
            }
        }
        return;
    }
#endif
    GGML_UNUSED(rows);
    for (int64_t j = 0; j < n; ++j) {
        const char * kr = (const char *) k->data + (ic + j)*k->nb[1] + ik2*k->nb[2];
        for (int64_t d = 0; d < DK; ++d) {
            KT[d*KVT + j] = k->type == GGML_TYPE_F16 ? GGML_CPU_FP16_TO_FP32(((const ggml_fp16_t *) kr)[d])
                                                     : ((const float *) kr)[d];
        }
    }
    for (int64_t d = 0; d < DK; ++d) {
        memset(KT + d*KVT + n, 0, (KVT - n)*sizeof(float));
    }
}

static void hs_fa_gemm_tile(const hs_fa_shape & s, const ggml_tensor * dst, int64_t ik2, int64_t ic, int64_t n,
                            const float * Qh, float * Qa, const int32_t * ah, int64_t na,
                            const int32_t * kind, const float * mf, float * tmp,
                            float * Krows, float * KT, float * V32, float * KQ, float * T, float * P) {
    const ggml_tensor * k = dst->src[1];
    const ggml_tensor * v = dst->src[2];
    const ggml_tensor * mask = dst->src[3];
    const int64_t KVT = HS_FA_KV, DK = s.DK, DV = s.DV;
    hs_fa_k_transposed(k, ik2, ic, n, DK, Krows, KT);
    for (int64_t j = 0; j < n; ++j) {
        hs_fa_row_f32((const char *) v->data + (ic + j)*v->nb[1] + ik2*v->nb[2], v->type, V32 + j*DV, DV);
    }
    if (n < KVT) {
        memset(V32 + n*DV, 0, (KVT - n)*DV*sizeof(float));
    }
    const float * A = Qh;
    if (na < s.R) {
        for (int64_t a = 0; a < na; ++a) {
            memcpy(Qa + a*DK, Qh + ah[a]*DK, DK*sizeof(float));
        }
        A = Qa;
    }
    hs_fa_product(KQ, A, KT, na, DK, KVT);
    for (int64_t a = 0; a < na; ++a) {
        hs_fa_softmax_row(s, mask, ik2, ah[a], ic, n, KVT, kind, mf, tmp, KQ + a*KVT, P + ah[a]*(2 + DV));
    }
    hs_fa_product(T, KQ, V32, na, KVT, DV);
    for (int64_t a = 0; a < na; ++a) {
        ggml_vec_acc_f32((int) DV, P + ah[a]*(2 + DV) + 2, T + a*DV);
    }
}

// one chunk of the KV range, every KV head; partials hold (max, sum, DV accumulators) per
// (KV head, chunk, row)
static void hs_fa_grouped_item(const hs_fa_shape & s, const ggml_tensor * dst, int64_t c,
                               float * scratch, float * partials) {
    const ggml_tensor * q    = dst->src[0];
    const ggml_tensor * mask = dst->src[3];
    const int64_t KVT = HS_FA_KV, R = s.R, DK = s.DK, DV = s.DV, HK = s.HK, all = R*HK;

    float   * Qall = scratch;                 // all x DK, scaled; row h*R + r
    float   * Qa   = Qall + all*DK;           // R x DK: one head's active rows (when not all are)
    float   * Krow = Qa + R*DK;               // KVT x DK: a K tile in f32, before it is transposed
    float   * KT   = Krow + KVT*DK;           // DK x KVT: a K tile transposed
    float   * V32  = KT + DK*KVT;             // KVT x DV
    float   * S    = V32 + KVT*DV;            // all x KVT
    float   * T    = S + all*KVT;             // R x DV
    float   * mf   = T + R*DV;                // N x KVT: mixed mask rows of the tile in f32
    float   * tmp  = mf + s.N*KVT;            // KVT: one head's mask row (per-head masks)
    int32_t * act  = (int32_t *) (tmp + KVT); // all
    int32_t * tok  = act + all;               // N: HS_FA_* of each token's mask over the tile
    int32_t * na   = tok + s.N;               // HK: active rows of head h in this tile

    for (int64_t h = 0; h < HK; ++h) {
        for (int64_t r = 0; r < R; ++r) {
            float * pr = hs_fa_partial(s, partials, h, c) + r*(2 + DV);
            pr[0] = -INFINITY;
            pr[1] = 0.0f;
            memset(pr + 2, 0, DV*sizeof(float));
            const int64_t t = r / s.G, hq = h*s.G + r % s.G;
            const float * pq = (const float *) ((const char *) q->data + t*q->nb[1] + hq*q->nb[2]);
            for (int64_t d = 0; d < DK; ++d) {
                Qall[(h*R + r)*DK + d] = pq[d]*s.scale;
            }
        }
    }

    const int64_t ic0 = c*s.cs;
    const int64_t ic1 = std::min(s.nek1, ic0 + s.cs);
    for (int64_t ic = ic0; ic < ic1; ic += KVT) {
        const int64_t n = std::min(KVT, ic1 - ic);
        const int64_t most = hs_fa_active_rows(s, mask, ic, n, act, na, tok, mf);
        if (most == 0) {
            continue;
        }
#if HS_FA_DOT
        if (s.dot && most <= HS_FA_DOT_ROWS) {
            hs_fa_dot_tile(s, dst, ic, n, Qall, act, na, tok, mf, tmp, S, partials, c);
            continue;
        }
#endif
        for (int64_t h = 0; h < HK; ++h) {
            if (na[h] > 0) {
                hs_fa_gemm_tile(s, dst, h, ic, n, Qall + h*R*DK, Qa, act + h*R, na[h], tok, mf, tmp,
                                Krow, KT, V32, S, T, hs_fa_partial(s, partials, h, c));
            }
        }
    }
}

// merge the chunks' partial results of every query row and write the output
static void hs_fa_grouped_reduce(const ggml_compute_params * params, const hs_fa_shape & s,
                                 ggml_tensor * dst, const float * partials, float * out) {
    const ggml_tensor * sinks = dst->src[4];
    const int64_t n_head = dst->src[0]->ne[2];
    for (int64_t qr = params->ith; qr < s.N*n_head; qr += params->nth) {
        const int64_t iq1 = qr / n_head, iq2 = qr % n_head;
        const int64_t ik2 = iq2 / s.G, r = iq1*s.G + iq2 % s.G;
        float M = -INFINITY, S = 0.0f;
        memset(out, 0, s.DV*sizeof(float));
        for (int64_t c = 0; c < s.nch; ++c) {
            const float * pr = partials + ((ik2*s.nch + c)*s.R + r)*(2 + s.DV);
            if (pr[1] == 0.0f) {
                continue;
            }
            const float m_new = fmaxf(M, pr[0]);
            const float a = expf(M - m_new), b = expf(pr[0] - m_new);
            for (int64_t d = 0; d < s.DV; ++d) {
                out[d] = out[d]*a + pr[2 + d]*b;
            }
            S = S*a + pr[1]*b;
            M = m_new;
        }
        if (sinks) {
            const float sk = ((const float *) sinks->data)[iq2];
            if (sk > M) {
                const float ms = expf(M - sk);
                ggml_vec_scale_f32((int) s.DV, out, ms);
                S = S*ms + 1.0f;
            } else {
                S += expf(sk - M);
            }
        }
        ggml_vec_scale_f32((int) s.DV, out, S == 0.0f ? 0.0f : 1.0f/S);
        memcpy((char *) dst->data + (iq1*dst->ne[1] + iq2)*dst->nb[1], out, dst->nb[1]);
    }
}

static void ggml_compute_forward_flash_attn_ext_grouped(const ggml_compute_params * params, ggml_tensor * dst) {
    const ggml_tensor * q = dst->src[0];
    const ggml_tensor * k = dst->src[1];
    const ggml_tensor * v = dst->src[2];

    hs_fa_shape s;
    s.DK = k->ne[0];
    s.DV = v->ne[0];
    s.N  = q->ne[1];
    s.HK = k->ne[2];
    s.G  = q->ne[2]/s.HK;
    s.R  = s.N*s.G;
    s.nek1 = k->ne[1];
    s.nch  = hs_fa_grouped_nchunks(params->nth, s.nek1);
    s.cs   = ((s.nek1 + s.nch - 1)/s.nch + HS_FA_KV - 1)/HS_FA_KV*HS_FA_KV;
    memcpy(&s.scale,    (const float *) dst->op_params + 0, sizeof(float));
    memcpy(&s.max_bias, (const float *) dst->op_params + 1, sizeof(float));
    memcpy(&s.softcap,  (const float *) dst->op_params + 2, sizeof(float));
    if (s.softcap != 0.0f) {
        s.scale /= s.softcap;
    }
    const uint32_t n_head = (uint32_t) q->ne[2];
    s.n_head_log2 = 1u << (uint32_t) floor(log2(n_head));
    s.m0 = powf(2.0f, -(s.max_bias       ) / s.n_head_log2);
    s.m1 = powf(2.0f, -(s.max_bias / 2.0f) / s.n_head_log2);
#if HS_FA_DOT
    s.dot = k->type == GGML_TYPE_F16 && hs_fa_dot_supported(s.DK) && hs_fa_dot_supported(s.DV);
#else
    s.dot = false;
#endif

    const int64_t per_thread = hs_fa_grouped_scratch(s.N, q->ne[2], s.HK, s.DK, s.DV);
    float * scratch  = (float *) params->wdata + params->ith*per_thread;
    float * partials = (float *) params->wdata + params->nth*per_thread;

    if (params->ith == 0) {
        ggml_threadpool_chunk_set(params->threadpool, params->nth);
    }
    ggml_barrier(params->threadpool);
    for (int64_t c = params->ith; c < s.nch; c = ggml_threadpool_chunk_add(params->threadpool, 1)) {
        hs_fa_grouped_item(s, dst, c, scratch, partials);
    }
    ggml_barrier(params->threadpool);
    hs_fa_grouped_reduce(params, s, dst, partials, scratch);
}
// ---- end hotspare ----------------------------------------------------------------------------
