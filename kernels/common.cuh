// common.cuh: what every kernels/*.cu shares. Compiled by NVRTC for the GPU and by g++ for the host
// (through host_shim.h, force-included before this file), so it uses only plain C++17 and the few CUDA
// intrinsics the shim emulates.
//
// Conventions (read before writing a kernel file)
// -----------------------------------------------
// * Bit-exactness with ggml-quants.c (gcc -O3, x86-64 SSE, no FMA) is the bar. Every float op happens in
//   float32 in the C order; keep `a*b + c` as written (NVRTC runs with --fmad=false, g++ with
//   -ffp-contract=off). Use 1.0f/d where ggml does, x/d where ggml does. No fast-math intrinsics.
// * Rounding helpers mirror ggml: gq_nearest_int (12582912 magic, ties to even), roundf (ties away),
//   gq_trunc_i32 for every float->integer C cast (x86 cvttss2si: NaN/out of range -> INT_MIN), fp16/bf16
//   through gq_fp32_to_fp16 / gq_fp32_to_bf16 (ggml's software conversions), never __float2half.
// * NaN bits differ between x86 and a GPU (see "NaN bits" below): never read the bits of a computed
//   float except through gq_nearest_int, gq_fp32_to_fp16(_nonneg) or gq_float_bits.
// * One implementation of each ggml function: the scale searches shared by several families
//   (make_qx_quants, make_qkx2/qkx3_quants) are here, the K-quant-only ones in kquants_search.cuh.
// * ABI of a quantize entry point (see GQ_QUANTIZE_PARAMS): extern "C" __global__ quantize_<dst>_<src>,
//   src in f32/f16/bf16. The slab is n_expert experts of rows_per_expert rows; expert = blockIdx.z, its
//   rows start at blockIdx.z * rows_per_expert, its importance weights at qw + blockIdx.z * n_per_row
//   (qw == nullptr: no imatrix). x covers rows_per_expert * blocks_per_row work items, one CUDA thread
//   per ggml block (super-block for K-quants); gq_work_item() decodes that. Tiled kernels (tiles.cuh:
//   legacy, iq4, lowbit, ternary, fp4) give a CUDA block a tile of adjacent items staged through shared
//   memory instead, and a type that reads importance weights has quantize_<dst>_w_<src> for them. rowstat (or nullptr) is a
//   per-row float from a pre-pass kernel (legacy types: sum of x*x in C loop order).
// * A block type needs one __device__ core `void core(const float* x, const GqItem& it, Block* y)` (the
//   block's values already converted to float32, its importance weights it.qw) named after the ggml
//   quantize_<type> it mirrors, then GQ_QUANTIZE_ITEM(<dst>, Block, QK, core) and
//   GQ_QUANTIZE_ENTRY_POINTS(<dst>) make the three entry points. Types that only scale and round (no
//   search) and have large blocks stream their values instead: GQ_QUANTIZE_STREAM_ITEM (no float x[QK]).
// * dequantize_<type>(GQ_DEQUANTIZE_PARAMS): one thread per block through gq_dequantize_blocks, float32
//   out, every value stored through gq_x86_nan (requantize path).
// * Every kernel has one of two ABIs: quantize_* the one above; any other name (dequantize_*,
//   rowstat_*) (const in*, out*, long long n_per_row, long long nrows). The emulator's generated block
//   runners rely on that, and find kernels by their spelled-out `extern "C" __global__ void <name>(`
//   line or a GQ_QUANTIZE_ENTRY_POINTS(<dst>) line: keep those literal, not inside other macros.
// * Tables are `static __device__ const` arrays (global memory, not __constant__). Integer min/max via
//   GQ_MIN/GQ_MAX. No <stdint.h> under NVRTC: the typedefs below stand in.
// * If a kernel uses __syncthreads or a warp intrinsic (__syncwarp, __shfl*_sync, __ballot/__any/__all_sync),
//   declare Kernel(sync=True) in its type's descriptor (gpuquant/quants/__init__.py) so the emulator runs
//   the block's threads as fibers; it aborts otherwise. What the host harness supports: docs/host_harness.md.
#pragma once

