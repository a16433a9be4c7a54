// iq1.cu: IQ1_S and IQ1_M (ggml-quants.c quantize_iq1_s / quantize_iq1_m through quantize_row_iq1_s_impl /
// quantize_row_iq1_m_impl with iq1_find_best_neighbour2), and dequantize_row_iq1_s / dequantize_row_iq1_m.
//
// A thread per scale group (IQ1_S: 8 groups of 32 per super-block, IQ1_M: 16 of 16), 64 threads a CUDA
// block (8 or 4 super-blocks). Each thread runs its group from start to end in the C order: the weights,
// the skip test, qsort (glibc's merge sort: stable, "left unless left > right"), the prefix sums, the
// exhaustive split scan, the levels, the octets onto the grid and the refit. After one __syncthreads the
// first thread of each super-block packs it (IQ1_M: with the super-block refit of d). Two barriers per
// CUDA block in all (after the load, after the groups).
//
// Neighbours: C's list of an off-grid octet holds the grid points within its nwant smallest distinct
// squared level distances, sorted by (distance, index), and keeps the first of least d2 < FLT_MAX. Here
// the grid points within the list's largest distance (gq_iq1_thr3) are visited (about 73 a list, found
// from the two 4-level halves of the octet) and the least (d2, distance, index) is kept: the same pick,
// without the 330k-entry lists (kernel_tables checks that every list is that set in that order).
//
// Tables, generated in front of this file from gpuquant.quants.iq1.kernel_tables(): gq_iq1_kgrid (the
// 2048 grid points, 2 bits a level, C kgrid_q2xs), gq_iq1_map3 (grid index of each octet by its base-3
// code sum l[i]*3^i, -1 off the grid), gq_iq1_thr3 (the largest squared level distance of its neighbour
// list), gq_iq1_d4 (81 x 81: the squared level distance between two quads, base-3 codes of 4 levels),
// gq_iq1_nq (81 x 81: per quad all quads by that distance, ties by code), gq_iq1_quadlv (a quad's 4
// levels, 2 bits each), gq_iq1_ball (81 x 5 bit masks of 81 bits in 2 words: the quads within distance
// 0..4 of a quad) and gq_iq1_onhi (81 masks: the high quads that make a grid point with a low quad).
#include "common.cuh"

// ggml-common.h block layouts
struct block_iq1_s { gq_half d; uint8_t qs[QK_K / 8]; uint16_t qh[QK_K / 32]; };
struct block_iq1_m { uint8_t qs[QK_K / 8]; uint8_t qh[QK_K / 16]; uint8_t scales[QK_K / 32]; };

#define GQ_IQ1_FLT_MAX 0x1.fffffep+127f

// x_p (row 0) and x_m (row 1): {-1 + DELTA, DELTA, 1 + DELTA}, {-1 - DELTA, -DELTA, 1 - DELTA}, DELTA = 0.125
static __device__ const float gq_iq1_xx[2][3] = {{-0.875f, 0.125f, 1.125f}, {-1.125f, -0.125f, 0.875f}};

struct GqIq1S {
    static constexpr int kGroup = 32;  // IQ1S_BLOCK_SIZE
    static constexpr int kGroups = QK_K / kGroup;
    static constexpr int kSb = 8;      // super-blocks per CUDA block
    static constexpr int kBytes = 50;  // block_iq1_s
    static constexpr int kPre = 2 * (kGroup + 1);  // sumx, sumw
    static constexpr bool kM = false;
    static __device__ __forceinline__ float eps() { return 1e-12f; }  // GROUP_MAX_EPS_IQ1_S
};
struct GqIq1M {
    static constexpr int kGroup = 16;  // IQ1M_BLOCK_SIZE
    static constexpr int kGroups = QK_K / kGroup;
    static constexpr int kSb = 4;
    static constexpr int kBytes = 56;  // block_iq1_m
    static constexpr int kPre = 4 * (kGroup + 1);  // px[2], pw[2]
    static constexpr bool kM = true;
    static __device__ __forceinline__ float eps() { return 1e-7f; }  // GROUP_MAX_EPS_IQ1_M
};
#define GQ_IQ1_THREADS 64

