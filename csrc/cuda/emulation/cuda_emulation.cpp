/* cuda_emulation.cpp: the runtime behind cuda_emulation.h: CUDA threads as fibers (a hand-written x86-64
 * context switch, ucontext elsewhere), the block barrier and warp collectives with deadlock detection, the
 * mma.m16n8k32 fragment layout, device memory on the host heap with range checks, streams, events and
 * CUDA graphs (stream capture and replay), and the error state (cudaGetLastError and friends). One runtime
 * call runs at a time (a mutex); kernels run inside the launch call, on the calling OS thread. */
#if defined(__APPLE__) /* ucontext needs the X/Open names; mmap's MAP_ANONYMOUS the Darwin ones */
#define _XOPEN_SOURCE 700
#define _DARWIN_C_SOURCE 1
#endif
#include "cuda_emulation.h"

#include <stdarg.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#ifndef PL_EMU_ASM_SWITCH /* -DPL_EMU_ASM_SWITCH=0 tests the ucontext fallback on x86-64 */
#if defined(__x86_64__) && defined(__ELF__)
#define PL_EMU_ASM_SWITCH 1
#else
#define PL_EMU_ASM_SWITCH 0
#endif
#endif
#if !PL_EMU_ASM_SWITCH
#include <ucontext.h>
#endif

#pragma GCC visibility push(hidden)

namespace pl_emu {
uint3 g_thread_idx, g_block_idx;
dim3 g_block_dim, g_grid_dim;
} // namespace pl_emu

/* ================================================================ fibers */
namespace {

enum State { RUNNABLE, WAIT_BLOCK, WAIT_WARP, EXITED, FAILED };

struct Fiber {
    void *sp = nullptr; /* saved stack pointer (asm switch) */
#if !PL_EMU_ASM_SWITCH
    ucontext_t uc;
#endif
    char *mem = nullptr; /* the mapping: guard page, then the stack */
    size_t mem_size = 0;
    int index = 0; /* linear thread index in the block */
    uint3 tid{0, 0, 0};
    State state = RUNNABLE;
    int wait_op = 0;
    unsigned wait_mask = 0;
    void *wait_slot = nullptr;
    const char *wait_name = nullptr;
};

const size_t kStackBytes = 256 * 1024; /* address space only: pages are used as touched */

struct Scheduler {
    std::vector<Fiber *> pool; /* fibers, reused by every launch */
    int n = 0;                 /* threads of the current block */
    int live = 0;              /* of them not exited */
    int block_waiting = 0;     /* at __syncthreads() */
    int bar_count = 0;         /* of them with a true predicate (__syncthreads_count / _and / _or) */
    std::vector<unsigned> warp_waiting; /* per warp: its lanes waiting at a warp collective */
    std::vector<pl_emu::LaneSlot> slots; /* per thread: its shuffle / vote operands and result */
    int bar_result = 0;        /* the last completed barrier's count: each thread reads it as it leaves */
    int bar_arrived = 0;       /* and how many threads it waited for */
    bool reverse = false;      /* run a block's threads from the last (PYLLM_CUDA_EMU_ORDER=reverse) */
    Fiber *cur = nullptr;      /* running, or null on the scheduler's own stack */
    void *sched_sp = nullptr;
#if !PL_EMU_ASM_SWITCH
    ucontext_t sched_uc;
#endif
    const std::function<void()> *body = nullptr;
    const pl_emu::Launch *launch = nullptr;
    bool failed = false;
    std::string fail_msg;
    std::vector<unsigned char> smem; /* dynamic shared memory */
    size_t smem_bytes = 0;
    uint64_t switches = 0;
};
Scheduler S;

} // namespace

extern "C" void pl_emu_fiber_main(Fiber *f);

#if PL_EMU_ASM_SWITCH
/* pl_emu_switch(save, load): pushes the callee-saved registers of the System V x86-64 ABI (rbp rbx r12-r15)
 * and the SSE / x87 control words, stores rsp in *save, loads rsp = load and pops what that context pushed.
 * A new fiber's stack is laid out as if it had called pl_emu_switch, returning into pl_emu_fiber_start with
 * the Fiber * in r12 (see init_fiber). Returning to another stack is what a CET shadow stack forbids: CMake
 * compiles this file with -fcf-protection=none, so the extension is not marked shadow-stack compatible. */
extern "C" void pl_emu_switch(void **save, void *load);
extern "C" void pl_emu_fiber_start(void);
__asm__(".pushsection .text\n"
        ".globl pl_emu_switch\n"
        ".hidden pl_emu_switch\n"
        ".type pl_emu_switch,@function\n"
        "pl_emu_switch:\n"
        "  pushq %rbp\n"
        "  pushq %rbx\n"
        "  pushq %r12\n"
        "  pushq %r13\n"
        "  pushq %r14\n"
        "  pushq %r15\n"
        "  subq $8, %rsp\n"
        "  stmxcsr (%rsp)\n"
        "  fnstcw 4(%rsp)\n"
        "  movq %rsp, (%rdi)\n"
        "  movq %rsi, %rsp\n"
        "  ldmxcsr (%rsp)\n"
        "  fldcw 4(%rsp)\n"
        "  addq $8, %rsp\n"
        "  popq %r15\n"
        "  popq %r14\n"
        "  popq %r13\n"
        "  popq %r12\n"
        "  popq %rbx\n"
        "  popq %rbp\n"
        "  ret\n"
        ".size pl_emu_switch, .-pl_emu_switch\n"
        ".globl pl_emu_fiber_start\n"
        ".hidden pl_emu_fiber_start\n"
        ".type pl_emu_fiber_start,@function\n"
        "pl_emu_fiber_start:\n"
        "  movq %r12, %rdi\n"
        "  call pl_emu_fiber_main\n"
        "  ud2\n"
        ".size pl_emu_fiber_start, .-pl_emu_fiber_start\n"
        ".popsection\n");
#else
static void fiber_trampoline(unsigned lo, unsigned hi) {
    pl_emu_fiber_main((Fiber *)(((uintptr_t)hi << 32) | lo));
}
#endif

