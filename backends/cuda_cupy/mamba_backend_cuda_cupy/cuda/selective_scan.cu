// The Mamba-1 selective scan, dedicated kernels: forward (ss_fwd) and VJP (ss_bwd).
//
// Math (mamba_core/ops/selective_scan.py), in T (float for float32, double for float64):
//   raw_t = delta_t + bias;  dt_t = softplus(raw_t) (threshold 20) or raw_t
//   a_t[n] = exp(dt_t A[e, n]);  h_t = a_t h_{t-1} + dt_t u_t B_t[g(e), :];  s_t = h_t . C_t
//   y_t = (s_t + D u_t) silu(z_t)
// Backward, dy'_t = dy_t silu(z_t), adjoint g_t = C_t dy'_t + a_{t+1} g_{t+1} (g from dfin):
//   q_t = g_t a_t h_{t-1};  ddt_t = sum_n A q_t + u_t (g_t . B_t)
//   du_t = dt_t (g_t . B_t) + D dy'_t
//   dA = sum_{b,t} dt_t q_t;  dB_t = sum_{e in g} dt_t u_t g_t;  dC_t = sum_{e in g} dy'_t h_t
//   dz_t = dy_t (s_t + D u_t) silu'(z_t);  ddelta = ddt softplus'(raw);  dinit = a_0 g_0
//
// Layout. Block of SS_THREADS threads, grid (blocks, G, B): a block holds CPB = SS_THREADS / K
// consecutive channels p of group g (e = g * (E/G) + p), K adjacent lanes per channel, lane kk
// holding the NPER states n = kk * NPER + j in registers (NPAD = K * NPER >= N; entries n >= N
// are zero). Time is cut into chunks; each chunk's B_t, C_t rows (chunk x NPAD) and per-token
// channel values (chunk x CPB: dt, dt u, dy') are staged in static shared memory by cooperative
// coalesced loads. The next chunk's raw values are loaded into registers before the current
// chunk is computed, so the sequential loop never waits on global memory; softplus, silu and
// dt u are evaluated once per (t, e) when staging. Staging role: thread tid owns column
// cc = tid % CPB and rows tid / CPB + k K of each chunk (loads, and the epilogue's writes).
// exp(dt A) is exp2f(dt * A log2(e)) in float (A scaled once), exp in double.
//
// ss_fwd: y (B, L, E) when y, fin (B, E, N) when fin, and when ck the state entering every
// token t with t % save_every == 0: ck (B, ceil(L / save_every), E, N).
// ss_bwd: chunks of TS tokens visited last first; the chunk's states are recomputed from ck
// (saved by ss_fwd with save_every = TS) into registers (TS x NPER), then the adjoint walks back
// through the chunk. Outputs: du, ddelta (B, L, E); dz (B, L, E) when dz; dinit (B, E, N) when
// dinit; per-batch partials dA_part (B, E, N), dD_part and dbias_part (B, E); per-block partials
// dB_part, dC_part (B, L, G, blocks, N) -- the host sums them (fixed order, no atomics: the
// results are deterministic). dB/dC: a reduce-scatter butterfly over the channels of a warp
// (2 NPER values, ~2 NPER shuffles), then a fixed-order sum over the warps in shared memory.
//
// All arrays are contiguous: u, delta, z, dy (B, L, E); A (E, N); B, C (B, L, G, N); D, bias (E);
// init, fin, dfin, dinit (B, E, N). Null pointers: absent (z, D, bias, init, dy = 0, dfin = 0).
#include "common.cuh"

#define SS_THREADS 128
// ss_bwd: at least 3 blocks (12 warps) per SM, i.e. at most 168 registers a thread; the float
// instances of N <= 16 fit without spilling (ptxas -v, sm_90), double ones spill a little
#define SS_BWD_MIN_BLOCKS 3

template <typename T>
struct SsExp;
template <>
struct SsExp<float> {
  static constexpr float scale = 1.4426950408889634f;  // log2(e)
  static __device__ __forceinline__ float ex(float x) { return exp2f(x); }
};
template <>
struct SsExp<double> {
  static constexpr double scale = 1.0;
  static __device__ __forceinline__ double ex(double x) { return exp(x); }
};

