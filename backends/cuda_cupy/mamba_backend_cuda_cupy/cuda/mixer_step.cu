// Fused one-token Mamba-2 decode step (kernels/mixer_steps.py): everything between in_proj and
// out_proj in one launch.
//
// Letters (mamba_core/models/mamba2.py): B batch, H heads of P channels, S = H P, G groups of
// HG = H / G heads, N state, K conv width, X = S + 2 G N conv channels, M = d_mlp,
// GS = S / G channels a norm group.
// ZX (B, 2M + S + X + H), row stride ldzx: in_proj's output [z0, x0, z, xBC, dt].
// CS -> NCS (B, X, K), SS -> NSS (B, H, P, N): the cache, contiguous; NCS may be CS and NSS may
// be SS (in place). Y (B, M + S): out_proj's input. T is float or double throughout.
//
// Grid (npb = ceil(P / M2_BP), H, B), M2_WARPS warps (exactly: the thread mapping assumes
// blockDim.x = 32 M2_WARPS). Block (pb, h, b), g = h / HG, takes the
// M2_BP head channels p = pb M2_BP + r (r = warp M2_RPW + i: warp `warp` owns M2_RPW rows),
// each row's N states held by the warp's lanes (lane l: n = l + 32 j, j < NPT):
//   1. the rows' states are loaded first (the longest loads, independent of the rest);
//   2. dt = clamp(softplus(dt_raw + dt_bias), dt_limit); decay = exp(dt A), A = -exp(A_log[h]);
//   3. conv + silu of the group's B and C channels into shared memory (every block of the group
//      computes them: 2 N K reads from L2);
//   4. thread r < M2_BP: conv + silu of channel c = h P + p (x), its z and D, and its new conv
//      window (its own channel: read, then written, by this thread alone);
//   5. S' = decay S + dt x B;  y = S' . C (lane partials, then a butterfly: fixed order);
//      y += D x; without rmsnorm Y = y silu(z), with it v = y silu(z) (or y when
//      norm_before_gate) goes to the scratch row SCR and sum(v^2) of the block to PART;
//   6. the gated-MLP slice Y[:, :M] = silu(z0) x0, spread over the row's blocks;
//   7. a ticket from CNT[b, g] (atomicAdd after a fence and a barrier); the block that draws
//      the last one of its group (every other block of (b, g) has finished reading the shared
//      B / C conv windows and written its v and partial) writes the group's new B and C conv
//      windows, then (rmsnorm) sums the partials in a fixed order (deterministic whichever
//      block is last), Y = v / sqrt(sum / GS + eps) w [silu(z) when norm_before_gate], and
//      puts the counter back to 0 for the next launch.
// No host synchronisation; every launch depends only on shapes: capturable in a CUDA graph.
// CNT must be zero at launch and is zero again after it; two launches must not run at once on
// one counter buffer (one stream, or graphs replayed in order).
#include "common.cuh"

#define M2_WARPS 4
#define M2_RPW 4                    // head channels (state rows) per warp
#define M2_BP (M2_WARPS * M2_RPW)   // head channels per block
#define M2_KMAX 8                   // widest conv window
#define M2_TAIL 8                   // channels a thread normalises per round (loads in flight)
// B and C channels a thread convolves: 2 N <= 64 NPT channels over the block's threads
#define M2_BC(NPT) ((64 * (NPT) + M2_WARPS * 32 - 1) / (M2_WARPS * 32))

template <typename T>
__device__ __forceinline__ T m2_softplus(T v) {
  // torch's threshold 20; below it max(v, 0) + log1p(exp(-|v|)), which never overflows
  return v > T(20) ? v : (v > T(0) ? v : T(0)) + m_log1p(m_exp(v > T(0) ? -v : v));
}