#if defined(__CUDACC_RTC__)
typedef signed char int8_t;
typedef unsigned char uint8_t;
typedef short int16_t;
typedef unsigned short uint16_t;
typedef int int32_t;
typedef unsigned int uint32_t;
typedef long long int64_t;
typedef unsigned long long uint64_t;
#elif !defined(GQ_HOST_SHIM)
#include <stdint.h>
#endif

// Keeps an outer search loop rolled on the GPU (code size, NVRTC compile time); nothing on the host.
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define GQ_NO_UNROLL _Pragma("unroll 1")
#define GQ_UNROLL_4 _Pragma("unroll 4")
#else
#define GQ_NO_UNROLL
#define GQ_UNROLL_4
#endif

// GQ_PHASES(n, body): a kernel body in n phases separated by __syncthreads that share nothing but shared
// memory and the kernel's arguments (body reads `int phase`; a `return` in it ends that phase only, every
// thread reaches every barrier). The host shim runs such a kernel phase by phase in its block runners,
// without fibers (kernels/host_shim.h); a kernel with no other barrier keeps Kernel(sync=False).
#if !defined(GQ_HOST_SHIM)
#define GQ_PHASES(n, ...)                                    \
    _Pragma("unroll") for (int phase = 0; phase < (n); ++phase) { \
        if (phase) __syncthreads();                          \
        __VA_ARGS__;                                         \
    }
#endif

#define GQ_MIN(a, b) ((a) < (b) ? (a) : (b))
#define GQ_MAX(a, b) ((a) > (b) ? (a) : (b))

// ---------------------------------------------------------------------------------------------------
// Block layouts: each family's .cu declares the structs of its types (ggml-common.h layouts), named
// block_<lowercase ggml type name>. Their sizes and fp16 field offsets are asserted by checks generated
// from the registry (gpuquant/backends/kernels.py layout_checks) that both builds append to the source.
// ---------------------------------------------------------------------------------------------------
#define QK_K 256

typedef uint16_t gq_half;  // raw IEEE binary16 bits

// ggml-quants.c GROUP_MAX_EPS
#define GQ_GROUP_MAX_EPS 1e-15f

// ---------------------------------------------------------------------------------------------------
// Scalar helpers (ggml-impl.h / ggml-quants.c)
// ---------------------------------------------------------------------------------------------------

// NaN bits. A NaN made by arithmetic (inf*0, inf-inf, 0/0) is 0xFFC00000 on x86 (the "default NaN",
// sign set, mantissa 0x400000) and is propagated unchanged; a GPU makes the canonical 0x7FFFFFFF. ggml
// reads float bits in nearest_int and in the fp16 conversion, so those two helpers below answer for a
// NaN what x86 computes, and every other float->bits read of a computed value goes through
// gq_float_bits. NaNs do occur with finite inputs: denormal blocks make 1/d = inf, huge blocks overflow
// x*x, and a dequantized block with an inf scale holds inf*0. The tests build the kernels with
// GQ_PORTABLE and a gq_float_bits that returns the GPU's NaN (tests/test_conformance.py,
// gpu_nan_kernel_dir): that build must give the x86 build's bytes, and does not once the NaN guard of
// gq_nearest_int or gq_fp32_to_fp16 is dropped.
#define GQ_X86_DEFAULT_NAN 0xFFC00000u

// On an x86-64 host (the emulated device) the kernels run on the reference machine itself: NaN bits and
// float->int casts behave as in ggml's C code by construction, so the portable guards are compiled out
// for speed. GQ_PORTABLE keeps them (tests build that way to check the GPU code path on the host).
#if defined(GQ_HOST_SHIM) && defined(__x86_64__) && !defined(GQ_PORTABLE)
#define GQ_X86_HOST 1
#endif

__device__ __forceinline__ uint32_t gq_float_bits(float f) { return __float_as_uint(f); }

// A computed value as x86 holds it: NaN -> the x86 default NaN (dequantize kernels store through this,
// so that a requantize from a block with an inf scale reads the same NaN bits on every device).
__device__ __forceinline__ float gq_x86_nan(float f) {
#ifdef GQ_X86_HOST
    return f;
#else
    return f != f ? __uint_as_float(GQ_X86_DEFAULT_NAN) : f;
#endif
}

