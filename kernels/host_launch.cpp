// host_launch.cpp: runs a CUDA grid of a kernel compiled for the host through host_shim.h.
//
// Linked into every emulated kernel library by gpuquant/backends/emulated.py. The grid/block geometry is
// exactly the GPU's (gpuquant/backends/kernels.py computes it once for both). Thread blocks are handed out
// to `nthreads` host threads through an atomic counter; the CUDA threads of one block run on one host
// thread, in threadIdx order, or as fibers when the kernel uses __syncthreads (sync != 0).
#include <stdio.h>
#include <stdlib.h>
#include <ucontext.h>

#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

__thread gq_dim3 threadIdx GQ_HIDDEN;
__thread gq_dim3 blockIdx GQ_HIDDEN;
__thread gq_dim3 blockDim GQ_HIDDEN;
__thread gq_dim3 gridDim GQ_HIDDEN;

namespace {

typedef void (*QuantizeFn)(const void*, uint8_t*, const float*, const float*, long long, long long, long long);
// dequantize_<type> and rowstat_* share one shape: (const in*, out*, n_per_row, nrows)
typedef void (*ConvertFn)(const void*, void*, long long, long long);

struct Geometry {
    gq_dim3 grid, block;
};

// Per-host-thread fiber state for blocks of sync kernels.
const size_t kFiberStack = 256 * 1024;

struct Fiber {
    ucontext_t ctx;
    char* stack = nullptr;
    bool done = false;
};

thread_local bool t_fiber_mode = false;
thread_local ucontext_t t_sched;
thread_local std::vector<Fiber>* t_fibers = nullptr;
thread_local int t_current = 0;
thread_local void (*t_body)(void*) = nullptr;
thread_local void* t_body_arg = nullptr;

void fiber_entry() {
    t_body(t_body_arg);
    (*t_fibers)[t_current].done = true;
    // returning resumes uc_link (the scheduler)
}

gq_dim3 thread_index(const gq_dim3& b, unsigned int i) {
    gq_dim3 t;
    t.x = i % b.x;
    t.y = (i / b.x) % b.y;
    t.z = i / (b.x * b.y);
    return t;
}

// Runs the CUDA threads of the current block (blockIdx/blockDim set) as fibers; each __syncthreads
// yields back here, and a phase ends when every fiber has yielded or finished.
void run_block_fibers(void (*body)(void*), void* arg, std::vector<Fiber>& fibers) {
    const unsigned int n = blockDim.x * blockDim.y * blockDim.z;
    if (fibers.size() < n) fibers.resize(n);
    for (unsigned int i = 0; i < n; ++i) {
        Fiber& f = fibers[i];
        if (!f.stack) {
            f.stack = (char*)malloc(kFiberStack);
            if (!f.stack) {
                fprintf(stderr, "gpuquant emulator: out of memory for fiber stacks\n");
                abort();
            }
        }
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack;
        f.ctx.uc_stack.ss_size = kFiberStack;
        f.ctx.uc_link = &t_sched;
        makecontext(&f.ctx, fiber_entry, 0);
        f.done = false;
    }
    t_fibers = &fibers;
    t_body = body;
    t_body_arg = arg;
    t_fiber_mode = true;
    for (;;) {
        unsigned int finished = 0;
        for (unsigned int i = 0; i < n; ++i) {
            if (fibers[i].done) {
                ++finished;
                continue;
            }
            t_current = (int)i;
            threadIdx = thread_index(blockDim, i);
            swapcontext(&t_sched, &fibers[i].ctx);
            if (fibers[i].done) ++finished;
        }
        if (finished == n) break;
        if (finished != 0) {
            fprintf(stderr, "gpuquant emulator: __syncthreads() not reached by every thread of block (%u,%u,%u)\n",
                    blockIdx.x, blockIdx.y, blockIdx.z);
            abort();
        }
    }
    t_fiber_mode = false;
}

// Hands the grid's blocks out to nthreads host threads (the calling one included) through an atomic
// counter; run_block(fibers) runs the block whose blockIdx is set, fibers being its host thread's stacks.
template <class RunBlock>
void for_each_block(const Geometry& g, int nthreads, RunBlock run_block) {
    const long long nbx = g.grid.x, nby = g.grid.y, nbz = g.grid.z;
    const long long total = nbx * nby * nbz;
    if (total <= 0) return;
    std::atomic<long long> next(0);
    // a few blocks per grab keeps the counter cold but the tail short
    const long long chunk = std::max(1LL, std::min(16LL, total / (8LL * std::max(nthreads, 1))));
    auto worker = [&]() {
        std::vector<Fiber> fibers;
        blockDim = g.block;
        gridDim = g.grid;
        for (;;) {
            const long long b0 = next.fetch_add(chunk);
            if (b0 >= total) break;
            const long long b1 = std::min(total, b0 + chunk);
            for (long long b = b0; b < b1; ++b) {
                blockIdx.x = (unsigned int)(b % nbx);
                blockIdx.y = (unsigned int)((b / nbx) % nby);
                blockIdx.z = (unsigned int)(b / (nbx * nby));
                run_block(fibers);
            }
        }
        for (Fiber& f : fibers) free(f.stack);
    };
    const int extra = (int)std::min((long long)std::max(nthreads, 1) - 1, total - 1);
    std::vector<std::thread> pool;
    pool.reserve(extra);
    for (int i = 0; i < extra; ++i) pool.emplace_back(worker);
    worker();
    for (std::thread& t : pool) t.join();
}

// Runs the whole grid; body(arg) runs one CUDA thread (indices already set).
void run_grid(const Geometry& g, int nthreads, int sync, void (*body)(void*), void* arg) {
    const unsigned int threads_per_block = g.block.x * g.block.y * g.block.z;
    for_each_block(g, nthreads, [&](std::vector<Fiber>& fibers) {
        if (sync) {
            run_block_fibers(body, arg, fibers);
            return;
        }
        for (unsigned int i = 0; i < threads_per_block; ++i) {
            threadIdx = thread_index(g.block, i);
            body(arg);
        }
    });
}

struct QuantizeArgs {
    QuantizeFn fn;
    const void* src;
    uint8_t* dst;
    const float* qw;
    const float* rowstat;
    long long n_per_row, rows_per_expert, n_expert;
};

void quantize_body(void* p) {
    const QuantizeArgs& a = *(const QuantizeArgs*)p;
    a.fn(a.src, a.dst, a.qw, a.rowstat, a.n_per_row, a.rows_per_expert, a.n_expert);
}

struct ConvertArgs {
    ConvertFn fn;
    const void* src;
    void* dst;
    long long n_per_row, nrows;
};

void convert_body(void* p) {
    const ConvertArgs& a = *(const ConvertArgs*)p;
    a.fn(a.src, a.dst, a.n_per_row, a.nrows);
}

Geometry make_geometry(const long long* geom) {
    Geometry g;
    g.grid = {(unsigned int)geom[0], (unsigned int)geom[1], (unsigned int)geom[2]};
    g.block = {(unsigned int)geom[3], (unsigned int)geom[4], (unsigned int)geom[5]};
    return g;
}

}  // namespace

