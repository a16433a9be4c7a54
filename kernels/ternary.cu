// ternary.cu: TQ1_0 and TQ2_0 (ggml-quants.c quantize_row_tq1_0_ref / quantize_row_tq2_0_ref, which
// ggml_quantize_chunk runs ignoring importance weights) and their dequantize kernels.
//
// Tiled kernels (tiles.cuh), one warp of 32 threads per CUDA block, one thread per 256-value block (its
// values in shared memory, 33 KB per tile): a pass for amax, a pass for the trits.
#include "common.cuh"

struct block_tq1_0 { uint8_t qs[(QK_K - 4 * QK_K / 64) / 5]; uint8_t qh[QK_K / 64]; gq_half d; };
struct block_tq2_0 { uint8_t qs[QK_K / 4]; gq_half d; };
static_assert(sizeof(block_tq1_0) == 54, "block_tq1_0");
static_assert(sizeof(block_tq2_0) == 66, "block_tq2_0");

// amax = MAX(amax, fabsf(x[j])) from 0: the macro's > lets a NaN in, and the next value out again.
template <class X>
__device__ __forceinline__ float tq_amax(const X& x) {
    float amax = 0.0f;
    for (int j = 0; j < QK_K; ++j) amax = GQ_MAX(amax, fabsf(x[j]));
    return amax;
}

// lroundf(v) + 1 as the int ggml stores it (glibc on x86-64): halves away from zero; NaN, inf and
// |v| >= 2^63 are LONG_MIN, whose + 1 keeps 1 in the low 32 bits.
__device__ __forceinline__ int tq_trit(float v) {
    if (!(fabsf(v) < 9223372036854775808.0f)) return 1;
    return (int)((long long)roundf(v) + 1);
}

// q = ((uint16_t)q * 256 + (243 - 1)) / 243, back into a uint8_t: the trits as a fraction of 243
__device__ __forceinline__ uint8_t tq_ceil_243(uint8_t q) { return (uint8_t)(((uint16_t)q * 256 + (243 - 1)) / 243); }

// Five trits x[first + stride*n], n = 0..4, the first the most significant, in uint8_t arithmetic.
template <class X>
__device__ __forceinline__ uint8_t tq_five(const X& x, int first, int stride, float id) {
    uint8_t q = 0;
    for (int n = 0; n < 5; ++n) q = (uint8_t)((uint8_t)(q * 3) + tq_trit(x[first + n * stride] * id));
    return q;
}

// quantize_row_tq1_0_ref: 5 trits per qs byte (32 bytes over elements 0..159, 16 over 160..239), 4 per
// qh byte (elements 240..255, shifted up one trit), d last.
template <class X>
__device__ __forceinline__ void gq_quantize_tq1_0(const X& x, block_tq1_0* y) {
    const float d = tq_amax(x);
    const float id = d ? 1.0f / d : 0.0f;
    y->d = gq_fp32_to_fp16_nonneg(d);  // a NaN here is a fabsf'd input, positive
    for (int m = 0; m < 32; ++m) y->qs[m] = tq_ceil_243(tq_five(x, m, 32, id));
    for (int m = 0; m < 16; ++m) y->qs[32 + m] = tq_ceil_243(tq_five(x, 160 + m, 16, id));
    for (int j = 0; j < QK_K / 64; ++j) {
        uint8_t q = 0;
        for (int m = 0; m < 4; ++m) q = (uint8_t)((uint8_t)(q * 3) + tq_trit(x[240 + j + 4 * m] * id));
        y->qh[j] = tq_ceil_243((uint8_t)(q * 3));
    }
}

// quantize_row_tq2_0_ref: qs[32k + m] holds the trits of elements 128k + 32n + m at bits 2n, d last.
template <class X>
__device__ __forceinline__ void gq_quantize_tq2_0(const X& x, block_tq2_0* y) {
    const float d = tq_amax(x);
    const float id = d ? 1.0f / d : 0.0f;
    y->d = gq_fp32_to_fp16_nonneg(d);
    for (int j = 0; j < QK_K / 4; j += 32) {
        for (int m = 0; m < 32; ++m) {
            uint8_t q = 0;
            for (int n = 0; n < 4; ++n) q = (uint8_t)(q + ((tq_trit(x[4 * j + m + 32 * n] * id) & 3) << (2 * n)));
            y->qs[j + m] = q;
        }
    }
}

GQ_STREAM_CORE(tq1_0, block_tq1_0, QK_K, 32, gq_quantize_tq1_0)
GQ_TILED_ITEMS_UNWEIGHTED(tq1_0, GqCore_tq1_0)
GQ_STREAM_CORE(tq2_0, block_tq2_0, QK_K, 32, gq_quantize_tq2_0)
GQ_TILED_ITEMS_UNWEIGHTED(tq2_0, GqCore_tq2_0)
GQ_QUANTIZE_ENTRY_POINTS(tq1_0)
GQ_QUANTIZE_ENTRY_POINTS(tq2_0)

static __device__ const uint8_t tq_pow3[5] = {1, 3, 9, 27, 81};

// Trit n (0 = the most significant of five) of a TQ1_0 byte, as dequantize_row_tq1_0 reads it, minus 1.
__device__ __forceinline__ int tq_trit_of(uint8_t b, int n) {
    const uint8_t q = (uint8_t)(b * tq_pow3[n]);
    return (int16_t)(((uint16_t)q * 3) >> 8) - 1;
}

// dequantize_row_tq1_0
__device__ __forceinline__ void gq_dequantize_row_tq1_0(const block_tq1_0* b, float* y) {
    const float d = gq_fp16_to_fp32(b->d);
    for (int n = 0; n < 5; ++n)
        for (int m = 0; m < 32; ++m) *y++ = gq_x86_nan((float)tq_trit_of(b->qs[m], n) * d);
    for (int n = 0; n < 5; ++n)
        for (int m = 0; m < 16; ++m) *y++ = gq_x86_nan((float)tq_trit_of(b->qs[32 + m], n) * d);
    for (int n = 0; n < 4; ++n)
        for (int j = 0; j < QK_K / 64; ++j) *y++ = gq_x86_nan((float)tq_trit_of(b->qh[j], n) * d);
}

// dequantize_row_tq2_0
__device__ __forceinline__ void gq_dequantize_row_tq2_0(const block_tq2_0* b, float* y) {
    const float d = gq_fp16_to_fp32(b->d);
    for (int j = 0; j < QK_K / 4; j += 32)
        for (int l = 0; l < 4; ++l)
            for (int m = 0; m < 32; ++m) *y++ = gq_x86_nan((float)(((b->qs[j + m] >> (l * 2)) & 3) - 1) * d);
}

extern "C" __global__ void dequantize_tq1_0(GQ_DEQUANTIZE_PARAMS) {
    gq_dequantize_blocks<block_tq1_0, QK_K, gq_dequantize_row_tq1_0>(GQ_DEQUANTIZE_ARGS);
}
extern "C" __global__ void dequantize_tq2_0(GQ_DEQUANTIZE_PARAMS) {
    gq_dequantize_blocks<block_tq2_0, QK_K, gq_dequantize_row_tq2_0>(GQ_DEQUANTIZE_ARGS);
}
