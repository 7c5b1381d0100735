// ---- hotspare: Q8_0 weights for AVX-512 VNNI ----------------------------------------------------
//
// On x86 this llama.cpp multiplies Q8_0 weights with tinyBLAS (4 weight rows x up to 4 tokens, one
// 32-byte dot product, two sign fix-ups, a scalar scale product and a float multiply-add per row,
// token and block) and has no repacked layout for them. A turn of 19-28 new tokens on the embedded
// 135M model spent 26-35 ms there on the 2-core AMD host (perf: 63 % of the step, 13 % more waiting
// at barriers), most of the floor under the failover turn.
//
// This layout interleaves 16 weight rows, four bytes at a time, so one 64-byte load holds four
// consecutive weights of 16 rows and one VPDPBUSD against a broadcast of four activation bytes adds
// those four products into each row's own int32 lane. A block of 32 weights is eight of them; the
// block's scales are applied once per 16 rows: one conversion, one multiply and one fused
// multiply-add per (16 rows, token, block) against tinyBLAS's per (row, token, block). The int32
// lanes are already the 16 rows' sums, so nothing is reduced across lanes.
//
// VPDPBUSD multiplies unsigned by signed bytes, so the weights are stored plus 128 (0..255) and each
// activation block carries -128 x (the sum of its quantized values), the integer the offset adds,
// as its accumulators' starting value. The activations are quantized to Q8_0's own grid (per block
// of 32: d = max|x| / 127, rounded to f16, values rounded to nearest), so the products are the ones
// llama.cpp's Q8_0 path computes; only the float summation order differs.
//
// Taken for 2-D Q8_0 weights whose row count is a multiple of 16, when the compiler targets
// AVX-512 F/BW/VNNI (the native build on such a CPU). The copy is the same size as the file's
// tensor. HOTSPARE_Q8_REPACK=0 in the environment keeps llama.cpp's layout (A/B; read once per process).

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <immintrin.h>

namespace hs_q8 {

constexpr int ROWS = 16;    // weight rows per group: one zmm of int32 lanes
constexpr int TILE_N = 8;   // tokens per tile when there are enough
constexpr int GROUPS = 4;   // row groups per pass over the token tiles (their weights stay in cache)

struct wblock {              // 16 rows x one block of 32 weights
    ggml_half d[ROWS];
    uint8_t qs[ROWS * QK8_0];  // qs[64*k + 4*r + i] = row r's weight 4*k + i, plus 128
};
static_assert(sizeof(wblock) == ROWS * sizeof(block_q8_0), "the copy is the tensor's own size");

struct ablock {              // one token's block of 32 activations
    float d;
    int32_t start;           // -128 x sum(q): cancels the weights' offset
    int8_t q[QK8_0];
};

// read once per process: the choice must not change while a model loaded under it is in use (the
// scheduler asks again, per node, whether the repacked buffer can run its MUL_MAT)
static bool enabled() {
    static const bool on = [] {
        const char * e = getenv("HOTSPARE_Q8_REPACK");
        return e == nullptr || strcmp(e, "0") != 0;
    }();
    return on;
}

static void quantize_row(const float * x, ablock * y, int64_t nb) {
    for (int64_t b = 0; b < nb; b++) {
        const __m512 v0 = _mm512_loadu_ps(x + b*QK8_0);
        const __m512 v1 = _mm512_loadu_ps(x + b*QK8_0 + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        const float d = amax / 127.0f;
        const __m512 id = _mm512_set1_ps(d != 0.0f ? 1.0f/d : 0.0f);
        const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, id));   // nearest, ties to even
        const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, id));
        _mm_storeu_si128((__m128i *) y[b].q, _mm512_cvtsepi32_epi8(q0));
        _mm_storeu_si128((__m128i *) (y[b].q + 16), _mm512_cvtsepi32_epi8(q1));
        y[b].start = -128 * _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
        y[b].d = GGML_CPU_FP16_TO_FP32(GGML_CPU_FP32_TO_FP16(d));
    }
}

