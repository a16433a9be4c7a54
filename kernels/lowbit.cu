// lowbit.cu: Q1_0 and Q2_0 (ggml-quants.c quantize_row_q1_0_ref / quantize_row_q2_0_ref, which
// ggml_quantize_chunk runs with or without importance weights) and their dequantize kernels.
//
// Tiled kernels (tiles.cuh: values staged through shared memory with 16-byte loads, blocks stored with
// 16-byte stores), one thread per block: a pass for the scale, a pass for the quants.
#include "common.cuh"

#define QK1_0 128
#define QK2_0 64

struct block_q1_0 { gq_half d; uint8_t qs[QK1_0 / 8]; };
struct block_q2_0 { gq_half d; uint8_t qs[QK2_0 / 4]; };
static_assert(sizeof(block_q1_0) == 18, "block_q1_0");
static_assert(sizeof(block_q2_0) == 18, "block_q2_0");

// quantize_row_q1_0_ref: d = mean |x| (summed in order), bit j set where x[j] >= 0 (-0.0 too, NaN not).
template <class X>
__device__ __forceinline__ void gq_quantize_q1_0(const X& x, block_q1_0* y) {
    float sum_abs = 0.0f;
    for (int j = 0; j < QK1_0; ++j) sum_abs += fabsf(x[j]);
    const float d = sum_abs / QK1_0;
    y->d = gq_fp32_to_fp16_nonneg(d);  // a NaN here is a fabsf'd input, positive
    for (int b = 0; b < QK1_0 / 8; ++b) {
        uint8_t q = 0;
        for (int k = 0; k < 8; ++k) {
            if (x[8 * b + k] >= 0.0f) q |= (uint8_t)(1 << k);
        }
        y->qs[b] = q;
    }
}

// quantize_row_q2_0_ref: d = max |x| (NaN never wins the >), q = clamp((int)roundf(x/d) + 1, 0, 3),
// element j at bits 2*(j%4) of byte j/4.
template <class X>
__device__ __forceinline__ void gq_quantize_q2_0(const X& x, block_q2_0* y) {
    float amax = 0.0f;
    for (int j = 0; j < QK2_0; ++j) {
        const float a = fabsf(x[j]);
        if (a > amax) amax = a;
    }
    const float d = amax;
    const float id = d > 0.0f ? 1.0f / d : 0.0f;
    y->d = gq_fp32_to_fp16_nonneg(d);
    for (int b = 0; b < QK2_0 / 4; ++b) {
        uint8_t qb = 0;
        for (int k = 0; k < 4; ++k) {
            int q = gq_trunc_i32(roundf(x[4 * b + k] * id)) + 1;  // NaN/inf/huge: INT_MIN + 1
            if (q < 0) q = 0;
            if (q > 3) q = 3;
            qb |= (uint8_t)(q << (2 * k));
        }
        y->qs[b] = qb;
    }
}

GQ_STREAM_CORE(q1_0, block_q1_0, QK1_0, 64, gq_quantize_q1_0)
GQ_TILED_ITEMS_UNWEIGHTED(q1_0, GqCore_q1_0)
GQ_STREAM_CORE(q2_0, block_q2_0, QK2_0, 128, gq_quantize_q2_0)
GQ_TILED_ITEMS_UNWEIGHTED(q2_0, GqCore_q2_0)
GQ_QUANTIZE_ENTRY_POINTS(q1_0)
GQ_QUANTIZE_ENTRY_POINTS(q2_0)

// dequantize_row_q1_0: bit ? d : -d
__device__ __forceinline__ void gq_dequantize_row_q1_0(const block_q1_0* b, float* y) {
    const float d = gq_fp16_to_fp32(b->d);
    const float neg_d = -d;
    for (int j = 0; j < QK1_0; ++j) y[j] = gq_x86_nan((b->qs[j / 8] >> (j % 8)) & 1 ? d : neg_d);
}

// dequantize_row_q2_0: ((int)q - 1) * d
__device__ __forceinline__ void gq_dequantize_row_q2_0(const block_q2_0* b, float* y) {
    const float d = gq_fp16_to_fp32(b->d);
    for (int j = 0; j < QK2_0; ++j) {
        const uint8_t q = (b->qs[j / 4] >> ((j % 4) * 2)) & 0x03;
        y[j] = gq_x86_nan(((int)q - 1) * d);
    }
}

extern "C" __global__ void dequantize_q1_0(GQ_DEQUANTIZE_PARAMS) {
    gq_dequantize_blocks<block_q1_0, QK1_0, gq_dequantize_row_q1_0>(GQ_DEQUANTIZE_ARGS);
}
extern "C" __global__ void dequantize_q2_0(GQ_DEQUANTIZE_PARAMS) {
    gq_dequantize_blocks<block_q2_0, QK2_0, gq_dequantize_row_q2_0>(GQ_DEQUANTIZE_ARGS);
}
