/* memory.cu: device memory (plain cudaMalloc, never managed memory) and synchronous copies between the
 * host and the device, each size and pointer checked before the runtime sees it. */
#include "cuda_common.cuh"

int pl_cuda_alloc(void **dev, size_t nbytes, char *err) {
    *dev = NULL;
    if (nbytes == 0) return PL_CUDA_ERR("cannot allocate 0 bytes of device memory");
    char what[96];
    snprintf(what, sizeof(what), "allocating %zu bytes of device memory", nbytes);
    if (pl_cuda_fail(cudaMalloc(dev, nbytes), what, err)) {
        *dev = NULL;
        return -1;
    }
    return 0;
}

void pl_cuda_free(void *dev) {
    if (dev) cudaFree(dev);
}

int pl_cuda_to_device(void *dev, const void *host, size_t nbytes, char *err) {
    if (nbytes == 0) return 0;
    if (!dev || !host) return PL_CUDA_ERR("copy to the device: NULL pointer");
    return pl_cuda_fail(cudaMemcpy(dev, host, nbytes, cudaMemcpyHostToDevice), "copy to the device", err);
}

int pl_cuda_to_host(void *host, const void *dev, size_t nbytes, char *err) {
    if (nbytes == 0) return 0;
    if (!dev || !host) return PL_CUDA_ERR("copy to the host: NULL pointer");
    return pl_cuda_fail(cudaMemcpy(host, dev, nbytes, cudaMemcpyDeviceToHost), "copy to the host", err);
}
