// kquants_block.cuh: how kquants.cu spreads super-blocks over a CUDA block (included by kquants.cu).
//
// A CUDA block handles KQ_SB adjacent super-blocks with KQ_LANES threads each: thread g * KQ_LANES + s is
// lane s of super-block g. Lane s runs the scale searches of sub-blocks [s * NSUB / KQ_LANES, ...) (every
// sum in ggml's order), lane 0 the super-block step, and lane s requantizes and packs the values 32k + l,
// l in [8s, 8s + 8), k in [0, 8): the slice that makes whole bytes of every packed field. The registry
// launches it with Kernel(threads=KQ_SB * KQ_LANES, items_per_block=KQ_SB, sync=True, weighted=True)
// (gpuquant/quants/kquants.py). The block's source values are one contiguous range (the super-blocks of
// an expert are its rows in order), read with 16-byte loads into shared memory, a sub-block per row; the
// quantized blocks are assembled in shared memory and stored with 16-byte stores. Per-thread arrays
// (levels, weights) live in shared memory rows, so nothing goes to local memory.
//
// Four lanes, not one per sub-block: the emulated device runs every CUDA thread of a synchronising kernel
// as a fiber (~0.1 us to start, ~15 ns per barrier), which at 16 threads per super-block cost more than
// the cheap types' whole search; at four it is ~5% of the time, and a 4096 x 4096 tensor still has 262 k
// threads.
//
// Rows are padded (SUB + KQ_XPAD floats, SUB + 4 bytes) so that lanes walking their rows in step spread
// over the 32 banks.
#pragma once
#include "common.cuh"

#define KQ_SB 8     // super-blocks per CUDA block (the descriptor's items_per_block)
#define KQ_LANES 4  // threads per super-block (the descriptor's threads / items_per_block)
// Float row padding. On a GPU one float: a stride coprime to the 32 banks. On the x86 host (the emulated
// device) four: rows 16-byte aligned, so that g++ vectorizes the searches (twice as fast). The layout
// changes no arithmetic; the portable host build the tests make (GQ_PORTABLE) runs the GPU's layout.
#ifdef GQ_X86_HOST
#define KQ_XPAD 4
#else
#define KQ_XPAD 1
#endif

// The shared memory of one CUDA block. BYTES: the quantized block's size.
template <int SUB, int BYTES>
struct KqSmem {
    static constexpr int NSUB = QK_K / SUB;
    static constexpr int ROWS = KQ_SB * NSUB;
    float x[ROWS][SUB + KQ_XPAD];     // the values, sub-block g * NSUB + s per row
    float w[ROWS][SUB + KQ_XPAD];     // the search weights
    uint8_t L[ROWS][SUB + 4];   // the levels (int8_t for the symmetric types)
    uint8_t Laux[ROWS][SUB + 4];
    float scale[ROWS];          // the sub-block scales and mins the searches found
    float min[ROWS];
    float sw[ROWS];             // the sum of a sub-block's weights (_impl paths)
    uint8_t Ls[ROWS];           // the second-level quantized scales and mins
    uint8_t Lm[ROWS];
    float sigma2[KQ_SB];        // the _impl paths' per-super-block statistic
    int flag[KQ_SB];
    __align__(16) uint8_t out[KQ_SB * BYTES];

    // level of value e of super-block g
    __device__ __forceinline__ uint8_t& level(int g, int e) { return L[g * NSUB + e / SUB][e % SUB]; }

    // Lane s's slice, values 32k + 8s + [0, 8) of super-block g, requantized in place: rq(j, x, L) turns the
    // 8 values x of sub-block j into levels L (or leaves the search's levels where ggml skips the sub-block).
    template <class Requant>
    __device__ __forceinline__ void requantize_slice(int g, int s, Requant rq) {
        for (int k = 0; k < 8; ++k) {
            const int e = 32 * k + 8 * s, r = g * NSUB + e / SUB;
            rq(e / SUB, x[r] + e % SUB, L[r] + e % SUB);
        }
    }
};

// One CUDA block's super-blocks and this thread's place among them.
struct KqPlace {
    int nsb;          // super-blocks in this CUDA block (KQ_SB, fewer in the last one)
    int g, s;         // this thread's super-block and lane
    bool valid;       // g < nsb
    long long src0;   // element index of the block's first value
    long long dst0;   // byte offset of the block's first quantized block
    const float* qw;  // importance weights of this thread's super-block (nullptr: none)
};