// ggml_compute_fp32_to_fp16 of f, whose bits are w: software binary16 conversion, round to nearest even,
// NaN -> sign | 0x7E00.
__device__ __forceinline__ gq_half gq_fp16_of(float f, uint32_t w) {
    const float to_inf = __uint_as_float(0x77800000u);   // 2^112
    const float to_zero = __uint_as_float(0x08800000u);  // 2^-110
    float base = (fabsf(f) * to_inf) * to_zero;
    const uint32_t w2 = w + w;
    const uint32_t sign = w & 0x80000000u;
    uint32_t bias = w2 & 0xFF000000u;
    if (bias < 0x71000000u) bias = 0x71000000u;
    base = __uint_as_float((bias >> 1) + 0x07800000u) + base;
    const uint32_t bits = gq_float_bits(base);
    const uint32_t nonsign = ((bits >> 13) & 0x00007C00u) + (bits & 0x00000FFFu);
    return (gq_half)((sign >> 16) | (w2 > 0xFF000000u ? 0x7E00u : nonsign));
}

// GGML_FP32_TO_FP16 of the exact bits of a source value (the F16 destination).
__device__ __forceinline__ gq_half gq_fp32_to_fp16_bits(float f) { return gq_fp16_of(f, __float_as_uint(f)); }

// GGML_FP32_TO_FP16 of a computed value (scales, mins): a NaN is x86's default NaN, 0xFE00.
__device__ __forceinline__ gq_half gq_fp32_to_fp16(float f) {
#ifndef GQ_X86_HOST
    if (f != f) return (gq_half)0xFE00u;
#endif
    return gq_fp16_of(f, gq_float_bits(f));
}

// GGML_FP32_TO_FP16 of a computed value whose NaN comes from fabsf (positive on x86, so 0x7E00; a GPU's
// canonical NaN is positive too, the guard keeps that independent of the device).
__device__ __forceinline__ gq_half gq_fp32_to_fp16_nonneg(float f) {
#ifndef GQ_X86_HOST
    if (f != f) return (gq_half)0x7E00u;
#endif
    return gq_fp16_of(f, gq_float_bits(f));
}

// ggml_compute_fp16_to_fp32 (exact).
__device__ __forceinline__ float gq_fp16_to_fp32(gq_half h) {
    const uint32_t w = (uint32_t)h << 16;
    const uint32_t sign = w & 0x80000000u;
    const uint32_t w2 = w + w;
    const float normalized = __uint_as_float((w2 >> 4) + (0xE0u << 23)) * __uint_as_float(0x07800000u);  // 2^-112
    const float denormalized = __uint_as_float((w2 >> 17) | (126u << 23)) - 0.5f;
    const uint32_t r = w2 < (1u << 27) ? __float_as_uint(denormalized) : __float_as_uint(normalized);
    return __uint_as_float(sign | r);
}

// ggml_compute_fp32_to_bf16: round to nearest even, NaN forced quiet.
__device__ __forceinline__ uint16_t gq_fp32_to_bf16(float f) {
    const uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 64u);
    return (uint16_t)((u + (0x7fffu + ((u >> 16) & 1u))) >> 16);
}

__device__ __forceinline__ float gq_bf16_to_fp32(uint16_t h) { return __uint_as_float((uint32_t)h << 16); }

// nearest_int: add 1.5*2^23 and read the mantissa (round half to even for |x| < 2^22). A NaN argument
// is x86's default NaN there, whose mantissa 0x400000 gives 0.
__device__ __forceinline__ int gq_nearest_int(float fval) {
#ifndef GQ_X86_HOST
    if (fval != fval) return 0;
#endif
    const float val = fval + 12582912.f;
    const int i = (int)gq_float_bits(val);
    return (i & 0x007fffff) - 0x00400000;
}

// A C float->int cast as gcc emits it on x86-64 (cvttss2si, then the low bits for narrower types):
// truncation, with NaN and out-of-range values giving INT_MIN. Used for every (int8_t)/(uint8_t) cast of
// a float so that denormal/huge blocks (1/d = inf) match the oracle byte for byte.
#ifdef GQ_X86_HOST
// the C cast is that very instruction (and vectorizes as cvttps2dq, as in ggml's own loops)
__device__ __forceinline__ int gq_trunc_i32(float x) { return (int)x; }
#else
__device__ __forceinline__ int gq_trunc_i32(float x) {
    if (x >= -2147483648.0f && x < 2147483648.0f) return (int)x;
    return (int)0x80000000u;
}
#endif

