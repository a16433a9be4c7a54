// legacy.cu: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (ggml-quants.c quantize_q*_0/1 and their _ref/_impl paths),
// their dequantize kernels, and the row pre-pass for the weighted (imatrix) path.
//
// Tiled kernels (tiles.cuh): a CUDA block of 128 threads quantizes 128 adjacent 32-element blocks from
// shared memory. Without importance weights a block goes through the quantize_row_*_ref code
// (quantize_<type>_<src>); with them through quantize_row_*_impl (quantize_<type>_w_<src>), whose weights
// use the row statistic sigma2 = sum(x*x over the row) / n_per_row. That sum is sequential over the whole row in C,
// so rowstat_sumsq_<src> computes it first (one thread per row, the same loop order); the item's
// row_sigma2 (common.cuh) is rowstat[row] / n_per_row. Q8_0 ignores importance weights, as ggml does.
#include "common.cuh"

// ggml-common.h block layouts
#define QK4_0 32
#define QK4_1 32
#define QK5_0 32
#define QK5_1 32
#define QK8_0 32
struct block_q4_0 { gq_half d; uint8_t qs[QK4_0 / 2]; };
struct block_q4_1 { gq_half d; gq_half m; uint8_t qs[QK4_1 / 2]; };
struct block_q5_0 { gq_half d; uint8_t qh[4]; uint8_t qs[QK5_0 / 2]; };
struct block_q5_1 { gq_half d; gq_half m; uint8_t qh[4]; uint8_t qs[QK5_1 / 2]; };
struct block_q8_0 { gq_half d; int8_t qs[QK8_0]; };

// ---------------------------------------------------------------------------------------------------
// Row pre-pass: sum_x2 of quantize_row_q*_impl, one thread per row.
// ---------------------------------------------------------------------------------------------------
template <class Src>
__device__ void rowstat_sumsq_item(const void* __restrict__ src, float* __restrict__ rowstat, long long n_per_row,
                                   long long nrows) {
    const long long row = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= nrows) return;
    float sum_x2 = 0;
    const long long base = row * n_per_row;
    for (long long j = 0; j < n_per_row; ++j) {
        const float v = Src::load(src, base + j);
        sum_x2 += v * v;
    }
    rowstat[row] = sum_x2;
}

extern "C" __global__ void rowstat_sumsq_f32(const void* src, float* rowstat, long long n_per_row, long long nrows) {
    rowstat_sumsq_item<GqSrcF32>(src, rowstat, n_per_row, nrows);
}
extern "C" __global__ void rowstat_sumsq_f16(const void* src, float* rowstat, long long n_per_row, long long nrows) {
    rowstat_sumsq_item<GqSrcF16>(src, rowstat, n_per_row, nrows);
}
extern "C" __global__ void rowstat_sumsq_bf16(const void* src, float* rowstat, long long n_per_row, long long nrows) {
    rowstat_sumsq_item<GqSrcBF16>(src, rowstat, n_per_row, nrows);
}

// The tiled kernels (tiles.cuh): 128 threads, one 32-value block each, values and importance weights in
// shared memory. Without importance weights a block goes through quantize_row_*_ref
// (quantize_<type>_<src>), with them through quantize_row_*_impl (quantize_<type>_w_<src>).
#define GQ_LEGACY_THREADS 128

// GQ_LEGACY_CORE(name, B): the tiled core of a legacy type from gq_<name>_ref(x, y) and
// gq_<name>_impl(x, w, sigma2, y) (w: the item's importance weights, replaced by the _impl weights).
#define GQ_LEGACY_CORE(name, B)                                                                            \
    struct GqCore_##name {                                                                                \
        typedef B Block;                                                                                  \
        static const int QK = 32, TPI = 1, THREADS = GQ_LEGACY_THREADS, PHASES = 1, AUX = 0;              \
        template <bool QW>                                                                                \
        static __device__ __forceinline__ void compute(int, const float* x, float* w, float*,             \
                                                       const GqTileItem& it, Block* y) {                  \
            if (QW) gq_##name##_impl(x, w, it.row_sigma2, y);                                             \
            else gq_##name##_ref(x, y);                                                                   \
        }                                                                                                 \
    };