template <int SUB, int BYTES>
__device__ __forceinline__ bool kq_place(long long n_per_row, long long rows_per_expert, long long n_expert,
                                         const float* qw, KqPlace& p) {
    const long long bpr = n_per_row / QK_K;
    const long long items = rows_per_expert * bpr;  // super-blocks of the expert
    const long long first = (long long)blockIdx.x * KQ_SB;
    if ((long long)blockIdx.z >= n_expert || first >= items) return false;  // the whole block: no barrier met
    p.nsb = (int)GQ_MIN((long long)KQ_SB, items - first);
    p.g = (int)threadIdx.x / KQ_LANES;
    p.s = (int)threadIdx.x % KQ_LANES;
    p.valid = p.g < p.nsb;
    const long long base = (long long)blockIdx.z * items + first;
    p.src0 = base * QK_K;
    p.dst0 = base * BYTES;
    p.qw = qw && p.valid ? qw + (long long)blockIdx.z * n_per_row + ((first + p.g) % bpr) * QK_K : nullptr;
    return true;
}

// The 32-bit word k of a 16-byte load.
__device__ __forceinline__ uint32_t kq_word(const uint4& v, int k) {
    return k == 0 ? v.x : k == 1 ? v.y : k == 2 ? v.z : v.w;
}

// Value k of 16 source bytes (KqVec<Src>::n values).
template <class Src> struct KqVec;
template <> struct KqVec<GqSrcF32> {
    static constexpr int n = 4;
    static __device__ __forceinline__ float at(const uint4& v, int k) { return __uint_as_float(kq_word(v, k)); }
};
template <> struct KqVec<GqSrcF16> {
    static constexpr int n = 8;
    static __device__ __forceinline__ float at(const uint4& v, int k) {
        const uint32_t w = kq_word(v, k / 2);
        return gq_fp16_to_fp32((gq_half)(k % 2 ? w >> 16 : w & 0xFFFFu));
    }
};
template <> struct KqVec<GqSrcBF16> {
    static constexpr int n = 8;
    static __device__ __forceinline__ float at(const uint4& v, int k) {
        const uint32_t w = kq_word(v, k / 2);
        return gq_bf16_to_fp32((uint16_t)(k % 2 ? w >> 16 : w & 0xFFFFu));
    }
};

// Values [first, first + n) of the source, as float32, into the rows of x (16-byte loads where the
// source is 16-byte aligned, as device buffers are; element loads otherwise).
template <class Src, int SUB>
__device__ __forceinline__ void kq_stage(const void* src, long long first, int n, float (*x)[SUB + KQ_XPAD]) {
    constexpr int V = KqVec<Src>::n;
    const char* base = (const char*)src + first * (16 / V);
    if (((unsigned long long)base & 15) == 0) {
        for (int c = (int)threadIdx.x; c < n / V; c += (int)blockDim.x) {
            const uint4 v = *(const uint4*)(base + 16LL * c);
            for (int k = 0; k < V; ++k) {
                const int e = c * V + k;
                x[e / SUB][e % SUB] = KqVec<Src>::at(v, k);
            }
        }
    } else {
        for (int e = (int)threadIdx.x; e < n; e += (int)blockDim.x) x[e / SUB][e % SUB] = Src::load(src, first + e);
    }
}

// The n bytes assembled in shared memory to dst in 16-byte pieces (adjacent threads adjacent pieces).
__device__ __forceinline__ void kq_store(uint8_t* dst, const uint8_t* sh, int n) {
    int done = 0;
    if (((unsigned long long)dst & 15) == 0) {
        for (int c = (int)threadIdx.x; c < n / 16; c += (int)blockDim.x) ((uint4*)dst)[c] = ((const uint4*)sh)[c];
        done = n / 16 * 16;
    }
    for (int i = done + (int)threadIdx.x; i < n; i += (int)blockDim.x) dst[i] = sh[i];
}

// The start every k-quant kernel shares: place the thread, stage the block's values, and for SIGMA2 != 0
// the super-block statistic of the _impl paths, sigma2 = sum(x^2)/QK_K (SIGMA2 1) or 2*sum(x^2)/QK_K
// (SIGMA2 2), the sum in C order (one thread per super-block). False: nothing for this CUDA block (every
// thread returns, before any barrier).
template <class Src, bool QW, int SIGMA2, int SUB, int BYTES>
__device__ __forceinline__ bool kq_begin(GQ_QUANTIZE_PARAMS, KqSmem<SUB, BYTES>& S, KqPlace& p) {
    (void)rowstat;
    if (!kq_place<SUB, BYTES>(n_per_row, rows_per_expert, n_expert, QW ? qw : nullptr, p)) return false;
    kq_stage<Src, SUB>(src, p.src0, p.nsb * QK_K, S.x);
    __syncthreads();
    if (SIGMA2) {
        if (p.valid && p.s == 0) {
            float sumx2 = 0;
            for (int e = 0; e < QK_K; ++e) {
                const float v = S.x[p.g * (QK_K / SUB) + e / SUB][e % SUB];
                sumx2 += v * v;
            }
            S.sigma2[p.g] = SIGMA2 == 2 ? 2 * sumx2 / QK_K : sumx2 / QK_K;
        }
        __syncthreads();
    }
    return true;
}