template <class G>
struct GqIq1Smem {
    float x[G::kSb][QK_K];
    float w[G::kSb][QK_K];
    uint8_t ord[G::kSb][QK_K];  // the sorted order of each group (C idx)
    uint8_t tmp[G::kSb][QK_K];  // the merge buffer, then the levels L
    float pre[G::kSb * G::kGroups][G::kPre];
    float scale[G::kSb][G::kGroups];
    uint8_t shift[G::kSb][G::kGroups];  // IQ1_S: 0 x_p, 1 x_m; IQ1_M: best_k
    uint8_t done[G::kSb][G::kGroups];   // the group was quantized (not skipped)
    uint16_t gi[G::kSb][QK_K / 8];
    float terms[G::kSb * G::kGroups][24];  // a thread's neighbour search: its octet's distance terms
};

// The xx row of octet k of a group with shift s (IQ1_M: octet 0 best_k < 2 ? x_p : x_m, octet 1 best_k%2).
template <class G>
__device__ __forceinline__ int gq_iq1_row(int s, int k) {
    return G::kM ? (k == 0 ? s >> 1 : s & 1) : s;
}

// qsort(pairs, n, ...) with iq1_sort_helper as glibc's msort does it (n a power of 2: the top-down halves
// are the bottom-up runs): `ord` ends up holding the element indices in sorted order.
__device__ __forceinline__ void gq_iq1_sort(const float* xb, int n, uint8_t* ord, uint8_t* tmp) {
    for (int i = 0; i < n; ++i) ord[i] = (uint8_t)i;
    uint8_t* a = ord;
    uint8_t* b = tmp;
    GQ_NO_UNROLL
    for (int width = 1; width < n; width *= 2) {
        GQ_NO_UNROLL
        for (int lo = 0; lo < n; lo += 2 * width) {
            int i = lo, j = lo + width, o = lo;
            const int iend = lo + width, jend = lo + 2 * width;
            while (i < iend && j < jend) b[o++] = !(xb[a[i]] > xb[a[j]]) ? a[i++] : a[j++];
            while (i < iend) b[o++] = a[i++];
            while (j < jend) b[o++] = a[j++];
        }
        uint8_t* t = a;
        a = b;
        b = t;
    }
    if (a != ord)
        for (int i = 0; i < n; ++i) ord[i] = a[i];
}

// IQ1_S: the prefix sums and the split scan of quantize_row_iq1_s_impl. Returns best i1 | i2 << 8 |
// shift << 16, or -1 when nothing is kept; *scale the kept scale.
__device__ __forceinline__ int gq_iq1_s_scan(const float* xb, const float* w, const uint8_t* ord, float* pre,
                                             float* scale_out) {
    constexpr int n = GqIq1S::kGroup;
    float* sumx = pre;
    float* sumw = pre + n + 1;
    sumx[0] = sumw[0] = 0;
    for (int j = 0; j < n; ++j) {
        const int i = ord[j];
        sumx[j + 1] = sumx[j] + w[i] * xb[i];
        sumw[j + 1] = sumw[j] + w[i];
    }
    const float* xp = gq_iq1_xx[0];
    const float* xm = gq_iq1_xx[1];
    float best_score = -GQ_IQ1_FLT_MAX, scale = *scale_out;  // a local: no store through a float* in the scan
    int best = -1;
    GQ_NO_UNROLL
    for (int i1 = 0; i1 <= n; ++i1) {
        GQ_NO_UNROLL
        for (int i2 = i1; i2 <= n; ++i2) {
            const float a = sumx[i1] - sumx[0], b = sumx[i2] - sumx[i1], c = sumx[n] - sumx[i2];
            const float aw = sumw[i1] - sumw[0], bw = sumw[i2] - sumw[i1], cw = sumw[n] - sumw[i2];
            float sumqx = a * xp[0] + b * xp[1] + c * xp[2];
            float sumq2 = aw * xp[0] * xp[0] + bw * xp[1] * xp[1] + cw * xp[2] * xp[2];
            if (sumq2 > 0 && sumqx * sumqx > best_score * sumq2) {
                scale = sumqx / sumq2;
                best_score = scale * sumqx;
                best = i1 | i2 << 8;
            }
            sumqx = a * xm[0] + b * xm[1] + c * xm[2];
            sumq2 = aw * xm[0] * xm[0] + bw * xm[1] * xm[1] + cw * xm[2] * xm[2];
            if (sumq2 > 0 && sumqx * sumqx > best_score * sumq2) {
                scale = sumqx / sumq2;
                best_score = scale * sumqx;
                best = i1 | i2 << 8 | 1 << 16;
            }
        }
    }
    *scale_out = scale;
    return best;
}

