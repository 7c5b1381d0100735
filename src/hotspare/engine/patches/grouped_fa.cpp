// ---- hotspare: grouped short-query flash attention -------------------------------------------
//
// The stock CPU path for fewer than GGML_FA_TILE_Q query rows walks every KV cell once per query
// row and head (a 64-wide dot product, an expf and a 64-wide f16 multiply-add per cell, one call
// each). At a few thousand cached tokens that costs ~50 ms per query row on a 2-core host, so a
// 19-token turn after a 4k context took ~1 s while the non-flash path took ~0.12 s.
//
// This kernel takes one KV head at a time and computes all query rows that read it -- every query
// token times the query heads that share the KV head (GQA) -- together: a KV tile of HS_FA_KV cells
// is converted to f32 once, the scores of all active rows come from one small GEMM, the softmax is
// updated per row, and the values are accumulated with a second GEMM. Rows whose mask is -inf over
// the whole tile (other sequences' cells, idle cells) are left out of that tile, and a tile that
// no row attends is skipped before anything is converted. The KV range is split into chunks so
// that all threads have work even with one or two KV heads; each (KV head, chunk) keeps running
// (max, sum, accumulator) per row, merged at the end like the stock decode path does.
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
           q->ne[1] < (int64_t) GGML_FA_TILE_Q && q->ne[3] == 1 && k->ne[3] == 1 && v->ne[3] == 1 &&
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

struct hs_fa_shape {
    int64_t DK, DV, N, G, R;      // key/value width, query tokens, heads per KV head, rows per KV head
    int64_t nek1, nch, cs;        // KV cells, KV chunks, cells per chunk
    float scale, softcap, max_bias, m0, m1;
    uint32_t n_head_log2;
};

static inline float hs_fa_slope(const hs_fa_shape & s, int64_t h) {
    if (s.max_bias <= 0.0f) {
        return 1.0f;
    }
    return h < s.n_head_log2 ? powf(s.m0, h + 1) : powf(s.m1, 2*(h - s.n_head_log2) + 1);
}

// rows of this KV head that the mask lets see at least one cell of [ic, ic + n)
static int64_t hs_fa_active_rows(const hs_fa_shape & s, const ggml_tensor * mask, int64_t ik2,
                                 int64_t ic, int64_t n, int32_t * act) {
    int64_t na = 0;
    for (int64_t r = 0; r < s.R; ++r) {
        if (mask == nullptr) {
            act[na++] = (int32_t) r;
            continue;
        }
        const int64_t t = r / s.G;
        const int64_t h = ik2*s.G + r % s.G;
        const uint16_t * mp = (const uint16_t *) ((const char *) mask->data + t*mask->nb[1] + (h % mask->ne[2])*mask->nb[2]);
        for (int64_t j = 0; j < n; ++j) {
            if (mp[ic + j] != 0xFC00) { // f16 -inf
                act[na++] = (int32_t) r;
                break;
            }
        }
    }
    return na;
}

