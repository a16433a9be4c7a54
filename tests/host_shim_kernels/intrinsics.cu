// Integer and float intrinsics, min/max, vector types and make_* (no barriers: the block-runner path).
#include "common_test.cuh"

#define INTRINSIC_OUTS 24

// in: two 32-bit words per thread (x, y); out: INTRINSIC_OUTS 32-bit words per thread
extern "C" __global__ void intrinsics(const void* in, void* out, long long unused0, long long unused1) {
    const unsigned long long g = global_tid();
    const unsigned int x = ((const unsigned int*)in)[2 * g], y = ((const unsigned int*)in)[2 * g + 1];
    const unsigned long long xy = ((unsigned long long)y << 32) | x;
    unsigned int* o = (unsigned int*)out + g * INTRINSIC_OUTS;
    o[0] = __popc(x);
    o[1] = __popcll(xy);
    o[2] = __clz((int)(x >> (y & 31)));
    o[3] = __clzll((long long)(xy >> (x & 63)));
    o[4] = __ffs((int)(x & (x >> 3)));
    o[5] = __ffsll((long long)(xy & (xy << 7)));
    o[6] = __brev(x);
    const unsigned long long r = __brevll(xy);
    o[7] = (unsigned int)r;
    o[8] = (unsigned int)(r >> 32);
    o[9] = __byte_perm(x, y, y >> 7);
    const float a = __uint_as_float(x), b = __uint_as_float(y);
    o[10] = __float_as_uint(__fadd_rn(a, b));
    o[11] = __float_as_uint(__fsub_rn(a, b));
    o[12] = __float_as_uint(__fmul_rn(a, b));
    o[13] = __float_as_uint(__fdiv_rn(a, b));
    o[14] = __float_as_uint(__fsqrt_rn(fabsf(a)));
    // a product and a sum that FMA contraction would change
    o[15] = __float_as_uint(__fadd_rn(__fmul_rn(a, b), -__fmul_rn(a, b) * 0.5f));
    o[16] = (unsigned int)min((int)x, (int)y);
    o[17] = (unsigned int)max((int)x, (int)y);
    o[18] = min(x, y);
    o[19] = max(x, y);
    const int2 i2 = make_int2((int)x, (int)y);
    const uint4 u4 = make_uint4(x, y, x ^ y, x + y);
    const short2 s2 = make_short2((short)x, (short)(x >> 16));
    const ushort2 us2 = make_ushort2((unsigned short)y, (unsigned short)(y >> 16));
    const char4 c4 = make_char4((signed char)x, (signed char)(x >> 8), (signed char)(x >> 16), (signed char)(x >> 24));
    const uchar4 uc4 =
        make_uchar4((unsigned char)y, (unsigned char)(y >> 8), (unsigned char)(y >> 16), (unsigned char)(y >> 24));
    o[20] = ((unsigned int)i2.x - (unsigned int)i2.y) ^ u4.z ^ u4.w;
    o[21] = (unsigned int)(s2.x + s2.y) + (unsigned int)(us2.x * 3u + us2.y);
    o[22] = (unsigned int)(c4.x + 2 * c4.y + 3 * c4.z + 4 * c4.w) ^ ((unsigned int)uc4.w << 24 | uc4.x);
    const longlong2 l2 = make_longlong2((long long)xy, (long long)~xy);
    const float2 f2 = make_float2(a, b);
    o[23] = (unsigned int)((l2.x ^ l2.y) == -1LL) + (f2.x == a ? 2u : 0u) + (f2.y == b ? 4u : 0u);
}

// The sizes and alignments of the vector types, as CUDA defines them: 2 words (size, alignment) each.
extern "C" __global__ void vector_layouts(const void* in, void* out, long long unused0, long long unused1) {
    unsigned int* o = (unsigned int*)out;
    int k = 0;
#define LAYOUT(T) o[k++] = sizeof(T); o[k++] = alignof(T);
    LAYOUT(float2) LAYOUT(float4) LAYOUT(int2) LAYOUT(int4) LAYOUT(uint2) LAYOUT(uint4)
    LAYOUT(short2) LAYOUT(ushort2) LAYOUT(char4) LAYOUT(uchar4) LAYOUT(longlong2)
#undef LAYOUT
}
