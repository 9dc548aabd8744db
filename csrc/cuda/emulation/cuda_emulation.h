/* cuda_emulation.h: a CPU emulation of the subset of CUDA that csrc/cuda/ uses, so the same .cu sources build
 * with the host C++ compiler (CMake -DPYLLM_CUDA_EMULATE=ON force-includes this header into every
 * csrc/cuda/ .cu file, compiled with -x c++ -std=c++17) and the GPU tests run on a machine without a GPU.
 *
 * Execution model (cuda_emulation.cpp): launches are synchronous; a grid's blocks run one after another on
 * the calling OS thread; a block's CUDA threads are fibers (own stacks, switched cooperatively, round-robin)
 * that only switch at __syncthreads(), __syncwarp() and the warp collectives (shuffles, votes, the mma), so
 * every other statement (atomics included) runs without interruption. A barrier that can never complete
 * aborts the launch with a message saying which threads wait where, reported as cudaErrorLaunchFailure by
 * the next runtime call. Device memory is host heap. The runtime's calls check their arguments (device
 * pointer ranges included) and emulate streams, events and CUDA graphs (stream capture records, graph
 * launches replay). What this cannot check: memory-model races (nothing runs concurrently), timing, real
 * PTX (inline asm must have a PL_CUDA_EMULATED branch, see cuda_common.cuh). __CUDA_ARCH__ and __CUDACC__
 * are not defined here, so code under #ifdef __CUDA_ARCH__ is left out as in nvcc's host pass. A fiber has
 * a 256 KiB stack behind a guard page: a kernel that overflows it crashes rather than corrupting memory. */
#ifndef PYLLM_CUDA_EMULATION_H
#define PYLLM_CUDA_EMULATION_H

#ifndef __cplusplus
#error "cuda_emulation.h is for the C++ compilation of csrc/cuda/*.cu (-x c++)"
#endif

#define PL_CUDA_EMULATED 1
#define CUDART_VERSION 12000

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmath>
#include <functional>
#include <type_traits>

/* nothing of the emulation leaves the extension (a real libcudart elsewhere in the process keeps its names) */
#pragma GCC visibility push(hidden)

/* ---------------------------------------------------------------- qualifiers */
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __shared__ static /* one block runs at a time: a static is that block's shared memory */
#define __constant__
#define __managed__
#define __align__(n) __attribute__((aligned(n)))

/* ---------------------------------------------------------------- vector types */
struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};
struct char4 { signed char x, y, z, w; };
struct uchar4 { unsigned char x, y, z, w; };
struct alignas(8) int2 { int x, y; };
struct int3 { int x, y, z; };
struct alignas(16) int4 { int x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(8) float2 { float x, y; };
struct float3 { float x, y, z; };
struct alignas(16) float4 { float x, y, z, w; };
static inline char4 make_char4(signed char x, signed char y, signed char z, signed char w) { return {x, y, z, w}; }
static inline uchar4 make_uchar4(unsigned char x, unsigned char y, unsigned char z, unsigned char w) {
    return {x, y, z, w};
}
static inline int2 make_int2(int x, int y) { return {x, y}; }
static inline int3 make_int3(int x, int y, int z) { return {x, y, z}; }
static inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
static inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
static inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return {x, y, z}; }
static inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
static inline float2 make_float2(float x, float y) { return {x, y}; }
static inline float3 make_float3(float x, float y, float z) { return {x, y, z}; }
static inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

