// tiles.cuh: tiled quantize kernels that move bytes well (included by common.cuh).
//
// A CUDA block of Core::THREADS threads quantizes ITEMS = THREADS / Core::TPI consecutive work items (ggml
// blocks of Core::QK values, Core::TPI threads each) of one expert. The items of an expert are contiguous
// in src and in dst, so a tile is one contiguous range of both. The kernel runs in phases (GQ_PHASES):
//   0           the tile's values: 16-byte loads (__ldg of uint4, coalesced over the block), converted to
//               float32 into shared memory (xs); with importance weights, their rows into ws the same way;
//   1..PHASES   Core::compute(cphase, ...) for each thread's item, on the values in shared memory, packing
//               the item's block into the shared output tile (ys);
//   PHASES + 1  the output tile to dst with 16-byte stores (and byte stores for an unaligned head/tail).
// A source or destination that is not 16-byte aligned takes scalar loads (stores); rows and experts
// need no alignment. Shared layouts: item i's value e sits at xs[i * S + e + e / 32] (a pad word after
// every 32 values), S odd for one thread per item, so that threads reading their own items in step hit
// distinct banks.
//
// A core: struct with `typedef ... Block; QK, TPI, THREADS, PHASES, AUX` (AUX: floats of shared scratch
// per item that live across compute phases) and
//   template <bool QW> static void compute(int cphase, const float* x, float* w, float* aux,
//                                          const GqTileItem& it, Block* y);
// x: the item's values (GqTileX indexes them), w: the item's importance weights (QW only; the core may
// overwrite them with its weights), y: the item's block in shared memory (cores read back what they wrote).
// GQ_TILED_ITEMS(name, Core) makes quantize_<name>_item (no importance weights) and
// quantize_<name>_w_item (with them) for GQ_QUANTIZE_ENTRY_POINTS(<name>) / (<name>_w), the two entry
// point sets the launch plan picks from by has_quant_weights (Kernel(weighted=True) in the registry).
#pragma once

// 16-byte loads of each source type: store16(v, d) converts one uint4 of raw values into d[0..16/bytes)
struct GqSrcF32Vec : GqSrcF32 {
    static const int bytes = 4;
    static __device__ __forceinline__ void store16(const uint4& v, float* d) {
        d[0] = __uint_as_float(v.x);
        d[1] = __uint_as_float(v.y);
        d[2] = __uint_as_float(v.z);
        d[3] = __uint_as_float(v.w);
    }
};
template <class Half, float (*conv)(uint16_t)>
struct GqSrcHalfVec : Half {
    static const int bytes = 2;
    static __device__ __forceinline__ void store16(const uint4& v, float* d) {
        d[0] = conv((uint16_t)(v.x & 0xFFFFu));
        d[1] = conv((uint16_t)(v.x >> 16));
        d[2] = conv((uint16_t)(v.y & 0xFFFFu));
        d[3] = conv((uint16_t)(v.y >> 16));
        d[4] = conv((uint16_t)(v.z & 0xFFFFu));
        d[5] = conv((uint16_t)(v.z >> 16));
        d[6] = conv((uint16_t)(v.w & 0xFFFFu));
        d[7] = conv((uint16_t)(v.w >> 16));
    }
};
template <class Src> struct GqVec;
template <> struct GqVec<GqSrcF32> { typedef GqSrcF32Vec type; };
template <> struct GqVec<GqSrcF16> { typedef GqSrcHalfVec<GqSrcF16, gq_fp16_to_fp32> type; };
template <> struct GqVec<GqSrcBF16> { typedef GqSrcHalfVec<GqSrcBF16, gq_bf16_to_fp32> type; };

// Item stride in shared memory: QK values plus a pad word per 32, odd when one thread reads one item.
template <int QK, int TPI>
struct GqTileLayout {
    static const int inner = QK + QK / 32;
    static const int stride = TPI == 1 ? (inner | 1) : inner;
};

// An item's values in shared memory, read as x[e] (the pad words skipped).
struct GqTileX {
    const float* p;
    __device__ __forceinline__ float operator[](int e) const { return p[e + (e >> 5)]; }
};

// The tile of this CUDA block: items [g0, g0 + count) of the slab (all in expert blockIdx.z).
struct GqTile {
    long long g0;
    long long blocks_per_row;
    int count;
};

