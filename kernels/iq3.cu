// iq3.cu: IQ3_XXS and IQ3_S (ggml-quants.c quantize_iq3_xxs / quantize_iq3_s, through
// quantize_row_iq3_xxs_impl(256, ...) and quantize_row_iq3_s_impl(32, ...) with iq3_find_best_neighbour),
// and dequantize_row_iq3_xxs / dequantize_row_iq3_s.
//
// One warp (a CUDA block of 32 threads) per 256-value super-block. Lane t evaluates trial scale t (31 trials
// for IQ3_XXS, 19 for IQ3_S) of each of the 8 32-blocks, from start to end in the C order (levels, grid
// lookups, neighbour searches and the two sums, group after group); lanes 0..7 then run the C scan over
// the trials of one block each, the 64 groups of the refinement are spread over the lanes, and lane 0
// finishes the blocks and packs the super-block, whose bytes all lanes store. Between the phases the lanes
// meet at __syncwarp (9 times per super-block: the emulator's fibers switch that often, no more).
//
// Tables, generated in front of this file from gpuquant.quants.iq3.kernel_tables(): per grid (iq3xxs,
// iq3s) gq_<g>_qgrid the grid points 2*l + 1 as 4 floats (C kgrid_q3xs), gq_<g>_map (C kmap_q3xs: a grid
// index, or -(offset + 1) of a neighbour list), gq_<g>_nb (C kneighbors_q3xs: length, then the list),
// gq_iq3xxs_grid (ggml-common.h iq3xxs_grid; iq3s_grid is gq_iq3s_qgrid), gq_ksigns_iq2xs.
#include "common.cuh"

// ggml-common.h block layouts
struct block_iq3_xxs { gq_half d; uint8_t qs[3 * QK_K / 8]; };  // 64 grid indices, 8 x scales_and_signs
struct block_iq3_s {
    gq_half d;
    uint8_t qs[QK_K / 4];
    uint8_t qh[QK_K / 32];
    uint8_t signs[QK_K / 8];
    uint8_t scales[QK_K / 64];
};

#define GQ_IQ3_KMAXQ 8
#define GQ_FLT_MAX 0x1.fffffep+127f
#define GQ_GROUP_MAX_EPS_IQ3_XXS 1e-8f

// The per-type facts of the two searches.
struct GqIq3Xxs {
    static constexpr int kNtry = 15;       // trial scales is = -15..15
    static constexpr bool kXxs = true;     // 7 sign bits per 8, is_on_grid starts true, MAX < 1e-8 skips
    static constexpr int kBytes = 98;
    static __device__ __forceinline__ const float* qgrid() { return gq_iq3xxs_qgrid; }
    static __device__ __forceinline__ const int16_t* map() { return gq_iq3xxs_map; }
    static __device__ __forceinline__ const uint16_t* nb() { return gq_iq3xxs_nb; }
};
struct GqIq3S {
    static constexpr int kNtry = 9;
    static constexpr bool kXxs = false;    // 8 sign bits, is_on_grid starts false, the refinement redoes all
    static constexpr int kBytes = 110;
    static __device__ __forceinline__ const float* qgrid() { return gq_iq3s_qgrid; }
    static __device__ __forceinline__ const int16_t* map() { return gq_iq3s_map; }
    static __device__ __forceinline__ const uint16_t* nb() { return gq_iq3s_nb; }
};

// Shared memory of one super-block; [ib] is a 32-block, [t] a trial (a lane).
struct GqIq3Smem {
    float x[QK_K];
    float xval[QK_K];
    float weight[QK_K];
    float waux[QK_K];
    float sumqx[8][32];
    float sumq2[8][32];
    uint16_t tgi[8][32][8];  // grid index of every group at every trial
    uint8_t ton[8][32];      // bit k: group k of the trial was on the grid
    uint16_t gi[8][8];       // the blocks' grid indices: the picked trial's, then the refinement's
    float bmax[8];           // max xval of each block
    float scale[8];          // the picked scale, then the block's final scale
    uint8_t on[8];           // on-grid bits of the picked trial
    uint8_t refine[8];       // the block is refined
    uint8_t signs[8][4];
    uint8_t active[8];       // not skipped as all-zero
    float sigma2;
    uint8_t out[112];
};