/* ---------------------------------------------------------------- runtime API types (CUDA's values) */
enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInitializationError = 3,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidDevicePointer = 17,
    cudaErrorInvalidMemcpyDirection = 21,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidDevice = 101,
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorIllegalState = 401,
    cudaErrorNotReady = 600,
    cudaErrorIllegalAddress = 700,
    cudaErrorLaunchOutOfResources = 701,
    cudaErrorAssert = 710,
    cudaErrorLaunchFailure = 719,
    cudaErrorNotSupported = 801,
    cudaErrorStreamCaptureUnsupported = 900,
    cudaErrorStreamCaptureInvalidated = 901,
    cudaErrorStreamCaptureUnmatched = 903,
    cudaErrorStreamCaptureImplicit = 906,
    cudaErrorStreamCaptureWrongThread = 908,
};
typedef enum cudaError cudaError_t;
enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
};
enum cudaStreamCaptureMode {
    cudaStreamCaptureModeGlobal = 0,
    cudaStreamCaptureModeThreadLocal = 1,
    cudaStreamCaptureModeRelaxed = 2,
};
enum cudaStreamCaptureStatus {
    cudaStreamCaptureStatusNone = 0,
    cudaStreamCaptureStatusActive = 1,
    cudaStreamCaptureStatusInvalidated = 2,
};
enum cudaFuncAttribute {
    cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
    cudaFuncAttributePreferredSharedMemoryCarveout = 9,
};
enum cudaDeviceAttr {
    cudaDevAttrMaxThreadsPerBlock = 1,
    cudaDevAttrMaxBlockDimX = 2,
    cudaDevAttrMaxBlockDimY = 3,
    cudaDevAttrMaxBlockDimZ = 4,
    cudaDevAttrMaxGridDimX = 5,
    cudaDevAttrMaxGridDimY = 6,
    cudaDevAttrMaxGridDimZ = 7,
    cudaDevAttrMaxSharedMemoryPerBlock = 8,
    cudaDevAttrTotalConstantMemory = 9,
    cudaDevAttrWarpSize = 10,
    cudaDevAttrMaxRegistersPerBlock = 12,
    cudaDevAttrClockRate = 13,
    cudaDevAttrMultiProcessorCount = 16,
    cudaDevAttrMemoryClockRate = 36,
    cudaDevAttrGlobalMemoryBusWidth = 37,
    cudaDevAttrL2CacheSize = 38,
    cudaDevAttrMaxThreadsPerMultiProcessor = 39,
    cudaDevAttrComputeCapabilityMajor = 75,
    cudaDevAttrComputeCapabilityMinor = 76,
    cudaDevAttrMaxSharedMemoryPerMultiprocessor = 81,
    cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};
#define cudaStreamDefault 0x00
#define cudaStreamNonBlocking 0x01
#define cudaEventDefault 0x00
#define cudaEventBlockingSync 0x01
#define cudaEventDisableTiming 0x02
#define cudaHostAllocDefault 0x00
#define cudaGraphInstantiateFlagAutoFreeOnLaunch 1

struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem;
    size_t sharedMemPerBlock;
    int regsPerBlock;
    int warpSize;
    int maxThreadsPerBlock;
    int maxThreadsDim[3];
    int maxGridSize[3];
    size_t totalConstMem;
    int major;
    int minor;
    int multiProcessorCount;
    int l2CacheSize;
    int maxThreadsPerMultiProcessor;
    size_t sharedMemPerMultiprocessor;
    size_t sharedMemPerBlockOptin;
    int memoryBusWidth;
};

struct CUstream_st;
struct CUevent_st;
struct CUgraph_st;
struct CUgraphExec_st;
typedef CUstream_st *cudaStream_t;
typedef CUevent_st *cudaEvent_t;
typedef CUgraph_st *cudaGraph_t;
typedef CUgraphExec_st *cudaGraphExec_t;

/* ---------------------------------------------------------------- runtime API (cuda_emulation.cpp) */
const char *cudaGetErrorString(cudaError_t e);
const char *cudaGetErrorName(cudaError_t e);
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
cudaError_t cudaGetDeviceCount(int *count);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int device);
cudaError_t cudaDeviceGetAttribute(int *value, cudaDeviceAttr attr, int device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDevice(int *device);
cudaError_t cudaRuntimeGetVersion(int *version);
cudaError_t cudaDriverGetVersion(int *version);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cudaDeviceReset(void);
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes);

cudaError_t cudaMalloc(void **ptr, size_t size);
template <class T>
static inline cudaError_t cudaMalloc(T **ptr, size_t size) {
    return cudaMalloc(reinterpret_cast<void **>(ptr), size);
}
cudaError_t cudaFree(void *ptr);
cudaError_t cudaMallocHost(void **ptr, size_t size);
cudaError_t cudaHostAlloc(void **ptr, size_t size, unsigned flags);
cudaError_t cudaFreeHost(void *ptr);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t count, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t count, cudaMemcpyKind kind, cudaStream_t stream = 0);
cudaError_t cudaMemset(void *ptr, int value, size_t count);
cudaError_t cudaMemsetAsync(void *ptr, int value, size_t count, cudaStream_t stream = 0);

cudaError_t cudaStreamCreate(cudaStream_t *stream);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaStreamQuery(cudaStream_t stream);
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned flags = 0);

