/* cuda_emulation_checks.cu: checks of the CPU emulation of CUDA itself (csrc/cuda/emulation/), as a
 * standalone program that tests/test_cuda_emulation.py compiles with g++ the way PYLLM_CUDA_EMULATE=ON
 * compiles the .cu files of csrc/cuda/. Commands:
 *   checks          every semantic check below; prints "ok NAME" or "FAIL NAME: why" per check
 *   fp16 IN OUT     pl_f2h of the float32 values in file IN and pl_h2f of all 65536 halves, written to OUT
 *                   (uint16 results, then float32 results), for a comparison with numpy
 *   bench           the cost of a fiber switch and of a warp shuffle, in nanoseconds
 * Emulation only: several kernels here deadlock on purpose. */
#include <chrono>
#include <string>
#include <vector>

#include "cuda_common.cuh"

extern "C" unsigned long long pl_emu_switch_count(void);

static int failures = 0;
static std::string why;
#define REQUIRE(cond)                                                                                                 \
    do {                                                                                                              \
        if (!(cond)) {                                                                                                \
            why = std::string(#cond) + " (line " + std::to_string(__LINE__) + ")";                                   \
            return false;                                                                                             \
        }                                                                                                             \
    } while (0)
static void report(const char *name, bool ok) {
    if (ok) {
        printf("ok %s\n", name);
    } else {
        printf("FAIL %s: %s\n", name, why.c_str());
        failures++;
    }
    why.clear();
    (void)cudaGetLastError(); /* no check's error leaks into the next */
}

static bool launch_failed_with(const char *must_contain, const char *and_this);

template <class T>
static T *dev_alloc(size_t n) {
    void *p = nullptr;
    if (cudaMalloc(&p, n * sizeof(T)) != cudaSuccess) return nullptr;
    return (T *)p;
}
template <class T>
static std::vector<T> to_host(const T *d, size_t n) {
    std::vector<T> h(n);
    if (cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost) != cudaSuccess) h.clear();
    return h;
}

/* ---------------------------------------------------------------- shuffles */
__global__ void shfl_kernel(int *out, double *dout) {
    const int t = threadIdx.x, lane = t & 31;
    const int v = 1000 * (t >> 5) + lane;
    int *o = out + t * 8;
    o[0] = __shfl_sync(0xffffffffu, v, (lane * 7) % 32);
    o[1] = __shfl_sync(0xffffffffu, v, lane + 3, 8);
    o[2] = __shfl_up_sync(0xffffffffu, v, 3);
    o[3] = __shfl_up_sync(0xffffffffu, v, 3, 16);
    o[4] = __shfl_down_sync(0xffffffffu, v, 5);
    o[5] = __shfl_down_sync(0xffffffffu, v, 5, 8);
    o[6] = __shfl_xor_sync(0xffffffffu, v, 9);
    o[7] = (int)__shfl_xor_sync(0xffffffffu, (float)v + 0.5f, 16, 16); /* a later segment: own value; earlier: read */
    dout[t] = __shfl_down_sync(0xffffffffu, (double)v * 1e10, 1);
}

static bool check_shuffles() {
    int *out = dev_alloc<int>(64 * 8);
    double *dout = dev_alloc<double>(64);
    REQUIRE(out && dout);
    PL_LAUNCH(1, 64, 0, 0, shfl_kernel)(out, dout);
    REQUIRE(cudaGetLastError() == cudaSuccess);
    std::vector<int> h = to_host(out, 64 * 8);
    std::vector<double> hd = to_host(dout, 64);
    REQUIRE(h.size() == 64 * 8 && hd.size() == 64);
    for (int t = 0; t < 64; t++) {
        const int w = 1000 * (t >> 5), l = t & 31;
        auto val = [&](int lane) { return w + lane; };
        REQUIRE(h[t * 8 + 0] == val((l * 7) % 32));
        REQUIRE(h[t * 8 + 1] == val((l & ~7) | ((l + 3) & 7)));
        REQUIRE(h[t * 8 + 2] == val(l >= 3 ? l - 3 : l));
        REQUIRE(h[t * 8 + 3] == val((l & 15) >= 3 ? l - 3 : l));
        REQUIRE(h[t * 8 + 4] == val(l + 5 < 32 ? l + 5 : l));
        REQUIRE(h[t * 8 + 5] == val((l & 7) + 5 < 8 ? l + 5 : l));
        REQUIRE(h[t * 8 + 6] == val(l ^ 9));
        REQUIRE(h[t * 8 + 7] == val(l < 16 ? l : l - 16));
        REQUIRE(hd[t] == (double)val(l + 1 < 32 ? l + 1 : l) * 1e10);
    }
    cudaFree(out);
    cudaFree(dout);
    return true;
}

