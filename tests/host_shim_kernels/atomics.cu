// Atomics under contention: global accumulators hit by every thread of many blocks (blocks run on
// parallel host threads), and per-block histograms in shared memory.
#include "common_test.cuh"

struct Accumulators {
    int count;
    unsigned int umax;
    unsigned int bits;
    int imax;
    unsigned long long usum;
    unsigned long long bits64;
    long long llmax;
    double dsum;
    float fsum;
    int cas_sum;
    unsigned int ticket;
    float ftz[3];
    unsigned int umin;
    unsigned int pad_;
};

// out: Accumulators (zeroed by the caller), then one ticket per thread
extern "C" __global__ void atomics_global(const void* in, void* out, long long unused0, long long unused1) {
    const unsigned long long g = global_tid();
    const unsigned int v = ((const unsigned int*)in)[g];
    Accumulators* acc = (Accumulators*)out;
    atomicAdd(&acc->count, 1);
    atomicAdd(&acc->usum, (unsigned long long)v);
    atomicAdd(&acc->dsum, (double)v);
    atomicAdd(&acc->fsum, 1.0f);
    atomicMax(&acc->umax, v);
    atomicMin(&acc->umin, v);
    atomicMax(&acc->imax, (int)(v % 100003u) - 50000);
    atomicMax(&acc->llmax, -3LL * (long long)v);
    atomicOr(&acc->bits, 1u << (v % 32));
    atomicOr(&acc->bits64, 1ull << (v % 64));
    int old = acc->cas_sum, assumed;
    do {
        assumed = old;
        old = atomicCAS(&acc->cas_sum, assumed, assumed + (int)(v & 7));
    } while (old != assumed);
    ((unsigned int*)(acc + 1))[g] = atomicAdd(&acc->ticket, 1u);
    if (g == 0) {  // atom.add.f32 flushes subnormals: inputs and results
        atomicAdd(&acc->ftz[0], 1e-40f);
        acc->ftz[1] = 1.5e-38f;
        atomicAdd(&acc->ftz[1], -1.4e-38f);
        acc->ftz[2] = -1e-39f;
        atomicAdd(&acc->ftz[2], 2.0f);
    }
}

// out: per block, a 16-bin histogram of v & 15 and (as float bits) the count of odd v
extern "C" __global__ void atomics_shared(const void* in, void* out, long long unused0, long long unused1) {
    __shared__ unsigned int hist[16];
    __shared__ float odd;
    const unsigned int t = linear_tid();
    const unsigned int v = ((const unsigned int*)in)[global_tid()];
    if (t < 16) hist[t] = 0;
    if (t == 0) odd = 0.0f;
    __syncthreads();
    atomicAdd(&hist[v & 15], 1u);
    if (v & 1) atomicAdd(&odd, 1.0f);
    __syncthreads();
    unsigned int* o = (unsigned int*)out + blockIdx.x * 17;
    if (t < 16) o[t] = hist[t];
    if (t == 16) o[16] = __float_as_uint(odd);
}
