// Every shuffle kind, width and operand range (64-bit values), and each operand type of the overloads.
#include "common_test.cuh"

#define SHUFFLE_OPERANDS 7
#define SHUFFLE_CASES (6 * SHUFFLE_OPERANDS * 4)

// out: SHUFFLE_CASES results per thread: for width 1..32, operand b in {0,1,3,7,16,31,33}: up, down, xor,
// idx with a data-dependent source lane ((t * 7 + b) % 45 - 6: negative and past the warp too).
extern "C" __global__ void shuffle_kinds(const void* in, void* out, long long unused0, long long unused1) {
    const unsigned long long g = global_tid();
    const unsigned int t = linear_tid();
    const unsigned long long v = ((const unsigned long long*)in)[g];
    unsigned long long* o = (unsigned long long*)out + g * SHUFFLE_CASES;
    const int operands[SHUFFLE_OPERANDS] = {0, 1, 3, 7, 16, 31, 33};
    int k = 0;
    for (int width = 1; width <= 32; width *= 2)
        for (int i = 0; i < SHUFFLE_OPERANDS; ++i) {
            const int b = operands[i];
            o[k++] = __shfl_up_sync(FULL, v, (unsigned int)b, width);
            o[k++] = __shfl_down_sync(FULL, v, (unsigned int)b, width);
            o[k++] = __shfl_xor_sync(FULL, v, b, width);
            o[k++] = __shfl_sync(FULL, v, (int)((t * 7 + b) % 45) - 6, width);
        }
}

// out: 8 results per thread, one per operand type (bit patterns, sign-extended where signed)
extern "C" __global__ void shuffle_types(const void* in, void* out, long long unused0, long long unused1) {
    const unsigned long long g = global_tid();
    const unsigned int t = linear_tid();
    const unsigned long long v = ((const unsigned long long*)in)[g];
    unsigned long long* o = (unsigned long long*)out + g * 8;
    o[0] = (unsigned long long)(long long)__shfl_xor_sync(FULL, (int)v, 5);
    o[1] = __shfl_down_sync(FULL, (unsigned int)v, 3, 16);
    o[2] = __float_as_uint(__shfl_sync(FULL, __uint_as_float((unsigned int)v), (int)(t % 9), 8));
    o[3] = (unsigned long long)__shfl_up_sync(FULL, (long long)v, 2);
    o[4] = (unsigned long long)__double_as_longlong(__shfl_xor_sync(FULL, __longlong_as_double((long long)v), 17));
    o[5] = (unsigned long long)__shfl_sync(FULL, (long)v, 31 - (int)(t & 31));
    o[6] = (unsigned long long)__shfl_down_sync(FULL, (unsigned long)v, 1, 4);
    o[7] = __shfl_xor_sync(FULL, (unsigned long long)v, 12, 16);
}
