// host_shim.h: lets g++ compile the CUDA kernel sources (kernels/*.cu) for the host, unchanged.
//
// Force-included (`g++ -include host_shim.h`) by gpuquant/backends/emulated.py before every kernel file;
// kernels/host_launch.cpp (compiled into the same shared library) runs a grid with the CUDA geometry.
// Everything here has CUDA's name and signature; under NVRTC the kernels get the real built-ins.
//
// What it provides, and how faithfully (docs/host_harness.md has the costs):
//  * __global__/__device__/__host__/__forceinline__/__noinline__/__launch_bounds__/__constant__/__align__.
//  * threadIdx/blockIdx/blockDim/gridDim: thread-local variables set by the launcher for each CUDA thread.
//    A block always runs on one host thread; blocks of a grid run in parallel on several.
//  * __shared__: `static thread_local`, one copy per running block. Static sizes only: `extern
//    __shared__` (dynamic shared memory) is rejected by emulated.py. Alignment is the type's (CUDA's
//    rule too): use __align__(16) on an array read through float4/int4.
//  * __syncthreads, __syncwarp, __shfl*_sync, __ballot_sync/__any_sync/__all_sync: real barriers
//    between fibers (host_fibers.h). Kernels flagged sync=True run each CUDA thread as a fiber; one
//    that calls any of these without the flag aborts with a message. Lanes are the linear thread index
//    % 32. A lane outside `mask`, a mask naming exited or missing lanes, or lanes that never meet abort
//    (undefined in CUDA); a shuffle reading a lane outside `mask` returns GQ_SHFL_UNDEFINED.
//    __activemask is not provided: lanes run one at a time, so "converged lanes" has no honest meaning.
//  * Vector types (float2/4, int2/4, uint2/4, short2, ushort2, char4, uchar4, longlong2, ...) with
//    CUDA's sizes and alignments and make_*; __ldg; integer intrinsics; __f*_rn; min/max; atomics.
//  * __float_as_uint & co: bit casts. g++ runs with -ffp-contract=off -fno-fast-math, so float
//    arithmetic and fabsf/sqrtf/roundf round like the GPU's IEEE operations.
// Not provided (a compile error if a kernel uses them): __activemask, textures, cooperative groups,
// __threadfence*, half-precision types, warp matrix/reduce intrinsics.
#pragma once
#define GQ_HOST_SHIM 1

#include <math.h>
#include <stdint.h>
#include <string.h>

// Kernels are the library's exports (ctypes finds them by name); everything else of a kernel file is
// compiled hidden (emulated.py wraps the file in `#pragma GCC visibility push(hidden)`), so that its
// __shared__ arrays (function-local thread_locals) take the local-dynamic TLS model: one TLS base per
// block runner instead of a __tls_get_addr call per array and CUDA thread.
#define __global__ __attribute__((visibility("default")))
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static thread_local __attribute__((tls_model("local-dynamic")))

struct gq_dim3 {
    unsigned int x, y, z;
};
typedef gq_dim3 dim3;
typedef gq_dim3 uint3;

// Hidden visibility lets g++ use the local-dynamic TLS model (one TLS base lookup per function). Not
// initial-exec: a dlopen()ed library gets only a few hundred bytes of static TLS, shared by all of them.
#define GQ_HIDDEN __attribute__((visibility("hidden")))
extern __thread gq_dim3 threadIdx GQ_HIDDEN;
extern __thread gq_dim3 blockIdx GQ_HIDDEN;
extern __thread gq_dim3 blockDim GQ_HIDDEN;
extern __thread gq_dim3 gridDim GQ_HIDDEN;
static const int warpSize = 32;

// Used by the block runners emulated.py generates: a pointer argument of any kernel parameter type.
struct gq_any_ptr {
    const void* p;
    template <class T>
    operator T*() const { return (T*)p; }
};

// ---------------------------------------------------------------------------------------------------
// Barriers and warp intrinsics (host_fibers.h). One call is one barrier of the fibers of a block.
// ---------------------------------------------------------------------------------------------------
enum GqWarpOp {
    GQ_OP_SYNCWARP,
    GQ_OP_SHFL_IDX,
    GQ_OP_SHFL_UP,
    GQ_OP_SHFL_DOWN,
    GQ_OP_SHFL_XOR,
    GQ_OP_BALLOT,
    GQ_OP_ANY,
    GQ_OP_ALL,
};
// What a shuffle returns when its source lane is outside the mask (undefined in CUDA): a NaN as float
// and as double, a large number as an integer, so that a kernel relying on it fails its tests.
#define GQ_SHFL_UNDEFINED 0xFFF8DEAD7FC0DEADull

