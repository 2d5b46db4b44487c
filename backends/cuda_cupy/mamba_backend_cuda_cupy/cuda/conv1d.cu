// Depthwise causal conv1d: forward, one-token step, backward.
//
// x (B, L, C) contiguous; weight (C, K); bias (C) or null; initial state (B, C, K) or null,
// slot j holding the input at time j - K (slot 0 is never read). The input at time m < 0 is
// init[b, c, m + K] (zero without a state). act: 0 none, 1 silu.
//
// conv1d_fwd_v2 writes y and the final state; conv1d_bwd_v2 is the whole backward in one pass
// (du recomputed with a K-1 halo, dx, d initial state, dw/db partials per block); conv1d_dw_sum
// adds the partials in a fixed order into dw (C, K) and db (C); conv1d_step takes one token.
#include "common.cuh"

template <typename T>
__device__ __forceinline__ T conv_in(const T* X, const T* I, int b, int m, int c, int L, int C,
                                     int K) {
  if (m >= 0) return X[((long long)b * L + m) * C + c];
  return I != nullptr ? I[((long long)b * C + c) * K + m + K] : T(0);
}

// win[k] = the input at time t0 - KT + 1 + k, k < KT - 1 (win[KT - 1] is filled per step; KT:
// the kernel width, a template argument so that the window stays in registers)
template <typename T, int KT>
__device__ __forceinline__ void conv_window(const T* X, const T* I, int b, int t0, int c, int L,
                                            int C, T (&win)[KT]) {
#pragma unroll
  for (int k = 0; k + 1 < KT; ++k) win[k] = conv_in(X, I, b, t0 - KT + 1 + k, c, L, C, KT);
}

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

// ---- sequence kernels ----------------------------------------------------------------------
// Block (CONV2_TX channels, CONV2_TY time chunks): thread (tx, ty) of block (xb, cb) takes channel
// c = cb CONV2_TX + tx of batch row b = xb / nblk, over the TC consecutive times starting at
// ts = ((xb % nblk) CONV2_TY + ty) TC, nblk = ceil(L / (CONV2_TY TC)); grid (B nblk,
// ceil(C / CONV2_TX)). A warp reads 32 consecutive channels of one time (128 bytes in float32);
// the loads of CONV2_U times are issued together before their arithmetic.
#define CONV2_TX 32
#define CONV2_TY 8
#define CONV2_U 4

// Forward: y, and the final state FIN (B, C, K) = the last K inputs, oldest first (each slot
// written by the thread whose times hold it; slots before time 0 by the thread at ts = 0).
template <typename T, int KT>
__global__ void __launch_bounds__(CONV2_TX * CONV2_TY)
    conv1d_fwd_v2(const T* __restrict__ X, const T* __restrict__ Wt, const T* __restrict__ Bi,
                  const T* __restrict__ I, T* __restrict__ Y, T* __restrict__ FIN, const int Bsz,
                  const int L, const int C, const int act, const int TC) {
  const int c = blockIdx.y * CONV2_TX + threadIdx.x;
  const int nblk = (L + CONV2_TY * TC - 1) / (CONV2_TY * TC);
  const int b = blockIdx.x / nblk;
  const int ts = ((blockIdx.x - b * nblk) * CONV2_TY + threadIdx.y) * TC;
  if (c >= C || ts >= L) return;  // no barrier in this kernel
  const int te = min(L, ts + TC);
  T w[KT], win[KT];
#pragma unroll
  for (int k = 0; k < KT; ++k) w[k] = Wt[c * KT + k];
  const T bias = Bi != nullptr ? Bi[c] : T(0);
  conv_window<T, KT>(X, I, b, ts, c, L, C, win);
  const T* xb = X + (long long)b * L * C + c;
  T* yb = Y + (long long)b * L * C + c;
  for (int t = ts; t < te; t += 2 * CONV2_U) {
    T xs[2 * CONV2_U];
#pragma unroll
    for (int u = 0; u < 2 * CONV2_U; ++u) xs[u] = t + u < te ? xb[(long long)(t + u) * C] : T(0);
#pragma unroll
    for (int u = 0; u < 2 * CONV2_U; ++u) {
      if (t + u < te) {
        win[KT - 1] = xs[u];
        T acc = bias;
#pragma unroll
        for (int k = 0; k < KT; ++k) acc += w[k] * win[k];
        yb[(long long)(t + u) * C] = act ? m_silu(acc) : acc;
#pragma unroll
        for (int k = 0; k + 1 < KT; ++k) win[k] = win[k + 1];
      }
    }
  }
  if (FIN != nullptr) {
    T* fin = FIN + ((long long)b * C + c) * KT;
#pragma unroll
    for (int j = 0; j < KT; ++j) {
      const int m = L - KT + j;  // the time slot j holds
      if (m >= ts && m < te) fin[j] = xb[(long long)m * C];
      else if (m < 0 && ts == 0) fin[j] = I != nullptr ? I[((long long)b * C + c) * KT + j + L] : T(0);
    }
  }
}

