// iq4.cu: IQ4_NL and IQ4_XS (ggml-quants.c quantize_iq4_nl / quantize_iq4_xs, both through
// quantize_row_iq4_nl_impl with ntry = 7, the non-linear kvalues_iq4nl table and, without importance
// weights, weights x*x), and their dequantize kernels.
//
// Tiled kernels (tiles.cuh), 128 threads: IQ4_NL one thread per 32-value block; IQ4_XS eight threads per
// 256-value super-block, one per 32-value block. Separate entry points with importance weights (_w).
#include "common.cuh"

// ggml-common.h block layouts
#define QK4_NL 32
struct block_iq4_nl { gq_half d; uint8_t qs[QK4_NL / 2]; };
struct block_iq4_xs { gq_half d; uint16_t scales_h; uint8_t scales_l[QK_K / 64]; uint8_t qs[QK_K / 2]; };

// kvalues_iq4nl (ggml-common.h); tests/test_iq4.py checks it against gguf.quants.IQ4_NL.kvalues
static __device__ const int8_t gq_kvalues_iq4nl[16] = {
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
};

#define GQ_IQ4_NTRY 7

// best_index_int8(16, kvalues_iq4nl, x), branchless: the number of the 15 midpoints between neighbouring
// table values that x is not below. The binary search's `x - val[mu-1] < val[mu] - x` is `x < midpoint`
// exactly (near a midpoint |x| > 4 and both differences are exact; far from one no rounding reaches it);
// x <= val[0] and x >= val[15] give 0 and 15; a NaN fails every `x < m` and gets 15, as in the search.
// tests/test_iq4.py checks this rule against the binary search over the float32 line, NaN/inf/-0 included.
__device__ __forceinline__ int gq_iq4nl_index(float x) {
    return !(x < -115.5f) + !(x < -93.5f) + !(x < -74.0f) + !(x < -57.0f) + !(x < -42.0f) + !(x < -28.5f) +
           !(x < -16.0f) + !(x < -4.5f) + !(x < 7.0f) + !(x < 19.0f) + !(x < 31.5f) + !(x < 45.5f) +
           !(x < 61.0f) + !(x < 79.0f) + !(x < 101.0f);
}

// kvalues_iq4nl[i] from registers: the table's 16 bytes as four little-endian words
__device__ __forceinline__ float gq_iq4nl_value(int i) {
    const unsigned int lo = __byte_perm(0xBFAD9881u, 0xF6EADDCFu, (unsigned int)(i & 7));
    const unsigned int hi = __byte_perm(0x26190D01u, 0x71594535u, (unsigned int)(i & 7));
    return (float)(int8_t)(uint8_t)((i & 8 ? hi : lo) & 0xFFu);
}