// IQ1_M: the per-half prefix sums and the split scan of quantize_row_iq1_m_impl (k = 0: ++, 1: +-, 2: -+,
// 3: --). Returns i1 | i2 << 8 | k << 16, or -1.
__device__ __forceinline__ int gq_iq1_m_scan(const float* xb, const float* w, const uint8_t* ord, float* pre,
                                             float* scale_out) {
    constexpr int n = GqIq1M::kGroup;
    // px[h][j] is pre[h*(n + 1) + j], pw[h][j] is pre[(2 + h)*(n + 1) + j]
    float* px = pre;
    float* pw = pre + 2 * (n + 1);
    px[0] = px[n + 1] = 0;
    pw[0] = pw[n + 1] = 0;
    for (int j = 0; j < n; ++j) {
        const int i = ord[j];
        const int h = i < n / 2 ? 0 : 1;
        px[h * (n + 1) + j + 1] = px[h * (n + 1) + j] + w[i] * xb[i];
        px[(1 - h) * (n + 1) + j + 1] = px[(1 - h) * (n + 1) + j];
        pw[h * (n + 1) + j + 1] = pw[h * (n + 1) + j] + w[i];
        pw[(1 - h) * (n + 1) + j + 1] = pw[(1 - h) * (n + 1) + j];
    }
    const float* xp = gq_iq1_xx[0];
    const float* xm = gq_iq1_xx[1];
    const float tx0 = px[n], tx1 = px[2 * n + 1];  // total weight*x per half
    const float tw0 = pw[n], tw1 = pw[2 * n + 1];  // total weight per half
    const float p2 = xp[2], m2 = xm[2];
    const float cp1 = xp[0] * xp[0] - xp[1] * xp[1];
    const float cp2 = xp[1] * xp[1] - xp[2] * xp[2];
    const float cm1 = xm[0] * xm[0] - xm[1] * xm[1];
    const float cm2 = xm[1] * xm[1] - xm[2] * xm[2];
    float best_score = -GQ_IQ1_FLT_MAX, scale = *scale_out;  // a local: no store through a float* in the scan
    int best = -1;
    // the C test of candidate k of split (i1, i2)
    auto consider = [&](float sumqx, float sumq2, int tag) {
        if (sumq2 > 0 && sumqx * sumqx > best_score * sumq2) {
            scale = sumqx / sumq2;
            best_score = scale * sumqx;
            best = tag;
        }
    };
    GQ_NO_UNROLL
    for (int i1 = 0; i1 <= n; ++i1) {
        GQ_NO_UNROLL
        for (int i2 = i1; i2 <= n; ++i2) {
            const float sx0 = px[i1] + px[i2], sx1 = px[n + 1 + i1] + px[n + 1 + i2];
            const float qx_p0 = tx0 * p2 - sx0, qx_m0 = tx0 * m2 - sx0;
            const float qx_p1 = tx1 * p2 - sx1, qx_m1 = tx1 * m2 - sx1;
            const float q2_p0 = tw0 * p2 * p2 + pw[i1] * cp1 + pw[i2] * cp2;
            const float q2_m0 = tw0 * m2 * m2 + pw[i1] * cm1 + pw[i2] * cm2;
            const float q2_p1 = tw1 * p2 * p2 + pw[n + 1 + i1] * cp1 + pw[n + 1 + i2] * cp2;
            const float q2_m1 = tw1 * m2 * m2 + pw[n + 1 + i1] * cm1 + pw[n + 1 + i2] * cm2;
            const int tag = i1 | i2 << 8;
            consider(qx_p0 + qx_p1, q2_p0 + q2_p1, tag);
            consider(qx_p0 + qx_m1, q2_p0 + q2_m1, tag | 1 << 16);
            consider(qx_m0 + qx_p1, q2_m0 + q2_p1, tag | 2 << 16);
            consider(qx_m0 + qx_m1, q2_m0 + q2_m1, tag | 3 << 16);
        }
    }
    *scale_out = scale;
    return best;
}