// Backward in one pass. Thread (b, c, times [ts, te)):
//   du_t = dy_t act'(pre_t) for t in [ts, te + K - 1) (the K - 1 after te recomputed: the halo),
//   dw[k] += du_t in(t - K + 1 + k), db += du_t for t in [ts, te),
//   g_m = sum_k du_{m + K - 1 - k} w[k] (+ dfinal[m - L + K] when m >= L - K) for m in [ts, te),
//     and at ts = 0 also for m in (-K, 0): the initial state's slots m + K (slot 0 is 0);
// du is kept in a K-wide register window, g_m emitted at t = m + K - 1. DY, DFIN, DINIT may be
// null (DY: zero; DINIT: no initial state). The block's CONV2_TY chunks add their dw/db in a fixed
// order into P[blockIdx.x, k, c] (k = K: db), P (B nblk, K + 1, C); conv1d_dw_sum adds the rows.
template <typename T, int KT>
__global__ void __launch_bounds__(CONV2_TX * CONV2_TY)
    conv1d_bwd_v2(const T* __restrict__ X, const T* __restrict__ Wt, const T* __restrict__ Bi,
                  const T* __restrict__ I, const T* __restrict__ DY, const T* __restrict__ DFIN,
                  T* __restrict__ DX, T* __restrict__ DINIT, T* __restrict__ P, const int Bsz,
                  const int L, const int C, const int act, const int TC) {
  __shared__ T sp[CONV2_TY][KT + 1][CONV2_TX];
  const int c = blockIdx.y * CONV2_TX + threadIdx.x;
  const int nblk = (L + CONV2_TY * TC - 1) / (CONV2_TY * TC);
  const int b = blockIdx.x / nblk;
  const int ts = ((blockIdx.x - b * nblk) * CONV2_TY + threadIdx.y) * TC;
  T acc[KT + 1];
#pragma unroll
  for (int k = 0; k <= KT; ++k) acc[k] = T(0);
  if (c < C && ts < L) {  // no return: every thread reaches the barrier below
    const int te = min(L, ts + TC);
    const int tend = te + KT - 1;  // du needed for t < tend
    const int tl = min(L, tend);   // inputs exist for t < L
    T w[KT], xw[KT], duw[KT];
#pragma unroll
    for (int k = 0; k < KT; ++k) {
      w[k] = Wt[c * KT + k];
      duw[k] = T(0);  // du before ts: never needed, except as zeros before time 0
    }
    const T bias = Bi != nullptr ? Bi[c] : T(0);
    conv_window<T, KT>(X, I, b, ts, c, L, C, xw);
    const long long base = (long long)b * L * C + c;
    const long long sb = ((long long)b * C + c) * KT;  // this (b, c) in (B, C, K) arrays
    const bool init = ts == 0 && DINIT != nullptr;
    for (int t = ts; t < tend; t += CONV2_U) {
      T xs[CONV2_U], ds[CONV2_U];
#pragma unroll
      for (int u = 0; u < CONV2_U; ++u) {
        xs[u] = ds[u] = T(0);
        if (t + u < tl) {
          xs[u] = X[base + (long long)(t + u) * C];
          if (DY != nullptr) ds[u] = DY[base + (long long)(t + u) * C];
        }
      }
#pragma unroll
      for (int u = 0; u < CONV2_U; ++u) {
        const int tt = t + u;
        if (tt < tend) {
          T du = T(0);
          if (tt < L) {
            xw[KT - 1] = xs[u];
            du = ds[u];
            if (act) {
              T pre = bias;
#pragma unroll
              for (int k = 0; k < KT; ++k) pre += w[k] * xw[k];
              du *= m_dsilu(pre);
            }
            if (tt < te) {
#pragma unroll
              for (int k = 0; k < KT; ++k) acc[k] += du * xw[k];
              acc[KT] += du;
            }
#pragma unroll
            for (int k = 0; k + 1 < KT; ++k) xw[k] = xw[k + 1];
          }
#pragma unroll
          for (int k = 0; k + 1 < KT; ++k) duw[k] = duw[k + 1];
          duw[KT - 1] = du;  // duw[k] = du at time tt - K + 1 + k
          const int m = tt - KT + 1;  // m < te always
          if (m >= ts || (init && m > -KT)) {
            T g = T(0);
#pragma unroll
            for (int k = 0; k < KT; ++k) g += duw[KT - 1 - k] * w[k];
            const int j = m - L + KT;  // < KT
            if (DFIN != nullptr && j >= 0) g += DFIN[sb + j];
            if (m >= 0) DX[base + (long long)m * C] = g;
            else DINIT[sb + m + KT] = g;
          }
        }
      }
    }
    if (init) DINIT[sb] = T(0);  // slot 0 (time -K) is never read
  }
#pragma unroll
  for (int k = 0; k <= KT; ++k) sp[threadIdx.y][k][threadIdx.x] = acc[k];
  __syncthreads();
  const int tid = threadIdx.y * CONV2_TX + threadIdx.x;
  for (int q = tid; q < (KT + 1) * CONV2_TX; q += CONV2_TX * CONV2_TY) {
    const int k = q / CONV2_TX, cx = q - k * CONV2_TX;
    const int cc = blockIdx.y * CONV2_TX + cx;
    if (cc < C) {
      T s = T(0);
#pragma unroll
      for (int y = 0; y < CONV2_TY; ++y) s += sp[y][k][cx];  // fixed order: deterministic
      P[((long long)blockIdx.x * (KT + 1) + k) * C + cc] = s;
    }
  }
}