void gq_host_syncthreads() {
    if (!t_fiber_mode) {
        fprintf(stderr,
                "gpuquant emulator: a kernel called __syncthreads() but is not marked sync=True in "
                "gpuquant/backends/kernels.py\n");
        abort();
    }
    swapcontext(&(*t_fibers)[t_current].ctx, &t_sched);
    threadIdx = thread_index(blockDim, (unsigned int)t_current);
}

namespace {

struct BlockArgs {
    void (*runner)(const void* const*, const long long*);
    const void* const* ptrs;
    const long long* ints;
};

// With a block runner (generated by emulated.py next to the kernel, so the kernel inlines into the loop
// over the block's threads) the grid calls it once per block instead of the kernel once per thread.
void run_grid_blocks(const Geometry& g, int nthreads, const BlockArgs& a) {
    for_each_block(g, nthreads, [&](std::vector<Fiber>&) { a.runner(a.ptrs, a.ints); });
}

}  // namespace

// geom: grid x, y, z, block x, y, z.
extern "C" int gq_launch_quantize(void* fn, const void* src, uint8_t* dst, const float* qw, const float* rowstat,
                                  long long n_per_row, long long rows_per_expert, long long n_expert,
                                  const long long* geom, int nthreads, int sync) {
    QuantizeArgs a = {(QuantizeFn)fn, src, dst, qw, rowstat, n_per_row, rows_per_expert, n_expert};
    run_grid(make_geometry(geom), nthreads, sync, quantize_body, &a);
    return 0;
}

extern "C" int gq_launch_convert(void* fn, const void* src, void* dst, long long n_per_row, long long nrows,
                                 const long long* geom, int nthreads, int sync) {
    ConvertArgs a = {(ConvertFn)fn, src, dst, n_per_row, nrows};
    run_grid(make_geometry(geom), nthreads, sync, convert_body, &a);
    return 0;
}

// runner: gq_run_block_<kernel>(ptrs, ints) of a kernel without __syncthreads; ptrs/ints: its pointer and
// integer arguments in order.
extern "C" int gq_launch_blocks(void* runner, const void* const* ptrs, const long long* ints, const long long* geom,
                                int nthreads) {
    BlockArgs a = {(void (*)(const void* const*, const long long*))runner, ptrs, ints};
    run_grid_blocks(make_geometry(geom), nthreads, a);
    return 0;
}