template <int ITEMS>
__device__ __forceinline__ GqTile gq_tile(long long n_per_row, long long rows_per_expert, int qk) {
    GqTile t;
    t.blocks_per_row = n_per_row / qk;
    const long long items = rows_per_expert * t.blocks_per_row;
    const long long first = (long long)blockIdx.x * ITEMS;
    const long long left = items - first;
    t.count = left <= 0 ? 0 : left < ITEMS ? (int)left : ITEMS;
    t.g0 = (long long)blockIdx.z * items + first;
    return t;
}

// One item of a tile, for a core: its row in the slab, `sub` = the thread's index within the item
// (0..TPI-1), row_sigma2 as GqItem's (rowstat[row] / n_per_row, 0 without a rowstat pre-pass).
struct GqTileItem {
    long long row;
    float row_sigma2;
    int sub;
};

// Phase 0: the tile's count * QK source values into xs (converted to float32).
template <class Src, int QK, int S, int THREADS>
__device__ __forceinline__ void gq_tile_load(const void* src, const GqTile& t, float* xs) {
    typedef typename GqVec<Src>::type V;
    const int n = t.count * QK;
    const char* base = (const char*)src + t.g0 * QK * V::bytes;
    if (((unsigned long long)base & 15u) == 0) {
        const int per = 16 / V::bytes;  // divides 32: a chunk never straddles a pad word
        const uint4* p = (const uint4*)base;
        for (int c = threadIdx.x; c < n / per; c += THREADS) {
            const int e = c * per, i = e / QK, j = e - i * QK;
            V::store16(__ldg(p + c), xs + i * S + j + (j >> 5));
        }
    } else {
        for (int e = threadIdx.x; e < n; e += THREADS) {
            const int i = e / QK, j = e - i * QK;
            xs[i * S + j + (j >> 5)] = Src::load(base, e);
        }
    }
}

// Phase 0 with importance weights: item i's QK weights (qw: the expert's row) into ws.
template <int QK, int S, int THREADS>
__device__ __forceinline__ void gq_tile_load_qw(const float* qw, const GqTile& t, float* ws) {
    const int n = t.count * QK;
    const long long ib0 = t.g0 % t.blocks_per_row;
    const bool vec = ((unsigned long long)qw & 15u) == 0;
    for (int c = threadIdx.x; c < (vec ? n / 4 : n); c += THREADS) {
        const int e = vec ? 4 * c : c, i = e / QK, j = e - i * QK;
        long long ib = ib0 + i;
        while (ib >= t.blocks_per_row) ib -= t.blocks_per_row;  // i < ITEMS: a few rows at most
        const float* q = qw + ib * QK + j;
        float* d = ws + i * S + j + (j >> 5);
        if (vec) {
            const float4 v = __ldg((const float4*)q);
            d[0] = v.x;
            d[1] = v.y;
            d[2] = v.z;
            d[3] = v.w;
        } else {
            d[0] = *q;
        }
    }
}

// Last phase: nbytes of the output tile (at ys_out, which has the address of y mod 16) to y.
template <int THREADS>
__device__ __forceinline__ void gq_tile_store(uint8_t* y, const uint8_t* ys_out, int nbytes) {
    int head = (int)((16u - ((unsigned long long)y & 15u)) & 15u);
    if (head > nbytes) head = nbytes;
    const int n16 = (nbytes - head) >> 4;
    const int tail = head + 16 * n16;
    if ((int)threadIdx.x < head) y[threadIdx.x] = ys_out[threadIdx.x];
    uint4* yv = (uint4*)(y + head);
    const uint4* sv = (const uint4*)(ys_out + head);
    for (int c = threadIdx.x; c < n16; c += THREADS) yv[c] = sv[c];
    if ((int)threadIdx.x < nbytes - tail) y[tail + threadIdx.x] = ys_out[tail + threadIdx.x];
}

// The launch geometry of a tiled type, checked against its registry descriptor (kernels.py layout_checks:
// threads == Kernel.threads, items == Kernel.items_per_block). Types that are not tiled keep 0.
template <class Block>
struct GqKernelShape {
    static const int threads = 0;
    static const int items = 0;
};

