// Fused one-token Mamba-2 decode step (kernels/mixer_steps.py): everything between in_proj and
// out_proj in one launch, the gated RMSNorm's division left to out_proj (kernels/linear.py
// linear_group_scaled), so no block waits for another.
//
// Letters (mamba_core/models/mamba2.py): B batch, H heads of P channels, S = H P, G groups of
// HG = H / G heads, N state, K conv width, X = S + 2 G N conv channels, M = d_mlp.
// ZX (B, 2M + S + X + H), row stride ldzx: in_proj's output [z0, x0, z, xBC, dt].
// CS -> NCS (B, X, K), SS -> NSS (B, H, P, N): the cache, contiguous; NCS may be CS and NSS may
// be SS (in place). Y (B, M + S): out_proj's input. PART (B, H npb): with the norm (NW not
// null), each block's sum of squares of its normalised values. T is float or double throughout.
//
// Grid (npb = ceil(P / M2_BP), H, B), M2_WARPS warps (exactly: the thread mapping assumes
// blockDim.x = 32 M2_WARPS). Block (pb, h, b), g = h / HG, takes the
// M2_BP head channels p = pb M2_BP + r (r = warp M2_RPW + i: warp `warp` owns M2_RPW rows),
// each row's N states held by the warp's lanes (lane l: n = l + 32 j, j < NPT):
//   1. every load first, together: the rows' states; dt, dt_bias, A_log; the conv windows and
//      weights of the group's B and C channels (every block of the group reads them, from L2;
//      M2_BC channels a thread) and of the block's x channels (thread r < M2_BP), z, D and the
//      norm weight. A decode step is bound by latency: one round trip, not one per stage;
//   2. dt = clamp(softplus(dt + dt_bias), dt_limit), decay = exp(dt A), A = -exp(A_log[h]);
//      B, C, x = silu(conv); the x channels' new conv windows;
//   3. S' = decay S + dt x B;  y = S' . C (lane partials, then a butterfly: fixed order);
//      y += D x; Y = y silu(z) [w the norm weight]; with the norm, sum(v^2) of the block to
//      PART, v = y silu(z), or y when norm_before_gate (out_proj divides by
//      sqrt(mean(v^2 over the group) + eps));
//   4. the gated-MLP slice Y[:, :M] = silu(z0) x0, spread over the row's blocks;
//   5. the group's new B and C conv windows, from the registers of step 1: not in place, by the
//      group's first block; in place, by the block drawing the last ticket of CNT[b, g]
//      (atomicAdd after a barrier), which puts the counter back to 0.
// 0. (before the rest) programmatic dependent launch: the block prefetches its states, conv
//    windows and weights into L2, then waits for in_proj (common.cuh pdl_wait).
// No host synchronisation; every launch depends only on shapes: capturable in a CUDA graph.
// CNT must be zero at launch and is zero again after it; two launches must not run at once on
// one counter buffer (one stream, or graphs replayed in order).
#include "common.cuh"

#define M2_WARPS 4
#define M2_RPW 4                    // head channels (state rows) per warp
#define M2_BP (M2_WARPS * M2_RPW)   // head channels per block
#define M2_KMAX 8                   // widest conv window
// B and C channels a thread convolves: 2 N <= 64 NPT channels over the block's threads
#define M2_BC(NPT) ((64 * (NPT) + M2_WARPS * 32 - 1) / (M2_WARPS * 32))

template <typename T>
__device__ __forceinline__ T m2_softplus(T v) {
  // torch's threshold 20; below it max(v, 0) + log1p(exp(-|v|)), which never overflows
  return v > T(20) ? v : (v > T(0) ? v : T(0)) + m_log1p(m_exp(v > T(0) ? -v : v));
}

// conv channel of the ci-th B / C entry of group g: B for ci < N, C after
__device__ __forceinline__ int m2_bc_channel(const int ci, const int g, const int S, const int N,
                                             const int G) {
  return ci < N ? S + g * N + ci : S + G * N + g * N + (ci - N);
}

