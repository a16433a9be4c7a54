// iq2.cu: IQ2_XXS, IQ2_XS and IQ2_S (ggml-quants.c quantize_row_iq2_xxs_impl / _xs_impl / _s_impl with
// iq2_find_best_neighbour and, for IQ2_XXS, make_qp_quants), and their dequantize kernels
// (dequantize_row_iq2_*). gpuquant/quants/iq2.py is the numpy twin and documents the algorithm.
//
// One CUDA thread per scale group (32 values for IQ2_XXS, 16 for the others): a 128-thread block holds
// 128/groups super-blocks. The first thread of a super-block sums its squares (in C order), a barrier,
// every thread searches its group, a barrier, and every thread reads the group scales of its super-block
// from shared memory and stores its own bytes (an even group also the bytes it shares with the next one).
//
// Tables (generated in front of this file from gpuquant.quants.iq2.kernel_tables()): per type the packed
// level index of every grid point (<t>_kgrid, sorted), the grid index of every octet of levels 0..2 by
// its base-3 code (<t>_map3, -1 off the grid) and the neighbour lists of the off-grid codes
// (<t>_nb_list[<t>_nb_off[c] .. <t>_nb_off[c + 1]], grid indices in the kneighbors order of
// iq2xs_init_impl); gq_iq2_ksigns (ksigns_iq2xs) and gq_iq2_values (the grid bytes of levels 0, 1, 2).
//
// ggml aborts (GGML_ASSERT) where no neighbour has a distance below FLT_MAX and on a NaN group scale
// (which is also the only way make_qp_quants' levels survive to the "point not on grid" check): the
// super-block is reported through gq_report_abort.
#include "common.cuh"

// ggml-common.h block layouts
struct block_iq2_xxs { gq_half d; uint16_t qs[QK_K / 8]; };
struct block_iq2_xs { gq_half d; uint16_t qs[QK_K / 8]; uint8_t scales[QK_K / 32]; };
struct block_iq2_s { gq_half d; uint8_t qs[QK_K / 4]; uint8_t qh[QK_K / 32]; uint8_t scales[QK_K / 32]; };

#define GQ_IQ2_KMAXQ 3
#define GQ_FLT_MAX 3.40282346638528859812e+38f

// A thread's group values in shared memory: element i at p[i * S] (S threads side by side, no bank
// conflicts). Indexed and offset like the float* of a group held in registers.
template <class E, int S>
struct GqStrided {
    E* p;
    __device__ __forceinline__ E& operator[](int i) const { return p[i * S]; }
    __device__ __forceinline__ GqStrided operator+(int o) const { return GqStrided{p + o * S}; }
};

// One grid's search tables.
struct GqIq2Grid {
    const uint16_t* kgrid;
    const int16_t* map3;
    const uint32_t* nb_off;
    const uint16_t* nb_list;
};

