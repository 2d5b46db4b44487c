// Depthwise causal conv1d: forward, one-token step, backward.
//
// x (B, L, C) contiguous; weight (C, K); bias (C) or null; initial state (B, C, K) or null,
// slot j holding the input at time j - K (slot 0 is never read). The input at time m < 0 is
// init[b, c, m + K] (zero without a state). act: 0 none, 1 silu. One thread per output element.
#include "common.cuh"

template <typename T>
__device__ __forceinline__ T conv_in(const T* X, const T* I, int b, int m, int c, int L, int C,
                                     int K) {
  if (m >= 0) return X[((long long)b * L + m) * C + c];
  return I != nullptr ? I[((long long)b * C + c) * K + m + K] : T(0);
}

template <typename T>
__device__ __forceinline__ T conv_pre(const T* X, const T* Wt, const T* Bi, const T* I, int b,
                                      int t, int c, int L, int C, int K) {
  T acc = Bi != nullptr ? Bi[c] : T(0);
  for (int k = 0; k < K; ++k) acc += Wt[c * K + k] * conv_in(X, I, b, t - K + 1 + k, c, L, C, K);
  return acc;
}

template <typename T>
__global__ void conv1d_fwd(const T* __restrict__ X, const T* __restrict__ Wt,
                           const T* __restrict__ Bi, const T* __restrict__ I, T* __restrict__ Y,
                           const int Bsz, const int L, const int C, const int K, const int act) {
  const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= (long long)Bsz * L * C) return;
  const int c = idx % C;
  const int t = (idx / C) % L;
  const int b = idx / ((long long)C * L);
  T y = conv_pre(X, Wt, Bi, I, b, t, c, L, C, K);
  if (act) y = m_silu(y);
  Y[idx] = y;
}

// One token: S (B, C, K) -> NS = S shifted left with x appended; y = act(b + sum_k w_k NS_k).
template <typename T>
__global__ void conv1d_step(const T* __restrict__ X, const T* __restrict__ S,
                            const T* __restrict__ Wt, const T* __restrict__ Bi,
                            T* __restrict__ Y, T* __restrict__ NS, const int Bsz, const int C,
                            const int K, const int act) {
  const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= (long long)Bsz * C) return;
  const int c = idx % C;
  const T* s = S + idx * K;
  T* ns = NS + idx * K;
  T acc = Bi != nullptr ? Bi[c] : T(0);
  for (int k = 0; k < K; ++k) {
    const T v = (k + 1 < K) ? s[k + 1] : X[idx];
    ns[k] = v;
    acc += Wt[c * K + k] * v;
  }
  Y[idx] = act ? m_silu(acc) : acc;
}

// du = dy * act'(pre)  (B, L, C)
template <typename T>
__global__ void conv1d_bwd_du(const T* __restrict__ X, const T* __restrict__ Wt,
                              const T* __restrict__ Bi, const T* __restrict__ I,
                              const T* __restrict__ DY, T* __restrict__ DU, const int Bsz,
                              const int L, const int C, const int K, const int act) {
  const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= (long long)Bsz * L * C) return;
  const int c = idx % C;
  const int t = (idx / C) % L;
  const int b = idx / ((long long)C * L);
  T d = DY != nullptr ? DY[idx] : T(0);
  if (act) d *= m_dsilu(conv_pre(X, Wt, Bi, I, b, t, c, L, C, K));
  DU[idx] = d;
}

// The gradient of every input position m in [-K, L): DF (B, L + K, C), row m + K.
//   DF[m] = sum_k [0 <= m+K-1-k < L] du[m+K-1-k] w[k] + [0 <= m-L+K < K] dfinal[m-L+K]
template <typename T>
__global__ void conv1d_bwd_dx(const T* __restrict__ DU, const T* __restrict__ Wt,
                              const T* __restrict__ DFIN, T* __restrict__ DF, const int Bsz,
                              const int L, const int C, const int K) {
  const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= (long long)Bsz * (L + K) * C) return;
  const int c = idx % C;
  const int m = (int)((idx / C) % (L + K)) - K;
  const int b = idx / ((long long)C * (L + K));
  T acc = T(0);
  for (int k = 0; k < K; ++k) {
    const int t = m + K - 1 - k;
    if (t >= 0 && t < L) acc += DU[((long long)b * L + t) * C + c] * Wt[c * K + k];
  }
  const int j = m - L + K;
  if (DFIN != nullptr && j >= 0 && j < K) acc += DFIN[((long long)b * C + c) * K + j];
  DF[idx] = acc;
}

// dw[c, k] = sum_{b,t} du[b,t,c] in(t-K+1+k);  db[c] = sum du. Block (32 channels, 8 row lanes);
// block row blockIdx.y takes rows (b, t) = blockIdx.y * 8 + threadIdx.y + i * 8 * gridDim.y and
// writes its partial sums to DWP (gridDim.y, C, K + 1) (column K: db); the host sums over the
// first axis (fixed order: deterministic, no atomics).
#define CONV_KMAX 8
template <typename T>
__global__ void conv1d_bwd_dw(const T* __restrict__ X, const T* __restrict__ I,
                              const T* __restrict__ DU, T* __restrict__ DWP, const int Bsz,
                              const int L, const int C, const int K) {
  __shared__ T sw[8][32][CONV_KMAX + 1];
  const int c = blockIdx.x * 32 + threadIdx.x;
  T acc[CONV_KMAX + 1];
#pragma unroll
  for (int k = 0; k <= CONV_KMAX; ++k) acc[k] = T(0);
  if (c < C) {
    const long long step = 8LL * gridDim.y;
    for (long long rt = (long long)blockIdx.y * 8 + threadIdx.y; rt < (long long)Bsz * L;
         rt += step) {
      const int b = rt / L, t = rt % L;
      const T du = DU[rt * C + c];
#pragma unroll
      for (int k = 0; k < CONV_KMAX; ++k) {
        if (k < K) acc[k] += du * conv_in(X, I, b, t - K + 1 + k, c, L, C, K);
      }
      acc[CONV_KMAX] += du;
    }
  }
#pragma unroll
  for (int k = 0; k <= CONV_KMAX; ++k) sw[threadIdx.y][threadIdx.x][k] = acc[k];
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    T* out = DWP + ((long long)blockIdx.y * C + c) * (K + 1);
    for (int k = 0; k <= CONV_KMAX; ++k) {
      T s = T(0);
      for (int y = 0; y < 8; ++y) s += sw[y][threadIdx.x][k];
      if (k < K) out[k] = s;
      if (k == CONV_KMAX) out[K] = s;
    }
  }
}

#ifdef MAMBA_CUPY_INSTANTIATE
#define CONV_INST(T)                                                                              \
  template __global__ void conv1d_fwd<T>(const T*, const T*, const T*, const T*, T*, int, int,   \
                                         int, int, int);                                          \
  template __global__ void conv1d_step<T>(const T*, const T*, const T*, const T*, T*, T*, int,   \
                                          int, int, int);                                         \
  template __global__ void conv1d_bwd_du<T>(const T*, const T*, const T*, const T*, const T*, T*, \
                                            int, int, int, int, int);                             \
  template __global__ void conv1d_bwd_dx<T>(const T*, const T*, const T*, T*, int, int, int, int); \
  template __global__ void conv1d_bwd_dw<T>(const T*, const T*, const T*, T*, int, int, int, int);
CONV_INST(float)
CONV_INST(double)
#endif
