// host_launch.cpp: runs a CUDA grid of a kernel compiled for the host through host_shim.h.
//
// Linked into every emulated kernel library by gpuquant/backends/emulated.py. The grid/block geometry is
// exactly the GPU's (gpuquant/backends/kernels.py computes it once for both). Thread blocks are handed out
// to `nthreads` host threads through an atomic counter. The CUDA threads of one block run on one host
// thread: in threadIdx order for kernels without barriers (sync == 0, usually through a generated block
// runner that inlines the kernel into the loop over the block's threads), or as fibers (sync != 0, see
// host_fibers.h).
#include <atomic>
#include <thread>

__thread gq_dim3 threadIdx GQ_HIDDEN;
__thread gq_dim3 blockIdx GQ_HIDDEN;
__thread gq_dim3 blockDim GQ_HIDDEN;
__thread gq_dim3 gridDim GQ_HIDDEN;
__thread int gq_phase_runner GQ_HIDDEN = 0;
__thread int gq_phase_current GQ_HIDDEN = 0;
__thread int gq_phase_count GQ_HIDDEN = 1;

#include "host_fibers.h"

namespace {

typedef void (*QuantizeFn)(const void*, uint8_t*, const float*, const float*, long long, long long, long long);
// dequantize_<type> and rowstat_* share one shape: (const in*, out*, n_per_row, nrows)
typedef void (*ConvertFn)(const void*, void*, long long, long long);

// ------------------------------------------------------------------------------------------------------
// Grid
// ------------------------------------------------------------------------------------------------------

// Hands the grid's blocks out to nthreads host threads (the calling one included) through an atomic
// counter; make_state() builds each host thread's state, run_block(state) runs the block whose blockIdx
// is set.
template <class MakeState, class RunBlock>
void for_each_block(const Geometry& g, int nthreads, const void* kernel, MakeState make_state, RunBlock run_block) {
    const long long nbx = g.grid.x, nby = g.grid.y, nbz = g.grid.z;
    const long long total = nbx * nby * nbz;
    if (total <= 0) return;
    std::atomic<long long> next(0);
    // a few blocks per grab keeps the counter cold but the tail short
    const long long chunk = std::max(1LL, std::min(16LL, total / (8LL * std::max(nthreads, 1))));
    auto worker = [&]() {
        blockDim = g.block;
        gridDim = g.grid;
        t_kernel = kernel;
        auto state = make_state();  // a prvalue: built in place (C++17)
        for (;;) {
            const long long b0 = next.fetch_add(chunk);
            if (b0 >= total) break;
            const long long b1 = std::min(total, b0 + chunk);
            for (long long b = b0; b < b1; ++b) {
                blockIdx.x = (unsigned int)(b % nbx);
                blockIdx.y = (unsigned int)((b / nbx) % nby);
                blockIdx.z = (unsigned int)(b / (nbx * nby));
                run_block(state);
            }
        }
    };
    const int extra = (int)std::min((long long)std::max(nthreads, 1) - 1, total - 1);
    std::vector<std::thread> pool;
    pool.reserve(extra);
    for (int i = 0; i < extra; ++i) pool.emplace_back(worker);
    worker();
    for (std::thread& t : pool) t.join();
}

struct NoState {};

// Runs the whole grid; body(arg) runs one CUDA thread (indices already set). kernel: for messages.
void run_grid(const Geometry& g, int nthreads, int sync, void (*body)(void*), void* arg, const void* kernel) {
    if (sync) {
        install_overflow_handler();
        for_each_block(
            g, nthreads, kernel, [&] { return FiberWorker(g, body, arg, kernel); },
            [](FiberWorker& f) { f.run_block(); });
        return;
    }
    const unsigned int threads_per_block = g.block.x * g.block.y * g.block.z;
    for_each_block(
        g, nthreads, kernel, [] { return NoState(); },
        [&](NoState&) {
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

// ------------------------------------------------------------------------------------------------------
// Launch entry points (gpuquant/backends/emulated.py)
// ------------------------------------------------------------------------------------------------------

namespace {

struct BlockArgs {
    void (*runner)(const void* const*, const long long*);
    const void* const* ptrs;
    const long long* ints;
};

// With a block runner (generated by emulated.py next to the kernel, so the kernel inlines into the loop
// over the block's threads) the grid calls it once per block instead of the kernel once per thread.
void run_grid_blocks(const Geometry& g, int nthreads, const BlockArgs& a) {
    for_each_block(
        g, nthreads, (const void*)a.runner, [] { return NoState(); },
        [&](NoState&) { a.runner(a.ptrs, a.ints); });
}

}  // namespace

// geom: grid x, y, z, block x, y, z.
extern "C" int gq_launch_quantize(void* fn, const void* src, uint8_t* dst, const float* qw, const float* rowstat,
                                  long long n_per_row, long long rows_per_expert, long long n_expert,
                                  const long long* geom, int nthreads, int sync) {
    QuantizeArgs a = {(QuantizeFn)fn, src, dst, qw, rowstat, n_per_row, rows_per_expert, n_expert};
    run_grid(make_geometry(geom), nthreads, sync, quantize_body, &a, fn);
    return 0;
}

extern "C" int gq_launch_convert(void* fn, const void* src, void* dst, long long n_per_row, long long nrows,
                                 const long long* geom, int nthreads, int sync) {
    ConvertArgs a = {(ConvertFn)fn, src, dst, n_per_row, nrows};
    run_grid(make_geometry(geom), nthreads, sync, convert_body, &a, fn);
    return 0;
}

// runner: gq_run_block_<kernel>(ptrs, ints) of a kernel without barriers; ptrs/ints: its pointer and
// integer arguments in order.
extern "C" int gq_launch_blocks(void* runner, const void* const* ptrs, const long long* ints, const long long* geom,
                                int nthreads) {
    BlockArgs a = {(void (*)(const void* const*, const long long*))runner, ptrs, ints};
    run_grid_blocks(make_geometry(geom), nthreads, a);
    return 0;
}