/* ---------------------------------------------------------------- votes, partial masks */
__global__ void vote_kernel(unsigned *out) {
    const int lane = threadIdx.x & 31;
    unsigned *o = out + threadIdx.x * 4;
    o[0] = __ballot_sync(0xffffffffu, lane % 3 == 0);
    o[1] = (unsigned)__any_sync(0xffffffffu, lane == 17);
    o[2] = (unsigned)__all_sync(0xffffffffu, lane < 31);
    if (lane < 16) /* two halves, each with its own mask, at different collectives */
        o[3] = __ballot_sync(0x0000ffffu, lane & 1);
    else
        o[3] = (unsigned)__shfl_sync(0xffff0000u, lane, 16 + (lane & 3));
}

static bool check_votes() {
    unsigned *out = dev_alloc<unsigned>(32 * 4);
    REQUIRE(out);
    PL_LAUNCH(1, 32, 0, 0, vote_kernel)(out);
    REQUIRE(cudaGetLastError() == cudaSuccess);
    std::vector<unsigned> h = to_host(out, 32 * 4);
    REQUIRE(h.size() == 128);
    unsigned every3 = 0;
    for (int l = 0; l < 32; l += 3) every3 |= 1u << l;
    for (int l = 0; l < 32; l++) {
        REQUIRE(h[l * 4 + 0] == every3);
        REQUIRE(h[l * 4 + 1] == 1);
        REQUIRE(h[l * 4 + 2] == 0);
        REQUIRE(h[l * 4 + 3] == (l < 16 ? 0x0000AAAAu : (unsigned)(16 + (l & 3))));
    }
    cudaFree(out);
    return true;
}