template <typename T, int NPT>
__global__ void __launch_bounds__(M2_WARPS * 32) mamba2_step(
    const T* __restrict__ ZX, const i64 ldzx, const T* CS, T* NCS, const T* __restrict__ CW,
    const T* __restrict__ CB, const T* __restrict__ DTB, const T* __restrict__ ALOG,
    const T* __restrict__ DV, const T* SS, T* NSS, const T* __restrict__ NW, T* Y, T* PART,
    int* CNT, const int H, const int G, const int P, const int N, const int M, const int K,
    const int d_hp, const int lim, const T lo, const T hi, const int nbg) {
  constexpr int NBC = M2_BC(NPT);
  __shared__ T sB[32 * NPT], sC[32 * NPT];
  __shared__ T sx[M2_BP], sg[M2_BP], sw[M2_BP], sd[M2_BP];
  __shared__ T swarp[M2_WARPS];
  __shared__ int s_last;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int pb = blockIdx.x, h = blockIdx.y, b = blockIdx.z, npb = gridDim.x;
  const int S = H * P, GN = G * N, X = S + 2 * GN, HG = H / G, g = h / HG;
  const int off_xbc = 2 * M + S;
  const i64 ldy = (i64)M + S;
  const T* zr = ZX + (i64)b * ldzx;
  const i64 row0 = ((i64)b * H + h) * P;  // state row of (b, h, p = 0)

  // 0. PDL prologue (common.cuh): while in_proj still runs, the warp's state rows (warp 0 also
  //    the group's B and C conv windows and weights, warp 1 the block's x channels') into L2;
  //    nothing is read before pdl_wait
  {
    const int p0 = pb * M2_BP + warp * M2_RPW;
    const int rows = P - p0 < M2_RPW ? P - p0 : M2_RPW;
    if (rows > 0) pdl_prefetch_range(SS + (row0 + p0) * N, (i64)rows * N * sizeof(T), lane, 32);
    const int px0 = pb * M2_BP, nx = P - px0 < M2_BP ? P - px0 : M2_BP;
    const i64 cbytes = (i64)N * K * sizeof(T), xbytes = (i64)nx * K * sizeof(T);
    if (warp == 0) {
      pdl_prefetch_range(CS + ((i64)b * X + S + g * N) * K, cbytes, lane, 32);
      pdl_prefetch_range(CS + ((i64)b * X + S + GN + g * N) * K, cbytes, lane, 32);
      pdl_prefetch_range(CW + (i64)(S + g * N) * K, cbytes, lane, 32);
      pdl_prefetch_range(CW + (i64)(S + GN + g * N) * K, cbytes, lane, 32);
    } else if (warp == 1 && nx > 0) {
      pdl_prefetch_range(CS + ((i64)b * X + h * P + px0) * K, xbytes, lane, 32);
      pdl_prefetch_range(CW + (i64)(h * P + px0) * K, xbytes, lane, 32);
    }
  }
  pdl_wait();
  pdl_trigger();

  // 1. every load of the block, issued together (predicated, no branch between them): the
  //    warp's state rows; dt, dt_bias, A_log; the conv windows, weights and biases of the
  //    thread's B / C channels and (tid < M2_BP) of its x channel, with z, D and the norm weight
  T st[M2_RPW][NPT];
#pragma unroll
  for (int i = 0; i < M2_RPW; ++i) {
    const int p = pb * M2_BP + warp * M2_RPW + i;
#pragma unroll
    for (int j = 0; j < NPT; ++j) {
      const int n = lane + 32 * j;
      st[i][j] = (p < P && n < N) ? SS[(row0 + p) * N + n] : T(0);
    }
  }
  const T dt_raw = zr[off_xbc + X + h], dtb = DTB[h], alog = ALOG[h];
  T bwin[NBC][M2_KMAX], bw[NBC][M2_KMAX], bb[NBC];
#pragma unroll
  for (int q = 0; q < NBC; ++q) {
    const int ci = tid + q * M2_WARPS * 32;
    const bool ok = ci < 2 * N;
    const int c = ok ? m2_bc_channel(ci, g, S, N, G) : 0;
    const T* s = CS + ((i64)b * X + c) * K;
#pragma unroll
    for (int k = 0; k < M2_KMAX; ++k) {
      bwin[q][k] = (ok && k < K) ? (k + 1 < K ? s[k + 1] : zr[off_xbc + c]) : T(0);
      bw[q][k] = (ok && k < K) ? CW[(i64)c * K + k] : T(0);
    }
    bb[q] = (ok && CB != nullptr) ? CB[c] : T(0);
  }
  const int px = pb * M2_BP + tid;
  const bool xo = tid < M2_BP && px < P;
  const int cx = xo ? h * P + px : 0;
  T xwin[M2_KMAX], xw[M2_KMAX];
  const T* xs = CS + ((i64)b * X + cx) * K;
#pragma unroll
  for (int k = 0; k < M2_KMAX; ++k) {
    xwin[k] = (xo && k < K) ? (k + 1 < K ? xs[k + 1] : zr[off_xbc + cx]) : T(0);
    xw[k] = (xo && k < K) ? CW[(i64)cx * K + k] : T(0);
  }
  const T xb = (xo && CB != nullptr) ? CB[cx] : T(0);
  const T zv = xo ? zr[2 * M + cx] : T(0);
  const T dv = xo ? (d_hp ? DV[cx] : DV[h]) : T(0);
  const T nwv = (xo && NW != nullptr) ? NW[cx] : T(1);

  // 2. dt, the decay, B and C of the group and the block's x channels (conv + silu); the x
  //    channels' new conv windows (each its own thread's: read above, written here)
  T dt = m2_softplus(dt_raw + dtb);
  if (lim) {
    dt = dt < lo ? lo : dt;  // NaN stays NaN, as clip
    dt = dt > hi ? hi : dt;
  }
  const T decay = m_exp(dt * -m_exp(alog));
#pragma unroll
  for (int q = 0; q < NBC; ++q) {
    const int ci = tid + q * M2_WARPS * 32;
    T acc = bb[q];
#pragma unroll
    for (int k = 0; k < M2_KMAX; ++k) acc += bw[q][k] * bwin[q][k];  // zeros past K
    if (ci < N) {
      sB[ci] = m_silu(acc);
    } else if (ci < 2 * N) {
      sC[ci - N] = m_silu(acc);
    }
  }
  if (tid < M2_BP) {
    T acc = xb;
#pragma unroll
    for (int k = 0; k < M2_KMAX; ++k) acc += xw[k] * xwin[k];
    sx[tid] = xo ? m_silu(acc) : T(0);
    sg[tid] = m_silu(zv);
    sw[tid] = nwv;
    sd[tid] = dv;
    if (xo) {
      T* ns = NCS + ((i64)b * X + cx) * K;  // may be xs: read above by this thread
#pragma unroll
      for (int k = 0; k < M2_KMAX; ++k) {
        if (k < K) ns[k] = xwin[k];
      }
    }
  }
  __syncthreads();

  // 3. state update and output of the warp's rows
  T vsq = T(0);  // lane 0: sum of v^2 over the warp's rows, in row order
#pragma unroll
  for (int i = 0; i < M2_RPW; ++i) {
    const int r = warp * M2_RPW + i, p = pb * M2_BP + r;
    if (p < P) {  // uniform over the warp
      const T xv = sx[r];
      const T dtx = dt * xv;
      T acc = T(0);
#pragma unroll
      for (int j = 0; j < NPT; ++j) {
        const int n = lane + 32 * j;
        if (n < N) {
          const T s1 = decay * st[i][j] + dtx * sB[n];
          NSS[(row0 + p) * N + n] = s1;
          acc += s1 * sC[n];
        }
      }
      T y = group_sum(acc, 32);  // every lane of the warp is here: full-warp shuffles
      y += sd[r] * xv;
      if (lane == 0) {
        const T yg = y * sg[r];
        Y[(i64)b * ldy + M + h * P + p] = yg * sw[r];  // sw = 1 without the norm
        if (NW != nullptr) {
          const T v = nbg ? y : yg;
          vsq += v * v;
        }
      }
    }
  }
  if (NW != nullptr) {
    if (lane == 0) swarp[warp] = vsq;
    __syncthreads();
    if (tid == 0) {
      T part = T(0);
#pragma unroll
      for (int w = 0; w < M2_WARPS; ++w) part += swarp[w];
      PART[((i64)b * H + h) * npb + pb] = part;
    }
  }

  // 4. the gated-MLP slice of row b, spread over its H npb blocks
  if (M > 0) {
    const int stride = H * npb * blockDim.x;
    for (int m = (h * npb + pb) * blockDim.x + tid; m < M; m += stride) {
      Y[(i64)b * ldy + m] = m_silu(zr[m]) * zr[M + m];
    }
  }

  // 5. the group's new B and C conv windows, from the registers of step 1. Not in place: the
  //    group's first block writes them. In place: the block that draws the last ticket of
  //    (b, g), once every block of the group has used the old windows (their values were read
  //    into registers and used before each block's barrier and ticket; no fence is needed:
  //    nothing written here is read by another block of this launch)
  bool writer;
  if (NCS != CS) {
    writer = pb == 0 && h == g * HG;
  } else {
    __syncthreads();
    if (tid == 0) s_last = atomicAdd(CNT + (i64)b * G + g, 1) == HG * npb - 1;
    __syncthreads();
    writer = s_last;
    if (writer && tid == 0) CNT[(i64)b * G + g] = 0;
  }
  if (writer) {
#pragma unroll
    for (int q = 0; q < NBC; ++q) {
      const int ci = tid + q * M2_WARPS * 32;
      if (ci < 2 * N) {
        T* ns = NCS + ((i64)b * X + m2_bc_channel(ci, g, S, N, G)) * K;
#pragma unroll
        for (int k = 0; k < M2_KMAX; ++k) {
          if (k < K) ns[k] = bwin[q][k];
        }
      }
    }
  }
}

#ifdef MAMBA_CUPY_INSTANTIATE
// the instances kernels/mixer_steps.py asks for: NPT = npt(N) in {1, 2, 4, 8}
#define M2_INST(T, NPT)                                                                          \
  template __global__ void mamba2_step<T, NPT>(                                                  \
      const T*, i64, const T*, T*, const T*, const T*, const T*, const T*, const T*, const T*,   \
      T*, const T*, T*, T*, int*, int, int, int, int, int, int, int, int, T, T, int);
M2_INST(float, 1) M2_INST(float, 2) M2_INST(float, 4) M2_INST(float, 8)
M2_INST(double, 1) M2_INST(double, 2) M2_INST(double, 4) M2_INST(double, 8)
#endif