// iq1_find_best_neighbour2 of the octet of base-3 code c (off the grid); -1 where ggml aborts. The grid
// points within the list's distance are walked by low quad (gq_iq1_nq: the quads by distance), the high
// quads of each from two bit masks (gq_iq1_ball: within a distance of the octet's, gq_iq1_onhi: making a
// grid point); the pick is the least (d2, distance, index), C's first least d2.
// d2 is C's sum d2 += w*diff*diff in element order, from the octet's 24 terms (`t`, 3*i + level: each the
// C expression), the first four added once per low quad.
__device__ __forceinline__ int gq_iq1_best_neighbour(int c, const float* xv, const float* w, float scale,
                                                     const float* xx, float* t) {
    for (int i = 0; i < 8; ++i)
        for (int l = 0; l < 3; ++l) {
            const float diff = scale * xx[l] - xv[i];
            t[3 * i + l] = w[i] * diff * diff;
        }
    const int thr = gq_iq1_thr3[c];
    const int a = c % 81, b = c / 81;
    const uint8_t* dlo = gq_iq1_d4 + 81 * a;
    const uint8_t* dhi = gq_iq1_d4 + 81 * b;
    const uint8_t* nlo = gq_iq1_nq + 81 * a;
    float best_score = GQ_IQ1_FLT_MAX;
    int grid_index = -1, best_dist = 0;
    GQ_NO_UNROLL
    for (int i = 0; i < 81; ++i) {
        const int la = nlo[i];
        const int dl = dlo[la];
        if (dl > thr) break;
        const unsigned int ll = gq_iq1_quadlv[la];
        float part = 0;
        for (int k = 0; k < 4; ++k) part += t[3 * k + ((ll >> 2 * k) & 3)];
        const uint64_t* ball = gq_iq1_ball + 2 * (5 * b + (thr - dl));
        const uint64_t* on = gq_iq1_onhi + 2 * la;
        for (int word = 0; word < 2; ++word) {
            uint64_t bits = ball[word] & on[word];  // hi quads of grid points within thr - dl
            GQ_NO_UNROLL
            while (bits) {
                const int lb = 64 * word + __ffsll((long long)bits) - 1;
                bits &= bits - 1;
                const int dist = dl + dhi[lb];
                const int p = gq_iq1_map3[la + 81 * lb];
                const unsigned int lh = gq_iq1_quadlv[lb];
                float d2 = part;
                for (int k = 0; k < 4; ++k) d2 += t[12 + 3 * k + ((lh >> 2 * k) & 3)];
                if (d2 < best_score || (d2 == best_score && grid_index >= 0 &&
                                        (dist < best_dist || (dist == best_dist && p < grid_index)))) {
                    best_score = d2;
                    grid_index = p;
                    best_dist = dist;
                }
            }
        }
    }
    return grid_index;
}