// iq3_find_best_neighbour: the first entry of the list `nbl` (length, then grid indices) of smallest
// weighted distance sum_i waux[i]*(scale*q[i] - xv[i])^2 below FLT_MAX; -1 where ggml aborts (none).
__device__ __forceinline__ int gq_iq3_best_neighbour(const uint16_t* nbl, const float* qgrid, const float* xv,
                                                     const float* wa, float scale) {
    const int n = nbl[0];
    float best_d2 = GQ_FLT_MAX;
    int grid_index = -1;
    GQ_NO_UNROLL
    for (int j = 1; j <= n; ++j) {
        const float* pg = qgrid + 4 * nbl[j];
        float d2 = 0;
        for (int i = 0; i < 4; ++i) {
            const float q = pg[i];
            const float diff = scale * q - xv[i];
            d2 += wa[i] * diff * diff;
        }
        if (d2 < best_d2) {
            best_d2 = d2;
            grid_index = nbl[j];
        }
    }
    return grid_index;
}

// One group of 4 at inverse scale id: l = MAX(0, MIN(7, nearest_int(0.5f*(id*xval - 1)))), the kmap entry
// of the levels, or off the grid (*on = false) the neighbour picked at `scale` (-1: ggml aborts).
template <class G>
__device__ __forceinline__ int gq_iq3_group(const float* xv, const float* wa, float id, float scale, bool* on) {
    int u = 0;
    for (int i = 0; i < 4; ++i) {
        int l = gq_nearest_int(0.5f * (id * xv[i] - 1));
        l = GQ_MAX(0, GQ_MIN(GQ_IQ3_KMAXQ - 1, l));
        u |= l << 3 * i;
    }
    const int m = G::map()[u];
    *on = m >= 0;
    return m >= 0 ? m : gq_iq3_best_neighbour(G::nb() - m - 1, G::qgrid(), xv, wa, scale);
}

// sumqx += w*xval*q; sumq2 += w*q*q over one group (i = 4k..4k+3, in the C order of the 32-element sums).
template <class G>
__device__ __forceinline__ void gq_iq3_group_sums(const float* w, const float* xv, int grid_index, float* sumqx,
                                                  float* sumq2) {
    const float* pg = G::qgrid() + 4 * grid_index;
    for (int i = 0; i < 4; ++i) {
        const float q = pg[i];
        *sumqx += w[i] * xv[i] * q;
        *sumq2 += w[i] * q * q;
    }
}

// The signs of 8 elements (lane k < 4 of the warp; group k of block ib): xval = |x|, the sign bits; IQ3_XXS
// flips the element of smallest weight*x*x of an odd 8 (its sign bit too) and keeps 7 bits.
template <class G>
__device__ __forceinline__ void gq_iq3_signs(GqIq3Smem& s, int ib, int k) {
    const int b = 32 * ib + 8 * k;
    int nflip = 0;
    uint8_t sg = 0;
    for (int i = 0; i < 8; ++i) {
        const float xb = s.x[b + i];
        if (xb >= 0) {
            s.xval[b + i] = xb;
        } else {
            s.xval[b + i] = -xb;
            ++nflip;
            sg |= (uint8_t)(1 << i);
        }
    }
    if (G::kXxs && nflip % 2) {
        int imin = 0;
        float min = s.weight[b] * s.x[b] * s.x[b];
        for (int i = 1; i < 8; ++i) {
            const float ax = s.weight[b + i] * s.x[b + i] * s.x[b + i];
            if (ax < min) {
                min = ax;
                imin = i;
            }
        }
        s.xval[b + imin] = -s.xval[b + imin];
        sg ^= (uint8_t)(1 << imin);
    }
    s.signs[ib][k] = G::kXxs ? (uint8_t)(sg & 127) : sg;
}