// RM groups of 16 rows (w, w + nb, ...) times RN tokens (a[j]: token j's blocks); out[j] + 16*m
// receives group m's 16 results for token j.
template <int RM, int RN>
static void tile(const wblock * w, int64_t nb, const ablock * const * a, float * const * out) {
    __m512 acc[RM][RN];
    for (int m = 0; m < RM; m++) {
        for (int j = 0; j < RN; j++) {
            acc[m][j] = _mm512_setzero_ps();
        }
    }
    for (int64_t b = 0; b < nb; b++) {
        __m512i sum[RM][RN];
        for (int m = 0; m < RM; m++) {
            for (int j = 0; j < RN; j++) {
                sum[m][j] = _mm512_set1_epi32(a[j][b].start);
            }
        }
        for (int k = 0; k < QK8_0/4; k++) {
            for (int m = 0; m < RM; m++) {
                const __m512i wk = _mm512_loadu_si512(w[m*nb + b].qs + 64*k);
                for (int j = 0; j < RN; j++) {
                    int32_t four;
                    memcpy(&four, a[j][b].q + 4*k, sizeof(four));
                    sum[m][j] = _mm512_dpbusd_epi32(sum[m][j], wk, _mm512_set1_epi32(four));
                }
            }
        }
        for (int m = 0; m < RM; m++) {
            const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) w[m*nb + b].d));
            for (int j = 0; j < RN; j++) {
                const __m512 scale = _mm512_mul_ps(dw, _mm512_set1_ps(a[j][b].d));
                acc[m][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum[m][j]), scale, acc[m][j]);
            }
        }
    }
    for (int m = 0; m < RM; m++) {
        for (int j = 0; j < RN; j++) {
            _mm512_storeu_ps(out[j] + ROWS*m, acc[m][j]);
        }
    }
}

// groups per call for a tile of n < TILE_N tokens: enough independent accumulators to hide
// VPDPBUSD's latency when there are few tokens, few enough to stay in registers
static constexpr int groups_for(int n) { return n <= 2 ? 4 : n <= 4 ? 2 : 1; }

template <int RN>
static void tiles(const wblock * w, int64_t nb, int64_t ngroups, const ablock * const * a, float * const * out) {
    constexpr int RM = groups_for(RN);
    float * o[RN];
    int64_t g = 0;
    for (; g + RM <= ngroups; g += RM) {
        for (int j = 0; j < RN; j++) {
            o[j] = out[j] + ROWS*g;
        }
        tile<RM, RN>(w + g*nb, nb, a, o);
    }
    for (; g < ngroups; g++) {
        for (int j = 0; j < RN; j++) {
            o[j] = out[j] + ROWS*g;
        }
        tile<1, RN>(w + g*nb, nb, a, o);
    }
}

static void tiles_n(int n, const wblock * w, int64_t nb, int64_t ngroups, const ablock * const * a, float * const * out) {
    switch (n) {
        case 1: tiles<1>(w, nb, ngroups, a, out); break;
        case 2: tiles<2>(w, nb, ngroups, a, out); break;
        case 3: tiles<3>(w, nb, ngroups, a, out); break;
        case 4: tiles<4>(w, nb, ngroups, a, out); break;
        case 5: tiles<5>(w, nb, ngroups, a, out); break;
        case 6: tiles<6>(w, nb, ngroups, a, out); break;
        case 7: tiles<7>(w, nb, ngroups, a, out); break;
        default: tiles<TILE_N>(w, nb, ngroups, a, out); break;
    }
}

class traits : public ggml::cpu::repack::tensor_traits_base {
    static int64_t tokens(const ggml_tensor * src1) { return src1->ne[1] * src1->ne[2] * src1->ne[3]; }

    bool work_size(int, const ggml_tensor * op, size_t & size) override {
        if (op->op != GGML_OP_MUL_MAT) {
            return false;
        }
        size = (size_t) tokens(op->src[1]) * (op->src[1]->ne[0] / QK8_0) * sizeof(ablock);
        return true;
    }

    bool compute_forward(ggml_compute_params * params, ggml_tensor * op) override {
        if (op->op != GGML_OP_MUL_MAT) {
            return false;
        }
        forward(params, op);
        return true;
    }