namespace {

/* a fresh start: the next switch into f runs pl_emu_fiber_main(f) from the top of its stack */
void init_fiber(Fiber *f) {
    char *top = f->mem + f->mem_size; /* page aligned */
#if PL_EMU_ASM_SWITCH
    uint64_t *sp = (uint64_t *)(top - 64);
    uint32_t mxcsr;
    uint16_t fpcw;
    __asm__ volatile("stmxcsr %0" : "=m"(mxcsr));
    __asm__ volatile("fnstcw %0" : "=m"(fpcw));
    sp[0] = (uint64_t)mxcsr | ((uint64_t)fpcw << 32);
    sp[1] = sp[2] = sp[3] = 0;      /* r15 r14 r13 */
    sp[4] = (uint64_t)(uintptr_t)f; /* r12 */
    sp[5] = sp[6] = 0;              /* rbx rbp */
    sp[7] = (uint64_t)(uintptr_t)&pl_emu_fiber_start; /* ret: at top - 8, so rsp = top (16-aligned) after it */
    f->sp = sp;
#else
    getcontext(&f->uc);
    f->uc.uc_stack.ss_sp = f->mem + getpagesize();
    f->uc.uc_stack.ss_size = f->mem_size - getpagesize();
    f->uc.uc_link = nullptr;
    const uintptr_t p = (uintptr_t)f;
    makecontext(&f->uc, (void (*)())fiber_trampoline, 2, (unsigned)(p & 0xFFFFFFFFu), (unsigned)(p >> 32));
    (void)top;
#endif
}

bool grow_pool(int n) {
    const size_t page = (size_t)getpagesize();
    while ((int)S.pool.size() < n) {
        Fiber *f = new Fiber();
        f->mem_size = kStackBytes + page;
        void *m = mmap(nullptr, f->mem_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) {
            delete f;
            return false;
        }
        f->mem = (char *)m;
        mprotect(f->mem, page, PROT_NONE); /* a stack overflow faults instead of corrupting the next stack */
        f->index = (int)S.pool.size();
        init_fiber(f);
        S.pool.push_back(f);
    }
    return true;
}

/* scheduler -> fiber f, until f yields */
inline void run_fiber(Fiber *f) {
    S.cur = f;
    pl_emu::g_thread_idx = f->tid;
    S.switches += 2; /* in, and (eventually, from this or another fiber) back */
#if PL_EMU_ASM_SWITCH
    pl_emu_switch(&S.sched_sp, f->sp);
#else
    swapcontext(&S.sched_uc, &f->uc);
#endif
    S.cur = nullptr;
}

/* the running fiber -> the scheduler; returns when the scheduler runs it again */
inline void yield_fiber(Fiber *f) {
#if PL_EMU_ASM_SWITCH
    pl_emu_switch(&f->sp, S.sched_sp);
#else
    swapcontext(&f->uc, &S.sched_uc);
#endif
}

/* the next runnable thread after index i in the turn order (wrapping round), or null */
inline Fiber *next_runnable(int i) {
    for (int k = 1; k <= S.n; k++) {
        int j = S.reverse ? i - k : i + k;
        j = j < 0 ? j + S.n : j >= S.n ? j - S.n : j;
        if (S.pool[j]->state == RUNNABLE) return S.pool[j];
    }
    return nullptr;
}

/* the running fiber f cannot go on (it waits or exited): straight to the next runnable thread, one switch
 * instead of two through the scheduler; to the scheduler when there is none (done, or a deadlock) */
inline void pass_turn(Fiber *f) {
    Fiber *g = next_runnable(f->index);
    if (!g) {
        yield_fiber(f);
        return;
    }
    S.cur = g;
    pl_emu::g_thread_idx = g->tid;
    S.switches++;
#if PL_EMU_ASM_SWITCH
    pl_emu_switch(&f->sp, g->sp);
#else
    swapcontext(&f->uc, &g->uc);
#endif
}

Fiber *need_fiber(const char *what) {
    if (!S.cur) {
        fprintf(stderr, "pyllm CUDA emulation: %s called outside a kernel\n", what);
        abort(); /* device code run on the host: a bug in the emulated sources, not bad input */
    }
    return S.cur;
}

void release_block_barrier() {
    for (int i = 0; i < S.n; i++)
        if (S.pool[i]->state == WAIT_BLOCK) S.pool[i]->state = RUNNABLE;
    S.bar_arrived = S.block_waiting;
    S.block_waiting = 0;
    S.bar_result = S.bar_count;
    S.bar_count = 0;
}

std::string vformat(const char *fmt, va_list ap) {
    char buf[1024];
    vsnprintf(buf, sizeof(buf), fmt, ap);
    return buf;
}

std::string dims(dim3 d) {
    char b[64];
    snprintf(b, sizeof(b), "(%u,%u,%u)", d.x, d.y, d.z);
    return b;
}

/* "kernel NAME, block (x,y,z) of grid (..) x block (..)" */
std::string where() {
    std::string s = "kernel ";
    s += S.launch ? S.launch->name : "?";
    s += ", block " + dims(dim3(pl_emu::g_block_idx)) + " of " + dims(pl_emu::g_grid_dim) + " x " +
         std::to_string(S.n) + " threads";
    return s;
}

std::string describe_state(const Fiber *f) {
    char b[160];
    switch (f->state) {
    case RUNNABLE: return "runnable";
    case WAIT_BLOCK: return "wait at __syncthreads()";
    case WAIT_WARP:
        snprintf(b, sizeof(b), "wait at %s (mask 0x%08x)", f->wait_name, f->wait_mask);
        return b;
    case EXITED: return "exited";
    default: return "failed";
    }
}

/* the threads' states, consecutive threads in the same state as one range */
std::string describe_threads() {
    std::string out;
    int i = 0;
    while (i < S.n) {
        const std::string st = describe_state(S.pool[i]);
        int j = i + 1;
        while (j < S.n && describe_state(S.pool[j]) == st) j++;
        if (!out.empty()) out += "; ";
        out += j - i == 1 ? "thread " + std::to_string(i) : "threads " + std::to_string(i) + "-" + std::to_string(j - 1);
        out += " " + st;
        i = j;
    }
    return out;
}

/* ---- warp collectives: the last lane to arrive computes every lane's result ---- */
void complete_shfl(Fiber **w, pl_emu::LaneSlot *ws, unsigned mask, int op) {
    for (int l = 0; l < 32; l++) {
        if (!(mask >> l & 1)) continue;
        pl_emu::ShflSlot *s = &ws[l].shfl;
        const int width = s->width;
        if (width < 1 || width > 32 || (width & (width - 1)))
            pl_emu::device_fail("%s: width must be a power of 2 in 1..32, got %d (thread %d)", w[l]->wait_name, width,
                                w[l]->index);
        const int seg = l & ~(width - 1); /* first lane of this lane's segment */
        int src = l;
        switch (op) {
        case pl_emu::OP_SHFL: src = seg | (s->arg & (width - 1)); break;
        case pl_emu::OP_SHFL_UP:
            if ((unsigned)s->arg <= (unsigned)(l - seg)) src = l - s->arg;
            break;
        case pl_emu::OP_SHFL_DOWN:
            if ((unsigned)(l - seg) + (unsigned)s->arg < (unsigned)width) src = l + s->arg;
            break;
        default: /* xor: lanes of later segments (or past the warp) give the lane its own value */
            src = l ^ s->arg;
            if (s->arg < 0 || src > 31 || (src & ~(width - 1)) > seg) src = l;
        }
        if (!(mask >> src & 1))
            pl_emu::device_fail("%s: thread %d (lane %d) reads lane %d, which is not in the mask 0x%08x", w[l]->wait_name,
                                w[l]->index, l, src, mask);
        s->out = ws[src].shfl.value;
    }
}

/* mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32: D = A B + C, A 16x32 s8 (row-major), B 32x8 s8
 * (column-major), C / D 16x8 s32, spread over the warp's registers as the PTX ISA documents in
 * "Matrix Fragments for mma.m16n8k32" (PTX ISA, section 9.7.14.5, the .s8 / .u8 figures for A, B and C/D).
 * With groupID = lane >> 2 and threadID_in_group = lane % 4, and each .b32 register holding four int8
 * elements from the lowest byte up:
 *   A: a0..a15 in a[0..3] (a[r] holds elements 4r..4r+3);
 *      row = groupID for ai with 0 <= i < 4 or 8 <= i < 12, groupID + 8 otherwise;
 *      col = threadID_in_group * 4 + (i & 3), plus 16 for i >= 8
 *   B: b0..b7 in b[0..1]; row (k) = threadID_in_group * 4 + (i & 3), plus 16 for i >= 4; col = groupID
 *   C, D: c0..c3; row = groupID for c0, c1 and groupID + 8 for c2, c3; col = threadID_in_group * 2 + (i & 1) */
void complete_mma(Fiber **w) {
    int A[16][32], Bt[8][32]; /* B transposed: column n of B is row n of Bt */
    for (int l = 0; l < 32; l++) {
        const pl_emu::MmaSlot *s = (const pl_emu::MmaSlot *)w[l]->wait_slot;
        const int g = l >> 2, t = l & 3;
        for (int i = 0; i < 16; i++) {
            const int row = ((i >> 2) & 1) ? g + 8 : g;
            const int col = t * 4 + (i & 3) + (i >= 8 ? 16 : 0);
            A[row][col] = (int8_t)(uint8_t)(s->a[i >> 2] >> (8 * (i & 3)));
        }
        for (int i = 0; i < 8; i++) Bt[g][t * 4 + (i & 3) + (i >= 4 ? 16 : 0)] = (int8_t)(uint8_t)(s->b[i >> 2] >> (8 * (i & 3)));
    }
    for (int l = 0; l < 32; l++) {
        const pl_emu::MmaSlot *s = (const pl_emu::MmaSlot *)w[l]->wait_slot;
        const int g = l >> 2, t = l & 3;
        for (int i = 0; i < 4; i++) {
            const int row = i < 2 ? g : g + 8, col = t * 2 + (i & 1);
            int acc = 0; /* |sum| <= 32 * 128 * 128: no overflow */
            for (int k = 0; k < 32; k++) acc += A[row][k] * Bt[col][k];
            s->c[i] = (int)((uint32_t)s->c[i] + (uint32_t)acc); /* s32 wraps */
        }
    }
}

/* w: the warp's fibers, ws: their slots (S.slots) */
void complete_warp(Fiber **w, pl_emu::LaneSlot *ws, unsigned mask, int op) {
    switch (op) {
    case pl_emu::OP_SYNCWARP: break;
    case pl_emu::OP_BALLOT:
    case pl_emu::OP_ANY:
    case pl_emu::OP_ALL: {
        unsigned ballot = 0;
        for (int l = 0; l < 32; l++)
            if ((mask >> l & 1) && ws[l].vote.pred) ballot |= 1u << l;
        const unsigned r = op == pl_emu::OP_BALLOT ? ballot : op == pl_emu::OP_ANY ? ballot != 0 : ballot == mask;
        for (int l = 0; l < 32; l++)
            if (mask >> l & 1) ws[l].vote.out = r;
        break;
    }
    case pl_emu::OP_MMA_S8_16832: complete_mma(w); break;
    default: complete_shfl(w, ws, mask, op);
    }
}

} // namespace