// dw[c, k] = sum_r P[r, k, c] (k < K), db[c] = sum_r P[r, K, c], in a fixed order: block (32
// channels, 8 lanes) of grid (ceil(C / 32), K + 1); lane y adds rows y, y + 8, ..., then lane 0
// adds the 8 lane sums in turn. DB may be null.
template <typename T>
__global__ void __launch_bounds__(256)
    conv1d_dw_sum(const T* __restrict__ P, T* __restrict__ DW, T* __restrict__ DB, const int NR,
                  const int C, const int K) {
  __shared__ T s[8][33];
  const int c = blockIdx.x * 32 + threadIdx.x;
  const int k = blockIdx.y;
  T acc = T(0);
  if (c < C)
    for (int r = threadIdx.y; r < NR; r += 8) acc += P[((long long)r * (K + 1) + k) * C + c];
  s[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    T t = T(0);
#pragma unroll
    for (int y = 0; y < 8; ++y) t += s[y][threadIdx.x];
    if (k < K) DW[(long long)c * K + k] = t;
    else if (DB != nullptr) DB[c] = t;
  }
}

#ifdef MAMBA_CUPY_INSTANTIATE
#define CONV_K_INST(T, K)                                                                         \
  template __global__ void conv1d_fwd_v2<T, K>(const T*, const T*, const T*, const T*, T*, T*,    \
                                               int, int, int, int, int);                          \
  template __global__ void conv1d_bwd_v2<T, K>(const T*, const T*, const T*, const T*, const T*,  \
                                               const T*, T*, T*, T*, int, int, int, int, int);
#define CONV_INST(T)                                                                              \
  CONV_K_INST(T, 1) CONV_K_INST(T, 2) CONV_K_INST(T, 3) CONV_K_INST(T, 4)                        \
  CONV_K_INST(T, 5) CONV_K_INST(T, 6) CONV_K_INST(T, 7) CONV_K_INST(T, 8)                        \
  template __global__ void conv1d_step<T>(const T*, const T*, const T*, const T*, T*, T*, int,   \
                                          int, int, int);                                         \
  template __global__ void conv1d_dw_sum<T>(const T*, T*, T*, int, int, int);
CONV_INST(float)
CONV_INST(double)
#endif
