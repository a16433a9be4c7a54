// kquants.cu: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K (ggml-quants.c quantize_q*_K) and their dequantize kernels.
//
// Quantize: a CUDA block of KQ_SB super-blocks, KQ_LANES threads each (kquants_block.cuh: staging
// through shared memory, coalesced stores). Each thread runs the scale searches of its sub-blocks with
// every sum in ggml's order; one thread per super-block then runs the super-block step (max scale, or the
// make_qp_quants/make_qx_quants of the sub-block scales); each thread requantizes and packs a slice of the
// block's values. The kernels without importance weights (quantize_q*_k_<src>) follow
// quantize_row_q*_K_ref, the _w ones quantize_row_q*_K_impl: exactly what quantize_q*_K (and so
// ggml_quantize_chunk) dispatches to. The k-quants' statistics (sigma2 of the _impl paths) are per
// super-block, so no row pre-pass is needed and rowstat is unused.
//
// The scale searches are common.cuh's (make_qx_quants, make_qkx2/qkx3_quants) and kquants_search.cuh's
// (make_q3_quants, make_qp_quants). NaNs do occur here with finite inputs: denormal sub-blocks make
// nmax/(max - min) = inf, then inf*0 in the qkx search; scales past the fp16 range make d = inf, then
// inf*0 when requantizing; w*x overflows for huge values, then inf*0 (l = 0) gives a NaN sub-block scale
// that the second-level make_qx_quants/make_qp_quants rounds. gq_nearest_int and gq_fp32_to_fp16 answer
// for them what x86 computes (see "NaN bits" in common.cuh).
#include "kquants_search.cuh"
#include "kquants_block.cuh"

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

// ---------------------------------------------------------------------------------------------------
// Q2_K: quantize_q2_K, i.e. quantize_row_q2_K_ref (QW false) / quantize_row_q2_K_impl (QW true)
// ---------------------------------------------------------------------------------------------------
typedef KqSmem<16, sizeof(block_q2_k)> KqSmemQ2;

// The super-block scales of quantize_row_q2_K_ref / _impl from the 16 sub-block searches (r0: first row).
template <bool QW>
__device__ __forceinline__ void kq_q2_K_superblock(KqSmemQ2& S, int r0, block_q2_k* y) {
    const float* scales = S.scale + r0;
    const float* mins = S.min + r0;
    if (QW) {  // quantize_row_q2_K_impl
        const float dm = kq_make_qp_quants(QK_K / 16, 15, scales, S.Ls + r0, S.sw + r0);
        const float mm = kq_make_qp_quants(QK_K / 16, 15, mins, S.Lm + r0, S.sw + r0);
        y->d = gq_fp32_to_fp16(dm);
        y->dmin = gq_fp32_to_fp16(mm);
        for (int j = 0; j < QK_K / 16; ++j) y->scales[j] = (uint8_t)(S.Ls[r0 + j] | (S.Lm[r0 + j] << 4));
        return;
    }
    const float q4scale = 15.f;  // quantize_row_q2_K_ref
    float max_scale = 0;  // as the min is deducted, scales are always positive
    float max_min = 0;
    for (int j = 0; j < QK_K / 16; ++j) {
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
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
        for (int j = 0; j < QK_K / 16; ++j) y->scales[j] |= (uint8_t)(gq_nearest_int(iscale * mins[j]) << 4);
        y->dmin = gq_fp32_to_fp16(max_min / q4scale);
    } else {
        y->dmin = gq_fp32_to_fp16(0.f);
    }
}

// Lane s's slice of a 2-bit field (Q2_K, Q3_K qs): byte 32h + l holds values 128h + 32m + l at bits 2m,
// lo2(level) the 2 bits.
template <class Smem, class Lo2>
__device__ __forceinline__ void kq_pack_2bit_slice(Smem& S, int g, int s, uint8_t* qs, Lo2 lo2) {
    for (int h = 0; h < 2; ++h) {
        for (int l = 8 * s; l < 8 * s + 8; ++l) {
            int q = 0;
            for (int m = 0; m < 4; ++m) q |= lo2(S.level(g, 128 * h + 32 * m + l)) << (2 * m);
            qs[32 * h + l] = (uint8_t)q;
        }
    }
}

