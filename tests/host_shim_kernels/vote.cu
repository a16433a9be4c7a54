// Votes with data-dependent predicates, partial and interleaved masks, two lane groups of a warp in
// different branches, __syncwarp on partial masks; blocks may end in a partial warp.
#include "common_test.cuh"

#define VOTE_OUTS 12

extern "C" __global__ void votes(const void* in, void* out, long long unused0, long long unused1) {
    const unsigned long long g = global_tid();
    const unsigned int lane = linear_tid() & 31, all = warp_lanes();
    const unsigned int v = ((const unsigned int*)in)[g];
    unsigned int* o = (unsigned int*)out + g * VOTE_OUTS;
    o[0] = __ballot_sync(all, v & 1);
    o[1] = __any_sync(all, v % 97 == 0);
    o[2] = __all_sync(all, v != 12345);
    o[3] = __all_sync(all, (v & 3) != 0);
    // four interleaved groups at once: the lanes with the same lane % 4
    const unsigned int quad = (0x11111111u << (lane & 3)) & all;
    const unsigned int members = __popc(quad);
    o[4] = __ballot_sync(quad, v & 2);
    o[5] = __any_sync(quad, (v & 15) == 0);
    o[6] = __shfl_sync(quad, v, (int)((lane & 3) + 4 * ((lane / 4 + 1) % members)));
    // the two halves of the warp in different branches, each its own group
    if (lane < 16) {
        o[7] = __shfl_xor_sync(all & 0x0000ffffu, v, 1);
        o[8] = __ballot_sync(all & 0x0000ffffu, v & 4);
    } else {
        o[7] = __shfl_down_sync(all & 0xffff0000u, v, 2);
        o[8] = __all_sync(all & 0xffff0000u, v & 4);
    }
    // a source lane outside the mask: undefined in CUDA, GQ_SHFL_UNDEFINED's low half in the emulator
    o[9] = __shfl_sync(quad, v, (int)(lane ^ 1));
    __syncwarp(quad);
    __syncwarp(all);
    o[10] = __ballot_sync(all, 1);
    o[11] = __popc(__ballot_sync(all, v & 8));
}
