// kquants_search.cuh: the K-quant-only scale searches of ggml-quants.c, make_q3_quants and
// make_qp_quants (included by kquants.cu; the searches shared with legacy.cu, make_qx_quants and
// make_qkx2/qkx3_quants, are in common.cuh). gpuquant/quants/kquants_search.py is the numpy twin.
//
// kquants.cu calls every search from one lane per sub-block (or one lane per super-block for the
// second-level searches) on arrays in shared memory.
#pragma once
#include "common.cuh"

// On a GPU the searches inline (shared-memory addressing, no call frames). On the x86 host they stay out
// of line: with n a runtime value g++ vectorizes their loops (in-order reductions), with n a constant it
// unrolls them into scalar code about twice as slow. Codegen only: the same operations either way.
#ifdef GQ_X86_HOST
#define KQ_SEARCH __attribute__((noinline))
#else
#define KQ_SEARCH __forceinline__
#endif

// make_qx_quants(n, nmax, x, L, 1, qw) (rmse_type 1, the k-quants' only one): qw == nullptr means
// weights x*x (quantize_row_q6_K_ref).
__device__ static KQ_SEARCH float kq_make_qx_quants(int n, int nmax, const float* x, int8_t* L, const float* qw) {
    return gq_make_qx_quants(n, nmax, x, L, 1, qw);
}

// make_qkx2_quants / make_qkx3_quants with weights (see gq_make_qkx_quants).
__device__ static KQ_SEARCH float kq_make_qkx_quants(int n, int nmax, const float* x, const float* weights, uint8_t* L,
                                             float* the_min, uint8_t* Laux, float rmin, float rdelta, int nstep,
                                             bool use_mad) {
    return gq_make_qkx_quants(n, nmax, x, weights, L, the_min, Laux, rmin, rdelta, nstep, use_mad);
}

// make_q3_quants with do_rmse == true (its only use, quantize_row_q3_K_ref): L in [0, 2*nmax).
__device__ static KQ_SEARCH float kq_make_q3_quants(int n, int nmax, const float* x, int8_t* L) {
    float max = 0;
    float amax = 0;
    for (int i = 0; i < n; ++i) {
        const float ax = fabsf(x[i]);
        if (ax > amax) { amax = ax; max = x[i]; }
    }
    if (amax < GQ_GROUP_MAX_EPS) {  // all zero
        for (int i = 0; i < n; ++i) L[i] = 0;
        return 0.f;
    }
    const float iscale = -nmax / max;
    float sumlx = 0;
    float suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = gq_nearest_int(iscale * x[i]);
        l = GQ_MAX(-nmax, GQ_MIN(nmax - 1, l));
        L[i] = (int8_t)l;
        const float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    GQ_NO_UNROLL
    for (int itry = 0; itry < 5; ++itry) {
        int n_changed = 0;
        for (int i = 0; i < n; ++i) {
            const float w = x[i] * x[i];
            float slx = sumlx - w * x[i] * L[i];
            if (slx > 0) {
                float sl2 = suml2 - w * L[i] * L[i];
                int new_l = gq_nearest_int(x[i] * sl2 / slx);
                new_l = GQ_MAX(-nmax, GQ_MIN(nmax - 1, new_l));
                if (new_l != L[i]) {
                    slx += w * x[i] * new_l;
                    sl2 += w * new_l * new_l;
                    if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (int8_t)new_l; sumlx = slx; suml2 = sl2;
                        ++n_changed;
                    }
                }
            }
        }
        if (!n_changed) break;
    }
    for (int i = 0; i < n; ++i) L[i] = (int8_t)(L[i] + nmax);
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

// make_qp_quants: the sub-block scales (or mins) of an _impl path quantized to [0, nmax] with weights.
// L is uint8_t as in ggml (a negative nearest_int wraps), and the float reads below see that value.
__device__ static KQ_SEARCH float kq_make_qp_quants(int n, int nmax, const float* x, uint8_t* L,
                                                       const float* quant_weights) {
    float max = 0;
    for (int i = 0; i < n; ++i) max = GQ_MAX(max, x[i]);
    if (max < GQ_GROUP_MAX_EPS) {  // all zero
        for (int i = 0; i < n; ++i) L[i] = 0;
        return 0.f;
    }
    float iscale = nmax / max;
    for (int i = 0; i < n; ++i) L[i] = (uint8_t)gq_nearest_int(iscale * x[i]);
    const float scale = 1 / iscale;
    float best_mse = 0;
    for (int i = 0; i < n; ++i) {
        const float diff = x[i] - scale * L[i];
        const float w = quant_weights[i];
        best_mse += w * diff * diff;
    }
    GQ_NO_UNROLL
    for (int is = -4; is <= 4; ++is) {
        if (is == 0) continue;
        const float iscale_is = (0.1f * is + nmax) / max;
        const float scale_is = 1 / iscale_is;
        float mse = 0;
        for (int i = 0; i < n; ++i) {
            int l = gq_nearest_int(iscale_is * x[i]);
            l = GQ_MIN(nmax, l);
            const float diff = x[i] - scale_is * l;
            const float w = quant_weights[i];
            mse += w * diff * diff;
        }
        if (mse < best_mse) { best_mse = mse; iscale = iscale_is; }
    }
    float sumlx = 0;
    float suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = gq_nearest_int(iscale * x[i]);
        l = GQ_MIN(nmax, l);
        L[i] = (uint8_t)l;
        const float w = quant_weights[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    GQ_NO_UNROLL
    for (int itry = 0; itry < 5; ++itry) {
        int n_changed = 0;
        for (int i = 0; i < n; ++i) {
            const float w = quant_weights[i];
            float slx = sumlx - w * x[i] * L[i];
            float sl2 = suml2 - w * L[i] * L[i];
            if (slx > 0 && sl2 > 0) {
                int new_l = gq_nearest_int(x[i] * sl2 / slx);
                new_l = GQ_MIN(nmax, new_l);
                if (new_l != L[i]) {
                    slx += w * x[i] * new_l;
                    sl2 += w * new_l * new_l;
                    if (slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (uint8_t)new_l; sumlx = slx; suml2 = sl2;
                        ++n_changed;
                    }
                }
            }
        }
        if (!n_changed) break;
    }
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}
