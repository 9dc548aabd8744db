/* cuda_runtime.h (CPU emulation): in a -DPYLLM_CUDA_EMULATE=ON build this directory is on the include path
 * of the csrc/cuda/ .cu files, so a source that includes <cuda_runtime.h> itself gets the emulation, not the toolkit. */
#include "../cuda_emulation.h"