template <class Src, bool QW>
__device__ __forceinline__ void quantize_q2_k_item(GQ_QUANTIZE_PARAMS) {
    __shared__ KqSmemQ2 S;
    KqPlace p;
    if (!kq_begin<Src, QW, QW ? 1 : 0>(GQ_QUANTIZE_ARGS, S, p)) return;
    for (int j = p.s * 4; j < p.s * 4 + 4 && p.valid; ++j) {
        // sub-block j's search: make_qkx2_quants(16, 3, ...) / make_qkx3_quants(16, 3, ...)
        const int r = p.g * 16 + j;
        const float* x = S.x[r];
        float* w = S.w[r];
        float mn, sc;
        if (QW) {
            gq_impl_weights(16, x, p.qw + 16 * j, S.sigma2[p.g], w);
            S.sw[r] = gq_sum(16, w);
            sc = kq_make_qkx_quants(16, 3, x, w, S.L[r], &mn, S.Laux[r], -0.9f, 0.05f, 36, false);
        } else {
            for (int l = 0; l < 16; ++l) w[l] = fabsf(x[l]);
            sc = kq_make_qkx_quants(16, 3, x, w, S.L[r], &mn, S.Laux[r], -0.5f, 0.1f, 15, true);
        }
        S.scale[r] = sc;
        S.min[r] = mn;
    }
    __syncthreads();
    block_q2_k* y = (block_q2_k*)(S.out + p.g * sizeof(block_q2_k));
    if (p.valid && p.s == 0) kq_q2_K_superblock<QW>(S, p.g * 16, y);
    __syncthreads();
    if (p.valid) {
        const float dall = gq_fp16_to_fp32(y->d), mall = gq_fp16_to_fp32(y->dmin);
        S.requantize_slice(p.g, p.s, [&](int j, const float* x, uint8_t* L) {  // with the rounded scales
            const float d = dall * (y->scales[j] & 0xF);
            if (!d) return;
            const float dm = mall * (y->scales[j] >> 4);
            for (int ii = 0; ii < 8; ++ii) {
                const int l = gq_nearest_int((x[ii] + dm) / d);
                L[ii] = (uint8_t)GQ_MAX(0, GQ_MIN(3, l));
            }
        });
        kq_pack_2bit_slice(S, p.g, p.s, y->qs, [](uint8_t v) { return (int)v; });
    }
    __syncthreads();
    kq_store(dst + p.dst0, S.out, p.nsb * (int)sizeof(block_q2_k));
}

// ---------------------------------------------------------------------------------------------------
// Q3_K: quantize_q3_K, i.e. quantize_row_q3_K_ref (QW false) / quantize_row_q3_K_impl (QW true)
// ---------------------------------------------------------------------------------------------------
typedef KqSmem<16, sizeof(block_q3_k)> KqSmemQ3;