// best_index_int8: index of the table value nearest to x (table sorted ascending).
__device__ __forceinline__ int gq_best_index_int8(int n, const int8_t* val, float x) {
    if (x <= val[0]) return 0;
    if (x >= val[n - 1]) return n - 1;
    int ml = 0, mu = n - 1;
    while (mu - ml > 1) {
        const int mav = (ml + mu) / 2;
        if (x < val[mav]) mu = mav; else ml = mav;
    }
    return x - val[mu - 1] < val[mu] - x ? mu - 1 : mu;
}

// Sums in C loop order: `float s = 0; for (i = 0; i < n; ++i) s += ...;`
__device__ __forceinline__ float gq_sum(int n, const float* v) {
    float s = 0;
    for (int i = 0; i < n; ++i) s += v[i];
    return s;
}

__device__ __forceinline__ float gq_sum_sq(int n, const float* x) {
    float s = 0;
    for (int i = 0; i < n; ++i) s += x[i] * x[i];
    return s;
}

// The weights of the quantize_row_*_impl paths (legacy, IQ4, K-quants): qw[i] * sqrt(sigma2 + x[i]^2).
__device__ __forceinline__ void gq_impl_weights(int n, const float* x, const float* qw, float sigma2, float* weight) {
    for (int i = 0; i < n; ++i) weight[i] = qw[i] * sqrtf(sigma2 + x[i] * x[i]);
}

// ---------------------------------------------------------------------------------------------------
// The scale searches shared by several families (ggml-quants.c), inlined where called; kquants.cu calls
// them from many places and so through out-of-line wrappers (kquants_search.cuh).
// ---------------------------------------------------------------------------------------------------

