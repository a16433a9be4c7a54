// fp4.cu: MXFP4 and NVFP4 (ggml-quants.c quantize_row_mxfp4_ref / quantize_row_nvfp4_ref, which
// ggml_quantize_chunk runs ignoring importance weights) and their dequantize kernels.
//
// Tiled kernels (tiles.cuh), one thread per block (32 values, or 64 as four 16-value sub-blocks) with its
// values in shared memory: a pass for the scale, a pass for the E2M1 indices, each the exhaustive
// best_index_mxfp4 search of ggml (16 candidates, first smallest error).
#include "common.cuh"

#define QK_MXFP4 32
#define QK_NVFP4 64
#define QK_NVFP4_SUB 16

struct block_mxfp4 { uint8_t e; uint8_t qs[QK_MXFP4 / 2]; };
struct block_nvfp4 { uint8_t d[QK_NVFP4 / QK_NVFP4_SUB]; uint8_t qs[QK_NVFP4 / 2]; };
static_assert(sizeof(block_mxfp4) == 17, "block_mxfp4");
static_assert(sizeof(block_nvfp4) == 36, "block_nvfp4");

// kvalues_mxfp4 (ggml-common.h): E2M1 values doubled; tests/test_fp4.py checks it against gguf
static __device__ const int8_t gq_kvalues_mxfp4[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

// gq_floor_log2f_round_up[E + 149], E in [-149, 128]: how many float32 just below 2^E have a glibc
// log2f that rounds up to E (so floorf(log2f(a)) is E, not E - 1). gpuquant/quants/fp4.py derives the
// table (FLOOR_LOG2F_ROUND_UP); its tests check it against libm and against this copy.
static __device__ const uint8_t gq_floor_log2f_round_up[278] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2,
    5, 11, 11, 22, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44,
    44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44,
    44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44,
    44, 44, 44, 44, 44, 44, 22, 22, 22, 22, 22, 22, 22, 22, 22, 22, 22, 22, 22, 22,
    22, 22, 22, 22, 22, 22, 22, 22, 22, 22, 22, 22, 22, 22, 22, 22, 22, 22, 11, 11,
    11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 5, 5, 5, 5, 5, 5,
    5, 5, 2, 2, 2, 2, 1, 1, 0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 5, 5,
    5, 5, 5, 5, 5, 5, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11,
    11, 11, 22, 22, 22, 22, 22, 22, 22, 22, 22, 22, 22, 22, 22, 22, 22, 22, 22, 22,
    22, 22, 22, 22, 22, 22, 22, 22, 22, 22, 22, 22, 22, 22, 44, 44, 44, 44, 44, 44,
    44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44,
    44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44,
    44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44,
};

// floorf(log2f(a)) of glibc for a finite a > 0, without log2f: the binary exponent of a, plus one in the
// band below the next power of two where log2f rounds up.
__device__ __forceinline__ int fp4_floor_log2f(float a) {
    const uint32_t b = gq_float_bits(a);
    // a subnormal a times 2^24 is exact and normal
    const int e = b >= 0x00800000u ? (int)(b >> 23) - 127 : (int)(gq_float_bits(a * 16777216.0f) >> 23) - 127 - 24;
    const int up = e + 1;
    const uint32_t top = up >= -126 ? (uint32_t)(up + 127) << 23 : 1u << (up + 149);
    return b >= top - gq_floor_log2f_round_up[up + 149] ? up : e;
}

// ggml_e8m0_to_fp32_half: 2^(e - 128)
__device__ __forceinline__ float fp4_e8m0_half(uint8_t e) {
    return __uint_as_float(e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23);
}

// ggml_ue4m3_to_fp32: half the unsigned E4M3 value (bit 7 ignored), 0 for 0 and 0x7F. Built from bits:
// ldexpf(man, -9) and ldexpf(1 + man/8, exp - 7) are exact.
__device__ __forceinline__ float fp4_ue4m3_to_fp32(uint8_t x) {
    if (x == 0 || x == 0x7F) return 0.0f;
    const int exp = (x >> 3) & 0xF;
    const int man = x & 0x7;
    const float raw = exp == 0 ? (float)man * 0.001953125f : __uint_as_float((uint32_t)(exp - 7 + 127) << 23 | (uint32_t)man << 20);
    return raw * 0.5f;
}

// ggml_fp32_to_ue4m3: 0 unless x > 0, clamped to 448, subnormals as (int)(x * 512 + 0.5f) in [1, 7],
// else the top three mantissa bits rounded half up (an exponent past 14 saturates to 0x7E).
__device__ __forceinline__ uint8_t fp4_fp32_to_ue4m3(float x) {
    if (!(x > 0.0f)) return 0;
    if (x > 448.0f) x = 448.0f;
    const uint32_t bits = gq_float_bits(x);
    const int fp32_exp = (int)((bits >> 23) & 0xFF) - 127;
    const int fp32_man = (int)((bits >> 20) & 0x7);
    int ue4m3_exp = fp32_exp + 7;
    if (ue4m3_exp <= 0) {
        int man = gq_trunc_i32(x * 512.0f + 0.5f);
        if (man > 7) man = 7;
        if (man < 1) return 0;
        return (uint8_t)man;
    }
    if (ue4m3_exp >= 15) return 0x7E;
    int ue4m3_man = fp32_man + (int)((bits >> 19) & 1);
    if (ue4m3_man > 7) {
        ue4m3_man = 0;
        ue4m3_exp++;
        if (ue4m3_exp >= 15) return 0x7E;
    }
    return (uint8_t)((ue4m3_exp << 3) | ue4m3_man);
}