/* ---------------------------------------------------------------- block barrier, shared memory */
__global__ void reduce_static(const int *x, int *out) {
    __shared__ int s[256];
    const int t = threadIdx.x;
    s[t] = x[blockIdx.x * 256 + t];
    __syncthreads();
    for (int h = 128; h > 0; h >>= 1) {
        if (t < h) s[t] += s[t + h];
        __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = s[0];
}

/* blockDim.x threads (not a multiple of 32), dynamic shared memory; threads past n return early */
__global__ void reduce_dynamic(const int *x, int n, int *out) {
    PL_DYNAMIC_SHARED(int, s);
    const int t = threadIdx.x;
    s[t] = (int)(blockIdx.x * blockDim.x + t) < n ? x[blockIdx.x * blockDim.x + t] : 0;
    __syncthreads();
    if (t == 0) {
        int sum = 0;
        for (unsigned i = 0; i < blockDim.x; i++) sum += s[i];
        out[blockIdx.x] = sum;
    }
}

static bool check_block_barrier() {
    const int nb = 3, n = nb * 256;
    std::vector<int> hx(n);
    for (int i = 0; i < n; i++) hx[i] = i * 7 - 500;
    int *x = dev_alloc<int>(n), *out = dev_alloc<int>(nb);
    REQUIRE(x && out);
    REQUIRE(cudaMemcpy(x, hx.data(), n * sizeof(int), cudaMemcpyHostToDevice) == cudaSuccess);
    PL_LAUNCH(nb, 256, 0, 0, reduce_static)(x, out);
    REQUIRE(cudaGetLastError() == cudaSuccess);
    std::vector<int> h = to_host(out, nb);
    for (int b = 0; b < nb; b++) {
        int s = 0;
        for (int i = 0; i < 256; i++) s += hx[b * 256 + i];
        REQUIRE(h[b] == s);
    }
    const int threads = 1000, m = 2500, grid = (m + threads - 1) / threads;
    int *out2 = dev_alloc<int>(grid);
    std::vector<int> hy(m);
    for (int i = 0; i < m; i++) hy[i] = (i % 13) - 6;
    int *y = dev_alloc<int>(m);
    REQUIRE(cudaMemcpy(y, hy.data(), m * sizeof(int), cudaMemcpyHostToDevice) == cudaSuccess);
    PL_LAUNCH(grid, threads, threads * sizeof(int), 0, reduce_dynamic)(y, m, out2);
    REQUIRE(cudaGetLastError() == cudaSuccess);
    std::vector<int> h2 = to_host(out2, grid);
    for (int b = 0; b < grid; b++) {
        int s = 0;
        for (int i = b * threads; i < (b + 1) * threads && i < m; i++) s += hy[i];
        REQUIRE(h2[b] == s);
    }
    cudaFree(x);
    cudaFree(y);
    cudaFree(out);
    cudaFree(out2);
    return true;
}

/* a 2-D block: threadIdx.y / .z and the linear order that makes warps */
__global__ void index_kernel(int *out) {
    const int lin = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const int b = blockIdx.x + gridDim.x * blockIdx.y;
    out[b * 96 + lin] = __shfl_sync(0xffffffffu, (int)(threadIdx.y * 100 + threadIdx.z * 10000), 0) + b;
}

static bool check_indexing() {
    int *out = dev_alloc<int>(6 * 96);
    REQUIRE(out);
    PL_LAUNCH(dim3(3, 2), dim3(8, 4, 3), 0, 0, index_kernel)(out);
    REQUIRE(cudaGetLastError() == cudaSuccess);
    std::vector<int> h = to_host(out, 6 * 96);
    for (int b = 0; b < 6; b++)
        for (int lin = 0; lin < 96; lin++) {
            const int lane0 = lin & ~31; /* the warp's lane 0: x = 0, y = (lane0 / 8) % 4, z = lane0 / 32 */
            REQUIRE(h[b * 96 + lin] == ((lane0 / 8) % 4) * 100 + (lane0 / 32) * 10000 + b);
        }
    cudaFree(out);
    return true;
}

/* __syncthreads_count / _and / _or, with some threads gone */
__global__ void barrier_reduce_kernel(int *out) {
    const int t = threadIdx.x;
    if (t >= 90) return;
    const int c = __syncthreads_count(t % 4 == 0);
    const int a = __syncthreads_and(t < 90);
    const int a2 = __syncthreads_and(t < 89);
    const int o = __syncthreads_or(t == 77);
    const int o2 = __syncthreads_or(t == 95);
    out[t] = c * 10000 + a * 1000 + a2 * 100 + o * 10 + o2;
}

static bool check_barrier_reductions() {
    int *out = dev_alloc<int>(100);
    REQUIRE(out);
    PL_LAUNCH(1, 100, 0, 0, barrier_reduce_kernel)(out);
    REQUIRE(cudaGetLastError() == cudaSuccess);
    std::vector<int> h = to_host(out, 90);
    for (int t = 0; t < 90; t++) REQUIRE(h[t] == 23 * 10000 + 1000 + 0 + 10 + 0);
    cudaFree(out);
    return true;
}

/* a missing __syncthreads(): each thread reads its neighbour's slot right after writing its own */
__global__ void missing_barrier_kernel(int step, int *out) {
    PL_DYNAMIC_SHARED(int, s);
    const int t = threadIdx.x, n = blockDim.x;
    s[t] = t + 1;
    /* __syncthreads() belongs here */
    out[t] = s[(t + step + n) % n];
}

static bool check_thread_order_catches_missing_barriers() {
    int *out = dev_alloc<int>(64);
    REQUIRE(out);
    const char *steps[2][2] = {{"forward", "1"}, {"reverse", "-1"}};
    for (auto &sv : steps) {
        setenv("PYLLM_CUDA_EMU_ORDER", sv[0], 1);
        const int step = atoi(sv[1]);
        PL_LAUNCH(1, 64, 64 * sizeof(int), 0, missing_barrier_kernel)(step, out);
        REQUIRE(cudaGetLastError() == cudaSuccess);
        std::vector<int> h = to_host(out, 64);
        int wrong = 0;
        for (int t = 0; t < 64; t++) wrong += h[t] != (t + step + 64) % 64 + 1;
        REQUIRE(wrong == 63); /* every read of a thread that had not run yet sees the poison */
    }
    setenv("PYLLM_CUDA_EMU_ORDER", "sideways", 1);
    PL_LAUNCH(1, 64, 64 * sizeof(int), 0, missing_barrier_kernel)(1, out);
    const bool refused = launch_failed_with("PYLLM_CUDA_EMU_ORDER must be 'forward' or 'reverse'", "sideways");
    unsetenv("PYLLM_CUDA_EMU_ORDER");
    if (!refused) return false;
    cudaFree(out);
    return true;
}

/* ---------------------------------------------------------------- intrinsics */
__global__ void intrinsics_kernel(int *o, float *f) {
    o[0] = __dp4a((int)0x80807F01u, (int)0x80FF7F02u, 5);     /* -128*-128 + -128*-1 + 127*127 + 1*2 + 5 */
    o[1] = (int)__dp4a(0xFF00FF01u, 0x01FF02FFu, 1u);          /* unsigned: 255 + 0 + 510 + 255 + 1 */
    o[2] = (int)__vsub4(0x00107F05u, 0x01200A08u);             /* per byte, wrapping */
    o[3] = (int)__byte_perm(0x33221100u, 0x77665544u, 0x7531u);
    o[4] = __float_as_int(-2.0f);
    o[5] = (int)__float_as_uint(__int_as_float(0x3F800000)) == 0x3F800000 && __uint_as_float(0x40400000u) == 3.0f;
    o[6] = (int)max(3u, 5);                                    /* mixed signed / unsigned: unsigned */
    o[7] = min(-3, 2);
    int x = 10;
    o[8] = atomicCAS(&x, 10, 42) * 1000 + x;
    o[9] = __popc(0xF0F0u) * 100 + __clz(1) + (__ffs(0x10) << 8);
    f[0] = fmaxf(-1.0f, 2.5f) + fminf(3.0f, -4.0f) + fabsf(-0.25f); /* 2.5 - 4 + 0.25 */
    f[1] = roundf(2.5f) + roundf(-0.5f);                       /* halves away from zero: 3 - 1 */
    f[2] = __fdividef(1.0f, 4.0f) + rsqrtf(16.0f) + sqrtf(9.0f) + __expf(0.0f) + __logf(1.0f);
    const uint4 u = make_uint4(1, 2, 3, 4);
    const float4 v4 = make_float4(0.5f, 1.5f, 2.5f, 3.5f);
    const float4 v = __ldg(&v4);
    f[3] = (float)(u.x + u.y + u.z + u.w) + v.x + v.w;
}

static bool check_intrinsics() {
    int *o = dev_alloc<int>(10);
    float *f = dev_alloc<float>(4);
    REQUIRE(o && f);
    PL_LAUNCH(1, 1, 0, 0, intrinsics_kernel)(o, f);
    REQUIRE(cudaGetLastError() == cudaSuccess);
    std::vector<int> h = to_host(o, 10);
    std::vector<float> hf = to_host(f, 4);
    REQUIRE(h[0] == 16384 + 128 + 16129 + 2 + 5);
    REQUIRE(h[1] == 255 + 0 + 510 + 255 + 1);
    REQUIRE((unsigned)h[2] == 0xFFF075FDu);
    REQUIRE((unsigned)h[3] == 0x77553311u);
    REQUIRE((unsigned)h[4] == 0xC0000000u && h[5] == 1);
    REQUIRE(h[6] == 5 && h[7] == -3 && h[8] == 10042);
    REQUIRE(h[9] == 8 * 100 + 31 + (5 << 8));
    REQUIRE(hf[0] == -1.25f && hf[1] == 2.0f && hf[2] == 0.25f + 0.25f + 3.0f + 1.0f + 0.0f && hf[3] == 14.0f);
    cudaFree(o);
    cudaFree(f);
    return true;
}

/* ---------------------------------------------------------------- atomics */
__global__ void atomic_kernel(int *sum, int *mx, float *fsum) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    atomicAdd(sum, 1);
    atomicMax(mx, (i * 37) % 1009);
    atomicAdd(fsum, 0.5f);
}