// The per-type constants of quantize_row_iq2_*_impl.
struct GqIq2xxs {
    static constexpr int N = 32;  // values per scale group
    static constexpr int THREADS = 64;  // CUDA threads per block (the type's Kernel(threads=...) in iq2.py)
    static constexpr bool SHARED = true;  // the group's values in shared memory (too many for registers)
    static constexpr int IS_LO = -6, IS_HI = 6;
    static constexpr bool PARITY = true;  // an odd number of sign flips flips back the least element
    static constexpr bool QP_START = true;  // the first scale from make_qp_quants, every octet refined
    static constexpr bool S_LAYOUT = false;
    static __device__ __forceinline__ GqIq2Grid grid() {
        return GqIq2Grid{gq_iq2xxs_kgrid, gq_iq2xxs_map3, gq_iq2xxs_nb_off, gq_iq2xxs_nb_list};
    }
    static __device__ __forceinline__ float eps() { return GQ_GROUP_MAX_EPS; }
    static __device__ __forceinline__ float sigma2(float sumx2) { return sumx2 / QK_K; }
};
struct GqIq2xs {
    static constexpr int N = 16;
    static constexpr int THREADS = 128;
    static constexpr bool SHARED = false;
    static constexpr int IS_LO = -9, IS_HI = 9;
    static constexpr bool PARITY = true;
    static constexpr bool QP_START = false;  // the first scale max/5, the octets off the grid refined
    static constexpr bool S_LAYOUT = false;
    static __device__ __forceinline__ GqIq2Grid grid() {
        return GqIq2Grid{gq_iq2xs_kgrid, gq_iq2xs_map3, gq_iq2xs_nb_off, gq_iq2xs_nb_list};
    }
    static __device__ __forceinline__ float eps() { return GQ_GROUP_MAX_EPS; }
    static __device__ __forceinline__ float sigma2(float sumx2) { return sumx2 / QK_K; }
};
struct GqIq2s {
    static constexpr int N = 16;
    static constexpr int THREADS = 128;
    static constexpr bool SHARED = false;
    static constexpr int IS_LO = -9, IS_HI = 9;
    static constexpr bool PARITY = false;
    static constexpr bool QP_START = false;
    static constexpr bool S_LAYOUT = true;
    static __device__ __forceinline__ GqIq2Grid grid() {
        return GqIq2Grid{gq_iq2s_kgrid, gq_iq2s_map3, gq_iq2s_nb_off, gq_iq2s_nb_list};
    }
    static __device__ __forceinline__ float eps() { return 1e-8f; }  // GROUP_MAX_EPS_IQ2_S
    static __device__ __forceinline__ float sigma2(float sumx2) { return 2 * sumx2 / QK_K; }
};

// Levels clamp(nearest_int(0.5f*(id*x - 1)), 0, kMaxQ-1) of one octet: returns the base-3 code of the
// levels, *u their packed index (sum l << 2i).
template <class V>
__device__ __forceinline__ int gq_iq2_round_octet(V xv, float id, int* u) {
    int code = 0, p = 1, v = 0;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        int l = gq_nearest_int(0.5f * (id * xv[i] - 1));
        l = GQ_MAX(0, GQ_MIN(GQ_IQ2_KMAXQ - 1, l));
        v |= l << 2 * i;
        code += l * p;
        p *= 3;
    }
    *u = v;
    return code;
}

// iq2_find_best_neighbour over the list of base-3 code `code`: the first strict minimum of the weighted
// distance, from FLT_MAX. The 24 terms weight[i]*diff*diff (diff = scale*q - x[i], q = 1, 3, 5) are the
// C values, computed once; each entry sums its 8 in C order. Returns the grid index (-1: none, ggml
// asserts) and its levels in *u.
struct GqIq2Pick {
    int index;   // grid index, -1: none (ggml asserts)
    int levels;  // the grid point's levels (2 bits each)
};

template <class V>
__device__ __forceinline__ GqIq2Pick gq_iq2_best_neighbour(const GqIq2Grid& g, int code, V xv, V wa, float scale) {
    float t[3][8];  // t[l][i]: level l (q = 2*l + 1) at element i
#pragma unroll
    for (int i = 0; i < 8; ++i) {
#pragma unroll
        for (int l = 0; l < 3; ++l) {
            const float diff = scale * (float)(2 * l + 1) - xv[i];
            t[l][i] = wa[i] * diff * diff;
        }
    }
    float best_d2 = GQ_FLT_MAX;
    int grid_index = -1;
    const uint32_t end = g.nb_off[code + 1];
    GQ_NO_UNROLL
    for (uint32_t j = g.nb_off[code]; j < end; ++j) {
        const int idx = g.nb_list[j];
        const int kg = g.kgrid[idx];
        float d2 = 0;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const int l = (kg >> 2 * i) & 3;
#ifdef GQ_HOST_SHIM  // a load from the stack on the host; selects keep the terms in registers on a GPU
            d2 += t[l][i];
#else
            d2 += l == 0 ? t[0][i] : l == 1 ? t[1][i] : t[2][i];
#endif
        }
        if (d2 < best_d2) {
            best_d2 = d2;
            grid_index = idx;
        }
    }
    return GqIq2Pick{grid_index, grid_index >= 0 ? (int)g.kgrid[grid_index] : 0};
}