cudaError_t cudaEventCreate(cudaEvent_t *event);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream = 0);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaEventQuery(cudaEvent_t event);
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end);

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t *graph);
cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus *status);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t graph, unsigned long long flags = 0);
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec);
cudaError_t cudaGraphDestroy(cudaGraph_t graph);

cudaError_t pl_emu_func_set_attribute(const void *func, cudaFuncAttribute attr, int value);
template <class T>
static inline cudaError_t cudaFuncSetAttribute(T *func, cudaFuncAttribute attr, int value) {
    return pl_emu_func_set_attribute(reinterpret_cast<const void *>(func), attr, value);
}
/* __constant__ / __device__ variables are ordinary globals here */
template <class T>
static inline cudaError_t cudaMemcpyToSymbol(T &symbol, const void *src, size_t count, size_t offset = 0,
                                             cudaMemcpyKind kind = cudaMemcpyHostToDevice) {
    if (offset > sizeof(T) || count > sizeof(T) - offset || !src) return cudaErrorInvalidValue;
    (void)kind;
    memcpy(reinterpret_cast<char *>(&symbol) + offset, src, count);
    return cudaSuccess;
}

/* ---------------------------------------------------------------- the emulated device (internal) */
namespace pl_emu {
extern uint3 g_thread_idx, g_block_idx;
extern dim3 g_block_dim, g_grid_dim;

enum WarpOp { OP_SYNCWARP, OP_SHFL, OP_SHFL_UP, OP_SHFL_DOWN, OP_SHFL_XOR, OP_BALLOT, OP_ANY, OP_ALL, OP_MMA_S8_16832 };

void syncthreads();
int syncthreads_count(int pred); /* the barrier, and how many threads passed a true pred */
int barrier_arrivals();           /* how many threads the barrier just left waited for */
/* a warp collective: waits until every lane of mask has reached one with the same op and mask; slot is this
 * lane's in/out data (the type the op's completion reads) */
void warp_collective(unsigned mask, int op, void *slot, const char *name);
struct ShflSlot {
    uint64_t value;
    int arg;   /* source lane, delta or lane mask */
    int width;
    uint64_t out;
};
struct VoteSlot {
    int pred;
    unsigned out;
};
union LaneSlot {
    ShflSlot shfl;
    VoteSlot vote;
};
struct MmaSlot {
    const unsigned *a, *b;
    int *c;
};
/* ends the launch from device code with this message (cudaErrorLaunchFailure) */
[[noreturn]] void device_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void *dynamic_shared();

struct Launch {
    dim3 grid, block;
    size_t smem;
    cudaStream_t stream;
    const char *name; /* the kernel as written at the launch */
    const void *func;
};
/* runs (or, on a capturing stream, records) body once per CUDA thread of the grid */
void launch(const Launch &l, std::function<void()> body);

template <class... P>
struct Launcher {
    Launch l;
    void (*kernel)(P...);
    /* the kernel's own parameter types: arguments convert as they do at a <<< >>> launch, and are kept by value */
    void operator()(P... args) const {
        void (*k)(P...) = kernel;
        launch(l, [k, args...]() { k(args...); });
    }
};
template <class... P>
static inline Launcher<P...> make_launcher(dim3 grid, dim3 block, size_t smem, cudaStream_t stream, const char *name,
                                           void (*kernel)(P...)) {
    return Launcher<P...>{Launch{grid, block, smem, stream, name, reinterpret_cast<const void *>(kernel)}, kernel};
}

/* the shuffles' and votes' collectives, with each lane's slot in one array (not on the lanes' own stacks) */
uint64_t shfl_bits(unsigned mask, uint64_t value, int arg, int width, int op, const char *name);
unsigned vote(unsigned mask, int pred, int op, const char *name);
template <class T>
static inline T shfl(unsigned mask, T v, int arg, int width, int op, const char *name) {
    static_assert(std::is_trivially_copyable<T>::value && (sizeof(T) == 4 || sizeof(T) == 8),
                  "warp shuffles move 32- or 64-bit values");
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof(T));
    bits = shfl_bits(mask, bits, arg, width, op, name);
    T out;
    memcpy(&out, &bits, sizeof(T));
    return out;
}
} // namespace pl_emu