static bool check_atomics() {
    int *p = dev_alloc<int>(2);
    float *f = dev_alloc<float>(1);
    REQUIRE(p && f);
    REQUIRE(cudaMemset(p, 0, 2 * sizeof(int)) == cudaSuccess && cudaMemset(f, 0, sizeof(float)) == cudaSuccess);
    PL_LAUNCH(4, 1024, 0, 0, atomic_kernel)(p, p + 1, f);
    REQUIRE(cudaGetLastError() == cudaSuccess);
    std::vector<int> h = to_host(p, 2);
    std::vector<float> hf = to_host(f, 1);
    REQUIRE(h[0] == 4096 && h[1] == 1008 && hf[0] == 2048.0f);
    cudaFree(p);
    cudaFree(f);
    return true;
}

/* ---------------------------------------------------------------- deadlocks and device errors */
static float lane_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__global__ void exited_lanes_kernel(float *out) { /* half the warp returns, the rest reduce over all 32 */
    if ((threadIdx.x & 31) >= 16) return;
    const float s = lane_sum(1.0f);
    if (threadIdx.x == 0) out[0] = s;
}
__global__ void crossed_barriers_kernel(int *out) { /* one thread of warp 1 at __syncthreads, its warp at a shuffle */
    const int t = threadIdx.x;
    int v = t;
    if (t == 40) __syncthreads();
    else if (t >= 32) v = __shfl_sync(0xffffffffu, v, 0);
    else __syncthreads();
    out[t] = v;
}
__global__ void not_own_mask_kernel(int *out) { out[threadIdx.x] = __shfl_sync(1u << ((threadIdx.x + 1) & 31), 1, 0); }
__global__ void outside_mask_kernel(int *out) {
    if (threadIdx.x < 16) out[threadIdx.x] = __shfl_sync(0x0000ffffu, (int)threadIdx.x, 20);
}
__global__ void fine_kernel(float *out) { out[threadIdx.x] = lane_sum((float)threadIdx.x); }

