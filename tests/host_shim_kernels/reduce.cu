// Block reductions mixing warp shuffles and __syncthreads through shared memory (any block shape whose
// thread count is a multiple of 32): float32, in a fixed order the numpy model repeats.
#include "common_test.cuh"

// out[t] = block sum + t; out[n + t] = the sum of the thread's warp (after the shfl_down tree)
extern "C" __global__ void block_sum(const void* in, void* out, long long unused0, long long unused1) {
    __shared__ float partial[32];
    __shared__ float total;
    const unsigned int t = linear_tid(), lane = t & 31, warp = t >> 5, nt = block_threads();
    const unsigned long long g = global_tid();
    const unsigned long long nall = (unsigned long long)nt * gridDim.x * gridDim.y * gridDim.z;
    float v = ((const float*)in)[g];
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(FULL, v, off);
    if (lane == 0) partial[warp] = v;
    v = __shfl_sync(FULL, v, 0);
    __syncthreads();
    if (warp == 0) {
        float p = lane < nt / 32 ? partial[lane] : 0.0f;
        for (int m = 16; m > 0; m >>= 1) p += __shfl_xor_sync(FULL, p, m);
        if (lane == 0) total = p;
    }
    __syncthreads();
    ((float*)out)[g] = total + (float)t;
    ((float*)out)[nall + g] = v;
}

// 16-byte loads staged in aligned shared memory, read back transposed (64 threads per block):
// out[block][t] = (stage[t], stage[64 + t], stage[128 + t], stage[192 + t]) as float4, then an int4
// copy through __ldg.
extern "C" __global__ void stage_float4(const void* in, void* out, long long unused0, long long unused1) {
    __shared__ __align__(16) float stage[4 * 64];
    const unsigned int t = threadIdx.x;
    const float4 a = ((const float4*)in)[blockIdx.x * 64 + t];
    ((float4*)stage)[t] = a;
    __syncthreads();
    ((float4*)out)[blockIdx.x * 128 + t] = make_float4(stage[t], stage[64 + t], stage[128 + t], stage[192 + t]);
    const int4 c = __ldg((const int4*)in + blockIdx.x * 64 + (63 - t));
    ((int4*)out)[blockIdx.x * 128 + 64 + t] = make_int4(c.w, c.z, c.y, c.x);
}