// The weights of quantize_row_q*_impl, in place: qw[j] * sqrtf(sigma2 + x[j]*x[j]).
__device__ __forceinline__ void gq_legacy_weights(const float* __restrict__ x, float* __restrict__ w, float sigma2) {
    for (int j = 0; j < 32; ++j) w[j] = w[j] * sqrtf(sigma2 + x[j] * x[j]);
}

// ---------------------------------------------------------------------------------------------------
// Q4_0: quantize_row_q4_0_ref / quantize_row_q4_0_impl
// ---------------------------------------------------------------------------------------------------
__device__ __forceinline__ void gq_q4_0_ref(const float* __restrict__ x, block_q4_0* __restrict__ y) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < QK4_0; ++j) {
        const float v = x[j];
        if (amax < fabsf(v)) { amax = fabsf(v); max = v; }
    }
    const float d = max / -8;
    const float id = d ? 1.0f / d : 0.0f;
    y->d = gq_fp32_to_fp16(d);
    for (int j = 0; j < QK4_0 / 2; ++j) {
        const float x0 = x[j] * id;
        const float x1 = x[QK4_0 / 2 + j] * id;
        const uint8_t xi0 = (uint8_t)GQ_MIN(15, (int8_t)gq_trunc_i32(x0 + 8.5f));
        const uint8_t xi1 = (uint8_t)GQ_MIN(15, (int8_t)gq_trunc_i32(x1 + 8.5f));
        y->qs[j] = (uint8_t)(xi0 | (xi1 << 4));
    }
}

__device__ __forceinline__ void gq_q4_0_impl(const float* __restrict__ x, float* __restrict__ w, float sigma2, block_q4_0* __restrict__ y) {
    gq_legacy_weights(x, w, sigma2);
    const GqQx r = gq_make_qx_quants_w(QK4_0, 8, x, (const float*)w);
    y->d = gq_fp32_to_fp16(r.scale);
    for (int j = 0; j < 16; ++j) y->qs[j] = (uint8_t)(gq_qx_level(r, 8, x[j]) | (gq_qx_level(r, 8, x[j + 16]) << 4));
}

GQ_LEGACY_CORE(q4_0, block_q4_0)
GQ_TILED_ITEMS(q4_0, GqCore_q4_0)

// ---------------------------------------------------------------------------------------------------
// Q4_1: quantize_row_q4_1_ref / quantize_row_q4_1_impl
// ---------------------------------------------------------------------------------------------------
__device__ __forceinline__ void gq_q4_1_ref(const float* __restrict__ x, block_q4_1* __restrict__ y) {
    float min = 3.402823466e+38f, max = -3.402823466e+38f;  // FLT_MAX
    for (int j = 0; j < QK4_1; ++j) {
        const float v = x[j];
        if (v < min) min = v;
        if (v > max) max = v;
    }
    const float d = (max - min) / ((1 << 4) - 1);
    const float id = d ? 1.0f / d : 0.0f;
    y->d = gq_fp32_to_fp16(d);
    y->m = gq_fp32_to_fp16(min);
    for (int j = 0; j < QK4_1 / 2; ++j) {
        const float x0 = (x[j] - min) * id;
        const float x1 = (x[QK4_1 / 2 + j] - min) * id;
        const uint8_t xi0 = (uint8_t)GQ_MIN(15, (int8_t)gq_trunc_i32(x0 + 0.5f));
        const uint8_t xi1 = (uint8_t)GQ_MIN(15, (int8_t)gq_trunc_i32(x1 + 0.5f));
        y->qs[j] = (uint8_t)(xi0 | (xi1 << 4));
    }
}

