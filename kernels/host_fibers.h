// host_fibers.h: the fibers that run the CUDA threads of a block of a sync kernel, and the barriers
// between them (__syncthreads, __syncwarp, warp shuffles and votes of host_shim.h). Included once, by
// host_launch.cpp (which runs the grid and hands each host thread's blocks to a FiberWorker).
//
// Each CUDA thread of a block is a fiber with its own stack; they switch among themselves at barriers:
//  * a warp barrier (__syncwarp, shuffles, votes) switches to the next lane of the same warp that can run;
//    the lane that completes the barrier computes every member's result and runs on, so a shuffle costs
//    one switch per lane; lanes of a warp run until all of them wait, then the next warp's;
//  * __syncthreads switches to the next lane that can run, in this warp or the next ones.
// A warp is lanes 32w..32w+31 of the linear thread index. Barrier groups are matched by mask (any call
// site, as on sm_70+); what CUDA leaves undefined (a lane outside its mask, masks naming exited or
// missing lanes, lanes that can never meet, mixed operations on one mask) aborts with a message.
// Exchange: each lane leaves its operand in value[lane] when it arrives; the completing lane writes every
// member's result[lane]. One slot each suffices (no double buffering): a member reads its result as soon
// as it resumes, before it can arrive anywhere again, and no group completes without all its members.
// Context switch: a few instructions on x86-64 (callee-saved registers and stack pointer; MXCSR and the x87
// control word are the same for every fiber and left alone), ucontext elsewhere or with
// -DGQ_FIBER_UCONTEXT. Stacks: kStackBytes per CUDA thread above a kGuardBytes no-access guard, mapped once
// and reused by every block and launch; running into a guard aborts with a message.
#pragma once
#include <dlfcn.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <mutex>
#include <vector>

#if defined(__x86_64__) && !defined(GQ_FIBER_UCONTEXT)
#define GQ_ASM_FIBERS 1
#else
#define GQ_ASM_FIBERS 0
#include <ucontext.h>
#endif

#if GQ_ASM_FIBERS
// gq_fiber_switch(&from_sp, to_sp): saves the callee-saved registers on the current stack, stores the
// stack pointer in *from_sp, loads to_sp and pops the registers saved there. A normal call for the
// compiler, so caller-saved registers and memory are assumed clobbered.
extern "C" void gq_fiber_switch(void** from_sp, void* to_sp) GQ_HIDDEN;
asm(R"(
    .pushsection .text
    .p2align 4
    .globl gq_fiber_switch
    .hidden gq_fiber_switch
    .type gq_fiber_switch, @function
gq_fiber_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size gq_fiber_switch, .-gq_fiber_switch
    .popsection
)");
#endif

namespace {

struct Geometry {
    gq_dim3 grid, block;
};

gq_dim3 thread_index(const gq_dim3& b, unsigned int i) {
    gq_dim3 t;
    t.x = i % b.x;
    t.y = (i / b.x) % b.y;
    t.z = i / (b.x * b.y);
    return t;
}

// ------------------------------------------------------------------------------------------------------
// Contexts
// ------------------------------------------------------------------------------------------------------
struct Context {
#if GQ_ASM_FIBERS
    void* sp = nullptr;
#else
    ucontext_t uc;
#endif
};

// A context that starts entry() (which never returns) on the stack [lo, lo + size).
void context_init(Context& c, char* lo, size_t size, void (*entry)()) {
#if GQ_ASM_FIBERS
    void** sp = (void**)(((uintptr_t)(lo + size)) & ~(uintptr_t)15);
    *--sp = nullptr;         // entry's return address (it never returns): rsp % 16 == 8 at entry, as after a call
    *--sp = (void*)entry;    // where gq_fiber_switch's ret goes
    for (int i = 0; i < 6; ++i) *--sp = nullptr;  // rbp rbx r12 r13 r14 r15
    c.sp = sp;
#else
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = lo;
    c.uc.uc_stack.ss_size = size;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, entry, 0);
#endif
}

inline void context_switch(Context& from, Context& to) {
#if GQ_ASM_FIBERS
    gq_fiber_switch(&from.sp, to.sp);
#else
    swapcontext(&from.uc, &to.uc);
#endif
}