// softplus with torch's threshold, and its derivative (sigmoid, 1 above the threshold)
template <typename T>
__device__ __forceinline__ T ss_softplus(T v) { return v > T(20) ? v : m_log1p(m_exp(v)); }
template <typename T>
__device__ __forceinline__ T ss_dsoftplus(T v) { return v > T(20) ? T(1) : m_sigmoid(v); }

__host__ __device__ constexpr int ss_log2(int x) { return x <= 1 ? 0 : 1 + ss_log2(x >> 1); }

// ---- forward --------------------------------------------------------------------------------
template <typename T, int K, int NPER, int CH>
__global__ void __launch_bounds__(SS_THREADS) ss_fwd(
    const int L, const int E, const int G, const int N, const int softplus, const int save_every,
    const T* __restrict__ u, const T* __restrict__ delta, const T* __restrict__ z,
    const T* __restrict__ A, const T* __restrict__ Bm, const T* __restrict__ Cm,
    const T* __restrict__ D, const T* __restrict__ bias, const T* __restrict__ init,
    T* __restrict__ y, T* __restrict__ fin, T* __restrict__ ck) {
  constexpr int NT = SS_THREADS, CPB = NT / K, NPAD = K * NPER;
  constexpr int EV = CH / K;                      // u, delta, z values per thread and chunk
  constexpr int EBC = (CH * NPAD + NT - 1) / NT;  // B (and C) values per thread and chunk
  static_assert(CH % K == 0, "the chunk must be a multiple of the lanes per channel");
  __shared__ T sB[CH][NPAD], sC[CH][NPAD], sDt[CH][CPB], sDtu[CH][CPB], sY[CH][CPB];

  const int blk = blockIdx.x, g = blockIdx.y, b = blockIdx.z;
  const int P = E / G, tid = threadIdx.x;
  // scan role
  const int c = tid / K, kk = tid % K;
  const int p = blk * CPB + c, e = g * P + p;
  const bool cv = p < P;
  // staging role
  const int cc = tid % CPB, i0 = tid / CPB;
  const int pc = blk * CPB + cc, ec = g * P + pc;
  const bool ccv = pc < P;
  const T Dc = (D != nullptr && ccv) ? D[ec] : T(0);
  const T biasc = (bias != nullptr && ccv) ? bias[ec] : T(0);

  T rU[EV], rD[EV], rZ[EV], rB[EBC], rC[EBC];  // the next chunk, raw
  T cU[EV], cZ[EV];                            // the current chunk's u, z (epilogue)
  auto load = [&](const int t0) {
#pragma unroll
    for (int k = 0; k < EV; ++k) {
      const int t = t0 + i0 + k * K;
      const bool v = ccv && t < L;
      const i64 o = ((i64)b * L + t) * E + ec;
      rU[k] = v ? u[o] : T(0);
      rD[k] = v ? delta[o] : T(0);
      rZ[k] = (v && z != nullptr) ? z[o] : T(0);
    }
#pragma unroll
    for (int k = 0; k < EBC; ++k) {
      const int idx = tid + k * NT;
      const int i = idx / NPAD, n = idx % NPAD, t = t0 + i;
      const bool v = idx < CH * NPAD && n < N && t < L;
      const i64 o = (((i64)b * L + t) * G + g) * N + n;
      rB[k] = v ? Bm[o] : T(0);
      rC[k] = v ? Cm[o] : T(0);
    }
  };
  auto stage = [&](const int t0) {
#pragma unroll
    for (int k = 0; k < EV; ++k) {
      const int i = i0 + k * K;
      T dt = rD[k] + biasc;
      if (softplus) dt = ss_softplus(dt);
      dt = (ccv && t0 + i < L) ? dt : T(0);
      sDt[i][cc] = dt;
      sDtu[i][cc] = dt * rU[k];
      cU[k] = rU[k];
      cZ[k] = rZ[k];
    }
#pragma unroll
    for (int k = 0; k < EBC; ++k) {
      const int idx = tid + k * NT;
      if (idx < CH * NPAD) {
        sB[idx / NPAD][idx % NPAD] = rB[k];
        sC[idx / NPAD][idx % NPAD] = rC[k];
      }
    }
  };

  T A2[NPER], h[NPER];
#pragma unroll
  for (int j = 0; j < NPER; ++j) {
    const int n = kk * NPER + j;
    const bool v = cv && n < N;
    A2[j] = v ? A[(i64)e * N + n] * SsExp<T>::scale : T(0);
    h[j] = (v && init != nullptr) ? init[((i64)b * E + e) * N + n] : T(0);
  }
  const int nck = ck != nullptr ? (L + save_every - 1) / save_every : 0;
  const int nch = (L + CH - 1) / CH;
  int next_save = 0;

  load(0);
  stage(0);
  __syncthreads();
  for (int ch = 0; ch < nch; ++ch) {
    const int t0 = ch * CH;
    const bool more = ch + 1 < nch;
    if (more) load(t0 + CH);
    const int steps = min(CH, L - t0);  // the same for the whole block
    for (int i = 0; i < steps; ++i) {
      const int t = t0 + i;
      if (ck != nullptr && t == next_save) {  // t % save_every == 0
        T* out = ck + (((i64)b * nck + t / save_every) * E + e) * N;
        next_save += save_every;
#pragma unroll
        for (int j = 0; j < NPER; ++j) {
          if (cv && kk * NPER + j < N) out[kk * NPER + j] = h[j];
        }
      }
      const T dt = sDt[i][c], dtu = sDtu[i][c];
      T acc = T(0);
#pragma unroll
      for (int j = 0; j < NPER; ++j) {
        const int n = kk * NPER + j;
        const T a = SsExp<T>::ex(dt * A2[j]);
        h[j] = a * h[j] + dtu * sB[i][n];
        acc += h[j] * sC[i][n];
      }
      acc = group_sum(acc, K);
      if (kk == 0) sY[i][c] = acc;
    }
    __syncthreads();  // sY complete; the stage is no longer read
    if (y != nullptr) {
#pragma unroll
      for (int k = 0; k < EV; ++k) {
        const int i = i0 + k * K, t = t0 + i;
        if (ccv && t < L) {
          T v = sY[i][cc] + Dc * cU[k];
          if (z != nullptr) v *= m_silu(cZ[k]);
          y[((i64)b * L + t) * E + ec] = v;
        }
      }
    }
    if (more) stage(t0 + CH);
    __syncthreads();  // the next stage is written; sY is free again
  }
  if (fin != nullptr && cv) {
#pragma unroll
    for (int j = 0; j < NPER; ++j) {
      const int n = kk * NPER + j;
      if (n < N) fin[((i64)b * E + e) * N + n] = h[j];
    }
  }
}

