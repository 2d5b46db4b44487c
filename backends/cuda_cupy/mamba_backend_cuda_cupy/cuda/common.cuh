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

#endif  // MAMBA_CUPY_COMMON_CUH