// The body of a tiled kernel, one phase of it (see the top of this file).
template <class Src, class Core, bool QW>
__device__ __forceinline__ void gq_tiled_quantize(int phase, GQ_QUANTIZE_PARAMS) {
    typedef typename Core::Block Block;
    const int QK = Core::QK, TPI = Core::TPI, THREADS = Core::THREADS, ITEMS = THREADS / TPI;
    const int S = GqTileLayout<QK, TPI>::stride;
    __shared__ __align__(16) float xs[ITEMS * S];
    __shared__ __align__(16) float ws[QW ? ITEMS * S : 1];
    __shared__ __align__(16) float aux[ITEMS * Core::AUX + 1];
    __shared__ __align__(16) uint8_t ys[ITEMS * sizeof(Block) + 16];
    const GqTile t = gq_tile<ITEMS>(n_per_row, rows_per_expert, QK);
    if (t.count == 0) return;
    uint8_t* y = dst + t.g0 * (long long)sizeof(Block);
    uint8_t* ys_out = ys + ((unsigned long long)y & 15u);
    if (phase == 0) {
        gq_tile_load<Src, QK, S, THREADS>(src, t, xs);
        if (QW) gq_tile_load_qw<QK, S, THREADS>(qw + (long long)blockIdx.z * n_per_row, t, ws);
    } else if (phase <= Core::PHASES) {
        const int i = threadIdx.x / TPI;
        if (i >= t.count) return;
        GqTileItem it;
        it.row = (t.g0 + i) / t.blocks_per_row;
        it.row_sigma2 = rowstat ? rowstat[it.row] / n_per_row : 0.f;
        it.sub = threadIdx.x - i * TPI;
        Core::template compute<QW>(phase - 1, xs + i * S, ws + i * S, aux + i * Core::AUX, it,
                                   (Block*)(ys_out + i * sizeof(Block)));
    } else {
        gq_tile_store<THREADS>(y, ys_out, t.count * (int)sizeof(Block));
    }
}

#define GQ_TILED_ITEM(name, Core, QW)                                                              \
    template <class Src>                                                                          \
    __device__ void quantize_##name##_item(GQ_QUANTIZE_PARAMS) {                                  \
        GQ_PHASES(Core::PHASES + 2, gq_tiled_quantize<Src, Core, QW>(phase, GQ_QUANTIZE_ARGS));   \
    }

#define GQ_TILED_SHAPE(Core)                                             \
    template <>                                                          \
    struct GqKernelShape<Core::Block> {                                  \
        static const int threads = Core::THREADS;                        \
        static const int items = Core::THREADS / Core::TPI;              \
    };

// quantize_<name>_item and quantize_<name>_w_item of a core (for types whose quantizer reads importance
// weights), or quantize_<name>_item alone (types that ignore them, as ggml does)
#define GQ_TILED_ITEMS(name, Core) GQ_TILED_SHAPE(Core) GQ_TILED_ITEM(name, Core, false) GQ_TILED_ITEM(name##_w, Core, true)
#define GQ_TILED_ITEMS_UNWEIGHTED(name, Core) GQ_TILED_SHAPE(Core) GQ_TILED_ITEM(name, Core, false)

// ---------------------------------------------------------------------------------------------------
// The scale searches of the tiled legacy _impl paths, without per-thread L/Laux arrays: they return the
// scale and what made the best levels (levels are recomputed from it, the same nearest_int of the same
// products, so L is bit for bit ggml's). x, w: QK values and weights (GqTileX-indexed).
// ---------------------------------------------------------------------------------------------------

// make_qx_quants(n, nmax, x, L, rmse_type = 1, weights): L[i] = gq_qx_level(r, nmax, x[i]).
struct GqQx {
    float scale;
    float iscale;  // the iscale of L (unused when zero)
    bool zero;     // amax < GROUP_MAX_EPS: L is all 0
};

__device__ __forceinline__ int gq_qx_level(const GqQx& r, int nmax, float x) {
    if (r.zero) return 0;
    const int l = gq_nearest_int(r.iscale * x);
    return nmax + GQ_MAX(-nmax, GQ_MIN(nmax - 1, l));
}