// ------------------------------------------------------------------------------------------------------
// Fiber stacks: one mapping per set, slot i = [guard][stack][color]; sets are reused across blocks and launches.
// ------------------------------------------------------------------------------------------------------
const size_t kStackBytes = 256 * 1024;  // per CUDA thread: a kernel's locals (and what it calls) must fit
const size_t kGuardBytes = 64 * 1024;   // no access, below each stack (a larger frame may skip it)
const size_t kColorBytes = 64 * 1024;   // see stack_color
const size_t kAltStackBytes = 64 * 1024;
const size_t kSlot = kGuardBytes + kStackBytes + kColorBytes;

// How far below the top of its slot fiber i's stack starts (< kColorBytes). The slots are a multiple of
// 64 KiB apart: without this every fiber's hot frames would fall into the same cache sets (L1 and L2)
// and each switch would miss. 320 bytes (5 lines) apart in a page, then page by page.
inline size_t stack_color(size_t i) { return i % 64 * 320 % 4096 + i / 64 % 16 * 4096; }

struct StackSet {
    char* base = nullptr;  // count slots, then the signal stack
    size_t count = 0;
    bool own_altstack = false;
    char* stack(size_t i) const { return base + i * kSlot + kGuardBytes; }
    bool in_guard(const char* a) const {
        return base && a >= base && a < base + count * kSlot && (size_t)(a - base) % kSlot < kGuardBytes;
    }
};

std::mutex g_stacks_mutex;
std::vector<StackSet>& free_stacks() {
    static std::vector<StackSet>* v = new std::vector<StackSet>();  // never destroyed: used until exit
    return *v;
}

void die(const char* what) {
    fprintf(stderr, "gpuquant emulator: %s\n", what);
    abort();
}

StackSet map_stacks(size_t count) {
    StackSet s;
    s.count = count;
    const size_t bytes = count * kSlot + kAltStackBytes;
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) die("cannot map fiber stacks");
    s.base = (char*)p;
    for (size_t i = 0; i < count; ++i)
        if (mprotect(s.base + i * kSlot, kGuardBytes, PROT_NONE) != 0) die("cannot protect fiber stack guards");
    return s;
}

// A set of at least `count` stacks for the calling host thread, with a signal stack for the overflow
// message if the thread has none.
StackSet acquire_stacks(size_t count) {
    StackSet s, too_small;
    {
        std::lock_guard<std::mutex> lock(g_stacks_mutex);
        std::vector<StackSet>& v = free_stacks();
        for (size_t i = 0; i < v.size() && !s.base; ++i)
            if (v[i].count >= count) {
                s = v[i];
                v.erase(v.begin() + i);
            }
        if (!s.base && !v.empty()) {  // replaced by a larger set below
            too_small = v.back();
            v.pop_back();
        }
    }
    if (too_small.base) munmap(too_small.base, too_small.count * kSlot + kAltStackBytes);
    if (!s.base) s = map_stacks(std::max<size_t>(count, 32));
    stack_t cur;
    s.own_altstack = false;
    if (sigaltstack(nullptr, &cur) == 0 && (cur.ss_flags & SS_DISABLE)) {
        stack_t alt = {};
        alt.ss_sp = s.base + s.count * kSlot;
        alt.ss_size = kAltStackBytes;
        s.own_altstack = sigaltstack(&alt, nullptr) == 0;
    }
    return s;
}

void release_stacks(StackSet s) {
    if (s.own_altstack) {
        stack_t off = {};
        off.ss_flags = SS_DISABLE;
        sigaltstack(&off, nullptr);
    }
    std::lock_guard<std::mutex> lock(g_stacks_mutex);
    free_stacks().push_back(s);
}

// ------------------------------------------------------------------------------------------------------
// Block scheduler state (one per host thread running a sync kernel)
// ------------------------------------------------------------------------------------------------------
const unsigned int kMain = ~0u;  // the host thread's own context

// Lanes of one warp waiting at one warp barrier (one mask).
struct Group {
    unsigned int mask, arrived;
    int op;
};