// Trial `t` of active block ib (one lane): grid indices and on-grid bits of its 8 groups, its two sums.
// Returns false where ggml aborts.
template <class G>
__device__ __forceinline__ bool gq_iq3_trial(GqIq3Smem& s, int ib, int t, float max) {
    const int is = t - G::kNtry;
    const float id = (2 * GQ_IQ3_KMAXQ - 1 + is * 0.2f) / max;
    const float this_scale = 1 / id;
    const float* xv = s.xval + 32 * ib;
    const float* wa = s.waux + 32 * ib;
    const float* w = s.weight + 32 * ib;
    float sumqx = 0, sumq2 = 0;
    unsigned int on_bits = 0;
    bool ok = true;
    GQ_NO_UNROLL
    for (int k = 0; k < 8; ++k) {
        bool on;
        int g = gq_iq3_group<G>(xv + 4 * k, wa + 4 * k, id, this_scale, &on);
        if (g < 0) {
            ok = false;
            g = 0;
        }
        on_bits |= (unsigned int)on << k;
        s.tgi[ib][t][k] = (uint16_t)g;
        gq_iq3_group_sums<G>(w + 4 * k, xv + 4 * k, g, &sumqx, &sumq2);
    }
    s.sumqx[ib][t] = sumqx;
    s.sumq2[ib][t] = sumq2;
    s.ton[ib][t] = (uint8_t)on_bits;
    return ok;
}

// The C scan over the trials of active block ib (one lane): the picked scale, grid indices (L = 0 when no
// trial is picked: kmap[0]) and on-grid bits, and whether the block is refined.
template <class G>
__device__ __forceinline__ void gq_iq3_pick(GqIq3Smem& s, int ib) {
    const int ntrials = 2 * G::kNtry + 1;
    float best = 0;
    float scale = s.bmax[ib] / (2 * GQ_IQ3_KMAXQ - 1);
    int pick = -1;
    for (int t = 0; t < ntrials; ++t) {
        const float sumqx = s.sumqx[ib][t], sumq2 = s.sumq2[ib][t];
        if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
            scale = sumqx / sumq2;
            best = scale * sumqx;
            pick = t;
        }
    }
    const unsigned int on = pick >= 0 ? s.ton[ib][pick] : G::kXxs ? 0xFFu : 0u;
    for (int k = 0; k < 8; ++k) s.gi[ib][k] = pick >= 0 ? s.tgi[ib][pick][k] : (uint16_t)G::map()[0];
    s.scale[ib] = scale;
    s.on[ib] = (uint8_t)on;
    s.refine[ib] = on != 0xFFu && scale > 0;
}

// The refinement of group k of block ib (IQ3_XXS: only groups off the grid) at the picked scale. Returns
// false where ggml aborts.
template <class G>
__device__ __forceinline__ bool gq_iq3_refine_group(GqIq3Smem& s, int ib, int k) {
    if (!s.active[ib] || !s.refine[ib] || (G::kXxs && ((s.on[ib] >> k) & 1))) return true;
    const float scale = s.scale[ib];
    bool on;
    const int g = gq_iq3_group<G>(s.xval + 32 * ib + 4 * k, s.waux + 32 * ib + 4 * k, 1 / scale, scale, &on);
    s.gi[ib][k] = (uint16_t)(g < 0 ? 0 : g);
    return g >= 0;
}

// The end of block ib's search: the refined scale, the flip of a negative scale. Returns false where ggml
// aborts (GGML_ASSERT(scale >= 0)).
template <class G>
__device__ __forceinline__ bool gq_iq3_finish_block(GqIq3Smem& s, int ib) {
    float scale = s.scale[ib];
    if (s.refine[ib]) {
        float sumqx = 0, sumq2 = 0;
        for (int k = 0; k < 8; ++k)
            gq_iq3_group_sums<G>(s.weight + 32 * ib + 4 * k, s.xval + 32 * ib + 4 * k, s.gi[ib][k], &sumqx, &sumq2);
        if (sumq2 > 0) scale = sumqx / sumq2;
    }
    if (scale < 0) {  // "should never happen": the C flips the scale and the signs
        scale = -scale;
        for (int k = 0; k < 4; ++k)
            s.signs[ib][k] = G::kXxs ? (uint8_t)(~s.signs[ib][k] & 127) : (uint8_t)~s.signs[ib][k];
    }
    s.scale[ib] = scale;
    return scale >= 0;
}

