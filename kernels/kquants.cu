// kquants.cu: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K (ggml-quants.c quantize_q*_K) and their dequantize kernels.
//
// One CUDA thread per 256-value super-block. Without importance weights (qw == nullptr) a super-block goes
// through quantize_row_q*_K_ref, with them through quantize_row_q*_K_impl: exactly what quantize_q*_K
// (and so ggml_quantize_chunk) dispatches to. The k-quants' statistics (sigma2 of the _impl paths) are per
// super-block, so no row pre-pass is needed and rowstat is unused.
//
// The scale searches are common.cuh's (make_qx_quants, make_qkx2/qkx3_quants) and kquants_search.cuh's
// (make_q3_quants, make_qp_quants). NaNs do occur here with finite inputs: denormal sub-blocks make
// nmax/(max - min) = inf, then inf*0 in the qkx search; scales past the fp16 range make d = inf, then
// inf*0 when requantizing; w*x overflows for huge values, then inf*0 (l = 0) gives a NaN sub-block scale
// that the second-level make_qx_quants/make_qp_quants rounds. gq_nearest_int and gq_fp32_to_fp16 answer
// for them what x86 computes (see "NaN bits" in common.cuh).
#include "kquants_search.cuh"

// ggml-common.h block layouts
#define K_SCALE_SIZE 12
struct block_q2_k { uint8_t scales[QK_K / 16]; uint8_t qs[QK_K / 4]; gq_half d; gq_half dmin; };
struct block_q3_k { uint8_t hmask[QK_K / 8]; uint8_t qs[QK_K / 4]; uint8_t scales[12]; gq_half d; };
struct block_q4_k { gq_half d; gq_half dmin; uint8_t scales[K_SCALE_SIZE]; uint8_t qs[QK_K / 2]; };
struct block_q5_k { gq_half d; gq_half dmin; uint8_t scales[K_SCALE_SIZE]; uint8_t qh[QK_K / 8]; uint8_t qs[QK_K / 2]; };
struct block_q6_k { uint8_t ql[QK_K / 2]; uint8_t qh[QK_K / 4]; int8_t scales[QK_K / 16]; gq_half d; };

// get_scale_min_k4: 6-bit scale and min of sub-block j from the 12-byte Q4_K/Q5_K scales field.
__device__ __forceinline__ void kq_get_scale_min_k4(int j, const uint8_t* q, uint8_t* d, uint8_t* m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4));
    }
}