// make_qkx3_quants(QK4_1, 15, xb, weight, L, &min, Laux, -0.9f, 0.05f, 36, false)
__device__ __forceinline__ void gq_q4_1_impl(const float* __restrict__ x, float* __restrict__ w, float sigma2, block_q4_1* __restrict__ y) {
    gq_legacy_weights(x, w, sigma2);
    const GqQkx r = gq_make_qkx_quants_w(QK4_1, 15, x, (const float*)w, -0.9f, 0.05f, 36);
    y->d = gq_fp32_to_fp16(r.scale);
    y->m = gq_fp32_to_fp16(-r.the_min);
    for (int j = 0; j < 16; ++j) y->qs[j] = (uint8_t)(gq_qkx_level(r, 15, x[j]) | (gq_qkx_level(r, 15, x[j + 16]) << 4));
}

GQ_LEGACY_CORE(q4_1, block_q4_1)
GQ_TILED_ITEMS(q4_1, GqCore_q4_1)

// ---------------------------------------------------------------------------------------------------
// Q5_0 / Q5_1: the 5th bits go to qh, element j at bit j, element j+16 at bit j+16.
// ---------------------------------------------------------------------------------------------------
// level(j): the 5-bit level of element j
template <class Level>
__device__ __forceinline__ void gq_pack5(const Level& level, uint8_t* __restrict__ qs, uint8_t* __restrict__ qh_bytes) {
    uint32_t qh = 0;
    for (int j = 0; j < 16; ++j) {
        const uint8_t xi0 = (uint8_t)level(j);
        const uint8_t xi1 = (uint8_t)level(j + 16);
        qs[j] = (uint8_t)((xi0 & 0x0F) | ((xi1 & 0x0F) << 4));
        qh |= ((xi0 & 0x10u) >> 4) << (j + 0);
        qh |= ((xi1 & 0x10u) >> 4) << (j + 16);
    }
    for (int k = 0; k < 4; ++k) qh_bytes[k] = (uint8_t)(qh >> (8 * k));  // little-endian memcpy
}

// quantize_row_q5_0_ref
__device__ __forceinline__ void gq_q5_0_ref(const float* __restrict__ x, block_q5_0* __restrict__ y) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < QK5_0; ++j) {
        const float v = x[j];
        if (amax < fabsf(v)) { amax = fabsf(v); max = v; }
    }
    const float d = max / -16;
    const float id = d ? 1.0f / d : 0.0f;
    y->d = gq_fp32_to_fp16(d);
    gq_pack5([&](int j) { return (uint8_t)GQ_MIN(31, (int8_t)gq_trunc_i32(x[j] * id + 16.5f)); }, y->qs, y->qh);
}

// quantize_row_q5_0_impl
__device__ __forceinline__ void gq_q5_0_impl(const float* __restrict__ x, float* __restrict__ w, float sigma2, block_q5_0* __restrict__ y) {
    gq_legacy_weights(x, w, sigma2);
    const GqQx r = gq_make_qx_quants_w(QK5_0, 16, x, (const float*)w);
    y->d = gq_fp32_to_fp16(r.scale);
    gq_pack5([&](int j) { return gq_qx_level(r, 16, x[j]); }, y->qs, y->qh);
}

GQ_LEGACY_CORE(q5_0, block_q5_0)
GQ_TILED_ITEMS(q5_0, GqCore_q5_0)

// quantize_row_q5_1_ref
__device__ __forceinline__ void gq_q5_1_ref(const float* __restrict__ x, block_q5_1* __restrict__ y) {
    float min = 3.402823466e+38f, max = -3.402823466e+38f;
    for (int j = 0; j < QK5_1; ++j) {
        const float v = x[j];
        if (v < min) min = v;
        if (v > max) max = v;
    }
    const float d = (max - min) / ((1 << 5) - 1);
    const float id = d ? 1.0f / d : 0.0f;
    y->d = gq_fp32_to_fp16(d);
    y->m = gq_fp32_to_fp16(min);
    gq_pack5([&](int j) { return (uint8_t)gq_trunc_i32((x[j] - min) * id + 0.5f); }, y->qs, y->qh);
}