// The scale search of one 32-value block of quantize_row_iq4_nl_impl (ntry = 7): scales[ib]. x, w: the
// block's values and weights (w: the _impl weights with importance weights, else x*x computed here).
template <bool QW>
__device__ __forceinline__ float gq_iq4_block_scale(const float* __restrict__ x, const float* __restrict__ w) {
    const int ntry = GQ_IQ4_NTRY;
    float amax = 0, max = 0;
    for (int j = 0; j < 32; ++j) {
        const float ax = fabsf(x[j]);
        if (ax > amax) { amax = ax; max = x[j]; }
    }
    if (amax < GQ_GROUP_MAX_EPS) return 0.f;
    float d = -max / gq_kvalues_iq4nl[0];  // ntry > 0
    float id = 1 / d;
    float sumqx = 0, sumq2 = 0;
    for (int j = 0; j < 32; ++j) {
        const float q = gq_iq4nl_value(gq_iq4nl_index(id * x[j]));
        const float wj = QW ? w[j] : x[j] * x[j];
        sumqx += wj * q * x[j];
        sumq2 += wj * q * q;
    }
    d = sumq2 > 0 ? sumqx / sumq2 : 0.f;
    float best = d * sumqx;
    GQ_NO_UNROLL
    for (int itry = -ntry; itry <= ntry; ++itry) {
        id = (itry + gq_kvalues_iq4nl[0]) / max;
        sumqx = sumq2 = 0;
        for (int j = 0; j < 32; ++j) {
            const float q = gq_iq4nl_value(gq_iq4nl_index(id * x[j]));
            const float wj = QW ? w[j] : x[j] * x[j];
            sumqx += wj * q * x[j];
            sumq2 += wj * q * q;
        }
        if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    return d;
}

// The _impl weights of one 32-value block, in place: qw[j] * sqrtf(sigma2 + x[j]*x[j]).
__device__ __forceinline__ void gq_iq4_weights(const float* __restrict__ x, float* __restrict__ w, float sigma2) {
    GQ_UNROLL_4  // x*x is not kept in 32 registers from the sigma2 sum
    for (int j = 0; j < 32; ++j) w[j] = w[j] * sqrtf(sigma2 + x[j] * x[j]);
}

// 16 bytes of q4: the indices of id * x[j] (low nibble) and id * x[16 + j] (high nibble)
__device__ __forceinline__ void gq_iq4_pack(const float* __restrict__ x, float id, uint8_t* __restrict__ q4) {
    for (int j = 0; j < 16; ++j) q4[j] = (uint8_t)(gq_iq4nl_index(id * x[j]) | (gq_iq4nl_index(id * x[16 + j]) << 4));
}

// quantize_iq4_nl: quantize_row_iq4_nl_impl(32, 32, ...) per block, one thread each.
struct GqCore_iq4_nl {
    typedef block_iq4_nl Block;
    static const int QK = QK4_NL, TPI = 1, THREADS = 128, PHASES = 1, AUX = 0;
    template <bool QW>
    static __device__ __forceinline__ void compute(int, const float* x, float* w, float*, const GqTileItem&,
                                                   Block* y) {
        float sigma2 = gq_sum_sq(QK4_NL, x);
        sigma2 *= 2.f / QK4_NL;
        if (QW) gq_iq4_weights(x, w, sigma2);
        const float d = gq_iq4_block_scale<QW>(x, w);
        y->d = gq_fp32_to_fp16(d);
        gq_iq4_pack(x, d ? 1 / d : 0, y->qs);
    }
};

// quantize_iq4_xs: quantize_row_iq4_nl_impl(256, 32, ...) per super-block, 8 threads each (one per
// 32-value block): phase 0 searches the thread's block scale (sigma2 summed over the super-block in
// order by each of them), phase 1 quantizes the scales against their largest and packs the block.
struct GqCore_iq4_xs {
    typedef block_iq4_xs Block;
    static const int QK = QK_K, TPI = QK_K / 32, THREADS = 128, PHASES = 2, AUX = QK_K / 32;
    template <bool QW>
    static __device__ __forceinline__ void compute(int cphase, const float* x, float* w, float* scales,
                                                   const GqTileItem& it, Block* y) {
        const int ib = it.sub;
        const float* xb = x + ib * 33;  // block ib of the item (tiles.cuh layout: a pad word per 32 values)
        if (cphase == 0) {
            const GqTileX xs = {x};
            float sigma2 = 0;
            for (int j = 0; j < QK_K; ++j) sigma2 += xs[j] * xs[j];
            sigma2 *= 2.f / QK_K;
            if (QW) gq_iq4_weights(xb, w + ib * 33, sigma2);
            scales[ib] = gq_iq4_block_scale<QW>(xb, w + ib * 33);
            return;
        }
        float max_scale = 0, amax_scale = 0;
        for (int k = 0; k < QK_K / 32; ++k) {
            const float abs_d = fabsf(scales[k]);
            if (abs_d > amax_scale) { amax_scale = abs_d; max_scale = scales[k]; }
        }
        const float d = -max_scale / 32;
        const float id = d ? 1 / d : 0.f;
        const int l = GQ_MAX(-32, GQ_MIN(31, gq_nearest_int(id * scales[ib])));
        const float dl = d * l;
        gq_iq4_pack(xb, dl ? 1 / dl : 0.f, y->qs + 16 * ib);
        if (ib != 0) return;
        y->d = gq_fp32_to_fp16(d);
        uint16_t sh = 0;
        for (int k = 0; k < QK_K / 32; k += 2) {
            const int l0 = GQ_MAX(-32, GQ_MIN(31, gq_nearest_int(id * scales[k]))) + 32;
            const int l1 = GQ_MAX(-32, GQ_MIN(31, gq_nearest_int(id * scales[k + 1]))) + 32;
            y->scales_l[k / 2] = (uint8_t)((l0 & 0xf) | ((l1 & 0xf) << 4));
            sh |= (uint16_t)((l0 >> 4) << 2 * k);
            sh |= (uint16_t)((l1 >> 4) << 2 * (k + 1));
        }
        y->scales_h = sh;
    }
};

GQ_TILED_ITEMS(iq4_nl, GqCore_iq4_nl)
GQ_TILED_ITEMS(iq4_xs, GqCore_iq4_xs)
GQ_QUANTIZE_ENTRY_POINTS(iq4_nl)
GQ_QUANTIZE_ENTRY_POINTS(iq4_nl_w)
GQ_QUANTIZE_ENTRY_POINTS(iq4_xs)
GQ_QUANTIZE_ENTRY_POINTS(iq4_xs_w)

// dequantize_row_iq4_nl of one block (stores through gq_x86_nan: see common.cuh)
__device__ __forceinline__ void gq_dequantize_row_iq4_nl(const block_iq4_nl* b, float* y) {
    const float d = gq_fp16_to_fp32(b->d);
    for (int j = 0; j < QK4_NL / 2; ++j) {
        y[j] = gq_x86_nan(d * gq_kvalues_iq4nl[b->qs[j] & 0xf]);
        y[j + QK4_NL / 2] = gq_x86_nan(d * gq_kvalues_iq4nl[b->qs[j] >> 4]);
    }
}

// dequantize_row_iq4_xs of one super-block
__device__ __forceinline__ void gq_dequantize_row_iq4_xs(const block_iq4_xs* b, float* y) {
    const uint8_t* qs = b->qs;
    const float d = gq_fp16_to_fp32(b->d);
    for (int ib = 0; ib < QK_K / 32; ++ib) {
        const int ls = ((b->scales_l[ib / 2] >> 4 * (ib % 2)) & 0xf) | (((b->scales_h >> 2 * ib) & 3) << 4);
        const float dl = d * (ls - 32);
        for (int j = 0; j < 16; ++j) {
            y[j] = gq_x86_nan(dl * gq_kvalues_iq4nl[qs[j] & 0xf]);
            y[j + 16] = gq_x86_nan(dl * gq_kvalues_iq4nl[qs[j] >> 4]);
        }
        y += 32;
        qs += 16;
    }
}

extern "C" __global__ void dequantize_iq4_nl(GQ_DEQUANTIZE_PARAMS) {
    gq_dequantize_blocks<block_iq4_nl, QK4_NL, gq_dequantize_row_iq4_nl>(GQ_DEQUANTIZE_ARGS);
}
extern "C" __global__ void dequantize_iq4_xs(GQ_DEQUANTIZE_PARAMS) {
    gq_dequantize_blocks<block_iq4_xs, QK_K, gq_dequantize_row_iq4_xs>(GQ_DEQUANTIZE_ARGS);
}