// The inverse, as quantize_row_q4_K/q5_K write it for j = 0..7 in order (bytes j-4 and j of the first
// half are assigned at j < 4 and or-ed into at j >= 4).
__device__ __forceinline__ void kq_put_scale_min_k4(int j, uint8_t ls, uint8_t lm, uint8_t* q) {
    if (j < 4) {
        q[j] = ls;
        q[j + 4] = lm;
    } else {
        q[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
        q[j - 4] |= (uint8_t)((ls >> 4) << 6);
        q[j - 0] |= (uint8_t)((lm >> 4) << 6);
    }
}

// Q3_K's 6-bit scale j (l in [0, 63], i.e. scale + 32) into the zeroed 12-byte scales field.
__device__ __forceinline__ void kq_put_scale_q3_k(int j, int l, uint8_t* sc) {
    if (j < 8) sc[j] = (uint8_t)(l & 0xF);
    else sc[j - 8] |= (uint8_t)((l & 0xF) << 4);
    l >>= 4;
    sc[j % 4 + 8] |= (uint8_t)(l << (2 * (j / 4)));
}

// Q3_K's 6-bit scale j back, minus 32 (the int8_t sc of quantize_row_q3_K_ref/_impl).
__device__ __forceinline__ int kq_get_scale_q3_k(int j, const uint8_t* sc) {
    const int lo = j < 8 ? sc[j] & 0xF : sc[j - 8] >> 4;
    return (lo | (((sc[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
}

// The 2-bit packing of Q2_K and Q3_K: values l, l+32, l+64, l+96 of each 128 into one byte.
__device__ __forceinline__ void kq_pack_2bit(const uint8_t* L, uint8_t* qs) {
    for (int j = 0; j < QK_K; j += 128) {
        for (int l = 0; l < 32; ++l) {
            qs[j / 4 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Q2_K: quantize_q2_K, i.e. quantize_row_q2_K_ref (qw == nullptr) / quantize_row_q2_K_impl
// ---------------------------------------------------------------------------------------------------
__device__ static __noinline__ void kq_quantize_q2_K(const float* x, const GqItem& it, block_q2_k* y) {
    const float* qw = it.qw;
    uint8_t L[QK_K];
    uint8_t Laux[16];
    float weight[16];
    float mins[QK_K / 16];
    float scales[QK_K / 16];

    if (!qw) {  // quantize_row_q2_K_ref
        const float q4scale = 15.f;
        float max_scale = 0;  // as the min is deducted, scales are always positive
        float max_min = 0;
        for (int j = 0; j < QK_K / 16; ++j) {
            for (int l = 0; l < 16; ++l) weight[l] = fabsf(x[16 * j + l]);
            // make_qkx2_quants(16, 3, ..., -0.5f, 0.1f, 15, true)
            scales[j] = kq_make_qkx_quants(16, 3, x + 16 * j, weight, L + 16 * j, &mins[j], Laux, -0.5f, 0.1f, 15,
                                           true);
            const float scale = scales[j];
            if (scale > max_scale) max_scale = scale;
            const float min = mins[j];
            if (min > max_min) max_min = min;
        }
        if (max_scale > 0) {
            const float iscale = q4scale / max_scale;
            for (int j = 0; j < QK_K / 16; ++j) y->scales[j] = (uint8_t)gq_nearest_int(iscale * scales[j]);
            y->d = gq_fp32_to_fp16(max_scale / q4scale);
        } else {
            for (int j = 0; j < QK_K / 16; ++j) y->scales[j] = 0;
            y->d = gq_fp32_to_fp16(0.f);
        }
        if (max_min > 0) {
            const float iscale = q4scale / max_min;
            for (int j = 0; j < QK_K / 16; ++j) {
                const int l = gq_nearest_int(iscale * mins[j]);
                y->scales[j] |= (uint8_t)(l << 4);
            }
            y->dmin = gq_fp32_to_fp16(max_min / q4scale);
        } else {
            y->dmin = gq_fp32_to_fp16(0.f);
        }
    } else {  // quantize_row_q2_K_impl
        float sw[QK_K / 16];
        uint8_t Ls[QK_K / 16], Lm[QK_K / 16];
        const float sigma2 = gq_sum_sq(QK_K, x) / QK_K;
        for (int j = 0; j < QK_K / 16; ++j) {
            gq_impl_weights(16, x + 16 * j, qw + 16 * j, sigma2, weight);
            sw[j] = gq_sum(16, weight);
            scales[j] = kq_make_qkx_quants(16, 3, x + 16 * j, weight, L + 16 * j, &mins[j], Laux, -0.9f, 0.05f, 36,
                                           false);
        }
        const float dm = kq_make_qp_quants(QK_K / 16, 15, scales, Ls, sw);
        const float mm = kq_make_qp_quants(QK_K / 16, 15, mins, Lm, sw);
        y->d = gq_fp32_to_fp16(dm);
        y->dmin = gq_fp32_to_fp16(mm);
        for (int j = 0; j < QK_K / 16; ++j) y->scales[j] = (uint8_t)(Ls[j] | (Lm[j] << 4));
    }

    // both paths: requantize with the rounded scales
    const float dall = gq_fp16_to_fp32(y->d);
    const float mall = gq_fp16_to_fp32(y->dmin);
    for (int j = 0; j < QK_K / 16; ++j) {
        const float d = dall * (y->scales[j] & 0xF);
        if (!d) continue;
        const float dm = mall * (y->scales[j] >> 4);
        for (int ii = 0; ii < 16; ++ii) {
            const int l = gq_nearest_int((x[16 * j + ii] + dm) / d);
            L[16 * j + ii] = (uint8_t)GQ_MAX(0, GQ_MIN(3, l));
        }
    }
    kq_pack_2bit(L, y->qs);
}

// ---------------------------------------------------------------------------------------------------
// Q3_K: quantize_q3_K, i.e. quantize_row_q3_K_ref (qw == nullptr) / quantize_row_q3_K_impl
// ---------------------------------------------------------------------------------------------------
__device__ static __noinline__ void kq_quantize_q3_K(const float* x, const GqItem& it, block_q3_k* y) {
    const float* qw = it.qw;
    int8_t L[QK_K];
    float scales[QK_K / 16];

    for (int j = 0; j < 12; ++j) y->scales[j] = 0;
    if (!qw) {  // quantize_row_q3_K_ref
        float max_scale = 0;
        float amax = 0;
        for (int j = 0; j < QK_K / 16; ++j) {
            scales[j] = kq_make_q3_quants(16, 4, x + 16 * j, L + 16 * j);
            const float scale = fabsf(scales[j]);
            if (scale > amax) { amax = scale; max_scale = scales[j]; }
        }
        if (max_scale) {
            const float iscale = -32.f / max_scale;
            for (int j = 0; j < QK_K / 16; ++j) {
                int8_t l = (int8_t)gq_nearest_int(iscale * scales[j]);
                l = (int8_t)(GQ_MAX(-32, GQ_MIN(31, l)) + 32);
                kq_put_scale_q3_k(j, l, y->scales);
            }
            y->d = gq_fp32_to_fp16(1 / iscale);
        } else {
            y->d = gq_fp32_to_fp16(0.f);
        }
    } else {  // quantize_row_q3_K_impl
        float weight[16];
        float sw[QK_K / 16];
        int8_t Ls[QK_K / 16];
        const float sigma2 = 2 * gq_sum_sq(QK_K, x) / QK_K;
        for (int j = 0; j < QK_K / 16; ++j) {
            gq_impl_weights(16, x + 16 * j, qw + 16 * j, sigma2, weight);
            sw[j] = gq_sum(16, weight);
            scales[j] = kq_make_qx_quants(16, 4, x + 16 * j, L + 16 * j, weight);
        }
        const float d_block = kq_make_qx_quants(QK_K / 16, 32, scales, Ls, sw);
        for (int j = 0; j < QK_K / 16; ++j) kq_put_scale_q3_k(j, Ls[j], y->scales);
        y->d = gq_fp32_to_fp16(d_block);
    }

    // both paths: requantize with the rounded scales
    const float dall = gq_fp16_to_fp32(y->d);
    for (int j = 0; j < QK_K / 16; ++j) {
        const int8_t sc = (int8_t)kq_get_scale_q3_k(j, y->scales);
        const float d = dall * sc;
        if (!d) continue;
        for (int ii = 0; ii < 16; ++ii) {
            int l = gq_nearest_int(x[16 * j + ii] / d);
            l = GQ_MAX(-4, GQ_MIN(3, l));
            L[16 * j + ii] = (int8_t)(l + 4);
        }
    }

    // the high bit of value j goes to hmask[j % 32], bit j / 32
    for (int j = 0; j < QK_K / 8; ++j) y->hmask[j] = 0;
    int m = 0;
    uint8_t hm = 1;
    for (int j = 0; j < QK_K; ++j) {
        if (L[j] > 3) {
            y->hmask[m] |= hm;
            L[j] = (int8_t)(L[j] - 4);
        }
        if (++m == QK_K / 8) { m = 0; hm = (uint8_t)(hm << 1); }
    }
    kq_pack_2bit((const uint8_t*)L, y->qs);
}

// ---------------------------------------------------------------------------------------------------
// Q4_K and Q5_K share everything up to packing the quants: 8 sub-blocks of 32 with a 6-bit scale and min
// each. nmax = 15 (Q4_K) or 31 (Q5_K). Fills L (the requantized values), the scales field, d and dmin.
// quantize_row_q4_K_ref / quantize_row_q5_K_ref (qw == nullptr),
// quantize_row_q4_K_impl / quantize_row_q5_K_impl.
// ---------------------------------------------------------------------------------------------------
__device__ static __noinline__ void kq_q45_K_scales(const float* x, const float* qw, int nmax, uint8_t* L,
                                                     uint8_t* ysc, gq_half* yd, gq_half* ydmin) {
    uint8_t Laux[32];
    float weights[32];
    float mins[QK_K / 32];
    float scales[QK_K / 32];

    if (!qw) {  // quantize_row_q4_K_ref / quantize_row_q5_K_ref
        float max_scale = 0;  // as the min is deducted, scales are always positive
        float max_min = 0;
        for (int j = 0; j < QK_K / 32; ++j) {
            const float av_x = sqrtf(gq_sum_sq(32, x + 32 * j) / 32);
            for (int l = 0; l < 32; ++l) weights[l] = av_x + fabsf(x[32 * j + l]);
            // make_qkx2_quants(32, 15, ..., -1.f, 0.1f, 20, false) / (32, 31, ..., -0.5f, 0.1f, 15, false)
            scales[j] = nmax == 15
                ? kq_make_qkx_quants(32, 15, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -1.f, 0.1f, 20, false)
                : kq_make_qkx_quants(32, 31, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -0.5f, 0.1f, 15, false);
            const float scale = scales[j];
            if (scale > max_scale) max_scale = scale;
            const float min = mins[j];
            if (min > max_min) max_min = min;
        }
        const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
        const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
        for (int j = 0; j < QK_K / 32; ++j) {
            uint8_t ls = (uint8_t)gq_nearest_int(inv_scale * scales[j]);
            uint8_t lm = (uint8_t)gq_nearest_int(inv_min * mins[j]);
            ls = GQ_MIN(63, ls);
            lm = GQ_MIN(63, lm);
            kq_put_scale_min_k4(j, ls, lm, ysc);
        }
        *yd = gq_fp32_to_fp16(max_scale / 63.f);
        *ydmin = gq_fp32_to_fp16(max_min / 63.f);
    } else {  // quantize_row_q4_K_impl / quantize_row_q5_K_impl
        uint8_t Ls[QK_K / 32];
        uint8_t Lm[QK_K / 32];
        float sw[QK_K / 32];
        const float sigma2 = 2 * gq_sum_sq(QK_K, x) / QK_K;
        for (int j = 0; j < QK_K / 32; ++j) {
            gq_impl_weights(32, x + 32 * j, qw + 32 * j, sigma2, weights);
            sw[j] = gq_sum(32, weights);
            scales[j] = kq_make_qkx_quants(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -0.9f, 0.05f,
                                           36, false);
        }
        const float d_block = kq_make_qp_quants(QK_K / 32, 63, scales, Ls, sw);
        const float m_block = kq_make_qp_quants(QK_K / 32, 63, mins, Lm, sw);
        for (int j = 0; j < QK_K / 32; ++j) {
            uint8_t ls = Ls[j];
            uint8_t lm = Lm[j];
            if (nmax == 31) {  // quantize_row_q5_K_impl clamps here, quantize_row_q4_K_impl does not
                ls = GQ_MIN(63, ls);
                lm = GQ_MIN(63, lm);
            }
            kq_put_scale_min_k4(j, ls, lm, ysc);
        }
        *yd = gq_fp32_to_fp16(d_block);
        *ydmin = gq_fp32_to_fp16(m_block);
    }

    // both paths: requantize with the rounded scales
    const float dall = gq_fp16_to_fp32(*yd);
    const float mall = gq_fp16_to_fp32(*ydmin);
    for (int j = 0; j < QK_K / 32; ++j) {
        uint8_t sc, m;
        kq_get_scale_min_k4(j, ysc, &sc, &m);
        const float d = dall * sc;
        if (!d) continue;
        const float dm = mall * m;
        for (int ii = 0; ii < 32; ++ii) {
            const int l = gq_nearest_int((x[32 * j + ii] + dm) / d);
            L[32 * j + ii] = (uint8_t)GQ_MAX(0, GQ_MIN(nmax, l));
        }
    }
}

// quantize_row_q4_K_ref / quantize_row_q4_K_impl
__device__ static __noinline__ void kq_quantize_q4_K(const float* x, const GqItem& it, block_q4_k* y) {
    uint8_t L[QK_K];
    kq_q45_K_scales(x, it.qw, 15, L, y->scales, &y->d, &y->dmin);
    uint8_t* q = y->qs;
    for (int j = 0; j < QK_K; j += 64) {
        for (int l = 0; l < 32; ++l) q[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
        q += 32;
    }
}

// quantize_row_q5_K_ref / quantize_row_q5_K_impl
__device__ static __noinline__ void kq_quantize_q5_K(const float* x, const GqItem& it, block_q5_k* y) {
    uint8_t L[QK_K];
    kq_q45_K_scales(x, it.qw, 31, L, y->scales, &y->d, &y->dmin);
    uint8_t* qh = y->qh;
    uint8_t* ql = y->qs;
    for (int j = 0; j < QK_K / 8; ++j) qh[j] = 0;
    uint8_t m1 = 1, m2 = 2;
    for (int n = 0; n < QK_K; n += 64) {
        for (int j = 0; j < 32; ++j) {
            int l1 = L[n + j];
            if (l1 > 15) { l1 -= 16; qh[j] |= m1; }
            int l2 = L[n + j + 32];
            if (l2 > 15) { l2 -= 16; qh[j] |= m2; }
            ql[j] = (uint8_t)(l1 | (l2 << 4));
        }
        m1 = (uint8_t)(m1 << 2);
        m2 = (uint8_t)(m2 << 2);
        ql += 32;
    }
}

// ---------------------------------------------------------------------------------------------------
// Q6_K: quantize_row_q6_K_ref (qw == nullptr) / quantize_row_q6_K_impl, which differ only in the
// weights make_qx_quants gets (x*x or the importance weights themselves).
// ---------------------------------------------------------------------------------------------------
__device__ static __noinline__ void kq_quantize_q6_K(const float* x, const GqItem& it, block_q6_k* y) {
    const float* qw = it.qw;
    int8_t L[QK_K];
    float scales[QK_K / 16];

    float max_scale = 0;
    float max_abs_scale = 0;
    for (int ib = 0; ib < QK_K / 16; ++ib) {
        const float scale = kq_make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib, qw ? qw + 16 * ib : nullptr);
        scales[ib] = scale;
        const float abs_scale = fabsf(scale);
        if (abs_scale > max_abs_scale) { max_abs_scale = abs_scale; max_scale = scale; }
    }
    if (max_abs_scale < GQ_GROUP_MAX_EPS) {  // memset(&y[i], 0, ...); d = fp16(0) = 0
        uint8_t* p = (uint8_t*)y;
        for (unsigned i = 0; i < sizeof(block_q6_k); ++i) p[i] = 0;
        return;
    }

    const float iscale = -128.f / max_scale;
    y->d = gq_fp32_to_fp16(1 / iscale);
    for (int ib = 0; ib < QK_K / 16; ++ib) y->scales[ib] = (int8_t)GQ_MIN(127, gq_nearest_int(iscale * scales[ib]));
    const float dall = gq_fp16_to_fp32(y->d);
    for (int j = 0; j < QK_K / 16; ++j) {
        const float d = dall * y->scales[j];
        if (!d) continue;
        for (int ii = 0; ii < 16; ++ii) {
            int l = gq_nearest_int(x[16 * j + ii] / d);
            l = GQ_MAX(-32, GQ_MIN(31, l));
            L[16 * j + ii] = (int8_t)(l + 32);
        }
    }

    uint8_t* ql = y->ql;
    uint8_t* qh = y->qh;
    for (int j = 0; j < QK_K; j += 128) {
        for (int l = 0; l < 32; ++l) {
            const uint8_t q1 = L[j + l + 0] & 0xF;
            const uint8_t q2 = L[j + l + 32] & 0xF;
            const uint8_t q3 = L[j + l + 64] & 0xF;
            const uint8_t q4 = L[j + l + 96] & 0xF;
            ql[l + 0] = (uint8_t)(q1 | (q3 << 4));
            ql[l + 32] = (uint8_t)(q2 | (q4 << 4));
            qh[l] = (uint8_t)((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) | ((L[j + l + 64] >> 4) << 4) |
                              ((L[j + l + 96] >> 4) << 6));
        }
        ql += 64;
        qh += 32;
    }
}

// ---------------------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------------------
GQ_QUANTIZE_ITEM(q2_k, block_q2_k, QK_K, kq_quantize_q2_K)
GQ_QUANTIZE_ITEM(q3_k, block_q3_k, QK_K, kq_quantize_q3_K)
GQ_QUANTIZE_ITEM(q4_k, block_q4_k, QK_K, kq_quantize_q4_K)
GQ_QUANTIZE_ITEM(q5_k, block_q5_k, QK_K, kq_quantize_q5_K)
GQ_QUANTIZE_ITEM(q6_k, block_q6_k, QK_K, kq_quantize_q6_K)

GQ_QUANTIZE_ENTRY_POINTS(q2_k)
GQ_QUANTIZE_ENTRY_POINTS(q3_k)
GQ_QUANTIZE_ENTRY_POINTS(q4_k)
GQ_QUANTIZE_ENTRY_POINTS(q5_k)
GQ_QUANTIZE_ENTRY_POINTS(q6_k)

// ---------------------------------------------------------------------------------------------------
// Dequantize: dequantize_row_q*_K of one super-block, every value stored through gq_x86_nan (an inf
// scale times 0 is x86's default NaN; see common.cuh), and the kernels (one thread per super-block).
// ---------------------------------------------------------------------------------------------------

// dequantize_row_q2_K
__device__ __forceinline__ void kq_dequantize_row_q2_K(const block_q2_k* b, float* y) {
    const float d = gq_fp16_to_fp32(b->d);
    const float min = gq_fp16_to_fp32(b->dmin);
    const uint8_t* q = b->qs;
    int is = 0;
    for (int n = 0; n < QK_K; n += 128) {
        int shift = 0;
        for (int j = 0; j < 4; ++j) {
            for (int h = 0; h < 2; ++h) {  // the two 16-value halves, q[l] and q[l + 16]
                const uint8_t sc = b->scales[is++];
                const float dl = d * (sc & 0xF), ml = min * (sc >> 4);
                for (int l = 0; l < 16; ++l) *y++ = gq_x86_nan(dl * (int8_t)((q[l + 16 * h] >> shift) & 3) - ml);
            }
            shift += 2;
        }
        q += 32;
    }
}

// dequantize_row_q3_K (its kmask unpacking of the scales done one scale at a time)
__device__ __forceinline__ void kq_dequantize_row_q3_K(const block_q3_k* b, float* y) {
    const float d_all = gq_fp16_to_fp32(b->d);
    const uint8_t* q = b->qs;
    const uint8_t* hm = b->hmask;
    uint8_t m = 1;
    int is = 0;
    for (int n = 0; n < QK_K; n += 128) {
        int shift = 0;
        for (int j = 0; j < 4; ++j) {
            for (int h = 0; h < 2; ++h) {
                const float dl = d_all * kq_get_scale_q3_k(is++, b->scales);
                for (int l = 16 * h; l < 16 * h + 16; ++l) {
                    *y++ = gq_x86_nan(dl * ((int8_t)((q[l] >> shift) & 3) - ((hm[l] & m) ? 0 : 4)));
                }
            }
            shift += 2;
            m = (uint8_t)(m << 1);
        }
        q += 32;
    }
}

// dequantize_row_q4_K (qh == nullptr) / dequantize_row_q5_K
__device__ __forceinline__ void kq_dequantize_q45_K(const gq_half* dd, const gq_half* dmin, const uint8_t* scales,
                                                    const uint8_t* qh, const uint8_t* q, float* y) {
    const float d = gq_fp16_to_fp32(*dd);
    const float min = gq_fp16_to_fp32(*dmin);
    int is = 0;
    uint8_t sc, m;
    uint8_t u1 = 1, u2 = 2;
    for (int j = 0; j < QK_K; j += 64) {
        kq_get_scale_min_k4(is + 0, scales, &sc, &m);
        const float d1 = d * sc, m1 = min * m;
        kq_get_scale_min_k4(is + 1, scales, &sc, &m);
        const float d2 = d * sc, m2 = min * m;
        for (int l = 0; l < 32; ++l) *y++ = gq_x86_nan(d1 * ((q[l] & 0xF) + (qh && (qh[l] & u1) ? 16 : 0)) - m1);
        for (int l = 0; l < 32; ++l) *y++ = gq_x86_nan(d2 * ((q[l] >> 4) + (qh && (qh[l] & u2) ? 16 : 0)) - m2);
        q += 32;
        is += 2;
        u1 = (uint8_t)(u1 << 2);
        u2 = (uint8_t)(u2 << 2);
    }
}

__device__ __forceinline__ void kq_dequantize_row_q4_K(const block_q4_k* b, float* y) {
    kq_dequantize_q45_K(&b->d, &b->dmin, b->scales, nullptr, b->qs, y);
}

__device__ __forceinline__ void kq_dequantize_row_q5_K(const block_q5_k* b, float* y) {
    kq_dequantize_q45_K(&b->d, &b->dmin, b->scales, b->qh, b->qs, y);
}

// dequantize_row_q6_K
__device__ __forceinline__ void kq_dequantize_row_q6_K(const block_q6_k* b, float* y) {
    const float d = gq_fp16_to_fp32(b->d);
    const uint8_t* ql = b->ql;
    const uint8_t* qh = b->qh;
    const int8_t* sc = b->scales;
    for (int n = 0; n < QK_K; n += 128) {
        for (int l = 0; l < 32; ++l) {
            const int is = l / 16;
            const int8_t q1 = (int8_t)((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
            const int8_t q2 = (int8_t)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
            const int8_t q3 = (int8_t)((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            const int8_t q4 = (int8_t)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[l + 0] = gq_x86_nan(d * sc[is + 0] * q1);
            y[l + 32] = gq_x86_nan(d * sc[is + 2] * q2);
            y[l + 64] = gq_x86_nan(d * sc[is + 4] * q3);
            y[l + 96] = gq_x86_nan(d * sc[is + 6] * q4);
        }
        y += 128;
        ql += 64;
        qh += 32;
        sc += 8;
    }
}

extern "C" __global__ void dequantize_q2_k(GQ_DEQUANTIZE_PARAMS) {
    gq_dequantize_blocks<block_q2_k, QK_K, kq_dequantize_row_q2_K>(GQ_DEQUANTIZE_ARGS);
}
extern "C" __global__ void dequantize_q3_k(GQ_DEQUANTIZE_PARAMS) {
    gq_dequantize_blocks<block_q3_k, QK_K, kq_dequantize_row_q3_K>(GQ_DEQUANTIZE_ARGS);
}
extern "C" __global__ void dequantize_q4_k(GQ_DEQUANTIZE_PARAMS) {
    gq_dequantize_blocks<block_q4_k, QK_K, kq_dequantize_row_q4_K>(GQ_DEQUANTIZE_ARGS);
}
extern "C" __global__ void dequantize_q5_k(GQ_DEQUANTIZE_PARAMS) {
    gq_dequantize_blocks<block_q5_k, QK_K, kq_dequantize_row_q5_K>(GQ_DEQUANTIZE_ARGS);
}
extern "C" __global__ void dequantize_q6_k(GQ_DEQUANTIZE_PARAMS) {
    gq_dequantize_blocks<block_q6_k, QK_K, kq_dequantize_row_q6_K>(GQ_DEQUANTIZE_ARGS);
}