#define threadIdx (static_cast<const uint3 &>(::pl_emu::g_thread_idx))
#define blockIdx (static_cast<const uint3 &>(::pl_emu::g_block_idx))
#define blockDim (static_cast<const dim3 &>(::pl_emu::g_block_dim))
#define gridDim (static_cast<const dim3 &>(::pl_emu::g_grid_dim))
static constexpr int warpSize = 32;

/* the launch conventions of cuda_common.cuh, emulated */
#define PL_EMU_LAUNCH(grid, block, smem, stream, ...)                                                               \
    ::pl_emu::make_launcher(::dim3(grid), ::dim3(block), (size_t)(smem), (cudaStream_t)(stream), #__VA_ARGS__,   \
                            __VA_ARGS__)
#define PL_EMU_DYNAMIC_SHARED(type, name) type *name = reinterpret_cast<type *>(::pl_emu::dynamic_shared())

/* ---------------------------------------------------------------- barriers and warp collectives */
static inline void __syncthreads() { pl_emu::syncthreads(); }
static inline int __syncthreads_count(int pred) { return pl_emu::syncthreads_count(pred); }
static inline int __syncthreads_or(int pred) { return pl_emu::syncthreads_count(pred) != 0; }
static inline int __syncthreads_and(int pred) {
    const int n = pl_emu::syncthreads_count(pred);
    return n == pl_emu::barrier_arrivals();
}
static inline void __syncwarp(unsigned mask = 0xffffffffu) {
    pl_emu::warp_collective(mask, pl_emu::OP_SYNCWARP, nullptr, "__syncwarp");
}
static inline void __threadfence() {}
static inline void __threadfence_block() {}
template <class T>
static inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize) {
    return pl_emu::shfl(mask, var, src_lane, width, pl_emu::OP_SHFL, "__shfl_sync");
}
template <class T>
static inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
    return pl_emu::shfl(mask, var, (int)delta, width, pl_emu::OP_SHFL_UP, "__shfl_up_sync");
}
template <class T>
static inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
    return pl_emu::shfl(mask, var, (int)delta, width, pl_emu::OP_SHFL_DOWN, "__shfl_down_sync");
}
template <class T>
static inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {
    return pl_emu::shfl(mask, var, lane_mask, width, pl_emu::OP_SHFL_XOR, "__shfl_xor_sync");
}
static inline unsigned __ballot_sync(unsigned mask, int pred) {
    return pl_emu::vote(mask, pred, pl_emu::OP_BALLOT, "__ballot_sync");
}
static inline int __any_sync(unsigned mask, int pred) { return (int)pl_emu::vote(mask, pred, pl_emu::OP_ANY, "__any_sync"); }
static inline int __all_sync(unsigned mask, int pred) { return (int)pl_emu::vote(mask, pred, pl_emu::OP_ALL, "__all_sync"); }
[[noreturn]] static inline void __trap() { pl_emu::device_fail("__trap() was called"); }