static bool launch_failed_with(const char *must_contain, const char *and_this) {
    const cudaError_t e = cudaGetLastError();
    if (e != cudaErrorLaunchFailure) {
        why = std::string("expected cudaErrorLaunchFailure, got ") + cudaGetErrorName(e);
        return false;
    }
    const std::string msg = cudaGetErrorString(e);
    if (msg.find(must_contain) == std::string::npos || msg.find(and_this) == std::string::npos) {
        why = "the message lacks '" + std::string(must_contain) + "' / '" + and_this + "': " + msg;
        return false;
    }
    if (cudaGetLastError() != cudaSuccess) {
        why = "the error was not cleared once reported";
        return false;
    }
    return true;
}

static bool check_deadlock_exited_lanes() {
    float *out = dev_alloc<float>(32);
    REQUIRE(out);
    PL_LAUNCH(2, 32, 0, 0, exited_lanes_kernel)(out);
    if (!launch_failed_with("deadlock", "threads 0-15 wait at __shfl_xor_sync (mask 0xffffffff); threads 16-31 exited"))
        return false;
    REQUIRE(std::string(cudaGetErrorString(cudaErrorLaunchFailure)).find("kernel exited_lanes_kernel, block (0,0,0)") !=
            std::string::npos);
    /* the fibers left mid-kernel are reset: the next launch runs normally */
    PL_LAUNCH(1, 32, 0, 0, fine_kernel)(out);
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    std::vector<float> h = to_host(out, 32);
    REQUIRE(h.size() == 32 && h[0] == 496.0f && h[31] == 496.0f);
    cudaFree(out);
    return true;
}

static bool check_deadlock_crossed_barriers() {
    int *out = dev_alloc<int>(64);
    REQUIRE(out);
    PL_LAUNCH(1, 64, 0, 0, crossed_barriers_kernel)(out);
    /* reported by the next call that waits for the device, then cleared */
    const cudaError_t e = cudaDeviceSynchronize();
    REQUIRE(e == cudaErrorLaunchFailure);
    const std::string msg = cudaGetErrorString(e);
    REQUIRE(msg.find("threads 0-31 wait at __syncthreads(); threads 32-39 wait at __shfl_sync (mask 0xffffffff); "
                     "thread 40 wait at __syncthreads(); threads 41-63 wait at __shfl_sync") != std::string::npos);
    REQUIRE(cudaGetLastError() == cudaErrorLaunchFailure); /* as CUDA: the last error is the failure too */
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    cudaFree(out);
    return true;
}

static bool check_mask_errors() {
    int *out = dev_alloc<int>(32);
    REQUIRE(out);
    PL_LAUNCH(1, 32, 0, 0, not_own_mask_kernel)(out);
    if (!launch_failed_with("__shfl_sync: thread 0 (lane 0) is not in its own mask 0x00000002", "not_own_mask_kernel"))
        return false;
    PL_LAUNCH(1, 32, 0, 0, outside_mask_kernel)(out);
    if (!launch_failed_with("reads lane 20, which is not in the mask 0x0000ffff", "outside_mask_kernel")) return false;
    cudaFree(out);
    return true;
}

__global__ void mma_partial_warp_kernel(int *out) {
    unsigned a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
    int c[4] = {0, 0, 0, 0};
    pl_mma_s8_m16n8k32(c, a, b);
    out[threadIdx.x] = c[0];
}

static bool check_mma_needs_a_whole_warp() {
    int *out = dev_alloc<int>(48);
    REQUIRE(out);
    PL_LAUNCH(1, 48, 0, 0, mma_partial_warp_kernel)(out);
    if (!launch_failed_with("needs a whole warp", "thread 32 is in a warp of 16 threads")) return false;
    cudaFree(out);
    return true;
}