// quantize_row_q5_1_impl: make_qkx3_quants(QK5_1, 31, xb, weight, L, &min, Laux, -0.9f, 0.05f, 36, false)
__device__ __forceinline__ void gq_q5_1_impl(const float* __restrict__ x, float* __restrict__ w, float sigma2, block_q5_1* __restrict__ y) {
    gq_legacy_weights(x, w, sigma2);
    const GqQkx r = gq_make_qkx_quants_w(QK5_1, 31, x, (const float*)w, -0.9f, 0.05f, 36);
    y->d = gq_fp32_to_fp16(r.scale);
    y->m = gq_fp32_to_fp16(-r.the_min);
    gq_pack5([&](int j) { return gq_qkx_level(r, 31, x[j]); }, y->qs, y->qh);
}

GQ_LEGACY_CORE(q5_1, block_q5_1)
GQ_TILED_ITEMS(q5_1, GqCore_q5_1)

// ---------------------------------------------------------------------------------------------------
// Q8_0: quantize_row_q8_0_ref (quantize_q8_0 ignores importance weights)
// ---------------------------------------------------------------------------------------------------
__device__ __forceinline__ void gq_q8_0_ref(const float* __restrict__ x, block_q8_0* __restrict__ y) {
    float amax = 0.0f;
    for (int j = 0; j < QK8_0; ++j) amax = GQ_MAX(amax, fabsf(x[j]));
    const float d = amax / ((1 << 7) - 1);
    const float id = d ? 1.0f / d : 0.0f;
    y->d = gq_fp32_to_fp16_nonneg(d);  // NaN only as fabsf of a NaN x[31] (MAX restarts after one)
    for (int j = 0; j < QK8_0; ++j) y->qs[j] = (int8_t)gq_trunc_i32(roundf(x[j] * id));
}

struct GqCore_q8_0 {
    typedef block_q8_0 Block;
    static const int QK = 32, TPI = 1, THREADS = GQ_LEGACY_THREADS, PHASES = 1, AUX = 0;
    template <bool QW>
    static __device__ __forceinline__ void compute(int, const float* x, float*, float*, const GqTileItem&, Block* y) {
        gq_q8_0_ref(x, y);
    }
};
GQ_TILED_ITEMS_UNWEIGHTED(q8_0, GqCore_q8_0)

GQ_QUANTIZE_ENTRY_POINTS(q4_0)
GQ_QUANTIZE_ENTRY_POINTS(q4_0_w)
GQ_QUANTIZE_ENTRY_POINTS(q4_1)
GQ_QUANTIZE_ENTRY_POINTS(q4_1_w)
GQ_QUANTIZE_ENTRY_POINTS(q5_0)
GQ_QUANTIZE_ENTRY_POINTS(q5_0_w)
GQ_QUANTIZE_ENTRY_POINTS(q5_1)
GQ_QUANTIZE_ENTRY_POINTS(q5_1_w)
GQ_QUANTIZE_ENTRY_POINTS(q8_0)

// ---------------------------------------------------------------------------------------------------
// Dequantize: dequantize_row_q* of one block, every value stored through gq_x86_nan (an inf scale times
// 0 is x86's default NaN; see common.cuh), and the kernels (one thread per block).
// ---------------------------------------------------------------------------------------------------
__device__ __forceinline__ void gq_dequantize_row_q4_0(const block_q4_0* b, float* y) {
    const float d = gq_fp16_to_fp32(b->d);
    for (int j = 0; j < QK4_0 / 2; ++j) {
        const int x0 = (b->qs[j] & 0x0F) - 8;
        const int x1 = (b->qs[j] >> 4) - 8;
        y[j] = gq_x86_nan(x0 * d);
        y[j + QK4_0 / 2] = gq_x86_nan(x1 * d);
    }
}