/* ---------------------------------------------------------------- intrinsics */
template <class T>
static inline T __ldg(const T *p) {
    return *p;
}
static inline float __uint_as_float(unsigned u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline unsigned __float_as_uint(float f) {
    unsigned u;
    memcpy(&u, &f, 4);
    return u;
}
static inline float __int_as_float(int i) {
    float f;
    memcpy(&f, &i, 4);
    return f;
}
static inline int __float_as_int(float f) {
    int i;
    memcpy(&i, &f, 4);
    return i;
}
/* four signed (unsigned) byte products summed into c */
static inline int __dp4a(int a, int b, int c) {
    for (int i = 0; i < 32; i += 8) c += (int)(int8_t)(uint8_t)((unsigned)a >> i) * (int)(int8_t)(uint8_t)((unsigned)b >> i);
    return c;
}
static inline unsigned __dp4a(unsigned a, unsigned b, unsigned c) {
    for (int i = 0; i < 32; i += 8) c += ((a >> i) & 0xFFu) * ((b >> i) & 0xFFu);
    return c;
}
/* per-byte a - b and a + b, modulo 256 */
static inline unsigned __vsub4(unsigned a, unsigned b) {
    unsigned r = 0;
    for (int i = 0; i < 32; i += 8) r |= (((a >> i) - (b >> i)) & 0xFFu) << i;
    return r;
}
static inline unsigned __vadd4(unsigned a, unsigned b) {
    unsigned r = 0;
    for (int i = 0; i < 32; i += 8) r |= (((a >> i) + (b >> i)) & 0xFFu) << i;
    return r;
}
/* byte i of the result: byte (s >> 4i) & 7 of the 8 bytes {y:x} */
static inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    const uint64_t v = ((uint64_t)y << 32) | x;
    unsigned r = 0;
    for (int i = 0; i < 4; i++) r |= (unsigned)((v >> (8 * ((s >> (4 * i)) & 7))) & 0xFF) << (8 * i);
    return r;
}
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
static inline int __ffs(int x) { return __builtin_ffs(x); }
/* the fast-math intrinsics as the library functions (glibc declares some of these names itself: macros) */
#define __expf(x) expf(x)
#define __exp2f(x) exp2f(x)
#define __logf(x) logf(x)
#define __log2f(x) log2f(x)
#define __powf(x, y) powf(x, y)
#define __sinf(x) sinf(x)
#define __cosf(x) cosf(x)
#define __tanhf(x) tanhf(x)
static inline float __fdividef(float a, float b) { return a / b; }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline float __frcp_rn(float x) { return 1.0f / x; }
static inline float __fsqrt_rn(float x) { return sqrtf(x); }
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline float __saturatef(float x) { return x != x ? 0.0f : x < 0.0f ? 0.0f : x > 1.0f ? 1.0f : x; }
static inline int __float2int_rn(float x) { return (int)nearbyintf(x); }
template <class A, class B>
static inline typename std::common_type<A, B>::type min(A a, B b) {
    typedef typename std::common_type<A, B>::type T;
    return (T)a < (T)b ? (T)a : (T)b;
}
template <class A, class B>
static inline typename std::common_type<A, B>::type max(A a, B b) {
    typedef typename std::common_type<A, B>::type T;
    return (T)a > (T)b ? (T)a : (T)b;
}

/* atomics: a fiber is never switched out inside one, so a plain read-modify-write is atomic here */
#define PL_EMU_ATOMIC(name, T, expr)                                                                                  \
    static inline T name(T *p, T v) {                                                                                 \
        T old = *p;                                                                                                   \
        *p = (expr);                                                                                                  \
        return old;                                                                                                   \
    }
PL_EMU_ATOMIC(atomicAdd, float, old + v)
PL_EMU_ATOMIC(atomicAdd, double, old + v)
PL_EMU_ATOMIC(atomicAdd, int, (int)((unsigned)old + (unsigned)v))
PL_EMU_ATOMIC(atomicAdd, unsigned, old + v)
PL_EMU_ATOMIC(atomicAdd, unsigned long long, old + v)
PL_EMU_ATOMIC(atomicSub, int, (int)((unsigned)old - (unsigned)v))
PL_EMU_ATOMIC(atomicSub, unsigned, old - v)
PL_EMU_ATOMIC(atomicMax, int, old > v ? old : v)
PL_EMU_ATOMIC(atomicMax, unsigned, old > v ? old : v)
PL_EMU_ATOMIC(atomicMin, int, old < v ? old : v)
PL_EMU_ATOMIC(atomicMin, unsigned, old < v ? old : v)
PL_EMU_ATOMIC(atomicExch, int, v)
PL_EMU_ATOMIC(atomicExch, unsigned, v)
PL_EMU_ATOMIC(atomicExch, float, v)
PL_EMU_ATOMIC(atomicOr, unsigned, old | v)
PL_EMU_ATOMIC(atomicAnd, unsigned, old & v)
#undef PL_EMU_ATOMIC
static inline int atomicCAS(int *p, int cmp, int v) {
    int old = *p;
    if (old == cmp) *p = v;
    return old;
}
static inline unsigned atomicCAS(unsigned *p, unsigned cmp, unsigned v) {
    unsigned old = *p;
    if (old == cmp) *p = v;
    return old;
}
static inline unsigned long long atomicCAS(unsigned long long *p, unsigned long long cmp, unsigned long long v) {
    unsigned long long old = *p;
    if (old == cmp) *p = v;
    return old;
}

/* the tensor-core instruction of cuda_common.cuh's pl_mma_s8_m16n8k32, as a warp collective */
static inline void pl_emu_mma_s8_m16n8k32(int c[4], const unsigned a[4], const unsigned b[2]) {
    pl_emu::MmaSlot s{a, b, c};
    pl_emu::warp_collective(0xffffffffu, pl_emu::OP_MMA_S8_16832, &s, "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32");
}

#pragma GCC visibility pop
#endif