// max_scale over the quantized blocks (MAX in block order), 0 when none.
__device__ __forceinline__ float gq_iq3_max_scale(const GqIq3Smem& s) {
    float max_scale = 0;
    for (int ib = 0; ib < 8; ++ib)
        if (s.active[ib]) max_scale = GQ_MAX(max_scale, s.scale[ib]);
    return max_scale;
}

// nearest_int(0.5f*(id*scale - 1)) clamped to 0..15: a block scale's 4 bits.
__device__ __forceinline__ unsigned int gq_iq3_scale_level(float id, float scale) {
    const int l = gq_nearest_int(0.5f * (id * scale - 1));
    return (unsigned int)GQ_MAX(0, GQ_MIN(15, l));
}

// The block_iq3_xxs bytes of quantize_row_iq3_xxs_impl's super-block loop (all 0 when max_scale is 0).
__device__ __forceinline__ void gq_iq3_xxs_pack(GqIq3Smem& s) {
    uint8_t* o = s.out;
    for (int j = 0; j < GqIq3Xxs::kBytes; ++j) o[j] = 0;
    const float max_scale = gq_iq3_max_scale(s);
    if (!max_scale) return;
    const float d = max_scale / 31;
    const gq_half dh = gq_fp32_to_fp16(d * 1.0125f);
    o[0] = (uint8_t)(dh & 255);
    o[1] = (uint8_t)(dh >> 8);
    const float id = 1 / d;
    for (int ib = 0; ib < 8; ++ib) {
        const float sc = s.active[ib] ? s.scale[ib] : 0.f;
        uint32_t sas = 0;
        if (s.active[ib]) {
            for (int k = 0; k < 8; ++k) o[2 + 8 * ib + k] = (uint8_t)s.gi[ib][k];
            sas = s.signs[ib][0] | (s.signs[ib][1] << 7) | (s.signs[ib][2] << 14) | ((uint32_t)s.signs[ib][3] << 21);
        }
        sas |= gq_iq3_scale_level(id, sc) << 28;
        for (int j = 0; j < 4; ++j) o[66 + 4 * ib + j] = (uint8_t)(sas >> 8 * j);
    }
}

// The block_iq3_s bytes: qs and signs advance only past quantized blocks (a skipped block's go to the next
// one's place), qh is indexed by block; d and the scales stay 0 when max_scale is 0.
__device__ __forceinline__ void gq_iq3_s_pack(GqIq3Smem& s) {
    uint8_t* o = s.out;
    for (int j = 0; j < GqIq3S::kBytes; ++j) o[j] = 0;
    int slot = 0;
    for (int ib = 0; ib < 8; ++ib) {
        if (!s.active[ib]) continue;
        for (int k = 0; k < 8; ++k) {
            const int g = s.gi[ib][k];
            o[2 + 8 * slot + k] = (uint8_t)(g & 255);
            o[66 + ib] |= (uint8_t)((g >> 8) << k);
        }
        for (int k = 0; k < 4; ++k) o[74 + 4 * slot + k] = s.signs[ib][k];
        ++slot;
    }
    const float max_scale = gq_iq3_max_scale(s);
    if (!max_scale) return;
    const float d = max_scale / 31;
    const gq_half dh = gq_fp32_to_fp16(d * 1.033f);
    o[0] = (uint8_t)(dh & 255);
    o[1] = (uint8_t)(dh >> 8);
    const float id = 1 / d;
    for (int ib = 0; ib < 8; ib += 2) {
        const float s1 = s.active[ib] ? s.scale[ib] : 0.f, s2 = s.active[ib + 1] ? s.scale[ib + 1] : 0.f;
        o[106 + ib / 2] = (uint8_t)(gq_iq3_scale_level(id, s1) | (gq_iq3_scale_level(id, s2) << 4));
    }
}