// Hidden: called directly, not through the PLT.
void gq_host_syncthreads() GQ_HIDDEN;
// value: the lane's operand (64 bits); b, width: srcLane/delta/laneMask and width (shuffles). Returns the
// value of the source lane (shuffles), the ballot of `mask` (votes) or 0 (__syncwarp).
unsigned long long gq_host_warp(int op, unsigned int mask, unsigned long long value, int b, int width) GQ_HIDDEN;

#define __syncthreads() gq_host_syncthreads()

// GQ_PHASES(n, body): the body of a kernel in n phases separated by __syncthreads, the phases sharing
// nothing but shared memory and the kernel's arguments (body reads `phase`). On the GPU (common.cuh) and in
// a fiber (Kernel(sync=True)) it is the loop with barriers. A generated block runner instead sets
// gq_phase_runner and runs phase 0 for every thread of the block, then phase 1, ...: the barriers are then
// implicit and no fiber is needed, so a phased kernel without other barriers runs at block-runner speed.
extern __thread int gq_phase_runner GQ_HIDDEN;   // nonzero inside a generated block runner
extern __thread int gq_phase_current GQ_HIDDEN;  // the phase the block runner is running
extern __thread int gq_phase_count GQ_HIDDEN;    // set by the kernel: how many phases it has
#define GQ_PHASES(n, ...)                                                   \
    do {                                                                    \
        if (gq_phase_runner) {                                              \
            gq_phase_count = (n);                                           \
            const int phase = gq_phase_current;                             \
            __VA_ARGS__;                                                    \
        } else {                                                            \
            for (int phase = 0; phase < (n); ++phase) {                     \
                if (phase) __syncthreads();                                 \
                __VA_ARGS__;                                                \
            }                                                               \
        }                                                                   \
    } while (0)
static inline void __syncwarp(unsigned int mask = 0xffffffffu) { gq_host_warp(GQ_OP_SYNCWARP, mask, 0, 0, 32); }
static inline unsigned int __ballot_sync(unsigned int mask, int predicate) {
    return (unsigned int)gq_host_warp(GQ_OP_BALLOT, mask, predicate != 0, 0, 32);
}
static inline int __any_sync(unsigned int mask, int predicate) {
    return gq_host_warp(GQ_OP_ANY, mask, predicate != 0, 0, 32) != 0;
}
static inline int __all_sync(unsigned int mask, int predicate) {
    return gq_host_warp(GQ_OP_ALL, mask, predicate != 0, 0, 32) == mask;
}

template <class T>
static inline unsigned long long gq_to_bits(T v) {
    unsigned long long u = 0;
    memcpy(&u, &v, sizeof v);
    return u;
}
template <class T>
static inline T gq_from_bits(unsigned long long u) {
    T v;
    memcpy(&v, &u, sizeof v);
    return v;
}
#define GQ_SHFL_OVERLOADS(T)                                                                            \
    static inline T __shfl_sync(unsigned int mask, T var, int srcLane, int width = warpSize) {           \
        return gq_from_bits<T>(gq_host_warp(GQ_OP_SHFL_IDX, mask, gq_to_bits(var), srcLane, width));    \
    }                                                                                                   \
    static inline T __shfl_up_sync(unsigned int mask, T var, unsigned int delta, int width = warpSize) { \
        return gq_from_bits<T>(gq_host_warp(GQ_OP_SHFL_UP, mask, gq_to_bits(var), (int)delta, width));  \
    }                                                                                                   \
    static inline T __shfl_down_sync(unsigned int mask, T var, unsigned int delta, int width = warpSize) { \
        return gq_from_bits<T>(gq_host_warp(GQ_OP_SHFL_DOWN, mask, gq_to_bits(var), (int)delta, width)); \
    }                                                                                                   \
    static inline T __shfl_xor_sync(unsigned int mask, T var, int laneMask, int width = warpSize) {      \
        return gq_from_bits<T>(gq_host_warp(GQ_OP_SHFL_XOR, mask, gq_to_bits(var), laneMask, width));   \
    }
