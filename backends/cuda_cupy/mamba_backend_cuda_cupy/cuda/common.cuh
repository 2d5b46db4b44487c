// Shared device helpers of the cuda_cupy kernels. No #include: NVRTC compiles these sources
// as they are (the loader pastes this header in place of its #include line), and nvcc
// compiles them in CI to PTX for sm_90.
#ifndef MAMBA_CUPY_COMMON_CUH
#define MAMBA_CUPY_COMMON_CUH

typedef long long i64;

__device__ __forceinline__ float m_exp(float x) { return expf(x); }
__device__ __forceinline__ double m_exp(double x) { return exp(x); }
__device__ __forceinline__ float m_log1p(float x) { return log1pf(x); }
__device__ __forceinline__ double m_log1p(double x) { return log1p(x); }
__device__ __forceinline__ float m_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double m_sqrt(double x) { return sqrt(x); }

template <typename T>
__device__ __forceinline__ T m_sigmoid(T x) { return T(1) / (T(1) + m_exp(-x)); }

template <typename T>
__device__ __forceinline__ T m_silu(T x) { return x * m_sigmoid(x); }

// d silu / dx = s (1 + x (1 - s)), s = sigmoid(x)
template <typename T>
__device__ __forceinline__ T m_dsilu(T x) {
  const T s = m_sigmoid(x);
  return s * (T(1) + x * (T(1) - s));
}

// Sum over the `width` lanes of an aligned lane group (width a power of two <= 32).
template <typename T>
__device__ __forceinline__ T group_sum(T v, int width) {
  for (int off = width >> 1; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Sum over a whole block: every thread gets the total. `buf` holds >= 32 T in shared memory.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* buf) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = group_sum(v, 32);
  __syncthreads();  // buf may still be read from a previous call
  if (lane == 0) buf[warp] = v;
  __syncthreads();
  T total = T(0);
  for (int w = 0; w < nw; ++w) total += buf[w];  // fixed order: deterministic
  return total;
}

// Asynchronous global -> shared copy of one element (cp.async, sm_80+; a plain load and store
// before). Every copy a thread issued since its last cp_async_wait_all() is complete, for that
// thread, after it; a __syncthreads() after the wait makes the block's copies visible to all.
template <typename T>
__device__ __forceinline__ void cp_async(T* dst, const T* src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(d), "l"(src),
               "n"(sizeof(T))
               : "memory");
#else
  *dst = *src;
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void cp_async_wait_all() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
#endif
}

// Programmatic dependent launch (PDL, sm_90+; kernels/_launch.py launches with it). A kernel
// launched so may start while the kernel before it in the stream still runs. Its contract here:
// before pdl_wait() it issues nothing but L2 prefetches (pdl_prefetch) of its parameters and
// states, never a load whose value it uses and never a store, so whatever the kernel before it
// writes, the results are those of stream order. pdl_wait() returns once the kernel before it
// has completed and its writes are visible (a no-op when the launch had no PDL attribute);
// pdl_trigger(), called after pdl_wait(), lets the next PDL launch start its prologue. Below
// sm_90 all three are no-ops (and the host never asks for PDL there).
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// bring the 128-byte line holding p into L2 (no value is read: safe before pdl_wait)
__device__ __forceinline__ void pdl_prefetch(const void* p) {
#if defined(__CUDA_ARCH__)
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
#endif
}

// prefetch `bytes` bytes from p, the group's `width` threads taking one line each in turn
__device__ __forceinline__ void pdl_prefetch_range(const void* p, const i64 bytes, const int rank,
                                                   const int width) {
  const char* c = static_cast<const char*>(p);
  for (i64 o = (i64)rank * 128; o < bytes; o += (i64)width * 128) pdl_prefetch(c + o);
}

#endif  // MAMBA_CUPY_COMMON_CUH