// quantize_row_iq3_{xxs,s}_impl of one super-block (one CUDA block of one warp; see the file notes).
template <class Src, class G>
__device__ __forceinline__ void gq_quantize_iq3(GQ_QUANTIZE_STATUS_PARAMS) {
    __shared__ GqIq3Smem smem;
    GqIq3Smem& s = smem;
    const long long blocks_per_row = n_per_row / QK_K;
    const long long item = blockIdx.x;
    if (item >= rows_per_expert * blocks_per_row || (long long)blockIdx.z >= n_expert) return;
    const long long r = item / blocks_per_row;
    const long long ibl = item - r * blocks_per_row;
    const long long row = (long long)blockIdx.z * rows_per_expert + r;
    const int lane = threadIdx.x;
    const float* qwb = qw ? qw + (long long)blockIdx.z * n_per_row + ibl * QK_K : nullptr;
    bool ok = true;

    const long long offset = row * n_per_row + ibl * QK_K;
    for (int j = 0; j < QK_K / 32; ++j) s.x[lane + 32 * j] = Src::load(src, offset + lane + 32 * j);
    __syncwarp();
    if (qwb) {  // sigma2 = 2*sumx2/QK_K, summed in order
        if (lane == 0) {
            float sumx2 = 0;
            for (int i = 0; i < QK_K; ++i) sumx2 += s.x[i] * s.x[i];
            s.sigma2 = 2 * sumx2 / QK_K;
        }
        __syncwarp();
    }
    for (int j = 0; j < QK_K / 32; ++j) {
        const int i = lane + 32 * j;
        const float xi = s.x[i];
        const float w = qwb ? qwb[i] * sqrtf(s.sigma2 + xi * xi) : xi * xi;
        s.weight[i] = w;
        s.waux[i] = sqrtf(w);
    }
    __syncwarp();
    gq_iq3_signs<G>(s, lane >> 2, lane & 3);  // lane: 8 elements
    __syncwarp();
    if (lane < 8) {
        float max = s.xval[32 * lane];
        for (int i = 1; i < 32; ++i) max = GQ_MAX(max, s.xval[32 * lane + i]);
        s.bmax[lane] = max;
        s.active[lane] = G::kXxs ? !(max < GQ_GROUP_MAX_EPS_IQ3_XXS) : max != 0;
    }
    __syncwarp();
    if (lane < 2 * G::kNtry + 1) {
        GQ_NO_UNROLL
        for (int ib = 0; ib < 8; ++ib)
            if (s.active[ib] && !gq_iq3_trial<G>(s, ib, lane, s.bmax[ib])) ok = false;
    }
    __syncwarp();
    if (lane < 8 && s.active[lane]) gq_iq3_pick<G>(s, lane);
    __syncwarp();
    for (int task = lane; task < 64; task += 32)
        if (!gq_iq3_refine_group<G>(s, task >> 3, task & 7)) ok = false;
    __syncwarp();
    if (lane == 0) {
        for (int ib = 0; ib < 8; ++ib)
            if (s.active[ib] && !gq_iq3_finish_block<G>(s, ib)) ok = false;
        if (G::kXxs) gq_iq3_xxs_pack(s);
        else gq_iq3_s_pack(s);
    }
    __syncwarp();
    for (int j = lane; j < G::kBytes; j += 32) dst[(row * blocks_per_row + ibl) * G::kBytes + j] = s.out[j];
    if (!ok) gq_report_abort(status, row, ibl, blocks_per_row);
}

extern "C" __global__ void quantize_iq3_xxs_f32(GQ_QUANTIZE_STATUS_PARAMS) {
    gq_quantize_iq3<GqSrcF32, GqIq3Xxs>(src, dst, qw, status, n_per_row, rows_per_expert, n_expert);
}
extern "C" __global__ void quantize_iq3_xxs_f16(GQ_QUANTIZE_STATUS_PARAMS) {
    gq_quantize_iq3<GqSrcF16, GqIq3Xxs>(src, dst, qw, status, n_per_row, rows_per_expert, n_expert);
}
extern "C" __global__ void quantize_iq3_xxs_bf16(GQ_QUANTIZE_STATUS_PARAMS) {
    gq_quantize_iq3<GqSrcBF16, GqIq3Xxs>(src, dst, qw, status, n_per_row, rows_per_expert, n_expert);
}
extern "C" __global__ void quantize_iq3_s_f32(GQ_QUANTIZE_STATUS_PARAMS) {
    gq_quantize_iq3<GqSrcF32, GqIq3S>(src, dst, qw, status, n_per_row, rows_per_expert, n_expert);
}
extern "C" __global__ void quantize_iq3_s_f16(GQ_QUANTIZE_STATUS_PARAMS) {
    gq_quantize_iq3<GqSrcF16, GqIq3S>(src, dst, qw, status, n_per_row, rows_per_expert, n_expert);
}
extern "C" __global__ void quantize_iq3_s_bf16(GQ_QUANTIZE_STATUS_PARAMS) {
    gq_quantize_iq3<GqSrcBF16, GqIq3S>(src, dst, qw, status, n_per_row, rows_per_expert, n_expert);
}