extern "C" void pl_emu_fiber_main(Fiber *f) {
    for (;;) {
        (*S.body)();
        f->state = EXITED;
        S.live--;
        if (S.block_waiting > 0 && S.block_waiting == S.live) release_block_barrier();
        pass_turn(f);
    }
}

namespace pl_emu {

int syncthreads_count(int pred) {
    Fiber *f = need_fiber("__syncthreads()");
    f->state = WAIT_BLOCK;
    S.bar_count += pred != 0;
    if (++S.block_waiting == S.live) {
        release_block_barrier();
        return S.bar_result;
    }
    pass_turn(f);
    return S.bar_result; /* no barrier completes again before every thread has left this one */
}
void syncthreads() { (void)syncthreads_count(0); }
int barrier_arrivals() { return S.bar_arrived; }

void warp_collective(unsigned mask, int op, void *slot, const char *name) {
    Fiber *f = need_fiber(name);
    const int lane = f->index & 31, warp0 = f->index & ~31;
    if (!(mask >> lane & 1))
        device_fail("%s: thread %d (lane %d) is not in its own mask 0x%08x", name, f->index, lane, mask);
    const int lanes = S.n - warp0 < 32 ? S.n - warp0 : 32; /* a partial last warp: its missing lanes do not count */
    const unsigned exist = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1;
    if (op == OP_MMA_S8_16832 && lanes != 32)
        device_fail("%s: needs a whole warp, thread %d is in a warp of %d threads", name, f->index, lanes);
    mask &= exist;
    f->state = WAIT_WARP;
    f->wait_op = op;
    f->wait_mask = mask;
    f->wait_slot = slot;
    f->wait_name = name;
    Fiber **w = &S.pool[warp0];
    unsigned &arrived = S.warp_waiting[f->index >> 5];
    arrived |= 1u << lane;
    bool complete = (arrived & mask) == mask; /* every lane of the mask waits at a warp collective: which? */
    for (int l = 0; complete && l < lanes; l++)
        if ((mask >> l & 1) && (w[l]->wait_op != op || w[l]->wait_mask != mask)) complete = false;
    if (!complete) {
        pass_turn(f); /* the last lane to arrive completes it for everyone */
        return;
    }
    complete_warp(w, &S.slots[warp0], mask, op);
    arrived &= ~mask;
    for (int l = 0; l < lanes; l++)
        if (mask >> l & 1) w[l]->state = RUNNABLE;
}

uint64_t shfl_bits(unsigned mask, uint64_t value, int arg, int width, int op, const char *name) {
    ShflSlot &s = S.slots[need_fiber(name)->index].shfl;
    s.value = value;
    s.arg = arg;
    s.width = width;
    warp_collective(mask, op, &s, name);
    return s.out;
}

unsigned vote(unsigned mask, int pred, int op, const char *name) {
    VoteSlot &s = S.slots[need_fiber(name)->index].vote;
    s.pred = pred;
    warp_collective(mask, op, &s, name);
    return s.out;
}

void device_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    std::string msg = vformat(fmt, ap);
    va_end(ap);
    Fiber *f = need_fiber("device_fail");
    S.failed = true;
    S.fail_msg = msg + " (" + where() + ")";
    f->state = FAILED;
    yield_fiber(f);
    abort(); /* never resumed: the launch resets its fibers */
}

