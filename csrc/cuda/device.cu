/* device.cu: what the CUDA runtime says about this machine: how many devices (and, with none, why not:
 * the runtime's message), each device's name, compute capability, multiprocessors and memory, the
 * runtime and driver versions, and waiting for launched kernels. */
#include <string.h>

#include "cuda_common.cuh"

int pl_cuda_device_count(int *count, char *err) {
    *count = 0;
    int n = 0;
    if (pl_cuda_fail(cudaGetDeviceCount(&n), "cudaGetDeviceCount", err)) return -1;
    *count = n;
    return 0;
}

int pl_cuda_device_props(int device, pl_cuda_props *p, char *err) {
    memset(p, 0, sizeof(*p));
    int n = 0;
    if (pl_cuda_device_count(&n, err)) return -1;
    if (device < 0 || device >= n) return PL_CUDA_ERR("CUDA device %d does not exist (%d found)", device, n);
    cudaDeviceProp prop;
    if (pl_cuda_fail(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties", err)) return -1;
    snprintf(p->name, sizeof(p->name), "%s", prop.name);
    p->major = prop.major;
    p->minor = prop.minor;
    p->sm_count = prop.multiProcessorCount;
    p->total_mem = prop.totalGlobalMem;
    return 0;
}

void pl_cuda_versions(int *runtime, int *driver) {
    *runtime = 0;
    *driver = 0;
    if (cudaRuntimeGetVersion(runtime) != cudaSuccess) *runtime = 0;
    if (cudaDriverGetVersion(driver) != cudaSuccess) *driver = 0;
    (void)cudaGetLastError(); /* a failure here is reported as 0, not by the next launch */
}

int pl_cuda_sync(char *err) { return pl_cuda_fail(cudaDeviceSynchronize(), "a CUDA kernel failed", err); }