// y[j] = db*q(j), negated where sign bit j is set (the compiled C negates: a NaN's sign flips too), for the
// 4 grid values q(0..3).
template <class Q>
__device__ __forceinline__ void gq_iq3_dequant_4(float db, Q q, unsigned int signs, float* y) {
    for (int j = 0; j < 4; ++j) {
        const float v = db * q(j);
        y[j] = gq_x86_nan((signs >> j) & 1 ? -v : v);
    }
}

// dequantize_row_iq3_xxs of one super-block
__device__ __forceinline__ void gq_dequantize_row_iq3_xxs(const block_iq3_xxs* b, float* y) {
    const float d = gq_fp16_to_fp32(b->d);
    const uint8_t* qs = b->qs;
    for (int ib32 = 0; ib32 < QK_K / 32; ++ib32) {
        const uint8_t* sas = b->qs + QK_K / 4 + 4 * ib32;
        const uint32_t aux32 = sas[0] | (sas[1] << 8) | (sas[2] << 16) | ((uint32_t)sas[3] << 24);
        const float db = d * (0.5f + (aux32 >> 28)) * 0.5f;
        for (int l = 0; l < 4; ++l) {
            const unsigned int signs = gq_ksigns_iq2xs[(aux32 >> 7 * l) & 127];
            for (int h = 0; h < 2; ++h) {
                const uint32_t g = gq_iq3xxs_grid[qs[2 * l + h]];
                gq_iq3_dequant_4(db, [g](int j) { return (float)((g >> 8 * j) & 255u); }, signs >> 4 * h, y + 4 * h);
            }
            y += 8;
        }
        qs += 8;
    }
}

// dequantize_row_iq3_s of one super-block
__device__ __forceinline__ void gq_dequantize_row_iq3_s(const block_iq3_s* b, float* y) {
    const float d = gq_fp16_to_fp32(b->d);
    for (int ib32 = 0; ib32 < QK_K / 32; ++ib32) {
        const float db = d * (1 + 2 * ((b->scales[ib32 / 2] >> 4 * (ib32 % 2)) & 0xf));
        const uint8_t* qs = b->qs + 8 * ib32;
        const unsigned int qh = b->qh[ib32];
        const unsigned int signs = b->signs[4 * ib32] | (b->signs[4 * ib32 + 1] << 8) | (b->signs[4 * ib32 + 2] << 16) |
                                   ((unsigned int)b->signs[4 * ib32 + 3] << 24);
        for (int k = 0; k < 8; ++k) {
            const float* g = gq_iq3s_qgrid + 4 * (qs[k] | (((qh >> k) & 1) << 8));
            gq_iq3_dequant_4(db, [g](int j) { return g[j]; }, signs >> 4 * k, y + 4 * k);
        }
        y += 32;
    }
}

extern "C" __global__ void dequantize_iq3_xxs(GQ_DEQUANTIZE_PARAMS) {
    gq_dequantize_blocks<block_iq3_xxs, QK_K, gq_dequantize_row_iq3_xxs>(GQ_DEQUANTIZE_ARGS);
}
extern "C" __global__ void dequantize_iq3_s(GQ_DEQUANTIZE_PARAMS) {
    gq_dequantize_blocks<block_iq3_s, QK_K, gq_dequantize_row_iq3_s>(GQ_DEQUANTIZE_ARGS);
}