void *dynamic_shared() {
    need_fiber("dynamic shared memory");
    return S.smem.data();
}

} // namespace pl_emu

/* ================================================================ runtime state */
struct CUstream_st {
    unsigned flags = 0;
    bool capturing = false, invalidated = false;
    cudaStreamCaptureMode mode = cudaStreamCaptureModeGlobal;
    CUgraph_st *graph = nullptr;
};
struct CUevent_st {
    unsigned flags = 0;
    bool recorded = false;
    std::chrono::steady_clock::time_point t;
};
namespace {
struct Node {
    enum Kind { KERNEL, MEMCPY, MEMSET, EVENT } kind = KERNEL;
    pl_emu::Launch launch{};
    std::function<void()> body;
    void *dst = nullptr;
    const void *src = nullptr;
    size_t count = 0;
    int value = 0;
    cudaMemcpyKind copy_kind = cudaMemcpyDefault;
    CUevent_st *event = nullptr;
};
} // namespace
struct CUgraph_st {
    std::vector<Node> nodes;
};
struct CUgraphExec_st {
    std::vector<Node> nodes;
};

namespace {

std::recursive_mutex M; /* recursive: a graph launch replays kernels through the launch path */
cudaError_t g_last = cudaSuccess;    /* cudaGetLastError's */
cudaError_t g_pending = cudaSuccess; /* a failed launch, not yet reported */
cudaError_t g_detail_code = cudaSuccess;
std::string g_detail;         /* what went wrong, for cudaGetErrorString(g_detail_code) */
std::string g_pending_detail; /* g_pending's, until it is reported */
int g_device = 0;
std::map<uintptr_t, size_t> g_allocs; /* device allocations: start -> bytes */
std::map<uintptr_t, size_t> g_host_allocs;
size_t g_allocated = 0;
std::map<const void *, int> g_max_dyn_smem;
std::vector<CUstream_st *> g_streams; /* created, not destroyed */
std::vector<CUevent_st *> g_events;
const size_t kDefaultSmem = 48 * 1024, kOptinSmem = 227 * 1024;
const int kSmCount = 4;

size_t total_mem() {
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    const size_t t = pages > 0 && page > 0 ? (size_t)pages * (size_t)page : (size_t)8 << 30;
    return t / 2; /* half the host's memory: the rest is the host's */
}

cudaError_t fail(cudaError_t e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
cudaError_t fail(cudaError_t e, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    g_detail = vformat(fmt, ap);
    va_end(ap);
    g_detail_code = e;
    g_last = e;
    return e;
}
cudaError_t plain(cudaError_t e) {
    if (e != cudaSuccess) {
        g_last = e;
        g_detail_code = cudaSuccess; /* no stale detail on this error's words */
    }
    return e;
}
/* a failed launch is reported by the next call that waits for the device (and by cudaGetLastError) */
cudaError_t report_pending() {
    const cudaError_t e = g_pending;
    g_pending = cudaSuccess;
    if (e != cudaSuccess) {
        g_last = e;
        g_detail_code = e;
        g_detail = g_pending_detail;
    }
    return e;
}

bool valid_stream(cudaStream_t s) {
    if (!s) return true;
    for (CUstream_st *x : g_streams)
        if (x == s) return true;
    return false;
}
bool valid_event(cudaEvent_t e) {
    for (CUevent_st *x : g_events)
        if (x == e) return true;
    return false;
}

/* the stream whose capture a call on the legacy default stream (or a device-wide call) would break: CUDA
 * refuses those while a blocking stream captures (global / thread-local mode), and invalidates the capture */
CUstream_st *capture_broken_by_legacy() {
    for (CUstream_st *s : g_streams)
        if (s->capturing && s->mode != cudaStreamCaptureModeRelaxed && !(s->flags & cudaStreamNonBlocking)) return s;
    return nullptr;
}
CUstream_st *any_strict_capture() {
    for (CUstream_st *s : g_streams)
        if (s->capturing && s->mode != cudaStreamCaptureModeRelaxed) return s;
    return nullptr;
}
cudaError_t refuse_in_capture(CUstream_st *s, cudaError_t e, const char *what) {
    s->invalidated = true;
    return fail(e, "%s while a stream is being captured into a CUDA graph (the capture is now invalidated)", what);
}

/* [p, p + n) inside one device allocation */
bool device_range(const void *p, size_t n) {
    const uintptr_t a = (uintptr_t)p;
    auto it = g_allocs.upper_bound(a);
    if (it == g_allocs.begin()) return false;
    --it;
    return a >= it->first && a - it->first <= it->second && n <= it->second - (a - it->first);
}

cudaError_t check_copy(void *dst, const void *src, size_t n, cudaMemcpyKind kind) {
    if (n == 0) return cudaSuccess;
    if (!dst || !src) return fail(cudaErrorInvalidValue, "cudaMemcpy of %zu bytes with a NULL pointer", n);
    if ((unsigned)kind > cudaMemcpyDefault) return fail(cudaErrorInvalidMemcpyDirection, "cudaMemcpy: kind %d", (int)kind);
    const bool dd = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    const bool sd = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    if (dd && !device_range(dst, n))
        return fail(cudaErrorInvalidValue, "cudaMemcpy: the destination %p + %zu bytes is not inside one device allocation",
                    dst, n);
    if (sd && !device_range(src, n))
        return fail(cudaErrorInvalidValue, "cudaMemcpy: the source %p + %zu bytes is not inside one device allocation",
                    src, n);
    return cudaSuccess;
}

/* ---- running a kernel ---- */
void reset_fibers_after_failure() {
    for (int i = 0; i < S.n; i++)
        if (S.pool[i]->state != EXITED) init_fiber(S.pool[i]); /* abandoned mid-kernel: start it afresh */
}

bool run_block() {
    const dim3 bd = pl_emu::g_block_dim;
    for (int i = 0; i < S.n; i++) {
        Fiber *f = S.pool[i];
        f->state = RUNNABLE;
        f->tid = uint3{(unsigned)i % bd.x, ((unsigned)i / bd.x) % bd.y, (unsigned)i / (bd.x * bd.y)};
    }
    S.live = S.n;
    S.block_waiting = 0;
    S.warp_waiting.assign((size_t)(S.n + 31) / 32, 0u);
    if (S.slots.size() < (size_t)S.n) S.slots.resize((size_t)S.n);
    if (S.smem_bytes) memset(S.smem.data(), 0xA5, S.smem_bytes); /* not zeros: shared memory starts undefined */
    S.bar_count = 0;
    /* the fibers pass the turn among themselves (pass_turn); back here when none can run */
    while (S.live > 0) {
        Fiber *f = next_runnable(S.reverse ? 0 : S.n - 1); /* the first in turn order */
        if (f) {
            run_fiber(f);
            if (S.failed) return false;
        } else {
            S.failed = true;
            /* the threads' states first: messages are cut at PL_CUDA_ERRMSG_LEN (the whole one goes to stderr) */
            S.fail_msg = "deadlock in " + where() + ": " + describe_threads() +
                         "; no barrier can complete (a __syncthreads() or warp collective that some threads never "
                         "reach: inside a branch, after some returned, or a mask naming exited lanes)";
            return false;
        }
    }
    return true;
}

void run_kernel(const pl_emu::Launch &l, const std::function<void()> &body) {
    const int n = (int)(l.block.x * l.block.y * l.block.z);
    if (!grow_pool(n)) {
        g_pending = cudaErrorLaunchOutOfResources;
        g_pending_detail = "kernel " + std::string(l.name) + ": no memory for the stacks of " + std::to_string(n) +
                           " emulated threads";
        return;
    }
    /* the order a block's threads take turns in: a missing __syncthreads() shows as a read of data not yet
     * written, for readers of higher threads in the default order, of lower ones in reverse */
    const char *order = getenv("PYLLM_CUDA_EMU_ORDER");
    if (order && *order && strcmp(order, "forward") && strcmp(order, "reverse")) {
        g_pending = cudaErrorLaunchFailure;
        g_pending_detail = "PYLLM_CUDA_EMU_ORDER must be 'forward' or 'reverse', got '" + std::string(order) + "'";
        return;
    }
    S.reverse = order && !strcmp(order, "reverse");
    pl_emu::g_grid_dim = l.grid;
    pl_emu::g_block_dim = l.block;
    S.n = n;
    S.body = &body;
    S.launch = &l;
    S.failed = false;
    S.smem_bytes = l.smem;
    if (S.smem.size() < l.smem + 16) S.smem.resize(l.smem + 16);
    for (unsigned z = 0; z < l.grid.z; z++)
        for (unsigned y = 0; y < l.grid.y; y++)
            for (unsigned x = 0; x < l.grid.x; x++) {
                pl_emu::g_block_idx = uint3{x, y, z};
                if (!run_block()) {
                    reset_fibers_after_failure();
                    g_pending = cudaErrorLaunchFailure;
                    g_pending_detail = S.fail_msg;
                    fprintf(stderr, "pyllm CUDA emulation: launch failed: %s\n", S.fail_msg.c_str());
                    S.body = nullptr;
                    S.launch = nullptr;
                    return;
                }
            }
    S.body = nullptr;
    S.launch = nullptr;
}

cudaError_t do_copy(void *dst, const void *src, size_t n, cudaMemcpyKind kind) {
    const cudaError_t e = check_copy(dst, src, n, kind);
    if (e) return e;
    if (n) memmove(dst, src, n);
    return cudaSuccess;
}
cudaError_t do_memset(void *p, int v, size_t n) {
    if (n == 0) return cudaSuccess;
    if (!device_range(p, n))
        return fail(cudaErrorInvalidValue, "cudaMemset: %p + %zu bytes is not inside one device allocation", p, n);
    memset(p, v, n);
    return cudaSuccess;
}

cudaError_t replay(const std::vector<Node> &nodes) {
    for (const Node &nd : nodes) {
        cudaError_t e = cudaSuccess;
        switch (nd.kind) {
        case Node::KERNEL: run_kernel(nd.launch, nd.body); break;
        case Node::MEMCPY: e = do_copy(nd.dst, nd.src, nd.count, nd.copy_kind); break;
        case Node::MEMSET: e = do_memset(nd.dst, nd.value, nd.count); break;
        case Node::EVENT:
            nd.event->recorded = true;
            nd.event->t = std::chrono::steady_clock::now();
            break;
        }
        if (e) return e;
        if (g_pending) return cudaSuccess; /* a kernel failed: the rest would read its garbage */
    }
    return cudaSuccess;
}

} // namespace

/* ================================================================ launches */
namespace pl_emu {
void launch(const Launch &l, std::function<void()> body) {
    std::lock_guard<std::recursive_mutex> lock(M);
    if (S.cur) device_fail("kernel %s launched from device code (dynamic parallelism is not emulated)", l.name);
    const dim3 b = l.block, g = l.grid;
    const unsigned long long threads = (unsigned long long)b.x * b.y * b.z;
    if (!b.x || !b.y || !b.z || !g.x || !g.y || !g.z || threads > 1024 || b.z > 64 || g.x > 0x7FFFFFFFu ||
        g.y > 65535 || g.z > 65535) {
        fail(cudaErrorInvalidConfiguration,
             "kernel %s launched with grid (%u,%u,%u) and block (%u,%u,%u): a block has 1..1024 threads (z <= 64), a "
             "grid 1..2^31-1 x 65535 x 65535 blocks",
             l.name, g.x, g.y, g.z, b.x, b.y, b.z);
        return;
    }
    if (l.smem > kDefaultSmem) {
        auto it = g_max_dyn_smem.find(l.func);
        const size_t allowed = it == g_max_dyn_smem.end() ? kDefaultSmem : (size_t)it->second;
        if (l.smem > allowed) {
            fail(cudaErrorInvalidValue,
                 "kernel %s launched with %zu bytes of dynamic shared memory: more than 48 KiB needs "
                 "cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) first (set: %zu)",
                 l.name, l.smem, allowed);
            return;
        }
    }
    if (l.stream && !valid_stream(l.stream)) {
        fail(cudaErrorInvalidResourceHandle, "kernel %s launched on a stream that does not exist", l.name);
        return;
    }
    if (l.stream && l.stream->capturing) {
        Node nd;
        nd.kind = Node::KERNEL;
        nd.launch = l;
        nd.body = std::move(body);
        l.stream->graph->nodes.push_back(std::move(nd));
        return;
    }
    if (!l.stream) {
        if (CUstream_st *s = capture_broken_by_legacy()) {
            refuse_in_capture(s, cudaErrorStreamCaptureImplicit, "a kernel launched on the legacy default stream");
            return;
        }
    }
    run_kernel(l, body);
}
} // namespace pl_emu

/* ================================================================ the runtime API */
#define LOCK std::lock_guard<std::recursive_mutex> lock(M)

const char *cudaGetErrorName(cudaError_t e) {
    switch (e) {
#define N(x) \
    case x: return #x;
        N(cudaSuccess) N(cudaErrorInvalidValue) N(cudaErrorMemoryAllocation) N(cudaErrorInitializationError)
        N(cudaErrorInvalidConfiguration) N(cudaErrorInvalidDevicePointer) N(cudaErrorInvalidMemcpyDirection)
        N(cudaErrorNoDevice) N(cudaErrorInvalidDevice) N(cudaErrorInvalidResourceHandle) N(cudaErrorIllegalState)
        N(cudaErrorNotReady) N(cudaErrorIllegalAddress) N(cudaErrorLaunchOutOfResources) N(cudaErrorAssert)
        N(cudaErrorLaunchFailure) N(cudaErrorNotSupported) N(cudaErrorStreamCaptureUnsupported)
        N(cudaErrorStreamCaptureInvalidated) N(cudaErrorStreamCaptureUnmatched) N(cudaErrorStreamCaptureImplicit)
        N(cudaErrorStreamCaptureWrongThread)
#undef N
    }
    return "cudaErrorUnknown";
}

static const char *generic_string(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorIllegalState: return "the operation cannot be performed in the present state";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureUnmatched: return "the capture was not initiated in this stream";
    case cudaErrorStreamCaptureImplicit:
        return "operation would make the legacy stream depend on a capturing blocking stream";
    default: return "unknown error";
    }
}