// ---- backward (VJP) -------------------------------------------------------------------------
template <typename T, int K, int NPER, int TS>
__global__ void __launch_bounds__(SS_THREADS, SS_BWD_MIN_BLOCKS) ss_bwd(
    const int L, const int E, const int G, const int N, const int softplus,
    const T* __restrict__ u, const T* __restrict__ delta, const T* __restrict__ z,
    const T* __restrict__ dy, const T* __restrict__ A, const T* __restrict__ Bm,
    const T* __restrict__ Cm, const T* __restrict__ D, const T* __restrict__ bias,
    const T* __restrict__ ck, const T* __restrict__ dfin,
    T* __restrict__ du, T* __restrict__ ddelta, T* __restrict__ dz, T* __restrict__ dA_part,
    T* __restrict__ dD_part, T* __restrict__ dbias_part, T* __restrict__ dB_part,
    T* __restrict__ dC_part, T* __restrict__ dinit) {
  constexpr int NT = SS_THREADS, CPB = NT / K, NPAD = K * NPER, NW = NT / 32;
  constexpr int EV = TS / K;                      // per-token values per thread and chunk
  constexpr int EBC = (TS * NPAD + NT - 1) / NT;  // B (and C) values per thread and chunk
  constexpr int M = 2 * NPER;                     // dB and dC values per lane and step
  constexpr int LV = ss_log2(32 / K);             // butterfly levels over a warp's channels
  constexpr int MF = (M >> LV) > 0 ? (M >> LV) : 1;  // values per lane after them
  static_assert(TS % K == 0, "the chunk must be a multiple of the lanes per channel");
  static_assert(TS * CPB >= NT, "sQA and sGB hold the final per-thread sums");
  __shared__ T sB[TS][NPAD], sC[TS][NPAD], sDt[TS][CPB], sU[TS][CPB], sDy[TS][CPB];
  __shared__ T sS[TS][CPB], sGB[TS][CPB], sQA[TS][CPB];
  __shared__ T sRed[TS][NW][2 * NPAD];

  const int blk = blockIdx.x, g = blockIdx.y, b = blockIdx.z, nblk = gridDim.x;
  const int P = E / G, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int c = tid / K, kk = tid % K;
  const int p = blk * CPB + c, e = g * P + p;
  const bool cv = p < P;
  const int cc = tid % CPB, i0 = tid / CPB;
  const int pc = blk * CPB + cc, ec = g * P + pc;
  const bool ccv = pc < P;
  const T Dc = (D != nullptr && ccv) ? D[ec] : T(0);
  const T biasc = (bias != nullptr && ccv) ? bias[ec] : T(0);
  const int nck = (L + TS - 1) / TS;

  T rU[EV], rD[EV], rZ[EV], rY[EV], rB[EBC], rC[EBC], rH[NPER];  // the next chunk, raw
  T cRaw[EV], cZ[EV], cDy[EV];                                   // the current chunk
  T hin[NPER];                                                   // the state entering it
  auto load = [&](const int ch) {
    const int t0 = ch * TS;
#pragma unroll
    for (int k = 0; k < EV; ++k) {
      const int t = t0 + i0 + k * K;
      const bool v = ccv && t < L;
      const i64 o = ((i64)b * L + t) * E + ec;
      rU[k] = v ? u[o] : T(0);
      rD[k] = v ? delta[o] : T(0);
      rZ[k] = (v && z != nullptr) ? z[o] : T(0);
      rY[k] = (v && dy != nullptr) ? dy[o] : T(0);
    }
#pragma unroll
    for (int k = 0; k < EBC; ++k) {
      const int idx = tid + k * NT;
      const int i = idx / NPAD, n = idx % NPAD, t = t0 + i;
      const bool v = idx < TS * NPAD && n < N && t < L;
      const i64 o = (((i64)b * L + t) * G + g) * N + n;
      rB[k] = v ? Bm[o] : T(0);
      rC[k] = v ? Cm[o] : T(0);
    }
    const T* hp = ck + (((i64)b * nck + ch) * E + e) * N;
#pragma unroll
    for (int j = 0; j < NPER; ++j) rH[j] = (cv && kk * NPER + j < N) ? hp[kk * NPER + j] : T(0);
  };
  auto stage = [&](const int ch) {
    const int t0 = ch * TS;
#pragma unroll
    for (int k = 0; k < EV; ++k) {
      const int i = i0 + k * K;
      const bool v = ccv && t0 + i < L;
      const T raw = rD[k] + biasc;
      const T dt = softplus ? ss_softplus(raw) : raw;
      const T dyp = z != nullptr ? rY[k] * m_silu(rZ[k]) : rY[k];
      sDt[i][cc] = v ? dt : T(0);
      sU[i][cc] = v ? rU[k] : T(0);
      sDy[i][cc] = v ? dyp : T(0);
      cRaw[k] = raw;
      cZ[k] = rZ[k];
      cDy[k] = rY[k];
    }
#pragma unroll
    for (int k = 0; k < EBC; ++k) {
      const int idx = tid + k * NT;
      if (idx < TS * NPAD) {
        sB[idx / NPAD][idx % NPAD] = rB[k];
        sC[idx / NPAD][idx % NPAD] = rC[k];
      }
    }
#pragma unroll
    for (int j = 0; j < NPER; ++j) hin[j] = rH[j];
  };

  T Aj[NPER], A2[NPER], gs[NPER], dAacc[NPER];
#pragma unroll
  for (int j = 0; j < NPER; ++j) {
    const int n = kk * NPER + j;
    const bool v = cv && n < N;
    Aj[j] = v ? A[(i64)e * N + n] : T(0);
    A2[j] = Aj[j] * SsExp<T>::scale;
    gs[j] = (v && dfin != nullptr) ? dfin[((i64)b * E + e) * N + n] : T(0);
    dAacc[j] = T(0);
  }
  T accD = T(0), accBias = T(0);

  load(nck - 1);
  stage(nck - 1);
  __syncthreads();
  for (int ch = nck - 1; ch >= 0; --ch) {
    const int t0 = ch * TS;
    const int steps = min(TS, L - t0);  // the same for the whole block
    if (ch > 0) load(ch - 1);
    // 1. the chunk's states h_t (padded steps have dt = 0, u = 0: h unchanged)
    T hs[TS][NPER];
#pragma unroll
    for (int i = 0; i < TS; ++i) {
      const T dt = sDt[i][c], dtu = dt * sU[i][c];
#pragma unroll
      for (int j = 0; j < NPER; ++j) {
        const T hp = i > 0 ? hs[i - 1][j] : hin[j];
        hs[i][j] = SsExp<T>::ex(dt * A2[j]) * hp + dtu * sB[i][kk * NPER + j];
      }
    }
    // 2. the adjoint, back through the chunk
#pragma unroll
    for (int i = TS - 1; i >= 0; --i) {
      if (i < steps) {
        const T dt = sDt[i][c], uu = sU[i][c], dyp = sDy[i][c];
        const T dtu = dt * uu;
        T qa = T(0), gb = T(0), s = T(0), v[M];
#pragma unroll
        for (int j = 0; j < NPER; ++j) {
          const int n = kk * NPER + j;
          const T Bn = sB[i][n], Cn = sC[i][n];
          const T hp = i > 0 ? hs[i - 1][j] : hin[j];
          const T a = SsExp<T>::ex(dt * A2[j]);
          gs[j] += Cn * dyp;  // g_t
          const T q = gs[j] * a * hp;
          qa += Aj[j] * q;
          gb += gs[j] * Bn;
          s += hs[i][j] * Cn;
          dAacc[j] += dt * q;
          v[j] = gs[j] * dtu;          // -> dB_t
          v[NPER + j] = dyp * hs[i][j];  // -> dC_t
          gs[j] *= a;                   // a_t g_t, the carry into step t - 1
        }
        qa = group_sum(qa, K);
        gb = group_sum(gb, K);
        s = group_sum(s, K);
        if (kk == 0) {
          sQA[i][c] = qa;
          sGB[i][c] = gb;
          sS[i][c] = s;
        }
        // reduce-scatter v over the warp's 32 / K channels (lane bits >= K): each level halves
        // the vector, keeping the half named by the lane's bit; once one value is left, the
        // remaining levels are plain sums (their lanes then hold copies: one writes)
        int base = 0, dup = 0;
#pragma unroll
        for (int l = 0; l < LV; ++l) {
          const int o = 16 >> l;
          const bool up = (lane & o) != 0;
          const int m = M >> l;
          if (m >= 2) {
            const int hm = m >> 1;
#pragma unroll
            for (int x = 0; x < hm; ++x) {
              const T send = up ? v[x] : v[x + hm];
              const T keep = up ? v[x + hm] : v[x];
              v[x] = keep + __shfl_xor_sync(0xffffffffu, send, o);
            }
            if (up) base += hm;
          } else {
            v[0] += __shfl_xor_sync(0xffffffffu, v[0], o);
            dup |= o;
          }
        }
        if ((lane & dup) == 0) {
#pragma unroll
          for (int x = 0; x < MF; ++x) {
            const int oi = base + x;  // original index: kind (B or C) and entry j
            sRed[i][warp][(oi / NPER) * NPAD + kk * NPER + oi % NPER] = v[x];
          }
        }
      }
    }
    __syncthreads();  // sS, sGB, sQA, sRed complete
    // 3. per-token gradients of the chunk (staging role)
#pragma unroll
    for (int k = 0; k < EV; ++k) {
      const int i = i0 + k * K, t = t0 + i;
      if (ccv && t < L) {
        const T gb = sGB[i][cc], dt = sDt[i][cc], uu = sU[i][cc], dyp = sDy[i][cc];
        const i64 o = ((i64)b * L + t) * E + ec;
        du[o] = dt * gb + Dc * dyp;
        T dd = sQA[i][cc] + uu * gb;
        if (softplus) dd *= ss_dsoftplus(cRaw[k]);
        ddelta[o] = dd;
        if (dz != nullptr) dz[o] = cDy[k] * (sS[i][cc] + Dc * uu) * m_dsilu(cZ[k]);
        accD += dyp * uu;
        accBias += dd;
      }
    }
    // dB_t, dC_t of the block's channels: the warps' sums in a fixed order
    for (int idx = tid; idx < TS * 2 * NPAD; idx += NT) {
      const int i = idx / (2 * NPAD), r = idx % (2 * NPAD), n = r % NPAD;
      if (i < steps && n < N) {
        T acc = T(0);
#pragma unroll
        for (int w = 0; w < NW; ++w) acc += sRed[i][w][r];
        const i64 o = ((((i64)b * L + t0 + i) * G + g) * nblk + blk) * N + n;
        if (r < NPAD) {
          dB_part[o] = acc;
        } else {
          dC_part[o] = acc;
        }
      }
    }
    if (ch > 0) stage(ch - 1);
    __syncthreads();  // the next stage is written; the chunk buffers are free again
  }
  // per-channel results
#pragma unroll
  for (int j = 0; j < NPER; ++j) {
    const int n = kk * NPER + j;
    if (cv && n < N) {
      const i64 o = ((i64)b * E + e) * N + n;
      dA_part[o] = dAacc[j];
      if (dinit != nullptr) dinit[o] = gs[j];  // a_0 g_0
    }
  }
  // dD, dbias: the K staging threads of each column, summed in a fixed order
  T* sumD = &sQA[0][0];
  T* sumBias = &sGB[0][0];
  sumD[i0 * CPB + cc] = accD;
  sumBias[i0 * CPB + cc] = accBias;
  __syncthreads();
  if (tid < CPB && ccv) {
    T a0 = T(0), a1 = T(0);
#pragma unroll
    for (int r = 0; r < K; ++r) {
      a0 += sumD[r * CPB + tid];
      a1 += sumBias[r * CPB + tid];
    }
    dD_part[(i64)b * E + ec] = a0;
    dbias_part[(i64)b * E + ec] = a1;
  }
}

