// Micro-benchmarks of the fiber scheduler: n_per_row rounds of __syncwarp; a warp-shuffle sum of 256 floats.
#include "common_test.cuh"

extern "C" __global__ void syncwarp_rounds(const void* in, void* out, long long rounds, long long unused1) {
    for (long long i = 0; i < rounds; ++i) __syncwarp();
    if (linear_tid() == 0) ((int*)out)[blockIdx.x] = (int)rounds;
}

extern "C" __global__ void syncthreads_rounds(const void* in, void* out, long long rounds, long long unused1) {
    for (long long i = 0; i < rounds; ++i) __syncthreads();
    if (linear_tid() == 0) ((int*)out)[blockIdx.x] = (int)rounds;
}

extern "C" __global__ void warp_sums(const void* in, void* out, long long unused0, long long unused1) {
    const unsigned long long g = global_tid();
    float v = ((const float*)in)[g];
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(FULL, v, off);
    ((float*)out)[g] = v;
}