struct Warp {
    unsigned int exists, runnable, at_block, done;  // lane bit sets
    int ngroups;
    Group groups[32];
    unsigned long long value[32], result[32];
    unsigned char src[32];
};

struct Fiber {
    Context ctx;
    gq_dim3 idx;
};

struct Block {
    Context main;
    std::vector<Fiber> fibers;
    std::vector<Warp> warps;
    unsigned int n = 0, nwarps = 0, current = 0, at_block_count = 0, done_count = 0;
    void (*body)(void*) = nullptr;
    void* arg = nullptr;
    const void* kernel = nullptr;
    gq_dim3* thread_idx = nullptr;  // &threadIdx of this host thread (no TLS lookup per switch)
    StackSet stacks;
};

thread_local Block* t_block = nullptr;         // while a block's fibers run
thread_local const void* t_kernel = nullptr;   // the running kernel (messages)
thread_local const StackSet* t_stacks = nullptr;

// ------------------------------------------------------------------------------------------------------
// Messages (cold paths: every one aborts)
// ------------------------------------------------------------------------------------------------------
const char* const kOpNames[] = {"__syncwarp", "__shfl_sync", "__shfl_up_sync", "__shfl_down_sync",
                                "__shfl_xor_sync", "__ballot_sync", "__any_sync", "__all_sync"};

const char* kernel_name(const void* fn) {
    Dl_info info;
    if (!fn || !dladdr(fn, &info) || !info.dli_sname) return "?";
    const char* name = info.dli_sname;
    return strncmp(name, "gq_run_block_", 13) == 0 ? name + 13 : name;
}

// A lane set as "0-15,20".
struct Lanes {
    char s[100];
    explicit Lanes(unsigned int m) {
        size_t k = 0;
        s[0] = 0;
        for (int i = 0; i < 32; ++i) {
            if (!(m >> i & 1)) continue;
            int j = i;
            while (j < 31 && (m >> (j + 1) & 1)) ++j;
            k += (size_t)snprintf(s + k, sizeof s - k, j > i ? "%s%d-%d" : "%s%d", k ? "," : "", i, j);
            i = j;
        }
    }
};

__attribute__((noinline, cold, noreturn, format(printf, 2, 3))) void fail(const Block& b, const char* fmt, ...) {
    fprintf(stderr, "gpuquant emulator: kernel %s, block (%u,%u,%u) of %u threads: ", kernel_name(b.kernel), blockIdx.x,
            blockIdx.y, blockIdx.z, b.n);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    abort();
}

__attribute__((noinline, cold, noreturn)) void fail_not_sync(const char* op) {
    fprintf(stderr,
            "gpuquant emulator: kernel %s calls %s but is not marked sync (set Kernel(sync=True) in its type's "
            "descriptor, gpuquant/quants/__init__.py)\n",
            kernel_name(t_kernel), op);
    abort();
}

// Lanes `missing` of warp w will never come to the barrier that lanes `arrived` wait at.
__attribute__((noinline, cold, noreturn)) void fail_warp(const Block& b, unsigned int w, int op, unsigned int mask,
                                                       unsigned int arrived, unsigned int missing, const char* why) {
    fail(b, "%s(mask=0x%08x) reached by lane%s %s of warp %u cannot complete: lane%s %s: %s", kOpNames[op], mask,
         __builtin_popcount(arrived) > 1 ? "s" : "", Lanes(arrived).s, w, __builtin_popcount(missing) > 1 ? "s" : "",
         Lanes(missing).s, why);
}

__attribute__((noinline, cold, noreturn)) void fail_deadlock(const Block& b) {
    fprintf(stderr, "gpuquant emulator: kernel %s, block (%u,%u,%u) of %u threads: deadlock, no thread can run:\n",
            kernel_name(b.kernel), blockIdx.x, blockIdx.y, blockIdx.z, b.n);
    for (unsigned int w = 0; w < b.nwarps; ++w) {
        const Warp& W = b.warps[w];
        for (int g = 0; g < W.ngroups; ++g)
            fprintf(stderr, "  warp %u: %s(mask=0x%08x) reached by lanes %s, waits for lanes %s\n", w,
                    kOpNames[W.groups[g].op], W.groups[g].mask, Lanes(W.groups[g].arrived).s,
                    Lanes(W.groups[g].mask & ~W.groups[g].arrived).s);
        if (W.at_block) fprintf(stderr, "  warp %u: lanes %s at __syncthreads()\n", w, Lanes(W.at_block).s);
    }
    abort();
}