GQ_SHFL_OVERLOADS(int)
GQ_SHFL_OVERLOADS(unsigned int)
GQ_SHFL_OVERLOADS(long)
GQ_SHFL_OVERLOADS(unsigned long)
GQ_SHFL_OVERLOADS(long long)
GQ_SHFL_OVERLOADS(unsigned long long)
GQ_SHFL_OVERLOADS(float)
GQ_SHFL_OVERLOADS(double)
#undef GQ_SHFL_OVERLOADS

// ---------------------------------------------------------------------------------------------------
// Vector types: CUDA's members, sizes and alignments. may_alias: a `*(const float4*)p` load of memory
// written as other types is the CUDA idiom; g++ must not reorder it under strict aliasing.
// ---------------------------------------------------------------------------------------------------
#define GQ_VEC2(T, name, align)                                           \
    struct __attribute__((aligned(align), may_alias)) name {              \
        T x, y;                                                           \
    };                                                                    \
    static inline name make_##name(T x, T y) {                            \
        name v;                                                           \
        v.x = x;                                                          \
        v.y = y;                                                          \
        return v;                                                         \
    }
#define GQ_VEC4(T, name, align)                                           \
    struct __attribute__((aligned(align), may_alias)) name {              \
        T x, y, z, w;                                                     \
    };                                                                    \
    static inline name make_##name(T x, T y, T z, T w) {                  \
        name v;                                                           \
        v.x = x;                                                          \
        v.y = y;                                                          \
        v.z = z;                                                          \
        v.w = w;                                                          \
        return v;                                                         \
    }
GQ_VEC2(float, float2, 8)
GQ_VEC4(float, float4, 16)
GQ_VEC2(int, int2, 8)
GQ_VEC4(int, int4, 16)
GQ_VEC2(unsigned int, uint2, 8)
GQ_VEC4(unsigned int, uint4, 16)
GQ_VEC2(short, short2, 4)
GQ_VEC2(unsigned short, ushort2, 4)
GQ_VEC4(signed char, char4, 4)
GQ_VEC4(unsigned char, uchar4, 4)
GQ_VEC2(long long, longlong2, 16)
GQ_VEC2(unsigned long long, ulonglong2, 16)
GQ_VEC2(double, double2, 16)
#undef GQ_VEC2
#undef GQ_VEC4
static_assert(sizeof(float4) == 16 && alignof(float4) == 16 && alignof(float2) == 8, "vector types");
static_assert(sizeof(char4) == 4 && alignof(char4) == 4 && alignof(longlong2) == 16, "vector types");

// __ldg: a plain load (the read-only cache is a GPU matter); CUDA's overload set.
#define GQ_LDG(T) \
    static inline T __ldg(const T* p) { return *p; }
GQ_LDG(char)
GQ_LDG(signed char)
GQ_LDG(unsigned char)
GQ_LDG(short)
GQ_LDG(unsigned short)
GQ_LDG(int)
GQ_LDG(unsigned int)
GQ_LDG(long)
GQ_LDG(unsigned long)
GQ_LDG(long long)
GQ_LDG(unsigned long long)
GQ_LDG(float)
GQ_LDG(double)
GQ_LDG(float2)
GQ_LDG(float4)
GQ_LDG(int2)
GQ_LDG(int4)
GQ_LDG(uint2)
GQ_LDG(uint4)
GQ_LDG(short2)
GQ_LDG(ushort2)
GQ_LDG(char4)
GQ_LDG(uchar4)
GQ_LDG(longlong2)
GQ_LDG(ulonglong2)
GQ_LDG(double2)
#undef GQ_LDG

// ---------------------------------------------------------------------------------------------------
// Integer and float intrinsics
// ---------------------------------------------------------------------------------------------------
static inline int __popc(unsigned int x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned int)x); }
static inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline int __ffsll(long long x) { return __builtin_ffsll(x); }
static inline unsigned int __brev(unsigned int x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0F0F0F0Fu) | ((x & 0x0F0F0F0Fu) << 4);
    return __builtin_bswap32(x);
}
static inline unsigned long long __brevll(unsigned long long x) {
    return ((unsigned long long)__brev((unsigned int)x) << 32) | __brev((unsigned int)(x >> 32));
}
// result byte n = byte s<4n+2:4n> of the 8 bytes {y:x} (the upper selector bit and s<31:16> unused)
static inline unsigned int __byte_perm(unsigned int x, unsigned int y, unsigned int s) {
    const unsigned long long bytes = ((unsigned long long)y << 32) | x;
    unsigned int r = 0;
    for (int n = 0; n < 4; ++n) r |= (unsigned int)((bytes >> (8 * ((s >> (4 * n)) & 7u))) & 0xFFu) << (8 * n);
    return r;
}