// make_qx_quants: symmetric quantization of n values to [-nmax, nmax-1] (+nmax offset in L), with an
// RMSE search over 18 scales. Used by Q4_0/Q5_0 with importance weights and by Q3_K/Q6_K (rmse_type 1).
__device__ __forceinline__ float gq_make_qx_quants(int n, int nmax, const float* x, int8_t* L, int rmse_type,
                                          const float* qw) {
    float max = 0;
    float amax = 0;
    for (int i = 0; i < n; ++i) {
        const float ax = fabsf(x[i]);
        if (ax > amax) { amax = ax; max = x[i]; }
    }
    if (amax < GQ_GROUP_MAX_EPS) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        return 0.f;
    }
    float iscale = -nmax / max;
    if (rmse_type == 0) {
        for (int i = 0; i < n; ++i) {
            const int l = gq_nearest_int(iscale * x[i]);
            L[i] = (int8_t)(nmax + GQ_MAX(-nmax, GQ_MIN(nmax - 1, l)));
        }
        return 1 / iscale;
    }
    bool return_early = false;
    if (rmse_type < 0) {
        rmse_type = -rmse_type;
        return_early = true;
    }
    float sumlx = 0;
    float suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = gq_nearest_int(iscale * x[i]);
        l = GQ_MAX(-nmax, GQ_MIN(nmax - 1, l));
        L[i] = (int8_t)(l + nmax);
        const float w = qw ? qw[i] : rmse_type == 1 ? x[i] * x[i] : rmse_type == 2 ? 1 : rmse_type == 3 ? fabsf(x[i]) : sqrtf(fabsf(x[i]));
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f;
    if (return_early) return suml2 > 0 ? 0.5f * (scale + 1 / iscale) : 1 / iscale;
    float best = scale * sumlx;
    GQ_NO_UNROLL
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) continue;
        iscale = -(nmax + 0.1f * is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; ++i) {
            int l = gq_nearest_int(iscale * x[i]);
            l = GQ_MAX(-nmax, GQ_MIN(nmax - 1, l));
            const float w = qw ? qw[i] : rmse_type == 1 ? x[i] * x[i] : rmse_type == 2 ? 1 : rmse_type == 3 ? fabsf(x[i]) : sqrtf(fabsf(x[i]));
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; ++i) {
                const int l = gq_nearest_int(iscale * x[i]);
                L[i] = (int8_t)(nmax + GQ_MAX(-nmax, GQ_MIN(nmax - 1, l)));
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

// make_qkx3_quants, and make_qkx2_quants with the same arguments: asymmetric (scale, min) quantization
// to [0, nmax] with a weighted least-squares search over nstep+1 scales; *the_min = -min. weights ==
// nullptr (make_qkx3_quants only) means x*x. The two functions run the same float operations and differ
// only in the degenerate-range test (qkx2: max == min, qkx3: max <= min), which agree because min <= max
// always holds after `if (min > 0) min = 0` (a NaN x[0] fails both). Used by Q4_1/Q5_1 with importance weights and by
// Q2_K/Q4_K/Q5_K.
__device__ __forceinline__ float gq_make_qkx_quants(int n, int nmax, const float* x, const float* weights, uint8_t* L,
                                            float* the_min, uint8_t* Laux, float rmin, float rdelta, int nstep,
                                            bool use_mad) {
    float min = x[0];
    float max = x[0];
    float sum_w = weights ? weights[0] : x[0] * x[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; ++i) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        const float w = weights ? weights[i] : x[i] * x[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if (min > 0) min = 0;
    if (max <= min) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        *the_min = -min;
        return 0.f;
    }
    float iscale = nmax / (max - min);
    float scale = 1 / iscale;
    float best_mad = 0;
    for (int i = 0; i < n; ++i) {
        const int l = gq_nearest_int(iscale * (x[i] - min));
        L[i] = (uint8_t)GQ_MAX(0, GQ_MIN(nmax, l));
        float diff = scale * L[i] + min - x[i];
        diff = use_mad ? fabsf(diff) : diff * diff;
        const float w = weights ? weights[i] : x[i] * x[i];
        best_mad += w * diff;
    }
    if (nstep < 1) {
        *the_min = -min;
        return scale;
    }
    GQ_NO_UNROLL
    for (int is = 0; is <= nstep; ++is) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; ++i) {
            int l = gq_nearest_int(iscale * (x[i] - min));
            l = GQ_MAX(0, GQ_MIN(nmax, l));
            Laux[i] = (uint8_t)l;
            const float w = weights ? weights[i] : x[i] * x[i];
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
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
                float diff = this_scale * Laux[i] + this_min - x[i];
                diff = use_mad ? fabsf(diff) : diff * diff;
                const float w = weights ? weights[i] : x[i] * x[i];
                mad += w * diff;
            }
            if (mad < best_mad) {
                for (int i = 0; i < n; ++i) L[i] = Laux[i];
                best_mad = mad;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

// ---------------------------------------------------------------------------------------------------
// Source types: raw source bytes are converted to float32 while loading (llama-quantize converts F16/BF16
// tensors to float32 with ggml's to_float before quantizing).
// ---------------------------------------------------------------------------------------------------
struct GqSrcF32 {
    static __device__ __forceinline__ float load(const void* p, long long i) { return ((const float*)p)[i]; }
};
struct GqSrcF16 {
    static __device__ __forceinline__ float load(const void* p, long long i) {
        return gq_fp16_to_fp32(((const uint16_t*)p)[i]);
    }
};
struct GqSrcBF16 {
    static __device__ __forceinline__ float load(const void* p, long long i) {
        return gq_bf16_to_fp32(((const uint16_t*)p)[i]);
    }
};

template <class Src>
__device__ __forceinline__ void gq_load_block(const void* src, long long offset, int n, float* x) {
    for (int j = 0; j < n; ++j) x[j] = Src::load(src, offset + j);
}

// ---------------------------------------------------------------------------------------------------
// Kernel ABI and work-item decoding
// ---------------------------------------------------------------------------------------------------
#define GQ_QUANTIZE_PARAMS                                                                          \
    const void* __restrict__ src, uint8_t* __restrict__ dst, const float* __restrict__ qw,          \
        const float* __restrict__ rowstat, long long n_per_row, long long rows_per_expert,          \
        long long n_expert
#define GQ_QUANTIZE_ARGS src, dst, qw, rowstat, n_per_row, rows_per_expert, n_expert

// The quantize ABI of a type on which ggml aborts (its registry class has ggml_aborts = True): the 4th
// pointer is the slab's abort status word instead of rowstat. It holds 0xFFFFFFFF at launch; a work item
// that meets an input ggml-quants.c aborts on calls gq_report_abort (the device then raises GGMLAbort and
// the output is discarded).
#define GQ_QUANTIZE_STATUS_PARAMS                                                                   \
    const void* __restrict__ src, uint8_t* __restrict__ dst, const float* __restrict__ qw,          \
        unsigned int* __restrict__ status, long long n_per_row, long long rows_per_expert,          \
        long long n_expert

// Record that ggml aborts on block `ib` of slab row `row` (blocks_per_row blocks per row): the status word
// keeps the first such block.
__device__ __forceinline__ void gq_report_abort(unsigned int* status, long long row, long long ib,
                                                long long blocks_per_row) {
    atomicMin(status, (unsigned int)(row * blocks_per_row + ib));
}

#define GQ_DEQUANTIZE_PARAMS const uint8_t* __restrict__ src, float* __restrict__ dst, long long n_per_row, long long nrows
#define GQ_DEQUANTIZE_ARGS src, dst, n_per_row, nrows

// quantize_<dst>_{f32,f16,bf16} from `template <class Src> __device__ void quantize_<dst>_item(...)`.
#define GQ_QUANTIZE_ENTRY_POINTS(dst_name)                                                                     \
    extern "C" __global__ void quantize_##dst_name##_f32(GQ_QUANTIZE_PARAMS) {                               \
        quantize_##dst_name##_item<GqSrcF32>(GQ_QUANTIZE_ARGS);                                              \
    }                                                                                                        \
    extern "C" __global__ void quantize_##dst_name##_f16(GQ_QUANTIZE_PARAMS) {                               \
        quantize_##dst_name##_item<GqSrcF16>(GQ_QUANTIZE_ARGS);                                              \
    }                                                                                                        \
    extern "C" __global__ void quantize_##dst_name##_bf16(GQ_QUANTIZE_PARAMS) {                              \
        quantize_##dst_name##_item<GqSrcBF16>(GQ_QUANTIZE_ARGS);                                             \
    }