template <class X>
__device__ __forceinline__ GqQx gq_make_qx_quants_w(int n, int nmax, X x, X w) {
    float max = 0;
    float amax = 0;
    for (int i = 0; i < n; ++i) {
        const float ax = fabsf(x[i]);
        if (ax > amax) { amax = ax; max = x[i]; }
    }
    GqQx r;
    r.zero = amax < GQ_GROUP_MAX_EPS;
    r.scale = 0.f;
    r.iscale = 0.f;
    if (r.zero) return r;
    float iscale = -nmax / max;
    float sumlx = 0;
    float suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = gq_nearest_int(iscale * x[i]);
        l = GQ_MAX(-nmax, GQ_MIN(nmax - 1, l));
        sumlx += w[i] * x[i] * l;
        suml2 += w[i] * l * l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    r.iscale = iscale;
    GQ_NO_UNROLL
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) continue;
        iscale = -(nmax + 0.1f * is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; ++i) {
            int l = gq_nearest_int(iscale * x[i]);
            l = GQ_MAX(-nmax, GQ_MIN(nmax - 1, l));
            sumlx += w[i] * x[i] * l;
            suml2 += w[i] * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            r.iscale = iscale;
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    r.scale = scale;
    return r;
}

// make_qkx3_quants(n, nmax, x, weights, L, &the_min, Laux, rmin, rdelta, nstep, use_mad = false) (the
// same operations as make_qkx2_quants: see gq_make_qkx_quants): L[i] = gq_qkx_level(r, nmax, x[i]).
struct GqQkx {
    float scale;
    float the_min;  // -min
    float iscale;   // the iscale and min of L
    float lmin;
    bool zero;      // max <= min: L is all 0
};

__device__ __forceinline__ int gq_qkx_clamp(int nmax, int l) { return GQ_MAX(0, GQ_MIN(nmax, l)); }

__device__ __forceinline__ int gq_qkx_level(const GqQkx& r, int nmax, float x) {
    if (r.zero) return 0;
    return gq_qkx_clamp(nmax, gq_nearest_int(r.iscale * (x - r.lmin)));
}

template <class X>
__device__ __forceinline__ GqQkx gq_make_qkx_quants_w(int n, int nmax, X x, X w, float rmin,
                                                      float rdelta, int nstep) {
    float min = x[0];
    float max = x[0];
    float sum_w = w[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; ++i) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (min > 0) min = 0;
    GqQkx r;
    r.zero = max <= min;
    r.scale = 0.f;
    r.the_min = -min;
    r.iscale = 0.f;
    r.lmin = min;
    if (r.zero) return r;
    float iscale = nmax / (max - min);
    float scale = 1 / iscale;
    r.iscale = iscale;
    float best_mad = 0;
    for (int i = 0; i < n; ++i) {
        const int l = gq_qkx_clamp(nmax, gq_nearest_int(iscale * (x[i] - min)));
        float diff = scale * l + min - x[i];
        diff = diff * diff;
        best_mad += w[i] * diff;
    }
    GQ_NO_UNROLL
    for (int is = 0; is <= nstep; ++is) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; ++i) {
            const int l = gq_qkx_clamp(nmax, gq_nearest_int(iscale * (x[i] - min)));
            sum_l += w[i] * l;
            sum_l2 += w[i] * l * l;
            sum_xl += w[i] * l * x[i];
        }
        const float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float mad = 0;
            for (int i = 0; i < n; ++i) {
                const int l = gq_qkx_clamp(nmax, gq_nearest_int(iscale * (x[i] - min)));
                float diff = this_scale * l + this_min - x[i];
                diff = diff * diff;
                mad += w[i] * diff;
            }
            if (mad < best_mad) {
                best_mad = mad;
                scale = this_scale;
                r.iscale = iscale;
                r.lmin = min;
                min = this_min;
            }
        }
    }
    r.scale = scale;
    r.the_min = -min;
    return r;
}

// GQ_STREAM_CORE(name, B, QK, THREADS, fn): the tiled core of a type that only scales and rounds, one
// thread per block, from `template <class X> void fn(const X& x, B* y)` (x: GqTileX over the block's
// values in shared memory). Such types ignore importance weights (GQ_TILED_ITEMS_UNWEIGHTED).
#define GQ_STREAM_CORE(name, B, QK_, THREADS_, fn)                                                     \
    struct GqCore_##name {                                                                           \
        typedef B Block;                                                                             \
        static const int QK = QK_, TPI = 1, THREADS = THREADS_, PHASES = 1, AUX = 0;                 \
        template <bool QW>                                                                           \
        static __device__ __forceinline__ void compute(int, const float* x, float*, float*,          \
                                                       const GqTileItem&, Block* y) {                \
            const GqTileX xs = {x};                                                                  \
            fn(xs, y);                                                                               \
        }                                                                                            \
    };
