// Annotation for functions shared by the CPU backend (g++) and CUDA kernels (nvcc).
// C++17: included by .cu files.
#pragma once

#if defined(__CUDACC__)
#define MICACHE_HOST_DEVICE __host__ __device__
#else
#define MICACHE_HOST_DEVICE
#endif
