// Kernels that break CUDA's rules; the emulator must abort each with a message (tests run them in a
// subprocess). Valid CUDA source all the same: NVRTC compiles it.
#include "common_test.cuh"

// lanes 16-31 exit while lanes 0-15 wait at a full-mask shuffle
extern "C" __global__ void diverge_exit(const void* in, void* out, long long unused0, long long unused1) {
    const unsigned int lane = linear_tid() & 31;
    if (lane < 16) ((float*)out)[lane] = __shfl_xor_sync(FULL, 1.0f, 1);
}

// lanes 16-31 go to __syncthreads while lanes 0-15 wait at a full-mask shuffle
extern "C" __global__ void diverge_syncthreads(const void* in, void* out, long long unused0, long long unused1) {
    const unsigned int lane = linear_tid() & 31;
    if (lane < 16)
        ((float*)out)[lane] = __shfl_xor_sync(FULL, 1.0f, 1);
    else
        __syncthreads();
}

// lanes 0-15 shuffle, lanes 16-31 vote, both with the full mask
extern "C" __global__ void diverge_op(const void* in, void* out, long long unused0, long long unused1) {
    const unsigned int lane = linear_tid() & 31;
    if (lane < 16)
        ((float*)out)[lane] = __shfl_xor_sync(FULL, 1.0f, 1);
    else
        ((unsigned int*)out)[lane] = __ballot_sync(FULL, 1);
}

// a warp intrinsic in a kernel launched without sync
extern "C" __global__ void needs_sync(const void* in, void* out, long long unused0, long long unused1) {
    ((int*)out)[linear_tid()] = __shfl_xor_sync(FULL, (int)linear_tid(), 1);
}

// every lane calls with mask 0x1
extern "C" __global__ void own_bit(const void* in, void* out, long long unused0, long long unused1) {
    ((int*)out)[linear_tid()] = __shfl_sync(0x1u, (int)linear_tid(), 0);
}

// width 3 is not a power of 2
extern "C" __global__ void bad_width(const void* in, void* out, long long unused0, long long unused1) {
    ((int*)out)[linear_tid()] = __shfl_sync(FULL, (int)linear_tid(), 0, 3);
}

// a block of 48 threads: its second warp has 16 lanes, the full mask names lanes that do not exist
extern "C" __global__ void missing_lanes(const void* in, void* out, long long unused0, long long unused1) {
    ((int*)out)[linear_tid()] = __shfl_down_sync(FULL, (int)linear_tid(), 1);
}

// some threads exit before the others' __syncthreads
extern "C" __global__ void exit_before_syncthreads(const void* in, void* out, long long unused0, long long unused1) {
    if (linear_tid() >= 40) return;
    __syncthreads();
    ((int*)out)[linear_tid()] = 1;
}

// lanes 0-15 wait at the full mask; lane 16 then needs lane 0 in a different mask: they can never meet
extern "C" __global__ void crossed_masks(const void* in, void* out, long long unused0, long long unused1) {
    const unsigned int lane = linear_tid() & 31;
    if (lane < 16)
        __syncwarp(FULL);
    else
        __syncwarp(0xffff0001u);
}

// lanes 0, 1, 2 wait for each other in three pairwise masks (a cycle no single arrival shows)
extern "C" __global__ void three_cycle(const void* in, void* out, long long unused0, long long unused1) {
    const unsigned int lane = linear_tid() & 31;
    const unsigned int masks[3] = {0x3u, 0x6u, 0x5u};
    if (lane < 3) __syncwarp(masks[lane]);
}