void on_segv(int, siginfo_t*, void*);
struct sigaction g_old_segv;
std::once_flag g_segv_once;

void install_overflow_handler() {
    std::call_once(g_segv_once, [] {
        struct sigaction sa = {};
        sa.sa_sigaction = on_segv;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, &g_old_segv);
    });
}

// A fault in a fiber stack guard is a stack overflow: say so. Any other fault goes to the previous
// handler (restored; the faulting instruction runs again on return).
void on_segv(int, siginfo_t* si, void*) {
    const StackSet* s = t_stacks;
    if (s && s->in_guard((const char*)si->si_addr)) {
        char msg[256];
        int k = snprintf(msg, sizeof msg,
                         "gpuquant emulator: kernel %s, block (%u,%u,%u): a thread overflowed its %zu KiB fiber "
                         "stack (each CUDA thread of a sync kernel has one): its locals must fit\n",
                         kernel_name(t_kernel), blockIdx.x, blockIdx.y, blockIdx.z, kStackBytes / 1024);
        if (write(2, msg, (size_t)k) < 0) {
        }
        abort();
    }
    sigaction(SIGSEGV, &g_old_segv, nullptr);
}

// ------------------------------------------------------------------------------------------------------
// Scheduling
// ------------------------------------------------------------------------------------------------------
inline Context& context_of(Block& b, unsigned int i) { return i == kMain ? b.main : b.fibers[i].ctx; }

inline void switch_to(Block& b, unsigned int from, unsigned int to) {
    b.current = to;
    if (to != kMain) *b.thread_idx = b.fibers[to].idx;
    context_switch(context_of(b, from), context_of(b, to));
}

// The fiber to run after `tid` stops: the next runnable lane of its warp (in ring order), else the first
// runnable lane of the next warps, else the host thread once every fiber has finished.
unsigned int next_fiber(Block& b, unsigned int tid) {
    const unsigned int w = tid >> 5, lane = tid & 31;
    const unsigned int r = b.warps[w].runnable;
    if (r) {
        const unsigned int above = r & ~((2u << lane) - 1u);
        return (w << 5) + (unsigned int)__builtin_ctz(above ? above : r);
    }
    for (unsigned int k = 1; k < b.nwarps; ++k) {
        const unsigned int v = (w + k) % b.nwarps;
        if (b.warps[v].runnable) return (v << 5) + (unsigned int)__builtin_ctz(b.warps[v].runnable);
    }
    if (b.done_count == b.n) return kMain;
    fail_deadlock(b);
}

inline void wait_here(Block& b, unsigned int tid) { switch_to(b, tid, next_fiber(b, tid)); }

[[noreturn]] void fiber_main() {
    Block& b = *t_block;
    b.body(b.arg);
    const unsigned int tid = b.current, w = tid >> 5, bit = 1u << (tid & 31);
    Warp& W = b.warps[w];
    for (int g = 0; g < W.ngroups; ++g)
        if (W.groups[g].mask & bit)
            fail_warp(b, w, W.groups[g].op, W.groups[g].mask, W.groups[g].arrived, bit, "exited");
    if (b.at_block_count) fail(b, "a thread exited while others wait at __syncthreads()");
    W.done |= bit;
    W.runnable &= ~bit;
    ++b.done_count;
    wait_here(b, tid);
    __builtin_unreachable();
}

void run_block_fibers(Block& b) {
    if (b.n == 0) return;
    for (unsigned int i = 0; i < b.n; ++i)
        context_init(b.fibers[i].ctx, b.stacks.stack(i), kStackBytes + kColorBytes - stack_color(i), fiber_main);
    for (Warp& W : b.warps) {
        W.runnable = W.exists;
        W.at_block = W.done = 0;
        W.ngroups = 0;
    }
    b.at_block_count = b.done_count = 0;
    t_block = &b;
    switch_to(b, kMain, 0);
    t_block = nullptr;
}