/* the code's usual words, plus what the emulation knows of the last such error */
const char *cudaGetErrorString(cudaError_t e) {
    LOCK;
    static thread_local std::string s; /* valid until this thread's next call */
    s = generic_string(e);
    if (e != cudaSuccess && e == g_detail_code && !g_detail.empty()) s += " [CPU emulation: " + g_detail + "]";
    return s.c_str();
}

cudaError_t cudaGetLastError(void) {
    LOCK;
    report_pending();
    const cudaError_t e = g_last;
    g_last = cudaSuccess;
    return e;
}
cudaError_t cudaPeekAtLastError(void) {
    LOCK;
    return g_pending ? g_pending : g_last;
}

cudaError_t cudaGetDeviceCount(int *count) {
    if (!count) return plain(cudaErrorInvalidValue);
    *count = 1;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int device) {
    LOCK;
    if (!p) return plain(cudaErrorInvalidValue);
    if (device != 0) return fail(cudaErrorInvalidDevice, "device %d: the emulation has one device, 0", device);
    memset(p, 0, sizeof(*p));
    snprintf(p->name, sizeof(p->name), "pyllm CPU emulation of CUDA (tests only)");
    p->totalGlobalMem = total_mem();
    p->sharedMemPerBlock = kDefaultSmem;
    p->regsPerBlock = 65536;
    p->warpSize = 32;
    p->maxThreadsPerBlock = 1024;
    p->maxThreadsDim[0] = p->maxThreadsDim[1] = 1024;
    p->maxThreadsDim[2] = 64;
    p->maxGridSize[0] = 0x7FFFFFFF;
    p->maxGridSize[1] = p->maxGridSize[2] = 65535;
    p->totalConstMem = 65536;
    p->major = 9;
    p->minor = 0;
    p->multiProcessorCount = kSmCount;
    p->l2CacheSize = 4 << 20;
    p->maxThreadsPerMultiProcessor = 2048;
    p->sharedMemPerMultiprocessor = 228 * 1024;
    p->sharedMemPerBlockOptin = kOptinSmem;
    p->memoryBusWidth = 64;
    return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int *value, cudaDeviceAttr attr, int device) {
    LOCK;
    if (!value) return plain(cudaErrorInvalidValue);
    cudaDeviceProp p;
    if (cudaError_t e = cudaGetDeviceProperties(&p, device)) return e;
    switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = p.maxThreadsPerBlock; break;
    case cudaDevAttrMaxBlockDimX: *value = p.maxThreadsDim[0]; break;
    case cudaDevAttrMaxBlockDimY: *value = p.maxThreadsDim[1]; break;
    case cudaDevAttrMaxBlockDimZ: *value = p.maxThreadsDim[2]; break;
    case cudaDevAttrMaxGridDimX: *value = p.maxGridSize[0]; break;
    case cudaDevAttrMaxGridDimY: *value = p.maxGridSize[1]; break;
    case cudaDevAttrMaxGridDimZ: *value = p.maxGridSize[2]; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = (int)p.sharedMemPerBlock; break;
    case cudaDevAttrTotalConstantMemory: *value = (int)p.totalConstMem; break;
    case cudaDevAttrWarpSize: *value = 32; break;
    case cudaDevAttrMaxRegistersPerBlock: *value = p.regsPerBlock; break;
    case cudaDevAttrClockRate: *value = 1000000; break;
    case cudaDevAttrMultiProcessorCount: *value = p.multiProcessorCount; break;
    case cudaDevAttrMemoryClockRate: *value = 1000000; break;
    case cudaDevAttrGlobalMemoryBusWidth: *value = p.memoryBusWidth; break;
    case cudaDevAttrL2CacheSize: *value = p.l2CacheSize; break;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *value = p.maxThreadsPerMultiProcessor; break;
    case cudaDevAttrComputeCapabilityMajor: *value = p.major; break;
    case cudaDevAttrComputeCapabilityMinor: *value = p.minor; break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = (int)p.sharedMemPerMultiprocessor; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = (int)p.sharedMemPerBlockOptin; break;
    default: return fail(cudaErrorInvalidValue, "cudaDeviceGetAttribute: attribute %d is not emulated", (int)attr);
    }
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
    LOCK;
    if (device != 0) return fail(cudaErrorInvalidDevice, "device %d: the emulation has one device, 0", device);
    g_device = device;
    return cudaSuccess;
}
cudaError_t cudaGetDevice(int *device) {
    LOCK;
    if (!device) return plain(cudaErrorInvalidValue);
    *device = g_device;
    return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int *v) {
    if (!v) return plain(cudaErrorInvalidValue);
    *v = CUDART_VERSION;
    return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int *v) {
    if (!v) return plain(cudaErrorInvalidValue);
    *v = CUDART_VERSION;
    return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) {
    LOCK;
    if (CUstream_st *s = any_strict_capture()) return refuse_in_capture(s, cudaErrorStreamCaptureUnsupported, "cudaDeviceSynchronize");
    return report_pending();
}
cudaError_t cudaDeviceReset(void) {
    LOCK;
    g_pending = g_last = cudaSuccess;
    return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes) {
    LOCK;
    if (!free_bytes || !total_bytes) return plain(cudaErrorInvalidValue);
    *total_bytes = total_mem();
    *free_bytes = *total_bytes > g_allocated ? *total_bytes - g_allocated : 0;
    return cudaSuccess;
}

