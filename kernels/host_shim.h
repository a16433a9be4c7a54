// host_shim.h: lets g++ compile the CUDA kernel sources (kernels/*.cu) for the host, unchanged.
//
// Force-included (`g++ -include host_shim.h`) by gpuquant/backends/emulated.py before every kernel file;
// kernels/host_launch.cpp (compiled into the same shared library) runs a grid with the CUDA geometry.
//
// What it provides, and how faithfully:
//  * __global__/__device__/__host__/__forceinline__/__noinline__/__launch_bounds__/__constant__: plain C++.
//  * threadIdx/blockIdx/blockDim/gridDim: thread-local variables set by the launcher for each CUDA thread.
//    A block always runs on one host thread, its CUDA threads one after the other.
//  * __shared__: `static thread_local`, i.e. one copy per running block (static __shared__ arrays only;
//    dynamic `extern __shared__` is not supported).
//  * __syncthreads(): a real barrier. Kernels flagged sync=True in kernels.py run each CUDA thread of a
//    block as a fiber (ucontext) and __syncthreads switches to the next fiber until all have arrived. A
//    kernel that calls it without the flag aborts with a message (a table bug, not a silent race).
//  * __float_as_uint/__uint_as_float/__float_as_int/__int_as_float: bit casts. fabsf/sqrtf/roundf come
//    from <math.h>; g++ runs with -ffp-contract=off -fno-fast-math so they round like the GPU's IEEE ops.
// Not provided (a compile error if a kernel uses them): warp shuffles/votes, atomics, __ldg, textures.
#pragma once
#define GQ_HOST_SHIM 1

#include <math.h>
#include <stdint.h>
#include <string.h>

#define __global__
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__
#define __launch_bounds__(...)
#define __shared__ static thread_local

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

// Defined in host_launch.cpp.
void gq_host_syncthreads();
#define __syncthreads() gq_host_syncthreads()

// Used by the block runners emulated.py generates: a pointer argument of any kernel parameter type.
struct gq_any_ptr {
    const void* p;
    template <class T>
    operator T*() const { return (T*)p; }
};

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