// Per host thread state of a sync launch: the fibers of one block, reused for every block.
struct FiberWorker {
    Block b;
    FiberWorker(const Geometry& g, void (*body)(void*), void* arg, const void* kernel) {
        b.n = g.block.x * g.block.y * g.block.z;
        b.nwarps = (b.n + 31) / 32;
        b.fibers.resize(b.n);
        for (unsigned int i = 0; i < b.n; ++i) b.fibers[i].idx = thread_index(g.block, i);
        b.warps.resize(b.nwarps);
        for (unsigned int w = 0; w < b.nwarps; ++w) {
            const unsigned int lanes = std::min(32u, b.n - 32 * w);
            b.warps[w].exists = lanes == 32 ? ~0u : (1u << lanes) - 1u;
        }
        b.body = body;
        b.arg = arg;
        b.kernel = kernel;
        b.thread_idx = &threadIdx;
        b.stacks = acquire_stacks(b.n);
        t_stacks = &b.stacks;
    }
    FiberWorker(const FiberWorker&) = delete;
    FiberWorker& operator=(const FiberWorker&) = delete;
    ~FiberWorker() {
        t_stacks = nullptr;
        release_stacks(b.stacks);
    }
    void run_block() { run_block_fibers(b); }
};

}  // namespace

// ------------------------------------------------------------------------------------------------------
// Barriers (host_shim.h)
// ------------------------------------------------------------------------------------------------------

void gq_host_syncthreads() {
    Block* bp = t_block;
    if (__builtin_expect(!bp, 0)) fail_not_sync("__syncthreads");
    Block& b = *bp;
    const unsigned int tid = b.current, w = tid >> 5, bit = 1u << (tid & 31);
    Warp& W = b.warps[w];
    for (int g = 0; g < W.ngroups; ++g)
        if (W.groups[g].mask & bit)
            fail_warp(b, w, W.groups[g].op, W.groups[g].mask, W.groups[g].arrived, bit, "at __syncthreads()");
    if (b.done_count) fail(b, "__syncthreads() reached after some threads of the block exited");
    if (++b.at_block_count == b.n) {  // the last one: release every thread and run on
        for (Warp& v : b.warps) {
            v.runnable |= v.at_block;
            v.at_block = 0;
        }
        b.at_block_count = 0;
        return;
    }
    W.at_block |= bit;
    W.runnable &= ~bit;
    wait_here(b, tid);
}