/* ---------------------------------------------------------------- launch configuration */
__global__ void big_smem_kernel(int *out) {
    PL_DYNAMIC_SHARED(unsigned char, s);
    s[threadIdx.x * 1000 + 999] = 7;
    __syncthreads();
    out[threadIdx.x] = s[((threadIdx.x + 1) % blockDim.x) * 1000 + 999];
}

static bool check_launch_configuration() {
    int *out = dev_alloc<int>(64);
    REQUIRE(out);
    PL_LAUNCH(1, 2048, 0, 0, fine_kernel)((float *)out);
    REQUIRE(cudaGetLastError() == cudaErrorInvalidConfiguration);
    REQUIRE(std::string(cudaGetErrorString(cudaErrorInvalidConfiguration)).find("fine_kernel") != std::string::npos);
    PL_LAUNCH(0, 32, 0, 0, fine_kernel)((float *)out);
    REQUIRE(cudaGetLastError() == cudaErrorInvalidConfiguration);
    PL_LAUNCH(1, 64, 64000, 0, big_smem_kernel)(out);
    REQUIRE(cudaGetLastError() == cudaErrorInvalidValue);
    REQUIRE(std::string(cudaGetErrorString(cudaErrorInvalidValue)).find("cudaFuncAttributeMaxDynamicSharedMemorySize") !=
            std::string::npos);
    REQUIRE(cudaFuncSetAttribute(big_smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 64000) == cudaSuccess);
    PL_LAUNCH(1, 64, 64000, 0, big_smem_kernel)(out);
    REQUIRE(cudaGetLastError() == cudaSuccess);
    std::vector<int> h = to_host(out, 64);
    for (int i = 0; i < 64; i++) REQUIRE(h[i] == 7);
    cudaFree(out);
    return true;
}

/* ---------------------------------------------------------------- memory checks */
static bool check_memory_errors() {
    int *p = dev_alloc<int>(10);
    std::vector<int> h(20, 1);
    REQUIRE(p);
    REQUIRE(((uintptr_t)p & 255) == 0);
    REQUIRE(cudaMemcpy(p, h.data(), 11 * sizeof(int), cudaMemcpyHostToDevice) == cudaErrorInvalidValue);
    REQUIRE(std::string(cudaGetErrorString(cudaErrorInvalidValue)).find("not inside one device allocation") !=
            std::string::npos);
    REQUIRE(cudaMemcpy(h.data(), p + 5, 6 * sizeof(int), cudaMemcpyDeviceToHost) == cudaErrorInvalidValue);
    REQUIRE(cudaMemcpy(h.data(), p + 5, 5 * sizeof(int), cudaMemcpyDeviceToHost) == cudaSuccess);
    REQUIRE(cudaMemset(p + 1, 0, 10 * sizeof(int)) == cudaErrorInvalidValue);
    REQUIRE(cudaFree(h.data()) == cudaErrorInvalidValue);
    void *huge = nullptr;
    REQUIRE(cudaMalloc(&huge, (size_t)1 << 60) == cudaErrorMemoryAllocation && huge == nullptr);
    REQUIRE(cudaGetLastError() == cudaErrorMemoryAllocation);
    REQUIRE(cudaGetLastError() == cudaSuccess);
    REQUIRE(cudaFree(p) == cudaSuccess);
    REQUIRE(cudaFree(p) == cudaErrorInvalidValue); /* twice */
    return true;
}

/* ---------------------------------------------------------------- streams, events, graphs */
__global__ void add_kernel(int *x, int n, int v) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += v;
}