// The search of a type whose group values live in shared memory (IQ2_XXS), out of line on a GPU: its 24
// terms then do not add to the caller's registers (98 instead of 128 plus spills on sm_90). The tables
// come from T, the levels go back through shared memory: nothing of the caller needs an address, so no
// stack frame. The host build inlines it (__noinline__ is empty there).
template <class T, int S>
__device__ __noinline__ int gq_iq2_best_neighbour_apart(int code, GqStrided<float, S> xv, GqStrided<float, S> wa,
                                                        float scale, int* levels) {
    const GqIq2Grid g = T::grid();  // the tables' addresses are constants: nothing passed by address
    const GqIq2Pick p = gq_iq2_best_neighbour(g, code, xv, wa, scale);
    *levels = p.levels;
    return p.index;
}

// One octet rounded at inverse scale id and, off the grid, moved to its best neighbour at `scale`.
// Returns whether the rounded point was on the grid; *gi the grid index (-1 where ggml asserts), *u the
// levels.
template <class T, class V>
__device__ __forceinline__ bool gq_iq2_octet(const GqIq2Grid& g, V xv, V wa, float id,
                                             float scale, int* gi, int* u) {
    const int code = gq_iq2_round_octet(xv, id, u);
    *gi = g.map3[code];
    if (*gi >= 0) return true;
    if constexpr (T::SHARED) {  // the levels come back through this thread's word of shared memory
        __shared__ int s_levels[T::THREADS];
        int* levels = &s_levels[threadIdx.x];
        *gi = gq_iq2_best_neighbour_apart<T>(code, xv, wa, scale, levels);
        if (*gi >= 0) *u = *levels;
    } else {
        const GqIq2Pick p = gq_iq2_best_neighbour(g, code, xv, wa, scale);
        *gi = p.index;
        if (p.index >= 0) *u = p.levels;
    }
    return false;
}

// sumqx += w*xval*q; sumq2 += w*q*q over the group in C order, q = 2*l + 1 of the octets' levels u.
template <int K, class V>
__device__ __forceinline__ void gq_iq2_sums(V xval, V weight, const int* u, float* sumqx,
                                            float* sumq2) {
    float sx = 0, s2 = 0;
#pragma unroll
    for (int k = 0; k < K; ++k) {
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const float w = weight[8 * k + i];
            const float q = (float)(2 * ((u[k] >> 2 * i) & 3) + 1);
            sx += w * xval[8 * k + i] * q;
            s2 += w * q * q;
        }
    }
    *sumqx = sx;
    *sumq2 = s2;
}