// sumqx += w*q*xb; sumq2 += w*q*q over the octets of a group at their grid points gi (point0: all grid
// point 0), q = xx[level]*mul.
template <class G>
__device__ __forceinline__ void gq_iq1_sums(const float* xb, const float* w, const uint16_t* gi, bool point0, int shift,
                                            float mul, float* sumqx, float* sumq2) {
    for (int k = 0; k < G::kGroup / 8; ++k) {
        const float* xx = gq_iq1_xx[gq_iq1_row<G>(shift, k)];
        const unsigned int g = gq_iq1_kgrid[point0 ? 0 : gi[k]];
        for (int j = 0; j < 8; ++j) {
            const float ww = w[8 * k + j];
            const float q = xx[(g >> 2 * j) & 3] * mul;  // mul 1 (exact) or 2*l + 1
            *sumqx += ww * q * xb[8 * k + j];
            *sumq2 += ww * q * q;
        }
    }
}

// One scale group `g` of super-block `sb` (one thread). Returns false where ggml aborts.
template <class G>
__device__ __forceinline__ bool gq_iq1_group(GqIq1Smem<G>& s, int sb, int g, const float* qwg, float sigma2) {
    constexpr int n = G::kGroup;
    const float* xb = s.x[sb] + n * g;
    float* w = s.w[sb] + n * g;
    uint16_t* gi = s.gi[sb] + (n / 8) * g;
    s.scale[sb][g] = 0;
    s.shift[sb][g] = 0;
    s.done[sb][g] = 0;
    for (int k = 0; k < n / 8; ++k) gi[k] = 0;
    for (int i = 0; i < n; ++i) w[i] = qwg ? qwg[i] * sqrtf(sigma2 + xb[i] * xb[i]) : xb[i] * xb[i];
    float max = fabsf(xb[0]);
    for (int i = 1; i < n; ++i) max = GQ_MAX(max, fabsf(xb[i]));
    if (max < G::eps()) return true;
    uint8_t* ord = s.ord[sb] + n * g;
    uint8_t* L = s.tmp[sb] + n * g;
    gq_iq1_sort(xb, n, ord, L);
    float scale = max;
    float* pre = s.pre[sb * G::kGroups + g];
    const int best = G::kM ? gq_iq1_m_scan(xb, w, ord, pre, &scale) : gq_iq1_s_scan(xb, w, ord, pre, &scale);
    if (best < 0) return true;
    const int i1 = best & 255, i2 = (best >> 8) & 255;
    int shift = best >> 16;
    for (int j = 0; j < n; ++j) L[ord[j]] = (uint8_t)(j < i1 ? 0 : j < i2 ? 1 : 2);
    if (scale < 0) {
        for (int j = 0; j < n; ++j) L[j] = (uint8_t)(2 - L[j]);
        scale = -scale;
        shift = (G::kM ? 3 : 1) - shift;
    }
    bool ok = true, all_on_grid = true;
    for (int k = 0; k < n / 8; ++k) {
        int c = 0;
        for (int j = 7; j >= 0; --j) c = 3 * c + L[8 * k + j];
        int m = gq_iq1_map3[c];
        if (m < 0) {
            all_on_grid = false;
            m = gq_iq1_best_neighbour(c, xb + 8 * k, w + 8 * k, scale, gq_iq1_xx[gq_iq1_row<G>(shift, k)],
                                       s.terms[sb * G::kGroups + g]);
            if (m < 0) {
                ok = false;
                m = 0;
            }
        }
        gi[k] = (uint16_t)m;
    }
    if (!all_on_grid) {
        float sumqx = 0, sumq2 = 0;
        gq_iq1_sums<G>(xb, w, gi, false, shift, 1.f, &sumqx, &sumq2);
        if (sumqx > 0 && sumq2 > 0) scale = sumqx / sumq2;
    }
    if (!(scale >= 0)) ok = false;  // GGML_ASSERT(scale >= 0)
    s.scale[sb][g] = scale;
    s.shift[sb][g] = (uint8_t)shift;
    s.done[sb][g] = 1;
    return ok;
}

__device__ __forceinline__ unsigned int gq_iq1_scale_level(float id, float scale) {
    const int l = gq_nearest_int(0.5f * (id * scale - 1));
    return (unsigned int)GQ_MAX(0, GQ_MIN(7, l));
}