static void hs_fa_grouped_item(const hs_fa_shape & s, const ggml_tensor * dst, int64_t ik2, int64_t c,
                               float * scratch, float * P) {
    const ggml_tensor * q    = dst->src[0];
    const ggml_tensor * k    = dst->src[1];
    const ggml_tensor * v    = dst->src[2];
    const ggml_tensor * mask = dst->src[3];
    const int64_t KVT = HS_FA_KV, R = s.R, DK = s.DK, DV = s.DV;

    float   * Qall = scratch;            // R x DK, scaled
    float   * Qt   = Qall + R*DK;        // DK x na, the active rows transposed
    float   * K32  = Qt + R*DK;          // KVT x DK
    float   * V32  = K32 + KVT*DK;       // KVT x DV
    float   * KQt  = V32 + KVT*DV;       // KVT x na
    float   * KQ   = KQt + KVT*R;        // na x KVT
    float   * T    = KQ + R*KVT;         // na x DV
    int32_t * act  = (int32_t *) (T + R*DV);

    for (int64_t r = 0; r < R; ++r) {
        float * pr = P + r*(2 + DV);
        pr[0] = -INFINITY;
        pr[1] = 0.0f;
        memset(pr + 2, 0, DV*sizeof(float));
        const int64_t t = r / s.G, h = ik2*s.G + r % s.G;
        const float * pq = (const float *) ((const char *) q->data + t*q->nb[1] + h*q->nb[2]);
        for (int64_t d = 0; d < DK; ++d) {
            Qall[r*DK + d] = pq[d]*s.scale;
        }
    }

    const int64_t ic0 = c*s.cs;
    const int64_t ic1 = std::min(s.nek1, ic0 + s.cs);
    const int64_t iv2 = ik2; // k->ne[2] == v->ne[2]
    int64_t qt_rows = -1;    // Qt holds all R rows when == R

    for (int64_t ic = ic0; ic < ic1; ic += KVT) {
        const int64_t kv_tile = std::min(KVT, ic1 - ic);
        const int64_t na = hs_fa_active_rows(s, mask, ik2, ic, kv_tile, act);
        if (na == 0) {
            continue;
        }
        for (int64_t tk = 0; tk < kv_tile; ++tk) {
            hs_fa_row_f32((const char *) k->data + (ic + tk)*k->nb[1] + ik2*k->nb[2], k->type, K32 + tk*DK, DK);
            hs_fa_row_f32((const char *) v->data + (ic + tk)*v->nb[1] + iv2*v->nb[2], v->type, V32 + tk*DV, DV);
        }
        if (kv_tile < KVT) {
            memset(K32 + kv_tile*DK, 0, (KVT - kv_tile)*DK*sizeof(float));
            memset(V32 + kv_tile*DV, 0, (KVT - kv_tile)*DV*sizeof(float));
        }
        if (!(na == R && qt_rows == R)) {
            for (int64_t a = 0; a < na; ++a) {
                for (int64_t d = 0; d < DK; ++d) {
                    Qt[d*na + a] = Qall[act[a]*DK + d];
                }
            }
            qt_rows = na == R ? R : -1;
        }
        memset(KQt, 0, KVT*na*sizeof(float));
        simd_gemm(KQt, K32, Qt, (int) KVT, (int) DK, (int) na);

        for (int64_t a = 0; a < na; ++a) {
            const int64_t r = act[a];
            const int64_t t = r / s.G, h = ik2*s.G + r % s.G;
            const ggml_fp16_t * mp = mask ? (const ggml_fp16_t *) ((const char *) mask->data + t*mask->nb[1] + (h % mask->ne[2])*mask->nb[2]) : nullptr;
            const float slope = hs_fa_slope(s, h);
            float * row = KQ + a*KVT;
            for (int64_t tk = 0; tk < kv_tile; ++tk) {
                float x = KQt[tk*na + a];
                if (s.softcap != 0.0f) {
                    x = s.softcap*tanhf(x);
                }
                row[tk] = mp ? x + slope*GGML_CPU_FP16_TO_FP32(mp[ic + tk]) : x;
            }
            for (int64_t tk = kv_tile; tk < KVT; ++tk) {
                row[tk] = -INFINITY;
            }
            float tile_max;
            ggml_vec_max_f32((int) KVT, &tile_max, row);
            float * pr = P + r*(2 + DV);
            if (tile_max == -INFINITY) {
                memset(row, 0, KVT*sizeof(float));
                continue;
            }
            const float m_new = fmaxf(pr[0], tile_max);
            if (m_new > pr[0]) {
                const float ms = expf(pr[0] - m_new);
                ggml_vec_scale_f32((int) DV, pr + 2, ms);
                pr[1] *= ms;
            }
            pr[0] = m_new;
            pr[1] += (float) ggml_vec_soft_max_f32((int) KVT, row, row, m_new);
        }

        memset(T, 0, na*DV*sizeof(float));
        simd_gemm(T, KQ, V32, (int) na, (int) KVT, (int) DV);
        for (int64_t a = 0; a < na; ++a) {
            ggml_vec_acc_f32((int) DV, P + act[a]*(2 + DV) + 2, T + a*DV);
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
    s.G  = q->ne[2]/k->ne[2];
    s.R  = s.N*s.G;
    s.nek1 = k->ne[1];
    s.nch  = hs_fa_grouped_nchunks(params->nth, k->ne[2], s.nek1);
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

    const int64_t per_thread = hs_fa_grouped_scratch(s.R, s.DK, s.DV);
    float * scratch  = (float *) params->wdata + params->ith*per_thread;
    float * partials = (float *) params->wdata + params->nth*per_thread;
    const int64_t n_items = k->ne[2]*s.nch;

    if (params->ith == 0) {
        ggml_threadpool_chunk_set(params->threadpool, params->nth);
    }
    ggml_barrier(params->threadpool);
    for (int64_t item = params->ith; item < n_items; item = ggml_threadpool_chunk_add(params->threadpool, 1)) {
        const int64_t ik2 = item / s.nch, c = item % s.nch;
        hs_fa_grouped_item(s, dst, ik2, c, scratch, partials + (ik2*s.nch + c)*s.R*(2 + s.DV));
    }
    ggml_barrier(params->threadpool);
    hs_fa_grouped_reduce(params, s, dst, partials, scratch);
}
// ---- end hotspare ----------------------------------------------------------------------------