// quantize_<dst>_{f32,f16,bf16} and quantize_<dst>_w_{f32,f16,bf16} from `template <class Src, bool QW>
// __device__ void quantize_<dst>_item(...)`: separate instantiations without (QW = false, qw == nullptr) and
// with importance weights, for a type whose descriptor says Kernel(weighted=True) (the launch plan then
// names the _w kernels when an imatrix is given; tiles.cuh makes the same two sets its own way).
#define GQ_QUANTIZE_WEIGHTED_ENTRY_POINTS(dst_name)                                                                  \
    extern "C" __global__ void quantize_##dst_name##_f32(GQ_QUANTIZE_PARAMS) {                               \
        quantize_##dst_name##_item<GqSrcF32, false>(GQ_QUANTIZE_ARGS);                                       \
    }                                                                                                        \
    extern "C" __global__ void quantize_##dst_name##_f16(GQ_QUANTIZE_PARAMS) {                               \
        quantize_##dst_name##_item<GqSrcF16, false>(GQ_QUANTIZE_ARGS);                                       \
    }                                                                                                        \
    extern "C" __global__ void quantize_##dst_name##_bf16(GQ_QUANTIZE_PARAMS) {                              \
        quantize_##dst_name##_item<GqSrcBF16, false>(GQ_QUANTIZE_ARGS);                                      \
    }                                                                                                        \
    extern "C" __global__ void quantize_##dst_name##_w_f32(GQ_QUANTIZE_PARAMS) {                            \
        quantize_##dst_name##_item<GqSrcF32, true>(GQ_QUANTIZE_ARGS);                                        \
    }                                                                                                        \
    extern "C" __global__ void quantize_##dst_name##_w_f16(GQ_QUANTIZE_PARAMS) {                            \
        quantize_##dst_name##_item<GqSrcF16, true>(GQ_QUANTIZE_ARGS);                                        \
    }                                                                                                        \
    extern "C" __global__ void quantize_##dst_name##_w_bf16(GQ_QUANTIZE_PARAMS) {                           \
        quantize_##dst_name##_item<GqSrcBF16, true>(GQ_QUANTIZE_ARGS);                                       \
    }