/* ---- memory ---- */
cudaError_t cudaMalloc(void **ptr, size_t size) {
    LOCK;
    if (!ptr) return plain(cudaErrorInvalidValue);
    *ptr = nullptr;
    if (CUstream_st *s = any_strict_capture()) return refuse_in_capture(s, cudaErrorStreamCaptureUnsupported, "cudaMalloc");
    if (size == 0) return cudaSuccess;
    const size_t total = total_mem();
    if (size > total - (g_allocated < total ? g_allocated : total))
        return fail(cudaErrorMemoryAllocation, "%zu bytes asked, %zu of the emulated device's %zu in use", size,
                    g_allocated, total);
    const size_t rounded = (size + 255) & ~(size_t)255;
    void *p = aligned_alloc(256, rounded);
    if (!p) return fail(cudaErrorMemoryAllocation, "the host could not give %zu bytes", size);
    memset(p, 0xA5, rounded); /* device memory starts undefined: not zeros */
    g_allocs[(uintptr_t)p] = size;
    g_allocated += size;
    *ptr = p;
    return cudaSuccess;
}
cudaError_t cudaFree(void *ptr) {
    LOCK;
    if (!ptr) return cudaSuccess;
    auto it = g_allocs.find((uintptr_t)ptr);
    if (it == g_allocs.end())
        return fail(cudaErrorInvalidValue, "cudaFree(%p): not a pointer cudaMalloc returned (or freed already)", ptr);
    g_allocated -= it->second;
    g_allocs.erase(it);
    free(ptr);
    return cudaSuccess;
}
cudaError_t cudaHostAlloc(void **ptr, size_t size, unsigned flags) {
    LOCK;
    (void)flags;
    if (!ptr) return plain(cudaErrorInvalidValue);
    *ptr = size ? aligned_alloc(256, (size + 255) & ~(size_t)255) : nullptr;
    if (size && !*ptr) return fail(cudaErrorMemoryAllocation, "the host could not give %zu pinned bytes", size);
    if (*ptr) g_host_allocs[(uintptr_t)*ptr] = size;
    return cudaSuccess;
}
cudaError_t cudaMallocHost(void **ptr, size_t size) { return cudaHostAlloc(ptr, size, 0); }
cudaError_t cudaFreeHost(void *ptr) {
    LOCK;
    if (!ptr) return cudaSuccess;
    if (!g_host_allocs.erase((uintptr_t)ptr))
        return fail(cudaErrorInvalidValue, "cudaFreeHost(%p): not a pointer cudaMallocHost returned", ptr);
    free(ptr);
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t count, cudaMemcpyKind kind) {
    LOCK;
    if (CUstream_st *s = capture_broken_by_legacy())
        return refuse_in_capture(s, cudaErrorStreamCaptureImplicit, "cudaMemcpy (synchronous, on the legacy stream)");
    if (cudaError_t e = report_pending()) return e;
    return do_copy(dst, src, count, kind);
}
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t count, cudaMemcpyKind kind, cudaStream_t stream) {
    LOCK;
    if (!valid_stream(stream)) return fail(cudaErrorInvalidResourceHandle, "cudaMemcpyAsync on a stream that does not exist");
    if (cudaError_t e = check_copy(dst, src, count, kind)) return e;
    if (stream && stream->capturing) {
        Node nd;
        nd.kind = Node::MEMCPY;
        nd.dst = dst;
        nd.src = src;
        nd.count = count;
        nd.copy_kind = kind;
        stream->graph->nodes.push_back(std::move(nd));
        return cudaSuccess;
    }
    if (!stream)
        if (CUstream_st *s = capture_broken_by_legacy())
            return refuse_in_capture(s, cudaErrorStreamCaptureImplicit, "cudaMemcpyAsync on the legacy stream");
    return do_copy(dst, src, count, kind);
}
cudaError_t cudaMemset(void *ptr, int value, size_t count) {
    LOCK;
    if (CUstream_st *s = capture_broken_by_legacy())
        return refuse_in_capture(s, cudaErrorStreamCaptureImplicit, "cudaMemset (synchronous, on the legacy stream)");
    if (cudaError_t e = report_pending()) return e;
    return do_memset(ptr, value, count);
}
cudaError_t cudaMemsetAsync(void *ptr, int value, size_t count, cudaStream_t stream) {
    LOCK;
    if (!valid_stream(stream)) return fail(cudaErrorInvalidResourceHandle, "cudaMemsetAsync on a stream that does not exist");
    if (count && !device_range(ptr, count))
        return fail(cudaErrorInvalidValue, "cudaMemsetAsync: %p + %zu bytes is not inside one device allocation", ptr, count);
    if (stream && stream->capturing) {
        Node nd;
        nd.kind = Node::MEMSET;
        nd.dst = ptr;
        nd.value = value;
        nd.count = count;
        stream->graph->nodes.push_back(std::move(nd));
        return cudaSuccess;
    }
    if (!stream)
        if (CUstream_st *s = capture_broken_by_legacy())
            return refuse_in_capture(s, cudaErrorStreamCaptureImplicit, "cudaMemsetAsync on the legacy stream");
    return do_memset(ptr, value, count);
}

