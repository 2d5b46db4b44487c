// Depthwise causal conv1d: forward, one-token step, backward.
//
// x (B, L, C) contiguous; weight (C, K); bias (C) or null; initial state (B, C, K) or null,
// slot j holding the input at time j - K (slot 0 is never read). The input at time m < 0 is
// init[b, c, m + K] (zero without a state). act: 0 none, 1 silu.
#include "common.cuh"

template <typename T>
__device__ __forceinline__ T conv_in(const T* X, const T* I, int b, int m, int c, int L, int C,
                                     int K) {
  if (m >= 0) return X[((long long)b * L + m) * C + c];
  return I != nullptr ? I[((long long)b * C + c) * K + m + K] : T(0);
}

// Forward and du: block (channel block blockIdx.y, time tile blockIdx.x of batch row b), thread
// = one channel c over CONV_TT consecutive times, the K-1 inputs before each output in a
// register window (each x read once, plus a K-1 halo a tile; no division per element).
// Grid (B * ceil(L / CONV_TT), ceil(C / blockDim.x)). KT: the kernel width (a template
// argument, so the window stays in registers).
#define CONV_TT 16

template <typename T, int KT>
__device__ __forceinline__ void conv_window(const T* X, const T* I, int b, int t0, int c, int L,
                                            int C, T (&win)[KT]) {
  // win[k] = input at time t0 - KT + 1 + k for k < KT - 1 (win[KT - 1] is filled per step)
#pragma unroll
  for (int k = 0; k + 1 < KT; ++k) win[k] = conv_in(X, I, b, t0 - KT + 1 + k, c, L, C, KT);
}

// The thread's batch row b, first time t0 and channel c (false past C), its weights and bias.
template <typename T, int KT>
__device__ __forceinline__ bool conv_tile(const T* Wt, const T* Bi, int L, int C, int& b, int& t0,
                                          int& c, T (&w)[KT], T& bias) {
  const int tiles = (L + CONV_TT - 1) / CONV_TT;
  b = blockIdx.x / tiles;
  t0 = (blockIdx.x - b * tiles) * CONV_TT;
  c = blockIdx.y * blockDim.x + threadIdx.x;
  if (c >= C) return false;
#pragma unroll
  for (int k = 0; k < KT; ++k) w[k] = Wt[c * KT + k];
  bias = Bi != nullptr ? Bi[c] : T(0);
  return true;
}

template <typename T, int KT>
__global__ void conv1d_fwd(const T* __restrict__ X, const T* __restrict__ Wt,
                           const T* __restrict__ Bi, const T* __restrict__ I, T* __restrict__ Y,
                           const int Bsz, const int L, const int C, const int act) {
  int b, t0, c;
  T w[KT], win[KT], bias;
  if (!conv_tile<T, KT>(Wt, Bi, L, C, b, t0, c, w, bias)) return;
  conv_window<T, KT>(X, I, b, t0, c, L, C, win);
  const int t1 = min(L, t0 + CONV_TT);
  for (int t = t0; t < t1; ++t) {
    const long long o = ((long long)b * L + t) * C + c;
    win[KT - 1] = X[o];
    T acc = bias;
#pragma unroll
    for (int k = 0; k < KT; ++k) acc += w[k] * win[k];
    Y[o] = act ? m_silu(acc) : acc;
#pragma unroll
    for (int k = 0; k + 1 < KT; ++k) win[k] = win[k + 1];
  }
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

// du = dy * act'(pre)  (B, L, C); the forward's tiles and window (pre recomputed)
template <typename T, int KT>
__global__ void conv1d_bwd_du(const T* __restrict__ X, const T* __restrict__ Wt,
                              const T* __restrict__ Bi, const T* __restrict__ I,
                              const T* __restrict__ DY, T* __restrict__ DU, const int Bsz,
                              const int L, const int C, const int act) {
  int b, t0, c;
  T w[KT], win[KT], bias;
  if (!conv_tile<T, KT>(Wt, Bi, L, C, b, t0, c, w, bias)) return;
  if (act) conv_window<T, KT>(X, I, b, t0, c, L, C, win);
  const int t1 = min(L, t0 + CONV_TT);
  for (int t = t0; t < t1; ++t) {
    const long long o = ((long long)b * L + t) * C + c;
    T d = DY != nullptr ? DY[o] : T(0);
    if (act) {
      win[KT - 1] = X[o];
      T acc = bias;
#pragma unroll
      for (int k = 0; k < KT; ++k) acc += w[k] * win[k];
      d *= m_dsilu(acc);
#pragma unroll
      for (int k = 0; k + 1 < KT; ++k) win[k] = win[k + 1];
    }
    DU[o] = d;
  }
}

// The gradient of every input position m in [-K, L): DF (B, L + K, C), row m + K.
//   DF[m] = sum_k [0 <= m+K-1-k < L] du[m+K-1-k] w[k] + [0 <= m-L+K < K] dfinal[m-L+K]
// Grid (B * (L + K), ceil(C / blockDim.x)): block row blockIdx.x = (b, m + K), thread = c.
template <typename T>
__global__ void conv1d_bwd_dx(const T* __restrict__ DU, const T* __restrict__ Wt,
                              const T* __restrict__ DFIN, T* __restrict__ DF, const int Bsz,
                              const int L, const int C, const int K) {
  const int c = blockIdx.y * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const int b = blockIdx.x / (L + K);
  const int m = blockIdx.x - b * (L + K) - K;
  const long long idx = (long long)blockIdx.x * C + c;
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
      const int b = (int)(rt / L), t = (int)(rt - (long long)b * L);
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
#define CONV_K_INST(T, K)                                                                         \
  template __global__ void conv1d_fwd<T, K>(const T*, const T*, const T*, const T*, T*, int, int, \
                                            int, int);                                            \
  template __global__ void conv1d_bwd_du<T, K>(const T*, const T*, const T*, const T*, const T*,  \
                                               T*, int, int, int, int);
#define CONV_INST(T)                                                                              \
  CONV_K_INST(T, 1) CONV_K_INST(T, 2) CONV_K_INST(T, 3) CONV_K_INST(T, 4)                        \
  CONV_K_INST(T, 5) CONV_K_INST(T, 6) CONV_K_INST(T, 7) CONV_K_INST(T, 8)                        \
  template __global__ void conv1d_step<T>(const T*, const T*, const T*, const T*, T*, T*, int,   \
                                          int, int, int);                                         \
  template __global__ void conv1d_bwd_dx<T>(const T*, const T*, const T*, T*, int, int, int, int); \
  template __global__ void conv1d_bwd_dw<T>(const T*, const T*, const T*, T*, int, int, int, int);
CONV_INST(float)
CONV_INST(double)
#endif