// IEEE single, round to nearest even; never contracted (g++ runs with -ffp-contract=off).
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __frcp_rn(float a) { return 1.0f / a; }
static inline float __fsqrt_rn(float a) { return sqrtf(a); }

// CUDA's min/max overloads (math_functions.hpp): the mixed signed/unsigned ones compare as unsigned.
#define GQ_MINMAX(A, B, R)                                                \
    static inline R min(A a, B b) { return (R)a < (R)b ? (R)a : (R)b; } \
    static inline R max(A a, B b) { return (R)a > (R)b ? (R)a : (R)b; }
GQ_MINMAX(int, int, int)
GQ_MINMAX(unsigned int, unsigned int, unsigned int)
GQ_MINMAX(int, unsigned int, unsigned int)
GQ_MINMAX(unsigned int, int, unsigned int)
GQ_MINMAX(long, long, long)
GQ_MINMAX(unsigned long, unsigned long, unsigned long)
GQ_MINMAX(long long, long long, long long)
GQ_MINMAX(unsigned long long, unsigned long long, unsigned long long)
GQ_MINMAX(long long, unsigned long long, unsigned long long)
GQ_MINMAX(unsigned long long, long long, unsigned long long)
#undef GQ_MINMAX
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline double min(double a, double b) { return fmin(a, b); }
static inline double max(double a, double b) { return fmax(a, b); }

static inline uint32_t __float_as_uint(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}
static inline float __uint_as_float(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
static inline int __float_as_int(float f) { return (int)__float_as_uint(f); }
static inline float __int_as_float(int i) { return __uint_as_float((uint32_t)i); }
static inline long long __double_as_longlong(double d) { return gq_from_bits<long long>(gq_to_bits(d)); }
static inline double __longlong_as_double(long long i) { return gq_from_bits<double>((unsigned long long)i); }

// ---------------------------------------------------------------------------------------------------
// Atomics: real (relaxed, as CUDA's) read-modify-writes; blocks of one grid run on parallel host
// threads. The same functions serve global and shared memory.
// ---------------------------------------------------------------------------------------------------
#define GQ_ATOMIC_INT(T)                                                                         \
    static inline T atomicAdd(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); } \
    static inline T atomicOr(T* p, T v) { return __atomic_fetch_or(p, v, __ATOMIC_RELAXED); }   \
    static inline T atomicCAS(T* p, T compare, T val) {                                          \
        __atomic_compare_exchange_n(p, &compare, val, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED); \
        return compare;                                                                          \
    }                                                                                            \
    static inline T atomicMax(T* p, T v) {                                                       \
        T old = __atomic_load_n(p, __ATOMIC_RELAXED);                                            \
        while (old < v && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) { \
        }                                                                                        \
        return old;                                                                              \
    }                                                                                            \
    static inline T atomicMin(T* p, T v) {                                                       \
        T old = __atomic_load_n(p, __ATOMIC_RELAXED);                                            \
        while (old > v && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) { \
        }                                                                                        \
        return old;                                                                              \
    }
GQ_ATOMIC_INT(int)
GQ_ATOMIC_INT(unsigned int)
GQ_ATOMIC_INT(unsigned long long)
#undef GQ_ATOMIC_INT
static inline long long atomicMax(long long* p, long long v) {
    long long old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (old < v && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
    return old;
}
static inline unsigned short atomicCAS(unsigned short* p, unsigned short compare, unsigned short val) {
    __atomic_compare_exchange_n(p, &compare, val, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return compare;
}
// atom.add.f32 flushes subnormal inputs and results to sign-preserving zero (PTX ISA); f64 does not.
// The generic __atomic builtins compare bit patterns (a NaN does not loop forever).
static inline float gq_ftz(float f) { return fabsf(f) < 1.17549435e-38f ? copysignf(0.0f, f) : f; }
static inline float atomicAdd(float* p, float v) {
    float old, sum;
    __atomic_load(p, &old, __ATOMIC_RELAXED);
    do {
        sum = gq_ftz(gq_ftz(old) + gq_ftz(v));
    } while (!__atomic_compare_exchange(p, &old, &sum, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return old;
}
static inline double atomicAdd(double* p, double v) {
    double old, sum;
    __atomic_load(p, &old, __ATOMIC_RELAXED);
    do {
        sum = old + v;
    } while (!__atomic_compare_exchange(p, &old, &sum, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return old;
}