/* ---- streams ---- */
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned flags) {
    LOCK;
    if (!stream) return plain(cudaErrorInvalidValue);
    if (flags & ~1u) return fail(cudaErrorInvalidValue, "cudaStreamCreateWithFlags: flags 0x%x", flags);
    CUstream_st *s = new CUstream_st();
    s->flags = flags;
    g_streams.push_back(s);
    *stream = s;
    return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t *stream) { return cudaStreamCreateWithFlags(stream, cudaStreamDefault); }
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
    LOCK;
    for (size_t i = 0; i < g_streams.size(); i++)
        if (g_streams[i] == stream) {
            delete stream->graph;
            delete stream;
            g_streams.erase(g_streams.begin() + (long)i);
            return cudaSuccess;
        }
    return fail(cudaErrorInvalidResourceHandle, "cudaStreamDestroy: not a stream (the default stream cannot be destroyed)");
}
cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
    LOCK;
    if (!valid_stream(stream)) return fail(cudaErrorInvalidResourceHandle, "cudaStreamSynchronize: not a stream");
    if (stream && stream->capturing) return refuse_in_capture(stream, cudaErrorStreamCaptureUnsupported, "cudaStreamSynchronize");
    if (!stream)
        if (CUstream_st *s = capture_broken_by_legacy())
            return refuse_in_capture(s, cudaErrorStreamCaptureImplicit, "cudaStreamSynchronize(legacy stream)");
    return report_pending();
}
cudaError_t cudaStreamQuery(cudaStream_t stream) {
    LOCK;
    if (!valid_stream(stream)) return fail(cudaErrorInvalidResourceHandle, "cudaStreamQuery: not a stream");
    return cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned flags) {
    LOCK;
    (void)flags;
    if (!valid_stream(stream) || !valid_event(event))
        return fail(cudaErrorInvalidResourceHandle, "cudaStreamWaitEvent: not a stream or not an event");
    return cudaSuccess; /* everything ran already: nothing to wait for */
}