static bool check_graph_capture_and_replay() {
    const int n = 100;
    int *x = dev_alloc<int>(n);
    REQUIRE(x);
    REQUIRE(cudaMemset(x, 0, n * sizeof(int)) == cudaSuccess);
    cudaStream_t s;
    REQUIRE(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess);
    std::vector<int> h(n, -1);
    int v = 5;
    REQUIRE(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal) == cudaSuccess);
    cudaStreamCaptureStatus st;
    REQUIRE(cudaStreamIsCapturing(s, &st) == cudaSuccess && st == cudaStreamCaptureStatusActive);
    PL_LAUNCH(1, 128, 0, s, add_kernel)(x, n, v);
    v = 1000; /* arguments were captured by value: the graph keeps adding 5 */
    PL_LAUNCH(1, 128, 0, s, add_kernel)(x, n, 2);
    REQUIRE(cudaMemcpyAsync(h.data(), x, n * sizeof(int), cudaMemcpyDeviceToHost, s) == cudaSuccess);
    cudaGraph_t g = nullptr;
    REQUIRE(cudaStreamEndCapture(s, &g) == cudaSuccess && g);
    REQUIRE(h[0] == -1 && h[n - 1] == -1); /* nothing ran while capturing */
    cudaGraphExec_t ex = nullptr;
    REQUIRE(cudaGraphInstantiate(&ex, g, 0) == cudaSuccess);
    for (int rep = 1; rep <= 3; rep++) {
        REQUIRE(cudaGraphLaunch(ex, s) == cudaSuccess);
        REQUIRE(cudaStreamSynchronize(s) == cudaSuccess);
        REQUIRE(h[0] == 7 * rep && h[n - 1] == 7 * rep);
    }
    REQUIRE(cudaGraphExecDestroy(ex) == cudaSuccess && cudaGraphDestroy(g) == cudaSuccess);

    /* what breaks a capture: the legacy stream's work (a blocking stream), a sync of the capturing stream */
    cudaStream_t b;
    REQUIRE(cudaStreamCreate(&b) == cudaSuccess);
    REQUIRE(cudaStreamBeginCapture(b, cudaStreamCaptureModeGlobal) == cudaSuccess);
    REQUIRE(cudaMemcpy(h.data(), x, sizeof(int), cudaMemcpyDeviceToHost) == cudaErrorStreamCaptureImplicit);
    REQUIRE(cudaStreamEndCapture(b, &g) == cudaErrorStreamCaptureInvalidated && g == nullptr);
    REQUIRE(cudaStreamBeginCapture(b, cudaStreamCaptureModeGlobal) == cudaSuccess);
    PL_LAUNCH(1, 32, 0, 0, add_kernel)(x, n, 1);
    REQUIRE(cudaGetLastError() == cudaErrorStreamCaptureImplicit);
    REQUIRE(cudaStreamEndCapture(b, &g) == cudaErrorStreamCaptureInvalidated);
    REQUIRE(cudaStreamBeginCapture(b, cudaStreamCaptureModeRelaxed) == cudaSuccess);
    REQUIRE(cudaStreamSynchronize(b) == cudaErrorStreamCaptureUnsupported);
    REQUIRE(cudaStreamEndCapture(b, &g) == cudaErrorStreamCaptureInvalidated);
    REQUIRE(cudaStreamBeginCapture(0, cudaStreamCaptureModeGlobal) == cudaErrorStreamCaptureUnsupported);
    REQUIRE(cudaStreamEndCapture(b, &g) == cudaErrorIllegalState);
    std::vector<int> now = to_host(x, n);
    REQUIRE(now[0] == 21); /* 3 replays of +7; the refused kernel did not run */
    REQUIRE(cudaStreamDestroy(s) == cudaSuccess && cudaStreamDestroy(b) == cudaSuccess);
    REQUIRE(cudaStreamDestroy(b) == cudaErrorInvalidResourceHandle);
    cudaFree(x);
    return true;
}

static bool check_events() {
    cudaEvent_t a, b, c;
    REQUIRE(cudaEventCreate(&a) == cudaSuccess && cudaEventCreate(&b) == cudaSuccess);
    REQUIRE(cudaEventCreateWithFlags(&c, cudaEventDisableTiming) == cudaSuccess);
    float ms = -1;
    REQUIRE(cudaEventElapsedTime(&ms, a, b) == cudaErrorInvalidResourceHandle); /* never recorded */
    REQUIRE(cudaEventRecord(a) == cudaSuccess);
    float *out = dev_alloc<float>(1024);
    PL_LAUNCH(32, 32, 0, 0, fine_kernel)(out);
    REQUIRE(cudaEventRecord(b, 0) == cudaSuccess && cudaEventRecord(c) == cudaSuccess);
    REQUIRE(cudaEventSynchronize(b) == cudaSuccess);
    REQUIRE(cudaEventElapsedTime(&ms, a, b) == cudaSuccess && ms > 0.0f && ms < 10000.0f);
    REQUIRE(cudaEventElapsedTime(&ms, a, c) == cudaErrorInvalidResourceHandle);
    REQUIRE(cudaEventDestroy(a) == cudaSuccess && cudaEventDestroy(b) == cudaSuccess && cudaEventDestroy(c) == cudaSuccess);
    cudaFree(out);
    return true;
}