// The 6-bit scales and d of quantize_row_q3_K_ref / _impl from the 16 sub-block scales.
template <bool QW>
__device__ __forceinline__ void kq_q3_K_superblock(KqSmemQ3& S, int r0, block_q3_k* y) {
    const float* scales = S.scale + r0;
    for (int j = 0; j < 12; ++j) y->scales[j] = 0;
    if (QW) {  // quantize_row_q3_K_impl
        int8_t* Ls = (int8_t*)(S.Ls + r0);
        const float d_block = kq_make_qx_quants(QK_K / 16, 32, scales, Ls, S.sw + r0);
        for (int j = 0; j < QK_K / 16; ++j) kq_put_scale_q3_k(j, Ls[j], y->scales);
        y->d = gq_fp32_to_fp16(d_block);
        return;
    }
    float max_scale = 0;  // quantize_row_q3_K_ref
    float amax = 0;
    for (int j = 0; j < QK_K / 16; ++j) {
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
}

template <class Src, bool QW>
__device__ __forceinline__ void quantize_q3_k_item(GQ_QUANTIZE_PARAMS) {
    __shared__ KqSmemQ3 S;
    KqPlace p;
    if (!kq_begin<Src, QW, QW ? 2 : 0>(GQ_QUANTIZE_ARGS, S, p)) return;
    for (int j = p.s * 4; j < p.s * 4 + 4 && p.valid; ++j) {  // sub-block j's search
        const int r = p.g * 16 + j;
        const float* x = S.x[r];
        int8_t* L = (int8_t*)S.L[r];
        if (QW) {
            float* w = S.w[r];
            gq_impl_weights(16, x, p.qw + 16 * j, S.sigma2[p.g], w);
            S.sw[r] = gq_sum(16, w);
            S.scale[r] = kq_make_qx_quants(16, 4, x, L, w);
        } else {
            S.scale[r] = kq_make_q3_quants(16, 4, x, L);
        }
    }
    __syncthreads();
    block_q3_k* y = (block_q3_k*)(S.out + p.g * sizeof(block_q3_k));
    if (p.valid && p.s == 0) kq_q3_K_superblock<QW>(S, p.g * 16, y);
    __syncthreads();
    if (p.valid) {
        const float dall = gq_fp16_to_fp32(y->d);
        S.requantize_slice(p.g, p.s, [&](int j, const float* x, uint8_t* L) {  // with the rounded scales
            const int8_t sc = (int8_t)kq_get_scale_q3_k(j, y->scales);
            const float d = dall * sc;
            if (!d) return;
            for (int ii = 0; ii < 8; ++ii) {
                int l = gq_nearest_int(x[ii] / d);
                l = GQ_MAX(-4, GQ_MIN(3, l));
                L[ii] = (uint8_t)(l + 4);
            }
        });
        // the high bit of value j (level > 3) goes to hmask[j % 32], bit j / 32
        for (int m = 8 * p.s; m < 8 * p.s + 8; ++m) {
            int hm = 0;
            for (int k = 0; k < 8; ++k) hm |= ((int8_t)S.level(p.g, 32 * k + m) > 3) << k;
            y->hmask[m] = (uint8_t)hm;
        }
        kq_pack_2bit_slice(S, p.g, p.s, y->qs, [](uint8_t v) { return (int8_t)v > 3 ? (int)v - 4 : (int)v; });
    }
    __syncthreads();
    kq_store(dst + p.dst0, S.out, p.nsb * (int)sizeof(block_q3_k));
}

// ---------------------------------------------------------------------------------------------------
// Q4_K and Q5_K share everything up to packing the quants: 8 sub-blocks of 32 with a 6-bit scale and min
// each. NMAX = 15 (Q4_K) or 31 (Q5_K). quantize_row_q4_K_ref / quantize_row_q5_K_ref (QW false),
// quantize_row_q4_K_impl / quantize_row_q5_K_impl (QW true).
// ---------------------------------------------------------------------------------------------------

// The scales field, d and dmin from the 8 sub-block searches (r0: the super-block's first row).
template <bool QW, int NMAX, class Smem>
__device__ __forceinline__ void kq_q45_K_superblock(Smem& S, int r0, uint8_t* ysc, gq_half* yd, gq_half* ydmin) {
    const float* scales = S.scale + r0;
    const float* mins = S.min + r0;
    if (QW) {  // quantize_row_q4_K_impl / quantize_row_q5_K_impl
        const float d_block = kq_make_qp_quants(QK_K / 32, 63, scales, S.Ls + r0, S.sw + r0);
        const float m_block = kq_make_qp_quants(QK_K / 32, 63, mins, S.Lm + r0, S.sw + r0);
        for (int j = 0; j < QK_K / 32; ++j) {
            uint8_t ls = S.Ls[r0 + j];
            uint8_t lm = S.Lm[r0 + j];
            if (NMAX == 31) {  // quantize_row_q5_K_impl clamps here, quantize_row_q4_K_impl does not
                ls = GQ_MIN(63, ls);
                lm = GQ_MIN(63, lm);
            }
            kq_put_scale_min_k4(j, ls, lm, ysc);
        }
        *yd = gq_fp32_to_fp16(d_block);
        *ydmin = gq_fp32_to_fp16(m_block);
        return;
    }
    float max_scale = 0;  // as the min is deducted, scales are always positive
    float max_min = 0;
    for (int j = 0; j < QK_K / 32; ++j) {
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
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
}

// A Q4_K/Q5_K super-block up to the final levels of lane s's slice in S.L (the scales in ysc, d, dmin).
template <bool QW, int NMAX, class Smem>
__device__ __forceinline__ void kq_q45_K_levels(Smem& S, const KqPlace& p, uint8_t* ysc, gq_half* yd,
                                                gq_half* ydmin) {
    for (int j = p.s * 2; j < p.s * 2 + 2 && p.valid; ++j) {
        // sub-block j's search: make_qkx2_quants(32, NMAX, ...) / make_qkx3_quants(32, NMAX, ...)
        const int r = p.g * 8 + j;
        const float* x = S.x[r];
        float* w = S.w[r];
        float mn, sc;
        if (QW) {
            gq_impl_weights(32, x, p.qw + 32 * j, S.sigma2[p.g], w);
            S.sw[r] = gq_sum(32, w);
            sc = kq_make_qkx_quants(32, NMAX, x, w, S.L[r], &mn, S.Laux[r], -0.9f, 0.05f, 36, false);
        } else {
            const float av_x = sqrtf(gq_sum_sq(32, x) / 32);
            for (int l = 0; l < 32; ++l) w[l] = av_x + fabsf(x[l]);
            sc = NMAX == 15
                ? kq_make_qkx_quants(32, 15, x, w, S.L[r], &mn, S.Laux[r], -1.f, 0.1f, 20, false)
                : kq_make_qkx_quants(32, 31, x, w, S.L[r], &mn, S.Laux[r], -0.5f, 0.1f, 15, false);
        }
        S.scale[r] = sc;
        S.min[r] = mn;
    }
    __syncthreads();
    if (p.valid && p.s == 0) kq_q45_K_superblock<QW, NMAX>(S, p.g * 8, ysc, yd, ydmin);
    __syncthreads();
    if (!p.valid) return;
    const float dall = gq_fp16_to_fp32(*yd), mall = gq_fp16_to_fp32(*ydmin);
    S.requantize_slice(p.g, p.s, [&](int j, const float* x, uint8_t* L) {  // with the rounded scales
        uint8_t sc, m;
        kq_get_scale_min_k4(j, ysc, &sc, &m);
        const float d = dall * sc;
        if (!d) return;
        const float dm = mall * m;
        for (int ii = 0; ii < 8; ++ii) {
            const int l = gq_nearest_int((x[ii] + dm) / d);
            L[ii] = (uint8_t)GQ_MAX(0, GQ_MIN(NMAX, l));
        }
    });
}

// quantize_row_q4_K_ref / quantize_row_q4_K_impl: qs byte 32i + l holds values 64i + l and 64i + 32 + l.
template <class Src, bool QW>
__device__ __forceinline__ void quantize_q4_k_item(GQ_QUANTIZE_PARAMS) {
    __shared__ KqSmem<32, sizeof(block_q4_k)> S;
    KqPlace p;
    if (!kq_begin<Src, QW, QW ? 2 : 0>(GQ_QUANTIZE_ARGS, S, p)) return;
    block_q4_k* y = (block_q4_k*)(S.out + p.g * sizeof(block_q4_k));
    kq_q45_K_levels<QW, 15>(S, p, y->scales, &y->d, &y->dmin);
    if (p.valid) {
        for (int i = 0; i < 4; ++i) {
            const uint8_t* L1 = S.L[p.g * 8 + 2 * i];
            const uint8_t* L2 = S.L[p.g * 8 + 2 * i + 1];
            for (int l = 8 * p.s; l < 8 * p.s + 8; ++l) y->qs[32 * i + l] = (uint8_t)(L1[l] | (L2[l] << 4));
        }
    }
    __syncthreads();
    kq_store(dst + p.dst0, S.out, p.nsb * (int)sizeof(block_q4_k));
}

// quantize_row_q5_K_ref / quantize_row_q5_K_impl: the low 4 bits as Q4_K's qs, bit 4 of value 32k + l in
// bit k of qh[l].
template <class Src, bool QW>
__device__ __forceinline__ void quantize_q5_k_item(GQ_QUANTIZE_PARAMS) {
    __shared__ KqSmem<32, sizeof(block_q5_k)> S;
    KqPlace p;
    if (!kq_begin<Src, QW, QW ? 2 : 0>(GQ_QUANTIZE_ARGS, S, p)) return;
    block_q5_k* y = (block_q5_k*)(S.out + p.g * sizeof(block_q5_k));
    kq_q45_K_levels<QW, 31>(S, p, y->scales, &y->d, &y->dmin);
    if (p.valid) {
        for (int i = 0; i < 4; ++i) {
            const uint8_t* L1 = S.L[p.g * 8 + 2 * i];
            const uint8_t* L2 = S.L[p.g * 8 + 2 * i + 1];
            for (int l = 8 * p.s; l < 8 * p.s + 8; ++l) {
                y->qs[32 * i + l] = (uint8_t)((L1[l] & 0xF) | ((L2[l] & 0xF) << 4));
            }
        }
        for (int l = 8 * p.s; l < 8 * p.s + 8; ++l) {
            int h = 0;
            for (int k = 0; k < 8; ++k) h |= (S.L[p.g * 8 + k][l] > 15) << k;
            y->qh[l] = (uint8_t)h;
        }
    }
    __syncthreads();
    kq_store(dst + p.dst0, S.out, p.nsb * (int)sizeof(block_q5_k));
}

// ---------------------------------------------------------------------------------------------------
// Q6_K: quantize_row_q6_K_ref (QW false) / quantize_row_q6_K_impl (QW true), which differ only in the
// weights make_qx_quants gets (x*x or the importance weights themselves).
// ---------------------------------------------------------------------------------------------------
typedef KqSmem<16, sizeof(block_q6_k)> KqSmemQ6;

// d and the 8-bit scales from the 16 sub-block scales; S.flag[g]: the all-zero block (memset).
__device__ __forceinline__ void kq_q6_K_superblock(KqSmemQ6& S, int g, block_q6_k* y) {
    const float* scales = S.scale + g * 16;
    float max_scale = 0;
    float max_abs_scale = 0;
    for (int ib = 0; ib < QK_K / 16; ++ib) {
        const float abs_scale = fabsf(scales[ib]);
        if (abs_scale > max_abs_scale) { max_abs_scale = abs_scale; max_scale = scales[ib]; }
    }
    S.flag[g] = max_abs_scale < GQ_GROUP_MAX_EPS;
    if (S.flag[g]) {  // memset(&y[i], 0, ...); d = fp16(0) = 0
        uint8_t* b = (uint8_t*)y;
        for (unsigned i = 0; i < sizeof(block_q6_k); ++i) b[i] = 0;
        return;
    }
    const float iscale = -128.f / max_scale;
    y->d = gq_fp32_to_fp16(1 / iscale);
    for (int ib = 0; ib < QK_K / 16; ++ib) y->scales[ib] = (int8_t)GQ_MIN(127, gq_nearest_int(iscale * scales[ib]));
}

// Lane s's slice: ql byte 64h + l holds values 128h + l (low nibble) and 128h + 64 + l, byte 64h + 32 + l
// values 128h + 32 + l and 128h + 96 + l; qh byte 32h + l bits 4-5 of 128h + 32m + l at bits 2m.
__device__ __forceinline__ void kq_q6_K_pack(KqSmemQ6& S, int g, int s, block_q6_k* y) {
    for (int h = 0; h < 2; ++h) {
        for (int l = 8 * s; l < 8 * s + 8; ++l) {
            const int e = 128 * h + l;
            y->ql[64 * h + l] = (uint8_t)((S.level(g, e) & 0xF) | ((S.level(g, e + 64) & 0xF) << 4));
            y->ql[64 * h + 32 + l] = (uint8_t)((S.level(g, e + 32) & 0xF) | ((S.level(g, e + 96) & 0xF) << 4));
            y->qh[32 * h + l] = (uint8_t)((S.level(g, e) >> 4) | ((S.level(g, e + 32) >> 4) << 2) |
                                          ((S.level(g, e + 64) >> 4) << 4) | ((S.level(g, e + 96) >> 4) << 6));
        }
    }
}

template <class Src, bool QW>
__device__ __forceinline__ void quantize_q6_k_item(GQ_QUANTIZE_PARAMS) {
    __shared__ KqSmemQ6 S;
    KqPlace p;
    if (!kq_begin<Src, QW, 0>(GQ_QUANTIZE_ARGS, S, p)) return;
    for (int j = p.s * 4; j < p.s * 4 + 4 && p.valid; ++j) {
        // sub-block j's search; the importance weights themselves are its weights (quantize_row_q6_K_impl)
        const int r = p.g * 16 + j;
        float* w = S.w[r];
        if (QW) for (int i = 0; i < 16; ++i) w[i] = p.qw[16 * j + i];
        S.scale[r] = kq_make_qx_quants(16, 32, S.x[r], (int8_t*)S.L[r], QW ? w : nullptr);
    }
    __syncthreads();
    block_q6_k* y = (block_q6_k*)(S.out + p.g * sizeof(block_q6_k));
    if (p.valid && p.s == 0) kq_q6_K_superblock(S, p.g, y);
    __syncthreads();
    if (p.valid && !S.flag[p.g]) {
        const float dall = gq_fp16_to_fp32(y->d);
        S.requantize_slice(p.g, p.s, [&](int j, const float* x, uint8_t* L) {  // with the rounded scales
            const float d = dall * y->scales[j];
            if (!d) return;
            for (int ii = 0; ii < 8; ++ii) {
                int l = gq_nearest_int(x[ii] / d);
                l = GQ_MAX(-32, GQ_MIN(31, l));
                L[ii] = (uint8_t)(l + 32);
            }
        });
        kq_q6_K_pack(S, p.g, p.s, y);
    }
    __syncthreads();
    kq_store(dst + p.dst0, S.out, p.nsb * (int)sizeof(block_q6_k));
}

// ---------------------------------------------------------------------------------------------------
// Entry points: quantize_q*_k_{f32,f16,bf16} (no importance weights) and quantize_q*_k_w_*
// ---------------------------------------------------------------------------------------------------
GQ_QUANTIZE_WEIGHTED_ENTRY_POINTS(q2_k)
GQ_QUANTIZE_WEIGHTED_ENTRY_POINTS(q3_k)
GQ_QUANTIZE_WEIGHTED_ENTRY_POINTS(q4_k)
GQ_QUANTIZE_WEIGHTED_ENTRY_POINTS(q5_k)
GQ_QUANTIZE_WEIGHTED_ENTRY_POINTS(q6_k)

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