namespace {

// Why a lane may not enter a warp barrier with this mask (undefined in CUDA): abort.
__attribute__((noinline, cold, noreturn)) void fail_arrival(const Block& b, int op, unsigned int mask) {
    const unsigned int tid = b.current, w = tid >> 5, lane = tid & 31, bit = 1u << lane;
    const Warp& W = b.warps[w];
    if (!(mask & bit))
        fail(b, "lane %u of warp %u calls %s(mask=0x%08x) without its own bit", lane, w, kOpNames[op], mask);
    if (mask & ~W.exists)
        fail(b, "%s(mask=0x%08x) in warp %u names lanes %s that the block does not have", kOpNames[op], mask, w,
             Lanes(mask & ~W.exists).s);
    unsigned int arrived = bit;
    for (int g = 0; g < W.ngroups; ++g)
        if (W.groups[g].mask == mask) arrived |= W.groups[g].arrived;
    if (mask & W.done) fail_warp(b, w, op, mask, arrived, mask & W.done, "exited");
    fail_warp(b, w, op, mask, arrived, mask & W.at_block, "at __syncthreads()");
}

__attribute__((noinline, cold, noreturn)) void fail_width(const Block& b, int op, int width) {
    fail(b, "%s with width %d (a power of 2 from 1 to 32 in CUDA)", kOpNames[op], width);
}

// The lane a shuffle reads (PTX shfl.sync: b[4:0], segment mask 32 - width, clamp 31 or, for .up, 0);
// its own lane when the computed one is outside its segment.
inline unsigned int shuffle_source(const Block& b, int op, unsigned int lane, int bval, int width) {
    if (__builtin_expect(width < 1 || width > 32 || (width & (width - 1)), 0)) fail_width(b, op, width);
    const int seg = (32 - width) & 31, l = (int)lane, v = bval & 31;
    const int min_lane = l & seg, max_lane = min_lane | (31 & ~seg);
    switch (op) {
        case GQ_OP_SHFL_UP: return (unsigned int)(l - v >= min_lane ? l - v : l);
        case GQ_OP_SHFL_DOWN: return (unsigned int)(l + v <= max_lane ? l + v : l);
        case GQ_OP_SHFL_XOR: return (unsigned int)((l ^ v) <= max_lane ? l ^ v : l);
        default: return (unsigned int)(min_lane | (v & ~seg));  // idx: always inside the segment
    }
}

__attribute__((noinline, cold, noreturn)) void fail_join(const Block& b, const Group& G, int op, unsigned int mask) {
    const unsigned int w = b.current >> 5, bit = 1u << (b.current & 31);
    char why[96];
    if (G.mask == mask)
        snprintf(why, sizeof why, "calls %s instead", kOpNames[op]);
    else
        snprintf(why, sizeof why, "waits at %s(mask=0x%08x), which needs lanes already waiting here", kOpNames[op],
                 mask);
    fail_warp(b, w, G.op, G.mask, G.arrived, bit, why);
}

// The barrier group of `mask` that lane `bit` joins, created if none waits yet. Lanes already waiting in
// another group that needs this lane, while this barrier needs them, can never meet: abort.
inline Group& join_group(const Block& b, Warp& W, int op, unsigned int mask, unsigned int bit) {
    for (int g = 0; g < W.ngroups; ++g) {
        Group& G = W.groups[g];
        if (G.mask == mask) {
            if (__builtin_expect(G.op != op, 0)) fail_join(b, G, op, mask);
            return G;
        }
        if (__builtin_expect((G.mask & bit) && (G.arrived & mask), 0)) fail_join(b, G, op, mask);
    }
    Group& G = W.groups[W.ngroups++];
    G.mask = mask;
    G.arrived = 0;
    G.op = op;
    return G;
}

// The group is full: every member gets its result and becomes runnable.
inline void complete_group(Warp& W, Group& G) {
    const unsigned int m = G.mask;
    if (G.op >= GQ_OP_BALLOT) {
        unsigned int ballot = 0;
        for (unsigned int r = m; r; r &= r - 1) ballot |= (W.value[__builtin_ctz(r)] != 0) << __builtin_ctz(r);
        for (unsigned int r = m; r; r &= r - 1) W.result[__builtin_ctz(r)] = ballot;
    } else if (G.op != GQ_OP_SYNCWARP) {
        for (unsigned int r = m; r; r &= r - 1) {
            const int j = __builtin_ctz(r), s = W.src[j];
            W.result[j] = (m >> s & 1) ? W.value[s] : GQ_SHFL_UNDEFINED;
        }
    }
    W.runnable |= m;
    G = W.groups[--W.ngroups];
}

}  // namespace

unsigned long long gq_host_warp(int op, unsigned int mask, unsigned long long value, int bval, int width) {
    Block* bp = t_block;
    if (__builtin_expect(!bp, 0)) fail_not_sync(kOpNames[op]);
    Block& b = *bp;
    const unsigned int tid = b.current, lane = tid & 31, bit = 1u << lane;
    Warp& W = b.warps[tid >> 5];
    if (__builtin_expect(!(mask & bit) || (mask & ~W.exists) || (mask & (W.done | W.at_block)), 0))
        fail_arrival(b, op, mask);
    W.value[lane] = value;
    if (op >= GQ_OP_SHFL_IDX && op <= GQ_OP_SHFL_XOR)
        W.src[lane] = (unsigned char)shuffle_source(b, op, lane, bval, width);
    Group& G = join_group(b, W, op, mask, bit);
    G.arrived |= bit;
    if (G.arrived == mask) {  // the last member: exchange and run on
        complete_group(W, G);
        return W.result[lane];
    }
    W.runnable &= ~bit;
    wait_here(b, tid);
    return W.result[lane];
}

