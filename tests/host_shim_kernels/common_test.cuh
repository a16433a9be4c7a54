// Shared by the host harness test kernels (tests/test_host_shim.py). Plain CUDA: NVRTC compiles these too.
#pragma once
#define FULL 0xffffffffu

// CUDA's linear thread index; its lane is this % 32
__device__ __forceinline__ unsigned int linear_tid() {
    return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}
__device__ __forceinline__ unsigned int block_threads() { return blockDim.x * blockDim.y * blockDim.z; }
__device__ __forceinline__ unsigned long long global_tid() {
    const unsigned long long b = ((unsigned long long)blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    return b * block_threads() + linear_tid();
}
// the lanes this thread's warp has (a partial last warp has fewer than 32)
__device__ __forceinline__ unsigned int warp_lanes() {
    const unsigned int left = block_threads() - (linear_tid() & ~31u);
    return left >= 32 ? FULL : (1u << left) - 1u;
}