// One work item = one block `ib` of slab row `row` (of rows_per_expert * n_expert rows). `qw` is the
// expert's importance-weight row at the block (or nullptr); `src_offset` the element index of the block's
// first value; `row_sigma2` = rowstat[row] / n_per_row, the sigma2 of the legacy _impl paths (0 without
// a rowstat pre-pass).
struct GqItem {
    long long row;
    long long ib;
    long long src_offset;
    const float* qw;
    float row_sigma2;
};

__device__ __forceinline__ bool gq_work_item(long long n_per_row, long long rows_per_expert, long long n_expert,
                                             int block_elems, const float* qw, const float* rowstat, GqItem& it) {
    const long long blocks_per_row = n_per_row / block_elems;
    const long long item = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (item >= rows_per_expert * blocks_per_row || (long long)blockIdx.z >= n_expert) return false;
    const long long r = item / blocks_per_row;
    it.ib = item - r * blocks_per_row;
    it.row = (long long)blockIdx.z * rows_per_expert + r;
    it.src_offset = it.row * n_per_row + it.ib * block_elems;
    it.qw = qw ? qw + (long long)blockIdx.z * n_per_row + it.ib * block_elems : nullptr;
    it.row_sigma2 = rowstat ? rowstat[it.row] / n_per_row : 0.f;
    return true;
}

// quantize_<name>_item, for GQ_QUANTIZE_ENTRY_POINTS(name): each thread loads its block's QK values as
// float32, `core(x, it, &y)` quantizes them into a local block y (cores read back what they wrote:
// scales or-ed together, d after its fp16 rounding), and y is stored whole (rows are blocks_per_row
// blocks).
#define GQ_QUANTIZE_ITEM(name, Block, QK, core)                                                       \
    template <class Src>                                                                             \
    __device__ void quantize_##name##_item(GQ_QUANTIZE_PARAMS) {                                     \
        GqItem it;                                                                                   \
        if (!gq_work_item(n_per_row, rows_per_expert, n_expert, QK, qw, rowstat, it)) return;        \
        float x[QK];                                                                                 \
        gq_load_block<Src>(src, it.src_offset, QK, x);                                               \
        Block y;                                                                                     \
        core(x, it, &y);                                                                             \
        ((Block*)dst)[it.row * (n_per_row / (QK)) + it.ib] = y;                                      \
    }

// The values of one work item's block, read from the source on every access (x[j] is Src::load(src,
// offset + j)): for cores that pass over their block more than once without a per-thread copy of it.
template <class Src>
struct GqBlockValues {
    const void* src;
    long long offset;
    __device__ __forceinline__ float operator[](int j) const { return Src::load(src, offset + j); }
};

// quantize_<name>_item for a streaming core, `template <class X> void core(const X& x, Block* y)`: x are
// the block's values (GqBlockValues, read as often as the core needs: the simple types, whose blocks are
// large and whose cores search nothing), y the block in dst, written in place. Importance weights are not
// passed: the types made with this ignore them, as ggml does.
#define GQ_QUANTIZE_STREAM_ITEM(name, Block, QK, core)                                                \
    template <class Src>                                                                             \
    __device__ void quantize_##name##_item(GQ_QUANTIZE_PARAMS) {                                     \
        GqItem it;                                                                                   \
        if (!gq_work_item(n_per_row, rows_per_expert, n_expert, QK, qw, rowstat, it)) return;        \
        core(GqBlockValues<Src>{src, it.src_offset}, (Block*)dst + it.row * (n_per_row / (QK)) + it.ib); \
    }

// The body of dequantize_<type>: thread i turns block i into QK floats with core(block, y), ggml's
// dequantize_row_<type> for one block, which stores every value through gq_x86_nan.
template <class Block, int QK, void (*core)(const Block*, float*)>
__device__ __forceinline__ void gq_dequantize_blocks(GQ_DEQUANTIZE_PARAMS) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < nrows * (n_per_row / QK)) core((const Block*)src + i, dst + i * QK);
}


#include "tiles.cuh"