// The block_iq1_s bytes of super-block sb (d, qs[32], qh[8]).
__device__ __forceinline__ void gq_iq1_s_pack(const GqIq1Smem<GqIq1S>& s, int sb, uint8_t* y) {
    uint16_t qh[8];
    float max_scale = 0;
    for (int j = 0; j < 34; ++j) y[j] = 0;
    for (int ib = 0; ib < 8; ++ib) {
        qh[ib] = 0;
        if (!s.done[sb][ib]) continue;
        unsigned int h = 0;
        for (int k = 0; k < 4; ++k) {
            y[2 + 4 * ib + k] = (uint8_t)(s.gi[sb][4 * ib + k] & 255);
            h |= (unsigned int)(s.gi[sb][4 * ib + k] >> 8) << 3 * k;
        }
        qh[ib] = (uint16_t)h;
        max_scale = GQ_MAX(max_scale, s.scale[sb][ib]);
    }
    if (max_scale) {
        const float d = max_scale / 15;
        const gq_half dh = gq_fp32_to_fp16(d * 1.125f);
        y[0] = (uint8_t)(dh & 255);
        y[1] = (uint8_t)(dh >> 8);
        const float id = 1 / d;
        for (int ib = 0; ib < 8; ++ib) {
            unsigned int l = gq_iq1_scale_level(id, s.scale[sb][ib]);
            if (s.shift[sb][ib] == 1) l |= 8;
            qh[ib] = (uint16_t)(qh[ib] | l << 12);
        }
    }
    for (int ib = 0; ib < 8; ++ib) {
        y[34 + 2 * ib] = (uint8_t)(qh[ib] & 255);
        y[35 + 2 * ib] = (uint8_t)(qh[ib] >> 8);
    }
}

// The block_iq1_m bytes of super-block sb (qs[32], qh[16], scales[8]), with the refit of d over the
// whole super-block (skipped groups too: grid point 0, x_p, l of scale 0).
__device__ __forceinline__ void gq_iq1_m_pack(const GqIq1Smem<GqIq1M>& s, int sb, uint8_t* y) {
    float max_scale = 0;
    for (int ib = 0; ib < 16; ++ib) {
        const unsigned int g0 = s.done[sb][ib] ? s.gi[sb][2 * ib] : 0, g1 = s.done[sb][ib] ? s.gi[sb][2 * ib + 1] : 0;
        y[2 * ib] = (uint8_t)(g0 & 255);
        y[2 * ib + 1] = (uint8_t)(g1 & 255);
        y[32 + ib] = (uint8_t)((g0 >> 8) | ((g1 >> 8) << 4));
        if (s.done[sb][ib]) max_scale = GQ_MAX(max_scale, s.scale[sb][ib]);
    }
    for (int j = 48; j < 56; ++j) y[j] = 0;
    if (!max_scale) return;
    unsigned long long sc = 0;  // the four uint16 scale words, word i in bits 16*i..16*i + 15
    float d = max_scale / 15;
    const float id = 1 / d;
    float sumqx_f = 0, sumq2_f = 0;
    for (int ib = 0; ib < 16; ++ib) {
        const unsigned int l = gq_iq1_scale_level(id, s.scale[sb][ib]);
        sc |= (unsigned long long)l << (16 * (ib / 4) + 3 * (ib % 4));
        const int shift = s.shift[sb][ib];
        y[32 + ib] |= (uint8_t)((shift & 1) << 7 | (shift >> 1) << 3);  // masks[shift]: 0x00, 0x80, 0x08, 0x88
        gq_iq1_sums<GqIq1M>(s.x[sb] + 16 * ib, s.w[sb] + 16 * ib, s.gi[sb] + 2 * ib, !s.done[sb][ib], shift,
                            (float)(2 * l + 1), &sumqx_f, &sumq2_f);
    }
    if (sumq2_f > 0) d = sumqx_f / sumq2_f;
    const unsigned int u = gq_fp32_to_fp16(d * 1.1125f);
    sc |= (unsigned long long)((u & 0x000f) << 12) | (unsigned long long)((u & 0x00f0) << 8) << 16 |
          (unsigned long long)((u & 0x0f00) << 4) << 32 | (unsigned long long)(u & 0xf000) << 48;
    for (int j = 0; j < 8; ++j) y[48 + j] = (uint8_t)(sc >> 8 * j);
}