__device__ __forceinline__ void gq_dequantize_row_q4_1(const block_q4_1* b, float* y) {
    const float d = gq_fp16_to_fp32(b->d);
    const float m = gq_fp16_to_fp32(b->m);
    for (int j = 0; j < QK4_1 / 2; ++j) {
        const int x0 = b->qs[j] & 0x0F;
        const int x1 = b->qs[j] >> 4;
        y[j] = gq_x86_nan(x0 * d + m);
        y[j + QK4_1 / 2] = gq_x86_nan(x1 * d + m);
    }
}

__device__ __forceinline__ uint32_t gq_load_qh(const uint8_t* qh) {
    return (uint32_t)qh[0] | ((uint32_t)qh[1] << 8) | ((uint32_t)qh[2] << 16) | ((uint32_t)qh[3] << 24);
}

__device__ __forceinline__ void gq_dequantize_row_q5_0(const block_q5_0* b, float* y) {
    const float d = gq_fp16_to_fp32(b->d);
    const uint32_t qh = gq_load_qh(b->qh);
    for (int j = 0; j < QK5_0 / 2; ++j) {
        const uint8_t xh_0 = (uint8_t)(((qh >> (j + 0)) << 4) & 0x10);
        const uint8_t xh_1 = (uint8_t)((qh >> (j + 12)) & 0x10);
        const int32_t x0 = ((b->qs[j] & 0x0F) | xh_0) - 16;
        const int32_t x1 = ((b->qs[j] >> 4) | xh_1) - 16;
        y[j] = gq_x86_nan(x0 * d);
        y[j + QK5_0 / 2] = gq_x86_nan(x1 * d);
    }
}

__device__ __forceinline__ void gq_dequantize_row_q5_1(const block_q5_1* b, float* y) {
    const float d = gq_fp16_to_fp32(b->d);
    const float m = gq_fp16_to_fp32(b->m);
    const uint32_t qh = gq_load_qh(b->qh);
    for (int j = 0; j < QK5_1 / 2; ++j) {
        const uint8_t xh_0 = (uint8_t)(((qh >> (j + 0)) << 4) & 0x10);
        const uint8_t xh_1 = (uint8_t)((qh >> (j + 12)) & 0x10);
        const int x0 = (b->qs[j] & 0x0F) | xh_0;
        const int x1 = (b->qs[j] >> 4) | xh_1;
        y[j] = gq_x86_nan(x0 * d + m);
        y[j + QK5_1 / 2] = gq_x86_nan(x1 * d + m);
    }
}

__device__ __forceinline__ void gq_dequantize_row_q8_0(const block_q8_0* b, float* y) {
    const float d = gq_fp16_to_fp32(b->d);
    for (int j = 0; j < QK8_0; ++j) y[j] = gq_x86_nan(b->qs[j] * d);
}

extern "C" __global__ void dequantize_q4_0(GQ_DEQUANTIZE_PARAMS) {
    gq_dequantize_blocks<block_q4_0, QK4_0, gq_dequantize_row_q4_0>(GQ_DEQUANTIZE_ARGS);
}
extern "C" __global__ void dequantize_q4_1(GQ_DEQUANTIZE_PARAMS) {
    gq_dequantize_blocks<block_q4_1, QK4_1, gq_dequantize_row_q4_1>(GQ_DEQUANTIZE_ARGS);
}
extern "C" __global__ void dequantize_q5_0(GQ_DEQUANTIZE_PARAMS) {
    gq_dequantize_blocks<block_q5_0, QK5_0, gq_dequantize_row_q5_0>(GQ_DEQUANTIZE_ARGS);
}
extern "C" __global__ void dequantize_q5_1(GQ_DEQUANTIZE_PARAMS) {
    gq_dequantize_blocks<block_q5_1, QK5_1, gq_dequantize_row_q5_1>(GQ_DEQUANTIZE_ARGS);
}
extern "C" __global__ void dequantize_q8_0(GQ_DEQUANTIZE_PARAMS) {
    gq_dequantize_blocks<block_q8_0, QK8_0, gq_dequantize_row_q8_0>(GQ_DEQUANTIZE_ARGS);
}
