// Host-only (not CUDA style): recursion deep enough to overflow a fiber stack.
#include "common_test.cuh"

__device__ int deep(int n) {
    volatile int pad[256];
    pad[0] = n;
    pad[255] = n;
    if (n == 0) return pad[0];
    return deep(n - 1) + pad[255];
}

extern "C" __global__ void overflow(const void* in, void* out, long long depth, long long unused1) {
    __syncthreads();
    ((int*)out)[linear_tid()] = deep((int)depth);
}