// quantize_row_iq1_{s,m}_impl: thread g of a super-block quantizes scale group g (see the file notes).
template <class G, class Src>
__device__ __forceinline__ void gq_iq1_quantize(GQ_QUANTIZE_STATUS_PARAMS) {
    __shared__ GqIq1Smem<G> smem;
    GqIq1Smem<G>& s = smem;
    const int t = threadIdx.x;
    const int sb = t / G::kGroups, g = t % G::kGroups;
    const long long bpr = n_per_row / QK_K;
    const long long item = (long long)blockIdx.x * G::kSb + sb;
    const bool valid = item < rows_per_expert * bpr && (long long)blockIdx.z < n_expert;
    long long row = 0, ibl = 0, off = 0;
    if (valid) {
        const long long r = item / bpr;
        ibl = item - r * bpr;
        row = (long long)blockIdx.z * rows_per_expert + r;
        off = row * n_per_row + ibl * QK_K;
        for (int i = 0; i < G::kGroup; ++i) s.x[sb][G::kGroup * g + i] = Src::load(src, off + G::kGroup * g + i);
    }
    __syncthreads();
    bool ok = true;
    if (valid) {
        float sumx2 = 0;  // every thread of the super-block: sigma2 = 2*sumx2/QK_K, summed in order
        GQ_NO_UNROLL
        for (int i = 0; i < QK_K; ++i) sumx2 += s.x[sb][i] * s.x[sb][i];
        const float sigma2 = 2 * sumx2 / QK_K;
        const float* qwg = qw ? qw + (long long)blockIdx.z * n_per_row + ibl * QK_K + G::kGroup * g : nullptr;
        ok = gq_iq1_group<G>(s, sb, g, qwg, sigma2);
    }
    __syncthreads();
    if (valid && g == 0) {
        uint8_t* y = dst + (row * bpr + ibl) * G::kBytes;
        if constexpr (G::kM) gq_iq1_m_pack(s, sb, y);
        else gq_iq1_s_pack(s, sb, y);
    }
    if (valid && !ok) gq_report_abort(status, row, ibl, bpr);
}

extern "C" __global__ __launch_bounds__(GQ_IQ1_THREADS) void quantize_iq1_s_f32(GQ_QUANTIZE_STATUS_PARAMS) {
    gq_iq1_quantize<GqIq1S, GqSrcF32>(src, dst, qw, status, n_per_row, rows_per_expert, n_expert);
}
extern "C" __global__ __launch_bounds__(GQ_IQ1_THREADS) void quantize_iq1_s_f16(GQ_QUANTIZE_STATUS_PARAMS) {
    gq_iq1_quantize<GqIq1S, GqSrcF16>(src, dst, qw, status, n_per_row, rows_per_expert, n_expert);
}
extern "C" __global__ __launch_bounds__(GQ_IQ1_THREADS) void quantize_iq1_s_bf16(GQ_QUANTIZE_STATUS_PARAMS) {
    gq_iq1_quantize<GqIq1S, GqSrcBF16>(src, dst, qw, status, n_per_row, rows_per_expert, n_expert);
}
extern "C" __global__ __launch_bounds__(GQ_IQ1_THREADS) void quantize_iq1_m_f32(GQ_QUANTIZE_STATUS_PARAMS) {
    gq_iq1_quantize<GqIq1M, GqSrcF32>(src, dst, qw, status, n_per_row, rows_per_expert, n_expert);
}
extern "C" __global__ __launch_bounds__(GQ_IQ1_THREADS) void quantize_iq1_m_f16(GQ_QUANTIZE_STATUS_PARAMS) {
    gq_iq1_quantize<GqIq1M, GqSrcF16>(src, dst, qw, status, n_per_row, rows_per_expert, n_expert);
}
extern "C" __global__ __launch_bounds__(GQ_IQ1_THREADS) void quantize_iq1_m_bf16(GQ_QUANTIZE_STATUS_PARAMS) {
    gq_iq1_quantize<GqIq1M, GqSrcBF16>(src, dst, qw, status, n_per_row, rows_per_expert, n_expert);
}

