/* pl_cuda_build.h: what _engine.pyx sees of the CUDA kernels: the API of csrc/cuda/pl_cuda.h, and
 * PL_HAVE_CUDA, 1 in a PYLLM_CUDA build (CMake -DPYLLM_CUDA=ON: the .cu files of csrc/cuda/ implement the API) and 0
 * in the default CPU build (csrc/cuda_absent.c answers every call with PL_CUDA_NOT_BUILT). So the one
 * .pyx compiles and links both ways; _engine checks PL_HAVE_CUDA before it calls anything. */
#ifndef PYLLM_PL_CUDA_BUILD_H
#define PYLLM_PL_CUDA_BUILD_H

#include "cuda/pl_cuda.h"
#include "pyllm.h"

_Static_assert(PL_CUDA_ERRMSG_LEN == PL_ERRMSG_LEN, "pl_cuda.h's message length must be pyllm.h's");
_Static_assert(PL_CUDA_F32 == PL_TYPE_F32 && PL_CUDA_F16 == PL_TYPE_F16 && PL_CUDA_BF16 == PL_TYPE_BF16 && PL_CUDA_Q4_0 == PL_TYPE_Q4_0 &&
                   PL_CUDA_Q8_0 == PL_TYPE_Q8_0 && PL_CUDA_QK == PL_QK && PL_CUDA_Q4_K == PL_TYPE_Q4_K &&
                   PL_CUDA_Q5_K == PL_TYPE_Q5_K && PL_CUDA_Q6_K == PL_TYPE_Q6_K && PL_CUDA_Q8_K == PL_TYPE_Q8_K &&
                   PL_CUDA_QK_K == PL_QK_K && PL_CUDA_Q4_1 == PL_TYPE_Q4_1 && PL_CUDA_Q5_0 == PL_TYPE_Q5_0 &&
                   PL_CUDA_Q5_1 == PL_TYPE_Q5_1,
               "pl_cuda.h's type ids must be tensor_types.h's");

#define PL_CUDA_NOT_BUILT "pyllm was built without CUDA: reinstall with pip install . -Ccmake.define.PYLLM_CUDA=ON"

#ifdef PYLLM_CUDA
#define PL_HAVE_CUDA 1
#else
#define PL_HAVE_CUDA 0
#endif

#endif