static bool check_device_properties() {
    int n = 0, v = 0;
    REQUIRE(cudaGetDeviceCount(&n) == cudaSuccess && n == 1);
    cudaDeviceProp p;
    REQUIRE(cudaGetDeviceProperties(&p, 0) == cudaSuccess);
    REQUIRE(std::string(p.name).find("emulation") != std::string::npos && p.major == 9 && p.warpSize == 32);
    REQUIRE(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, 0) == cudaSuccess && v == p.multiProcessorCount);
    REQUIRE(cudaGetDeviceProperties(&p, 1) == cudaErrorInvalidDevice);
    REQUIRE(cudaSetDevice(1) == cudaErrorInvalidDevice && cudaSetDevice(0) == cudaSuccess);
    return true;
}

/* ---------------------------------------------------------------- fp16, bench */
static int fp16_files(const char *in, const char *out) {
    FILE *f = fopen(in, "rb");
    if (!f) return 2;
    std::vector<float> x;
    float v;
    while (fread(&v, 4, 1, f) == 1) x.push_back(v);
    fclose(f);
    FILE *o = fopen(out, "wb");
    if (!o) return 2;
    for (float xv : x) {
        const uint16_t h = pl_f2h(xv);
        fwrite(&h, 2, 1, o);
    }
    for (unsigned h = 0; h < 65536; h++) {
        const float fv = pl_h2f((uint16_t)h);
        fwrite(&fv, 4, 1, o);
    }
    fclose(o);
    return 0;
}

__global__ void barrier_loop(int iters, int *out) {
    int acc = 0;
    for (int i = 0; i < iters; i++) {
        acc += i;
        __syncthreads();
    }
    out[threadIdx.x] = acc;
}
__global__ void shfl_loop(int iters, float *out) {
    float v = (float)threadIdx.x;
    for (int i = 0; i < iters; i++) v = lane_sum(v) * 0.03125f;
    out[threadIdx.x] = v;
}

static int bench() {
    int *out = dev_alloc<int>(1024);
    const int iters = 2000;
    PL_LAUNCH(1, 1024, 0, 0, barrier_loop)(iters, out); /* warm: the stacks exist */
    unsigned long long s0 = pl_emu_switch_count();
    auto t0 = std::chrono::steady_clock::now();
    PL_LAUNCH(1, 1024, 0, 0, barrier_loop)(iters, out);
    double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    unsigned long long sw = pl_emu_switch_count() - s0;
    printf("switch_ns %.2f (%llu switches in %.3f s, __syncthreads over 1024 threads)\n", sec * 1e9 / (double)sw, sw, sec);
    t0 = std::chrono::steady_clock::now();
    PL_LAUNCH(1, 1024, 0, 0, shfl_loop)(200, (float *)out);
    sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    printf("shfl_ns %.2f (per lane and __shfl_xor_sync)\n", sec * 1e9 / (1024.0 * 200 * 5));
    cudaFree(out);
    return cudaGetLastError() == cudaSuccess ? 0 : 1;
}

int main(int argc, char **argv) {
    const std::string cmd = argc > 1 ? argv[1] : "";
    if (cmd == "fp16" && argc == 4) return fp16_files(argv[2], argv[3]);
    if (cmd == "bench") return bench();
    if (cmd != "checks") {
        fprintf(stderr, "usage: %s checks | fp16 IN OUT | bench\n", argv[0]);
        return 2;
    }
    report("shuffles", check_shuffles());
    report("votes_and_partial_masks", check_votes());
    report("block_barrier_and_shared_memory", check_block_barrier());
    report("thread_indexing", check_indexing());
    report("barrier_reductions", check_barrier_reductions());
    report("thread_order_catches_missing_barriers", check_thread_order_catches_missing_barriers());
    report("intrinsics", check_intrinsics());
    report("atomics", check_atomics());
    report("deadlock_exited_lanes", check_deadlock_exited_lanes());
    report("deadlock_crossed_barriers", check_deadlock_crossed_barriers());
    report("mask_errors", check_mask_errors());
    report("mma_needs_a_whole_warp", check_mma_needs_a_whole_warp());
    report("launch_configuration", check_launch_configuration());
    report("memory_errors", check_memory_errors());
    report("graph_capture_and_replay", check_graph_capture_and_replay());
    report("events", check_events());
    report("device_properties", check_device_properties());
    return failures ? 1 : 0;
}