// make_qp_quants(n, nmax, x, L, quant_weights) on a group's values (float* or GqStrided; kquants_search.cuh
// has the same function on contiguous arrays). L is uint8_t as in ggml (a negative nearest_int wraps),
// and the float reads see that value.
template <int n, class V, class LV>
__device__ __forceinline__ float gq_iq2_make_qp_quants(int nmax, V x, LV L, V quant_weights) {
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
        GQ_NO_UNROLL
        for (int i = 0; i < n; ++i) {
            const float w = quant_weights[i];
            const int li = L[i];
            float slx = sumlx - w * x[i] * li;
            float sl2 = suml2 - w * li * li;
            if (slx > 0 && sl2 > 0) {
                int new_l = gq_nearest_int(x[i] * sl2 / slx);
                new_l = GQ_MIN(nmax, new_l);
                if (new_l != li) {
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

// The scale search of one group past the all-zero test (the trial loop, the refinement, the sign flip
// of a negative scale): returns the scale; gi the octets' grid indices; *bad where ggml aborts; *skipped
// where IQ2_XXS leaves the group out (make_qp_quants' eff_max <= 0).
template <class T, class V, class LV>
__device__ __forceinline__ float gq_iq2_search(V xval, V weight, V waux, LV Lqp, float mx,
                                               uint8_t* signs, int* gi, bool* bad, bool* skipped) {
    constexpr int K = T::N / 8;
    const GqIq2Grid g = T::grid();
    float scale, base;
    int u[K];
    bool on[K];
#pragma unroll
    for (int k = 0; k < K; ++k) { u[k] = 0; gi[k] = 0; on[k] = true; }
    if constexpr (T::QP_START) {
        scale = gq_iq2_make_qp_quants<T::N>(GQ_IQ2_KMAXQ + 1, xval, Lqp, weight);
        base = scale * GQ_IQ2_KMAXQ;  // eff_max
        if (base <= 0) {  // scales[ib] = 0, nothing stored
            *skipped = true;
            return 0.f;
        }
    } else {
        scale = mx / (2 * GQ_IQ2_KMAXQ - 1);
        base = mx;
    }
    float best = 0;
    GQ_NO_UNROLL
    for (int is = T::IS_LO; is <= T::IS_HI; ++is) {
        const float id = (2 * GQ_IQ2_KMAXQ - 1 + is * 0.1f) / base;
        const float this_scale = 1 / id;
        int ua[K], ga[K];
        bool ona[K];
#pragma unroll
        for (int k = 0; k < K; ++k) {
            ona[k] = gq_iq2_octet<T>(g, xval + 8 * k, waux + 8 * k, id, this_scale, &ga[k], &ua[k]);
            if (ga[k] < 0) { *bad = true; ga[k] = 0; }
        }
        float sumqx, sumq2;
        gq_iq2_sums<K, V>(xval, weight, ua, &sumqx, &sumq2);
        if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
            scale = sumqx / sumq2;
            best = scale * sumqx;
#pragma unroll
            for (int k = 0; k < K; ++k) { u[k] = ua[k]; gi[k] = ga[k]; on[k] = ona[k]; }
        }
    }
    bool refine = scale > 0;
    if (!T::QP_START) {
        bool off = false;
#pragma unroll
        for (int k = 0; k < K; ++k) off = off || !on[k];
        refine = refine && off;
    }  // IQ2_XXS keeps make_qp_quants' levels only with a NaN scale, refused below
    if (refine) {
        const float id = 1 / scale;
#pragma unroll
        for (int k = 0; k < K; ++k) {
            if (!T::QP_START && on[k]) continue;
            gq_iq2_octet<T>(g, xval + 8 * k, waux + 8 * k, id, scale, &gi[k], &u[k]);
            if (gi[k] < 0) { *bad = true; gi[k] = 0; }
        }
        float sumqx, sumq2;
        gq_iq2_sums<K, V>(xval, weight, u, &sumqx, &sumq2);
        if (sumq2 > 0) scale = sumqx / sumq2;
    }
    if (scale < 0) {
        scale = -scale;
#pragma unroll
        for (int k = 0; k < K; ++k) signs[k] = T::PARITY ? (uint8_t)(~signs[k] & 127) : (uint8_t)~signs[k];
    }
    if (!(scale >= 0)) *bad = true;
    return scale;
}

// The group's weights, sign-folded values (xval) and sign bytes; returns the group maximum (MAX from xval[0]).
template <class T, class Src, class V>
__device__ __forceinline__ float gq_iq2_prepare(const void* src, long long off, const float* qw, float sigma2,
                                                V xval, V weight, V waux, uint8_t* signs) {
    constexpr int K = T::N / 8;
    uint8_t neg[K];
#pragma unroll
    for (int k = 0; k < K; ++k) {
        neg[k] = 0;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const float v = Src::load(src, off + 8 * k + i);
            if (v >= 0) {
                xval[8 * k + i] = v;
            } else {
                xval[8 * k + i] = -v;
                neg[k] |= (uint8_t)(1 << i);
            }
        }
    }
#pragma unroll
    for (int i = 0; i < T::N; ++i) {  // xval*xval is xb*xb exactly
        if (qw) weight[i] = qw[i] * sqrtf(sigma2 + xval[i] * xval[i]);
        else weight[i] = 0.25f * sigma2 + xval[i] * xval[i];
        waux[i] = sqrtf(weight[i]);
    }
#pragma unroll
    for (int k = 0; k < K; ++k) {
        uint8_t s = neg[k];
        if (T::PARITY && (__popc(s) & 1)) {  // weight*xb*xb is weight*xval*xval exactly
            int imin = 0;
            float mn = weight[8 * k] * xval[8 * k] * xval[8 * k];
#pragma unroll
            for (int i = 1; i < 8; ++i) {
                const float ax = weight[8 * k + i] * xval[8 * k + i] * xval[8 * k + i];
                if (ax < mn) { mn = ax; imin = i; }
            }
#pragma unroll
            for (int i = 0; i < 8; ++i) {  // static indices keep xval in registers
                if (i == imin) xval[8 * k + i] = -xval[8 * k + i];
            }
            s ^= (uint8_t)(1 << imin);
        }
        signs[k] = T::PARITY ? (uint8_t)(s & 127) : s;
    }
    float mx = xval[0];
#pragma unroll
    for (int i = 1; i < T::N; ++i) mx = GQ_MAX(mx, xval[i]);
    return mx;
}

// The 4-bit scale code nearest_int(0.5f*(id*scale - 1)) clamped to [0, 15].
__device__ __forceinline__ uint32_t gq_iq2_scale_code(float id, float scale) {
    const int l = gq_nearest_int(0.5f * (id * scale - 1));
    return (uint32_t)GQ_MAX(0, GQ_MIN(15, l));
}

__device__ __forceinline__ void gq_store_u16(uint8_t* p, uint32_t v) { *(uint16_t*)p = (uint16_t)v; }

// quantize_row_iq2_*_impl: thread ib of a super-block quantizes scale group ib (see the file notes).
template <class T, class Block, class Src>
__device__ __forceinline__ void gq_iq2_quantize(GQ_QUANTIZE_STATUS_PARAMS) {
    constexpr int N = T::N;
    constexpr int K = N / 8;
    constexpr int G = QK_K / N;  // groups (threads) per super-block
    constexpr int SB = T::THREADS / G;  // super-blocks per CUDA block
    __shared__ float s_sumx2[SB];
    __shared__ float s_scale[T::THREADS];
    __shared__ uint8_t s_hi[T::THREADS];  // IQ2_S: the octets' grid index bits 8-9, packed as in qh
    const int t = threadIdx.x;
    const int lsb = t / G, ib = t % G;
    const long long bpr = n_per_row / QK_K;
    const long long item = (long long)blockIdx.x * SB + lsb;
    const bool valid = item < rows_per_expert * bpr;
    long long row = 0, ibl = 0, off = 0;
    if (valid) {
        const long long r = item / bpr;
        ibl = item - r * bpr;
        row = (long long)blockIdx.z * rows_per_expert + r;
        off = row * n_per_row + ibl * QK_K;
        if (ib == 0) {
            float sumx2 = 0;
            GQ_NO_UNROLL
            for (int i = 0; i < QK_K; ++i) {
                const float v = Src::load(src, off + i);
                sumx2 += v * v;
            }
            s_sumx2[lsb] = sumx2;
        }
    }
    __syncthreads();
    float scale = 0;
    int gi[K];
    uint8_t signs[K];
    bool processed = false;
    if (valid) {
        const float* qwb = qw ? qw + (long long)blockIdx.z * n_per_row + ibl * QK_K + ib * N : nullptr;
        const float sigma2 = T::sigma2(s_sumx2[lsb]);
        bool bad = false, skipped = false;
        float mx, sc = 0;
        if constexpr (T::SHARED) {
            __shared__ float s_x[3][N][T::THREADS];
            __shared__ uint8_t s_l[N][T::THREADS];
            const GqStrided<float, T::THREADS> xval{&s_x[0][0][t]}, weight{&s_x[1][0][t]}, waux{&s_x[2][0][t]};
            const GqStrided<uint8_t, T::THREADS> Lqp{&s_l[0][t]};
            mx = gq_iq2_prepare<T, Src>(src, off + ib * N, qwb, sigma2, xval, weight, waux, signs);
            if (!(mx < T::eps())) sc = gq_iq2_search<T>(xval, weight, waux, Lqp, mx, signs, gi, &bad, &skipped);
        } else {
            float xval[N], weight[N], waux[N];
            mx = gq_iq2_prepare<T, Src>(src, off + ib * N, qwb, sigma2, xval, weight, waux, signs);
            if (!(mx < T::eps())) {
                sc = gq_iq2_search<T>((const float*)xval, (const float*)weight, (const float*)waux, (uint8_t*)nullptr,
                                      mx, signs, gi, &bad, &skipped);
            }
        }
        if (bad) gq_report_abort(status, row, ibl, bpr);
        processed = !(mx < T::eps()) && !skipped;
        if (processed) scale = sc;
    }
    if (!processed) {
#pragma unroll
        for (int k = 0; k < K; ++k) { gi[k] = 0; signs[k] = 0; }
    }
    s_scale[t] = scale;
    if (T::S_LAYOUT) s_hi[t] = (uint8_t)(((gi[0] >> 8) | ((gi[1] >> 8) << 2)) << 4 * (ib % 2));
    __syncthreads();
    if (!valid) return;
    float max_scale = 0;
    for (int j = 0; j < G; ++j) max_scale = GQ_MAX(max_scale, s_scale[lsb * G + j]);
    uint8_t* y = dst + (row * bpr + ibl) * (long long)sizeof(Block);
    const float d = max_scale / 31;
    const float id = 1 / d;
    const bool zero = !max_scale;
    if (T::S_LAYOUT) {
        // qs and the sign bytes stay for the processed groups even when the block is all zero
        gq_store_u16(y + 2 + 2 * ib, (uint32_t)(gi[0] & 255) | (uint32_t)(gi[1] & 255) << 8);
        gq_store_u16(y + 2 + QK_K / 8 + 2 * ib, (uint32_t)signs[0] | (uint32_t)signs[1] << 8);
        if (ib % 2 == 0) {
            y[2 + QK_K / 4 + ib / 2] = (uint8_t)(s_hi[t] | s_hi[t + 1]);
            y[2 + QK_K / 4 + QK_K / 32 + ib / 2] =
                zero ? 0 : (uint8_t)(gq_iq2_scale_code(id, scale) | gq_iq2_scale_code(id, s_scale[t + 1]) << 4);
        }
        if (ib == 0) gq_store_u16(y, zero ? 0 : gq_fp32_to_fp16(d * 0.9875f));
    } else if (N == 16) {  // IQ2_XS: q2[2*ib + k] = grid index | signs << 9
        gq_store_u16(y + 2 + 4 * ib, zero ? 0 : (uint32_t)gi[0] | (uint32_t)signs[0] << 9);
        gq_store_u16(y + 4 + 4 * ib, zero ? 0 : (uint32_t)gi[1] | (uint32_t)signs[1] << 9);
        if (ib % 2 == 0) {
            y[2 + QK_K / 4 + ib / 2] =
                zero ? 0 : (uint8_t)(gq_iq2_scale_code(id, scale) | gq_iq2_scale_code(id, s_scale[t + 1]) << 4);
        }
        if (ib == 0) gq_store_u16(y, zero ? 0 : gq_fp32_to_fp16(d));
    } else {  // IQ2_XXS: q2[2*ib] four grid indices, q2[2*ib + 1] four 7-bit signs and the scale code
        uint32_t lo = 0, hi = 0;
#pragma unroll
        for (int k = 0; k < K; ++k) {
            lo |= (uint32_t)gi[k] << 8 * k;
            hi |= (uint32_t)signs[k] << 7 * k;
        }
        if (zero) lo = hi = 0;
        else hi |= gq_iq2_scale_code(id, scale) << 28;
        gq_store_u16(y + 2 + 8 * ib, lo);
        gq_store_u16(y + 4 + 8 * ib, lo >> 16);
        gq_store_u16(y + 6 + 8 * ib, hi);
        gq_store_u16(y + 8 + 8 * ib, hi >> 16);
        if (ib == 0) gq_store_u16(y, zero ? 0 : gq_fp32_to_fp16(d));
    }
}

// The entry points, at most 128 registers a thread (__launch_bounds__: 512 threads an SM).
#define GQ_IQ2_BOUNDS(T) __launch_bounds__(T::THREADS, 512 / T::THREADS)
extern "C" __global__ GQ_IQ2_BOUNDS(GqIq2xxs) void quantize_iq2_xxs_f32(GQ_QUANTIZE_STATUS_PARAMS) {
    gq_iq2_quantize<GqIq2xxs, block_iq2_xxs, GqSrcF32>(src, dst, qw, status, n_per_row, rows_per_expert, n_expert);
}
extern "C" __global__ GQ_IQ2_BOUNDS(GqIq2xxs) void quantize_iq2_xxs_f16(GQ_QUANTIZE_STATUS_PARAMS) {
    gq_iq2_quantize<GqIq2xxs, block_iq2_xxs, GqSrcF16>(src, dst, qw, status, n_per_row, rows_per_expert, n_expert);
}
extern "C" __global__ GQ_IQ2_BOUNDS(GqIq2xxs) void quantize_iq2_xxs_bf16(GQ_QUANTIZE_STATUS_PARAMS) {
    gq_iq2_quantize<GqIq2xxs, block_iq2_xxs, GqSrcBF16>(src, dst, qw, status, n_per_row, rows_per_expert, n_expert);
}
extern "C" __global__ GQ_IQ2_BOUNDS(GqIq2xs) void quantize_iq2_xs_f32(GQ_QUANTIZE_STATUS_PARAMS) {
    gq_iq2_quantize<GqIq2xs, block_iq2_xs, GqSrcF32>(src, dst, qw, status, n_per_row, rows_per_expert, n_expert);
}
extern "C" __global__ GQ_IQ2_BOUNDS(GqIq2xs) void quantize_iq2_xs_f16(GQ_QUANTIZE_STATUS_PARAMS) {
    gq_iq2_quantize<GqIq2xs, block_iq2_xs, GqSrcF16>(src, dst, qw, status, n_per_row, rows_per_expert, n_expert);
}
extern "C" __global__ GQ_IQ2_BOUNDS(GqIq2xs) void quantize_iq2_xs_bf16(GQ_QUANTIZE_STATUS_PARAMS) {
    gq_iq2_quantize<GqIq2xs, block_iq2_xs, GqSrcBF16>(src, dst, qw, status, n_per_row, rows_per_expert, n_expert);
}
extern "C" __global__ GQ_IQ2_BOUNDS(GqIq2s) void quantize_iq2_s_f32(GQ_QUANTIZE_STATUS_PARAMS) {
    gq_iq2_quantize<GqIq2s, block_iq2_s, GqSrcF32>(src, dst, qw, status, n_per_row, rows_per_expert, n_expert);
}
extern "C" __global__ GQ_IQ2_BOUNDS(GqIq2s) void quantize_iq2_s_f16(GQ_QUANTIZE_STATUS_PARAMS) {
    gq_iq2_quantize<GqIq2s, block_iq2_s, GqSrcF16>(src, dst, qw, status, n_per_row, rows_per_expert, n_expert);
}
extern "C" __global__ GQ_IQ2_BOUNDS(GqIq2s) void quantize_iq2_s_bf16(GQ_QUANTIZE_STATUS_PARAMS) {
    gq_iq2_quantize<GqIq2s, block_iq2_s, GqSrcBF16>(src, dst, qw, status, n_per_row, rows_per_expert, n_expert);
}

// ---------------------------------------------------------------------------------------------------
// Dequantize (dequantize_row_iq2_*): y[j] = db * grid[j] * (signs & 1 << j ? -1.f : 1.f) per octet.
// ---------------------------------------------------------------------------------------------------
__device__ __forceinline__ void gq_iq2_dequantize_octet(float db, int kg, uint8_t signs, float* y) {
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        const float g = gq_iq2_values[(kg >> 2 * j) & 3];
        y[j] = gq_x86_nan(db * g * (signs & (1 << j) ? -1.f : 1.f));
    }
}

__device__ __forceinline__ void gq_dequantize_row_iq2_xxs(const block_iq2_xxs* b, float* y) {
    const float d = gq_fp16_to_fp32(b->d);
    for (int ib32 = 0; ib32 < QK_K / 32; ++ib32) {
        const uint32_t a0 = b->qs[4 * ib32] | (uint32_t)b->qs[4 * ib32 + 1] << 16;
        const uint32_t a1 = b->qs[4 * ib32 + 2] | (uint32_t)b->qs[4 * ib32 + 3] << 16;
        const float db = d * (0.5f + (a1 >> 28)) * 0.25f;
        for (int l = 0; l < 4; ++l) {
            gq_iq2_dequantize_octet(db, gq_iq2xxs_kgrid[(a0 >> 8 * l) & 255], gq_iq2_ksigns[(a1 >> 7 * l) & 127], y);
            y += 8;
        }
    }
}

__device__ __forceinline__ void gq_dequantize_row_iq2_xs(const block_iq2_xs* b, float* y) {
    const float d = gq_fp16_to_fp32(b->d);
    for (int ib32 = 0; ib32 < QK_K / 32; ++ib32) {
        const float db0 = d * (0.5f + (b->scales[ib32] & 0xf)) * 0.25f;
        const float db1 = d * (0.5f + (b->scales[ib32] >> 4)) * 0.25f;
        for (int l = 0; l < 4; ++l) {
            const uint16_t q = b->qs[4 * ib32 + l];
            gq_iq2_dequantize_octet(l < 2 ? db0 : db1, gq_iq2xs_kgrid[q & 511], gq_iq2_ksigns[q >> 9], y);
            y += 8;
        }
    }
}

__device__ __forceinline__ void gq_dequantize_row_iq2_s(const block_iq2_s* b, float* y) {
    const float d = gq_fp16_to_fp32(b->d);
    const uint8_t* qs = b->qs;
    const uint8_t* signs = b->qs + QK_K / 8;
    for (int ib32 = 0; ib32 < QK_K / 32; ++ib32) {
        const float db0 = d * (0.5f + (b->scales[ib32] & 0xf)) * 0.25f;
        const float db1 = d * (0.5f + (b->scales[ib32] >> 4)) * 0.25f;
        for (int l = 0; l < 4; ++l) {
            const int idx = qs[l] | ((b->qh[ib32] << (8 - 2 * l)) & 0x300);
            gq_iq2_dequantize_octet(l < 2 ? db0 : db1, gq_iq2s_kgrid[idx], signs[l], y);
            y += 8;
        }
        qs += 4;
        signs += 4;
    }
}

extern "C" __global__ void dequantize_iq2_xxs(GQ_DEQUANTIZE_PARAMS) {
    gq_dequantize_blocks<block_iq2_xxs, QK_K, gq_dequantize_row_iq2_xxs>(GQ_DEQUANTIZE_ARGS);
}
extern "C" __global__ void dequantize_iq2_xs(GQ_DEQUANTIZE_PARAMS) {
    gq_dequantize_blocks<block_iq2_xs, QK_K, gq_dequantize_row_iq2_xs>(GQ_DEQUANTIZE_ARGS);
}
extern "C" __global__ void dequantize_iq2_s(GQ_DEQUANTIZE_PARAMS) {
    gq_dequantize_blocks<block_iq2_s, QK_K, gq_dequantize_row_iq2_s>(GQ_DEQUANTIZE_ARGS);
}