// silu(bias + sum_k w[c, k] window[k]) of conv channel c, window = [state[c, 1:], new]
// (the summation order of conv1d_step)
template <typename T>
__device__ __forceinline__ T m2_conv_silu(const T* zr, const T* CS, const T* __restrict__ CW,
                                          const T* __restrict__ CB, const int b, const int c,
                                          const int X, const int K, const int off_xbc) {
  const T* s = CS + ((i64)b * X + c) * K;
  T acc = CB != nullptr ? CB[c] : T(0);
#pragma unroll
  for (int k = 0; k < M2_KMAX; ++k) {
    if (k < K) acc += CW[(i64)c * K + k] * (k + 1 < K ? s[k + 1] : zr[off_xbc + c]);
  }
  return m_silu(acc);
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
    const T* __restrict__ DV, const T* SS, T* NSS, const T* __restrict__ NW, T* Y, T* SCR,
    T* PART, int* CNT, const int H, const int G, const int P, const int N, const int M,
    const int K, const int d_hp, const int lim, const T lo, const T hi, const T eps,
    const int nbg) {
  __shared__ T sB[32 * NPT], sC[32 * NPT];
  __shared__ T sx[M2_BP], sz[M2_BP], sd[M2_BP];
  __shared__ T swarp[M2_WARPS];
  __shared__ T sred[32];
  __shared__ int s_last;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int pb = blockIdx.x, h = blockIdx.y, b = blockIdx.z, npb = gridDim.x;
  const int S = H * P, GN = G * N, X = S + 2 * GN, HG = H / G, g = h / HG;
  const int off_xbc = 2 * M + S;
  const i64 ldy = (i64)M + S;
  const T* zr = ZX + (i64)b * ldzx;
  const i64 row0 = ((i64)b * H + h) * P;  // state row of (b, h, p = 0)

  // 1. the states of the warp's rows
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

  // 2. dt and the decay (every thread computes the same values)
  T dt = m2_softplus(zr[off_xbc + X + h] + DTB[h]);
  if (lim) {
    dt = dt < lo ? lo : dt;  // NaN stays NaN, as clip
    dt = dt > hi ? hi : dt;
  }
  const T A = -m_exp(ALOG[h]);
  const T decay = m_exp(dt * A);

  // 3. B and C of the group, after conv and silu (M2_BC channels a thread, unrolled: their
  //    loads are in flight together)
#pragma unroll
  for (int q = 0; q < M2_BC(NPT); ++q) {
    const int ci = tid + q * M2_WARPS * 32;
    if (ci < 2 * N) {
      const T v = m2_conv_silu(zr, CS, CW, CB, b, m2_bc_channel(ci, g, S, N, G), X, K, off_xbc);
      if (ci < N) {
        sB[ci] = v;
      } else {
        sC[ci - N] = v;
      }
    }
  }

  // 4. the block's x channels: conv, silu, z, D and the new conv window
  if (tid < M2_BP) {
    const int p = pb * M2_BP + tid;
    T xv = T(0), zv = T(0), dv = T(0);
    if (p < P) {
      const int c = h * P + p;
      const T* s = CS + ((i64)b * X + c) * K;
      T win[M2_KMAX];
      T acc = CB != nullptr ? CB[c] : T(0);
#pragma unroll
      for (int k = 0; k < M2_KMAX; ++k) {
        if (k < K) {
          win[k] = k + 1 < K ? s[k + 1] : zr[off_xbc + c];
          acc += CW[(i64)c * K + k] * win[k];
        }
      }
      xv = m_silu(acc);
      zv = zr[2 * M + c];
      dv = d_hp ? DV[c] : DV[h];
      T* ns = NCS + ((i64)b * X + c) * K;  // may be s: every s[k] was read above
#pragma unroll
      for (int k = 0; k < M2_KMAX; ++k) {
        if (k < K) ns[k] = win[k];
      }
    }
    sx[tid] = xv;
    sz[tid] = zv;
    sd[tid] = dv;
  }
  __syncthreads();

  // 5. state update and output of the warp's rows
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
        const int c = h * P + p;
        const T zv = sz[r];
        if (NW == nullptr) {
          Y[(i64)b * ldy + M + c] = y * m_silu(zv);
        } else {
          const T v = nbg ? y : y * m_silu(zv);
          SCR[(i64)b * S + c] = v;
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

  // 6. the gated-MLP slice of row b, spread over its H npb blocks
  if (M > 0) {
    const int stride = H * npb * blockDim.x;
    for (int m = (h * npb + pb) * blockDim.x + tid; m < M; m += stride) {
      Y[(i64)b * ldy + m] = m_silu(zr[m]) * zr[M + m];
    }
  }

  // 7. the ticket: this block's writes are visible device-wide before it counts itself
  __threadfence();
  __syncthreads();
  if (tid == 0) s_last = atomicAdd(CNT + (i64)b * G + g, 1) == HG * npb - 1;
  __syncthreads();
  if (!s_last) return;
  __threadfence();

  // the group's new B and C conv windows (every block of (b, g) has read the old ones)
#pragma unroll
  for (int q = 0; q < M2_BC(NPT); ++q) {
    const int ci = tid + q * M2_WARPS * 32;
    if (ci < 2 * N) {
      const int c = m2_bc_channel(ci, g, S, N, G);
      const T* s = CS + ((i64)b * X + c) * K;
      T* ns = NCS + ((i64)b * X + c) * K;
      T win[M2_KMAX];
#pragma unroll
      for (int k = 0; k < M2_KMAX; ++k) {
        if (k < K) win[k] = k + 1 < K ? s[k + 1] : zr[off_xbc + c];
      }
#pragma unroll
      for (int k = 0; k < M2_KMAX; ++k) {
        if (k < K) ns[k] = win[k];
      }
    }
  }

  // the gated RMSNorm over the group's GS channels
  if (NW != nullptr) {
    const int nq = HG * npb, GS = HG * P;
    const T* pp = PART + ((i64)b * H + (i64)g * HG) * npb;
    T ps = T(0);
    for (int q = tid; q < nq; q += blockDim.x) ps += __ldcg(pp + q);
    const T den = m_sqrt(block_sum(ps, sred) / T(GS) + eps);
    const T* sv = SCR + (i64)b * S + (i64)g * GS;
    const T* wn = NW + (i64)g * GS;
    const T* zg = zr + 2 * M + (i64)g * GS;
    T* yo = Y + (i64)b * ldy + M + (i64)g * GS;
    for (int j0 = 0; j0 < GS; j0 += M2_TAIL * blockDim.x) {
      T v[M2_TAIL], w[M2_TAIL], zz[M2_TAIL];
#pragma unroll
      for (int u = 0; u < M2_TAIL; ++u) {
        const int j = j0 + u * blockDim.x + tid;
        if (j < GS) {
          v[u] = __ldcg(sv + j);
          w[u] = wn[j];
          zz[u] = nbg ? zg[j] : T(0);
        }
      }
#pragma unroll
      for (int u = 0; u < M2_TAIL; ++u) {
        const int j = j0 + u * blockDim.x + tid;
        if (j < GS) {
          T o = v[u] / den * w[u];
          if (nbg) o *= m_silu(zz[u]);
          yo[j] = o;
        }
      }
    }
  }
  if (tid == 0) CNT[(i64)b * G + g] = 0;
}

#ifdef MAMBA_CUPY_INSTANTIATE
// the instances kernels/mixer_steps.py asks for: NPT = npt(N) in {1, 2, 4, 8}
#define M2_INST(T, NPT)                                                                          \
  template __global__ void mamba2_step<T, NPT>(                                                  \
      const T*, i64, const T*, T*, const T*, const T*, const T*, const T*, const T*, const T*,   \
      T*, const T*, T*, T*, T*, int*, int, int, int, int, int, int, int, int, T, T, T, int);
M2_INST(float, 1) M2_INST(float, 2) M2_INST(float, 4) M2_INST(float, 8)
M2_INST(double, 1) M2_INST(double, 2) M2_INST(double, 4) M2_INST(double, 8)
#endif