// y[j] = dl*(grid[j] + delta) for the 8 values of grid point gi (iq1s_grid: levels - 1).
__device__ __forceinline__ void gq_iq1_dequant_8(float dl, float delta, unsigned int gi, float* y) {
    const unsigned int g = gq_iq1_kgrid[gi];
    for (int j = 0; j < 8; ++j) y[j] = gq_x86_nan(dl * ((float)((int)((g >> 2 * j) & 3) - 1) + delta));
}

// dequantize_row_iq1_s of one super-block (its bytes: d, qs[32], qh[8])
__device__ __forceinline__ void gq_dequantize_row_iq1_s(const block_iq1_s* blk, float* y) {
    const uint8_t* b = (const uint8_t*)blk;
    const float d = gq_fp16_to_fp32((gq_half)(b[0] | b[1] << 8));
    for (int ib = 0; ib < 8; ++ib) {
        const unsigned int qh = b[34 + 2 * ib] | b[35 + 2 * ib] << 8;
        const float dl = d * (2 * ((qh >> 12) & 7) + 1);
        const float delta = qh & 0x8000 ? -0.125f : 0.125f;
        for (int l = 0; l < 4; ++l)
            gq_iq1_dequant_8(dl, delta, b[2 + 4 * ib + l] | (((qh >> 3 * l) & 7) << 8), y + 8 * l);
        y += 32;
    }
}

// dequantize_row_iq1_m of one super-block (its bytes: qs[32], qh[16], scales[8])
__device__ __forceinline__ void gq_dequantize_row_iq1_m(const block_iq1_m* blk, float* y) {
    const uint8_t* b = (const uint8_t*)blk;
    unsigned int sc[4];
    for (int i = 0; i < 4; ++i) sc[i] = b[48 + 2 * i] | b[49 + 2 * i] << 8;
    const unsigned int u = (sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) | ((sc[2] >> 4) & 0x0f00) | (sc[3] & 0xf000);
    const float d = gq_fp16_to_fp32((gq_half)u);
    const uint8_t* qs = b;
    const uint8_t* qh = b + 32;
    for (int ib = 0; ib < 8; ++ib) {
        const float dl1 = d * (2 * ((sc[ib / 2] >> (6 * (ib % 2) + 0)) & 0x7) + 1);
        const float dl2 = d * (2 * ((sc[ib / 2] >> (6 * (ib % 2) + 3)) & 0x7) + 1);
        const unsigned int idx[4] = {qs[0] | ((qh[0] << 8) & 0x700u), qs[1] | ((qh[0] << 4) & 0x700u),
                                     qs[2] | ((qh[1] << 8) & 0x700u), qs[3] | ((qh[1] << 4) & 0x700u)};
        const float delta[4] = {qh[0] & 0x08 ? -0.125f : 0.125f, qh[0] & 0x80 ? -0.125f : 0.125f,
                                qh[1] & 0x08 ? -0.125f : 0.125f, qh[1] & 0x80 ? -0.125f : 0.125f};
        for (int l = 0; l < 4; ++l) gq_iq1_dequant_8(l < 2 ? dl1 : dl2, delta[l], idx[l], y + 8 * l);
        y += 32;
        qs += 4;
        qh += 2;
    }
}

extern "C" __global__ void dequantize_iq1_s(GQ_DEQUANTIZE_PARAMS) {
    gq_dequantize_blocks<block_iq1_s, QK_K, gq_dequantize_row_iq1_s>(GQ_DEQUANTIZE_ARGS);
}
extern "C" __global__ void dequantize_iq1_m(GQ_DEQUANTIZE_PARAMS) {
    gq_dequantize_blocks<block_iq1_m, QK_K, gq_dequantize_row_iq1_m>(GQ_DEQUANTIZE_ARGS);
}