/* ---- events ---- */
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned flags) {
    LOCK;
    if (!event) return plain(cudaErrorInvalidValue);
    CUevent_st *e = new CUevent_st();
    e->flags = flags;
    g_events.push_back(e);
    *event = e;
    return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t *event) { return cudaEventCreateWithFlags(event, cudaEventDefault); }
cudaError_t cudaEventDestroy(cudaEvent_t event) {
    LOCK;
    for (size_t i = 0; i < g_events.size(); i++)
        if (g_events[i] == event) {
            delete event;
            g_events.erase(g_events.begin() + (long)i);
            return cudaSuccess;
        }
    return fail(cudaErrorInvalidResourceHandle, "cudaEventDestroy: not an event");
}
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
    LOCK;
    if (!valid_event(event) || !valid_stream(stream))
        return fail(cudaErrorInvalidResourceHandle, "cudaEventRecord: not an event or not a stream");
    if (stream && stream->capturing) {
        Node nd;
        nd.kind = Node::EVENT;
        nd.event = event;
        stream->graph->nodes.push_back(std::move(nd));
        return cudaSuccess;
    }
    if (!stream)
        if (CUstream_st *s = capture_broken_by_legacy())
            return refuse_in_capture(s, cudaErrorStreamCaptureImplicit, "cudaEventRecord on the legacy stream");
    event->recorded = true;
    event->t = std::chrono::steady_clock::now();
    return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t event) {
    LOCK;
    if (!valid_event(event)) return fail(cudaErrorInvalidResourceHandle, "cudaEventSynchronize: not an event");
    return report_pending();
}
cudaError_t cudaEventQuery(cudaEvent_t event) {
    LOCK;
    if (!valid_event(event)) return fail(cudaErrorInvalidResourceHandle, "cudaEventQuery: not an event");
    return cudaSuccess;
}
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end) {
    LOCK;
    if (!ms) return plain(cudaErrorInvalidValue);
    if (!valid_event(start) || !valid_event(end))
        return fail(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime: not an event");
    if ((start->flags | end->flags) & cudaEventDisableTiming)
        return fail(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime: an event created with cudaEventDisableTiming");
    if (!start->recorded || !end->recorded)
        return fail(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime: an event that was never recorded");
    *ms = std::chrono::duration<float, std::milli>(end->t - start->t).count();
    return cudaSuccess;
}

cudaError_t pl_emu_func_set_attribute(const void *func, cudaFuncAttribute attr, int value) {
    LOCK;
    if (!func) return plain(cudaErrorInvalidValue);
    if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
        if (value < 0 || (size_t)value > kOptinSmem)
            return fail(cudaErrorInvalidValue, "cudaFuncAttributeMaxDynamicSharedMemorySize %d: at most %zu", value,
                        kOptinSmem);
        g_max_dyn_smem[func] = value;
    }
    return cudaSuccess;
}

/* ---- graphs ---- */
cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode) {
    LOCK;
    if (!stream)
        return fail(cudaErrorStreamCaptureUnsupported, "cudaStreamBeginCapture: the legacy default stream cannot be "
                                                       "captured (create a stream)");
    if (!valid_stream(stream)) return fail(cudaErrorInvalidResourceHandle, "cudaStreamBeginCapture: not a stream");
    if (stream->capturing) return fail(cudaErrorIllegalState, "cudaStreamBeginCapture: the stream is already capturing");
    if ((unsigned)mode > cudaStreamCaptureModeRelaxed) return plain(cudaErrorInvalidValue);
    stream->capturing = true;
    stream->invalidated = false;
    stream->mode = mode;
    stream->graph = new CUgraph_st();
    return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t *graph) {
    LOCK;
    if (!graph) return plain(cudaErrorInvalidValue);
    *graph = nullptr;
    if (!valid_stream(stream)) return fail(cudaErrorInvalidResourceHandle, "cudaStreamEndCapture: not a stream");
    if (!stream || !stream->capturing)
        return fail(cudaErrorIllegalState, "cudaStreamEndCapture: the stream is not capturing");
    stream->capturing = false;
    CUgraph_st *g = stream->graph;
    stream->graph = nullptr;
    if (stream->invalidated) {
        delete g;
        return fail(cudaErrorStreamCaptureInvalidated, "the capture was invalidated by %s", g_detail.c_str());
    }
    *graph = g;
    return cudaSuccess;
}
cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus *status) {
    LOCK;
    if (!status) return plain(cudaErrorInvalidValue);
    if (!valid_stream(stream)) return fail(cudaErrorInvalidResourceHandle, "cudaStreamIsCapturing: not a stream");
    *status = !stream || !stream->capturing ? cudaStreamCaptureStatusNone
              : stream->invalidated         ? cudaStreamCaptureStatusInvalidated
                                            : cudaStreamCaptureStatusActive;
    return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t graph, unsigned long long flags) {
    LOCK;
    (void)flags;
    if (!exec || !graph) return fail(cudaErrorInvalidValue, "cudaGraphInstantiate: NULL graph or output");
    CUgraphExec_st *x = new CUgraphExec_st();
    x->nodes = graph->nodes; /* kernels' arguments were captured by value: the exec owns copies */
    *exec = x;
    return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
    LOCK;
    if (!exec) return fail(cudaErrorInvalidValue, "cudaGraphLaunch: NULL graph");
    if (!valid_stream(stream)) return fail(cudaErrorInvalidResourceHandle, "cudaGraphLaunch on a stream that does not exist");
    if (stream && stream->capturing) { /* a child graph: its nodes join the capture */
        for (const Node &nd : exec->nodes) stream->graph->nodes.push_back(nd);
        return cudaSuccess;
    }
    if (!stream)
        if (CUstream_st *s = capture_broken_by_legacy())
            return refuse_in_capture(s, cudaErrorStreamCaptureImplicit, "cudaGraphLaunch on the legacy stream");
    return replay(exec->nodes);
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
    LOCK;
    delete exec;
    return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
    LOCK;
    delete graph;
    return cudaSuccess;
}

/* how many fiber switches the emulation has made (for measuring their cost) */
extern "C" unsigned long long pl_emu_switch_count(void) {
    LOCK;
    return S.switches;
}

#pragma GCC visibility pop
