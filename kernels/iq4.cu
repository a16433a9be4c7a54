// iq4.cu: IQ4_NL and IQ4_XS (ggml-quants.c quantize_iq4_nl / quantize_iq4_xs, both through
// quantize_row_iq4_nl_impl with ntry = 7, the non-linear kvalues_iq4nl table and, without importance
// weights, weights x*x), and their dequantize kernels.
//
// One CUDA thread per block: a 32-element IQ4_NL block or a 256-element IQ4_XS super-block.
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

// quantize_row_iq4_nl_impl for one super-block of SB values split into 32-value blocks. qw: the
// super-block's importance weights or nullptr. Writes *dh, q4[SB/2] and, when SB > 32, the 6-bit block
// scales (scales_h, scales_l).
template <int SB>
__device__ __noinline__ void gq_iq4_impl(const float* x, const float* qw, gq_half* dh, uint8_t* q4, uint16_t* scales_h,
                            uint8_t* scales_l) {
    const int BS = 32;
    const int NB = SB / BS;
    const int ntry = GQ_IQ4_NTRY;
    const int8_t* values = gq_kvalues_iq4nl;
    float scales[NB];
    float weight[BS];
    uint8_t L[SB];

    float sigma2 = gq_sum_sq(SB, x);
    sigma2 *= 2.f / SB;

    for (int j = 0; j < SB / 2; ++j) q4[j] = 0;
    *dh = gq_fp32_to_fp16(0.f);

    float max_scale = 0, amax_scale = 0;
    GQ_NO_UNROLL
    for (int ib = 0; ib < NB; ++ib) {
        const float* xb = x + ib * BS;
        uint8_t* Lb = L + ib * BS;
        if (qw) {
            gq_impl_weights(BS, xb, qw + ib * BS, sigma2, weight);
        } else {
            for (int j = 0; j < BS; ++j) weight[j] = xb[j] * xb[j];
        }
        float amax = 0, max = 0;
        for (int j = 0; j < BS; ++j) {
            const float ax = fabsf(xb[j]);
            if (ax > amax) { amax = ax; max = xb[j]; }
        }
        if (amax < GQ_GROUP_MAX_EPS) {
            scales[ib] = 0;
            continue;
        }
        float d = ntry > 0 ? -max / values[0] : max / values[0];
        float id = 1 / d;
        float sumqx = 0, sumq2 = 0;
        for (int j = 0; j < BS; ++j) {
            const float al = id * xb[j];
            const int l = gq_best_index_int8(16, values, al);
            Lb[j] = (uint8_t)l;
            const float q = values[l];
            const float w = weight[j];
            sumqx += w * q * xb[j];
            sumq2 += w * q * q;
        }
        d = sumq2 > 0 ? sumqx / sumq2 : 0.f;
        float best = d * sumqx;
        GQ_NO_UNROLL
        for (int itry = -ntry; itry <= ntry; ++itry) {
            id = (itry + values[0]) / max;
            sumqx = sumq2 = 0;
            for (int j = 0; j < BS; ++j) {
                const float al = id * xb[j];
                const int l = gq_best_index_int8(16, values, al);
                const float q = values[l];
                const float w = weight[j];
                sumqx += w * q * xb[j];
                sumq2 += w * q * q;
            }
            if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
                d = sumqx / sumq2;
                best = d * sumqx;
            }
        }
        scales[ib] = d;
        const float abs_d = fabsf(d);
        if (abs_d > amax_scale) { amax_scale = abs_d; max_scale = d; }
    }

    if (NB > 1) {
        *scales_h = 0;
        const float d = -max_scale / 32;
        *dh = gq_fp32_to_fp16(d);
        const float id = d ? 1 / d : 0.f;
        uint16_t sh = 0;
        for (int ib = 0; ib < NB; ++ib) {
            int l = gq_nearest_int(id * scales[ib]);
            l = GQ_MAX(-32, GQ_MIN(31, l));
            const float dl = d * l;
            const float idl = dl ? 1 / dl : 0.f;
            uint8_t* Lb = L + ib * BS;
            const float* xb = x + ib * BS;
            for (int j = 0; j < BS; ++j) Lb[j] = (uint8_t)gq_best_index_int8(16, values, idl * xb[j]);
            l += 32;
            const uint8_t l_l = (uint8_t)(l & 0xf);
            const uint8_t l_h = (uint8_t)(l >> 4);
            if (ib % 2 == 0) scales_l[ib / 2] = l_l;
            else scales_l[ib / 2] |= (uint8_t)(l_l << 4);
            sh |= (uint16_t)(l_h << 2 * (ib % 8));
        }
        *scales_h = sh;
    } else {
        *dh = gq_fp32_to_fp16(scales[0]);
        if (ntry > 0) {
            const float id = scales[0] ? 1 / scales[0] : 0;
            for (int j = 0; j < SB; ++j) L[j] = (uint8_t)gq_best_index_int8(16, values, id * x[j]);
        }
    }

    for (int i = 0; i < SB / 32; ++i) {
        for (int j = 0; j < 16; ++j) q4[16 * i + j] = (uint8_t)(L[32 * i + j] | (L[32 * i + 16 + j] << 4));
    }
}

// quantize_iq4_nl: one 32-value block per thread.
__device__ __forceinline__ void gq_quantize_iq4_nl(const float* x, const GqItem& it, block_iq4_nl* y) {
    gq_iq4_impl<QK4_NL>(x, it.qw, &y->d, y->qs, nullptr, nullptr);
}

// quantize_iq4_xs: one 256-value super-block per thread.
__device__ __forceinline__ void gq_quantize_iq4_xs(const float* x, const GqItem& it, block_iq4_xs* y) {
    gq_iq4_impl<QK_K>(x, it.qw, &y->d, y->qs, &y->scales_h, y->scales_l);
}

GQ_QUANTIZE_ITEM(iq4_nl, block_iq4_nl, QK4_NL, gq_quantize_iq4_nl)
GQ_QUANTIZE_ITEM(iq4_xs, block_iq4_xs, QK_K, gq_quantize_iq4_xs)
GQ_QUANTIZE_ENTRY_POINTS(iq4_nl)
GQ_QUANTIZE_ENTRY_POINTS(iq4_xs)

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