    static void forward(ggml_compute_params * params, ggml_tensor * op) {
        const ggml_tensor * src0 = op->src[0];
        const ggml_tensor * src1 = op->src[1];
        GGML_ASSERT(src1->type == GGML_TYPE_F32 && op->nb[0] == sizeof(float) && src0->ne[0] == src1->ne[0]);
        const int64_t nb = src1->ne[0] / QK8_0;
        const int64_t n_tok = tokens(src1);
        const int ith = params->ith, nth = params->nth;
        GGML_ASSERT(params->wsize >= (size_t) n_tok * nb * sizeof(ablock));

        ablock * act = (ablock *) params->wdata;
        for (int64_t t = ith; t < n_tok; t += nth) {
            quantize_row((const float *) row(src1, t), act + t*nb, nb);
        }
        if (ith == 0) {
            ggml_threadpool_chunk_set(params->threadpool, nth);
        }
        ggml_barrier(params->threadpool);

        const int64_t ngroups = src0->ne[1] / ROWS;
        const int64_t per_chunk = std::max<int64_t>(1, std::min<int64_t>(GROUPS, ngroups / (4*nth)));
        const int64_t nchunks = (ngroups + per_chunk - 1) / per_chunk;
        const wblock * w = (const wblock *) src0->data;
        for (int64_t c = ith; c < nchunks; c = ggml_threadpool_chunk_add(params->threadpool, 1)) {
            const int64_t g0 = c * per_chunk;
            const int64_t ng = std::min(per_chunk, ngroups - g0);
            for (int64_t t0 = 0; t0 < n_tok; t0 += TILE_N) {
                const int n = (int) std::min<int64_t>(TILE_N, n_tok - t0);
                const ablock * a[TILE_N];
                float * out[TILE_N];
                for (int j = 0; j < n; j++) {
                    a[j] = act + (t0 + j)*nb;
                    out[j] = (float *) row(op, t0 + j) + ROWS*g0;
                }
                tiles_n(n, w + g0*nb, nb, ng, a, out);
            }
        }
    }

    // token t's row of a tensor laid out as [features, ne1, ne2, ne3]
    static char * row(const ggml_tensor * tensor, int64_t t) {
        const int64_t i1 = t % tensor->ne[1];
        const int64_t i2 = (t / tensor->ne[1]) % tensor->ne[2];
        const int64_t i3 = t / (tensor->ne[1] * tensor->ne[2]);
        return (char *) tensor->data + i1*tensor->nb[1] + i2*tensor->nb[2] + i3*tensor->nb[3];
    }

    int repack(ggml_tensor * t, const void * data, size_t data_size) override {
        GGML_ASSERT(t->type == GGML_TYPE_Q8_0 && t->ne[1] % ROWS == 0);
        const int64_t nb = t->ne[0] / QK8_0;
        const int64_t nrows = t->ne[1];
        GGML_ASSERT(data_size == (size_t) nrows * nb * sizeof(block_q8_0));
        const block_q8_0 * src = (const block_q8_0 *) data;
        wblock * dst = (wblock *) t->data;
        for (int64_t g = 0; g < nrows / ROWS; g++) {
            for (int64_t b = 0; b < nb; b++) {
                wblock & out = dst[g*nb + b];
                for (int r = 0; r < ROWS; r++) {
                    const block_q8_0 & in = src[(g*ROWS + r)*nb + b];
                    out.d[r] = in.d;
                    for (int k = 0; k < QK8_0/4; k++) {
                        uint32_t four;  // x + 128 as an unsigned byte is x with its top bit flipped
                        memcpy(&four, in.qs + 4*k, sizeof(four));
                        four ^= 0x80808080u;
                        memcpy(out.qs + 64*k + 4*r, &four, sizeof(four));
                    }
                }
            }
        }
        return 0;
    }
};

}  // namespace hs_q8
#endif

// 1 when this build multiplies Q8_0 weights in hotspare's layout (compiled for AVX-512 VNNI and not
// turned off), 0 otherwise: for engine/q8_check.py and the start-up log
extern "C" int hotspare_q8_repack_active(void) {
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
    return hs_q8::enabled() ? 1 : 0;
#else
    return 0;
#endif
}
