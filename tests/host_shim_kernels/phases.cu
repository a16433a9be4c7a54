// GQ_PHASES (kernels/common.cuh, kernels/host_shim.h): phases that communicate only through shared memory.
// Run as a fiber kernel (barriers between phases) and through the block runner (phase by phase), both
// must match the numpy model: out[block][t] = in[block][255 - t] * 2 + (sum of in[block][0..t] in order).
#include "common.cuh"

__device__ __forceinline__ void phases_body(int phase, const float* in, float* out) {
    __shared__ float stage[256];
    __shared__ float prefix[256];
    const unsigned int t = threadIdx.x, b = blockIdx.x;
    if (phase == 0) {
        stage[t] = in[b * 256 + t];
        return;
    }
    if (phase == 1) {  // reads what other threads wrote in phase 0
        float s = 0;
        for (unsigned int k = 0; k <= t; ++k) s += stage[k];
        prefix[t] = s;
        return;
    }
    out[b * 256 + t] = stage[255 - t] * 2.0f + prefix[t];
}

extern "C" __global__ void reverse_prefix(const void* in, void* out, long long unused0, long long unused1) {
    GQ_PHASES(3, phases_body(phase, (const float*)in, (float*)out));
}