// best_index_mxfp4: the first index of the smallest fabsf(kvalues[i]*e - x) (a NaN x stays at 0)
__device__ __forceinline__ uint8_t fp4_best_index(float x, float e) {
    int best_index = 0;
    float best_err = fabsf(gq_kvalues_mxfp4[0] * e - x);
    for (int i = 1; i < 16; i++) {
        const float err = fabsf(gq_kvalues_mxfp4[i] * e - x);
        if (err < best_err) {
            best_index = i;
            best_err = err;
        }
    }
    return (uint8_t)best_index;
}

// quantize_row_mxfp4_ref: e = amax > 0 ? (uint8_t)(floorf(log2f(amax)) - 2 + 127) : 0 (the cast keeps the
// low byte of the int: tiny blocks wrap, an inf amax is INT_MIN's 0), d = e8m0_half(e).
template <class X>
__device__ __forceinline__ void gq_quantize_mxfp4(const X& x, block_mxfp4* y) {
    float amax = 0.0f;
    for (int j = 0; j < QK_MXFP4; j++) {
        if (amax < fabsf(x[j])) amax = fabsf(x[j]);
    }
    uint8_t e = 0;
    if (amax > 0.0f) {
        const float fl = amax <= 3.402823466e+38f ? (float)fp4_floor_log2f(amax) : amax;  // floorf(log2f(inf)) = inf
        e = (uint8_t)gq_trunc_i32(fl - 2 + 127);
    }
    const float d = fp4_e8m0_half(e);
    y->e = e;
    for (int j = 0; j < QK_MXFP4 / 2; ++j) {
        y->qs[j] = (uint8_t)(fp4_best_index(x[j], d) | (fp4_best_index(x[QK_MXFP4 / 2 + j], d) << 4));
    }
}

// quantize_row_nvfp4_ref: per 16-value sub-block s, ue = fp32_to_ue4m3(amax / 6), d = ue4m3_to_fp32(ue).
template <class X>
__device__ __forceinline__ void gq_quantize_nvfp4(const X& x, block_nvfp4* y) {
    for (int s = 0; s < QK_NVFP4 / QK_NVFP4_SUB; s++) {
        const int xb = s * QK_NVFP4_SUB;
        float amax = 0.0f;
        for (int j = 0; j < QK_NVFP4_SUB; j++) {
            if (amax < fabsf(x[xb + j])) amax = fabsf(x[xb + j]);
        }
        const uint8_t ue = fp4_fp32_to_ue4m3(amax / 6.0f);
        y->d[s] = ue;
        const float d = fp4_ue4m3_to_fp32(ue);
        for (int j = 0; j < QK_NVFP4_SUB / 2; ++j) {
            const uint8_t x0 = fp4_best_index(x[xb + j], d);
            const uint8_t x1 = fp4_best_index(x[xb + QK_NVFP4_SUB / 2 + j], d);
            y->qs[s * (QK_NVFP4_SUB / 2) + j] = (uint8_t)(x0 | (x1 << 4));
        }
    }
}

GQ_STREAM_CORE(mxfp4, block_mxfp4, QK_MXFP4, 128, gq_quantize_mxfp4)
GQ_TILED_ITEMS_UNWEIGHTED(mxfp4, GqCore_mxfp4)
GQ_STREAM_CORE(nvfp4, block_nvfp4, QK_NVFP4, 128, gq_quantize_nvfp4)
GQ_TILED_ITEMS_UNWEIGHTED(nvfp4, GqCore_nvfp4)
GQ_QUANTIZE_ENTRY_POINTS(mxfp4)
GQ_QUANTIZE_ENTRY_POINTS(nvfp4)

// dequantize_row_mxfp4
__device__ __forceinline__ void gq_dequantize_row_mxfp4(const block_mxfp4* b, float* y) {
    const float d = fp4_e8m0_half(b->e);
    for (int j = 0; j < QK_MXFP4 / 2; ++j) {
        y[j] = gq_x86_nan(gq_kvalues_mxfp4[b->qs[j] & 0x0F] * d);
        y[j + QK_MXFP4 / 2] = gq_x86_nan(gq_kvalues_mxfp4[b->qs[j] >> 4] * d);
    }
}

// dequantize_row_nvfp4
__device__ __forceinline__ void gq_dequantize_row_nvfp4(const block_nvfp4* b, float* y) {
    for (int s = 0; s < QK_NVFP4 / QK_NVFP4_SUB; s++) {
        const float d = fp4_ue4m3_to_fp32(b->d[s]);
        float* yb = y + s * QK_NVFP4_SUB;
        for (int j = 0; j < QK_NVFP4_SUB / 2; ++j) {
            const uint8_t q = b->qs[s * (QK_NVFP4_SUB / 2) + j];
            yb[j] = gq_x86_nan(gq_kvalues_mxfp4[q & 0x0F] * d);
            yb[j + QK_NVFP4_SUB / 2] = gq_x86_nan(gq_kvalues_mxfp4[q >> 4] * d);
        }
    }
}

extern "C" __global__ void dequantize_mxfp4(GQ_DEQUANTIZE_PARAMS) {
    gq_dequantize_blocks<block_mxfp4, QK_MXFP4, gq_dequantize_row_mxfp4>(GQ_DEQUANTIZE_ARGS);
}
extern "C" __global__ void dequantize_nvfp4(GQ_DEQUANTIZE_PARAMS) {
    gq_dequantize_blocks<block_nvfp4, QK_NVFP4, gq_dequantize_row_nvfp4>(GQ_DEQUANTIZE_ARGS);
}