// Explicit instantiations so that nvcc (CI) compiles every variant NVRTC may be asked for:
// (T, K, NPER, forward chunk, backward chunk) as kernels/selective_scan.py's ss_config picks them.
#define SS_INST(T, K, NPER, CH, TS)                                                              \
  template __global__ void ss_fwd<T, K, NPER, CH>(                                               \
      int, int, int, int, int, int, const T*, const T*, const T*, const T*, const T*, const T*,  \
      const T*, const T*, const T*, T*, T*, T*);                                                 \
  template __global__ void ss_bwd<T, K, NPER, TS>(                                               \
      int, int, int, int, int, const T*, const T*, const T*, const T*, const T*, const T*,       \
      const T*, const T*, const T*, const T*, const T*, T*, T*, T*, T*, T*, T*, T*, T*, T*);
#ifdef MAMBA_CUPY_INSTANTIATE
SS_INST(float, 1, 1, 8, 8)
SS_INST(float, 1, 2, 8, 8)
SS_INST(float, 1, 4, 8, 8)
SS_INST(float, 1, 8, 8, 8)
SS_INST(float, 2, 1, 16, 16)
SS_INST(float, 2, 2, 16, 16)
SS_INST(float, 2, 4, 16, 16)
SS_INST(float, 2, 8, 16, 8)
SS_INST(float, 4, 1, 32, 32)
SS_INST(float, 4, 2, 32, 32)
SS_INST(float, 4, 4, 32, 16)
SS_INST(float, 4, 8, 32, 8)
SS_INST(float, 8, 1, 32, 32)
SS_INST(float, 8, 2, 32, 32)
SS_INST(float, 8, 4, 32, 16)
SS_INST(float, 8, 8, 32, 8)
SS_INST(double, 1, 1, 8, 4)
SS_INST(double, 1, 2, 8, 4)
SS_INST(double, 1, 4, 8, 4)
SS_INST(double, 1, 8, 8, 4)
SS_INST(double, 2, 1, 16, 8)
SS_INST(double, 2, 2, 16, 8)
SS_INST(double, 2, 4, 16, 8)
SS_INST(double, 2, 8, 16, 8)
SS_INST(double, 4, 1, 32, 16)
SS_INST(double, 4, 2, 32, 16)
SS_INST(double, 4, 4, 32, 16)
SS_INST(double, 4, 8, 32, 8)
SS_INST(double, 8, 1, 32, 32)
SS_INST(double, 8, 2, 32, 16)
SS_INST(double, 8, 4, 32, 8)
SS_INST(double, 8, 8, 32, 8)
#endif
