// The decay gradient of the row scan: the one backward term that needs the forward state and
// the adjoint at the same step, entry by entry.
//
// Same rows, layout and strides as row_scan (scan.cu). For a row (b, h, p) with N entries:
//
//   dec_t[n] = exp(dA[b,t,h,p] * (Am ? Am[h,p,n] : 1))
//   forward:  S_t = dec_t S_{t-1} + (coef ? coef[b,t,h,p] : 1) sum_r V[b,t,r,h,p] K[b,t,r,h/hpk,:]
//             (S_{-1} = init or 0)
//   adjoint:  G_t = dec_{t+1} G_{t+1} + sum_r Vr[b,t,r,h,p] Kr[b,t,r,h/hpk,:]
//             (G_L = dfin or 0, dec_L = 1): G_t = dL/dS_t when Vr Kr^T is dL/dS_t's direct part
//   q_t[n]   = dec_t[n] G_t[n] S_{t-1}[n]                 (= dL/d(dA_t Am[n]) entry by entry)
//   qa[b,t,h,p]   = sum_n (Am ? Am[h,p,n] : 1) q_t[n]      (-> the decay part of d dt_t)
//   dAm[b,h,p,n]  = sum_t dA[b,t,h,p] q_t[n]               (when dAm; -> dL/dAm)
//
// Each q_t is a product of three factors, never a difference: exact to rounding under any decay
// (the cumulative-sum identity sum_{k>=t} dL/dc_k cancels catastrophically when exp(a) is tiny).
// Recompute with checkpoints, one launch: the forward sweep writes S_{t0-1} for every chunk
// start t0 = c*CH to ck (B, nck, NH, P, N; each thread reads back only what it wrote, so no
// synchronisation); the reverse sweep visits the chunks last first, recomputes the chunk's
// states S_{t-1} into a thread-local buffer (CH x NPER, local memory) from the checkpoint, then
// runs the adjoint backwards through the chunk. Grid (tiles, NH, B) and lane groups as row_scan;
// no shared memory. qa is (B, L, NH, P) contiguous; dAm, init, dfin (B, NH, P, N) contiguous.
#include "common.cuh"

// 16 warps at most (_scan.MAX_WARPS): registers capped at 128 per thread
#define DECAY_MAX_THREADS 512

template <typename T, int NPER, bool AVEC, int CH>
__global__ void __launch_bounds__(DECAY_MAX_THREADS) decay_grad(
    const int L, const int NH, const int P, const int N, const int R, const int LPC,
    const T* __restrict__ dA, const i64 sDb, const i64 sDt, const i64 sDh, const i64 sDp,
    const T* __restrict__ Am, const i64 sAh, const i64 sAp, const i64 sAn,
    const T* __restrict__ coef, const i64 sCb, const i64 sCt, const i64 sCh, const i64 sCp,
    const T* __restrict__ V, const i64 sVb, const i64 sVt, const i64 sVr, const i64 sVh,
    const i64 sVp,
    const T* __restrict__ K, const i64 sKb, const i64 sKt, const i64 sKr, const i64 sKh,
    const T* __restrict__ Vr, const i64 sUb, const i64 sUt, const i64 sUr, const i64 sUh,
    const i64 sUp,
    const T* __restrict__ Kr, const i64 sRb, const i64 sRt, const i64 sRr, const i64 sRh,
    const int hpk,
    const T* __restrict__ init, const T* __restrict__ dfin,
    T* __restrict__ ck, T* __restrict__ qa, T* __restrict__ dAm) {
  const int tile = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int subs = 32 / LPC;
  const int sub = lane / LPC, ln = lane % LPC;
  const int nslots = (blockDim.x >> 5) * subs;
  const int p = tile * nslots + warp * subs + sub;
  const bool rv = p < P;
  const int kh = h / hpk;
  const int nck = (L + CH - 1) / CH;
  const i64 row = ((i64)b * NH + h) * P + p;  // (b, h, p) in a (B, NH, P, N) array, times N

  bool nv[NPER];
  T S[NPER], Arow[NPER];
#pragma unroll
  for (int j = 0; j < NPER; ++j) {
    const int n = ln + LPC * j;
    nv[j] = rv && n < N;
    S[j] = (init != nullptr && nv[j]) ? init[row * N + n] : T(0);
    Arow[j] = T(1);
    if (AVEC && nv[j]) Arow[j] = Am[h * sAh + p * sAp + n * sAn];
  }
  T Ascal = T(1);
  if (!AVEC && Am != nullptr && rv) Ascal = Am[h * sAh + p * sAp];

  // decay of step t (entry j) and the forward input of step t
  auto decay = [&](int t, T* dec, T& da) {
    da = rv ? dA[b * sDb + t * sDt + h * sDh + p * sDp] : T(0);
    if (AVEC) {
#pragma unroll
      for (int j = 0; j < NPER; ++j) dec[j] = m_exp(da * Arow[j]);
    } else {
      const T d0 = m_exp(da * Ascal);
#pragma unroll
      for (int j = 0; j < NPER; ++j) dec[j] = d0;
    }
  };
  auto fwd_step = [&](int t, T* St) {
    T dec[NPER], da;
    decay(t, dec, da);
    const T cf = (coef != nullptr && rv) ? coef[b * sCb + t * sCt + h * sCh + p * sCp] : T(1);
    T inp[NPER];
#pragma unroll
    for (int j = 0; j < NPER; ++j) inp[j] = T(0);
    for (int r = 0; r < R; ++r) {
      const T v = rv ? cf * V[b * sVb + t * sVt + r * sVr + h * sVh + p * sVp] : T(0);
      const T* Kt = K + b * sKb + t * sKt + r * sKr + kh * sKh;
#pragma unroll
      for (int j = 0; j < NPER; ++j) {
        if (nv[j]) inp[j] += v * Kt[ln + LPC * j];
      }
    }
#pragma unroll
    for (int j = 0; j < NPER; ++j) St[j] = dec[j] * St[j] + inp[j];
  };

  // 1. forward sweep: checkpoints S_{t0-1} at every chunk start
  for (int t = 0; t < L; ++t) {
    if (t % CH == 0) {
      T* c = ck + ((((i64)b * nck + t / CH) * NH + h) * P + p) * N;
#pragma unroll
      for (int j = 0; j < NPER; ++j) {
        if (nv[j]) c[ln + LPC * j] = S[j];
      }
    }
    fwd_step(t, S);
  }

  // 2. reverse sweep, chunk by chunk
  T G[NPER], pend[NPER], acc[NPER];
#pragma unroll
  for (int j = 0; j < NPER; ++j) {
    G[j] = (dfin != nullptr && nv[j]) ? dfin[row * N + ln + LPC * j] : T(0);
    pend[j] = T(1);
    acc[j] = T(0);
  }
  T Sbuf[CH][NPER];
  for (int c = nck - 1; c >= 0; --c) {
    const int t0 = c * CH;
    const int t1 = min(t0 + CH, L);
    const T* cp = ck + ((((i64)b * nck + c) * NH + h) * P + p) * N;
#pragma unroll
    for (int j = 0; j < NPER; ++j) S[j] = nv[j] ? cp[ln + LPC * j] : T(0);
    for (int t = t0; t < t1; ++t) {
#pragma unroll
      for (int j = 0; j < NPER; ++j) Sbuf[t - t0][j] = S[j];  // S_{t-1}
      fwd_step(t, S);
    }
    for (int t = t1 - 1; t >= t0; --t) {
      T dec[NPER], da;
      decay(t, dec, da);
      T inr[NPER];
#pragma unroll
      for (int j = 0; j < NPER; ++j) inr[j] = T(0);
      for (int r = 0; r < R; ++r) {
        const T v = rv ? Vr[b * sUb + t * sUt + r * sUr + h * sUh + p * sUp] : T(0);
        const T* Kt = Kr + b * sRb + t * sRt + r * sRr + kh * sRh;
#pragma unroll
        for (int j = 0; j < NPER; ++j) {
          if (nv[j]) inr[j] += v * Kt[ln + LPC * j];
        }
      }
      T qsum = T(0);
#pragma unroll
      for (int j = 0; j < NPER; ++j) {
        G[j] = pend[j] * G[j] + inr[j];  // G_t
        pend[j] = dec[j];
        const T q = nv[j] ? dec[j] * G[j] * Sbuf[t - t0][j] : T(0);
        qsum += (AVEC ? Arow[j] : Ascal) * q;
        acc[j] += da * q;
      }
      qsum = group_sum(qsum, LPC);
      if (ln == 0 && rv) qa[(((i64)b * L + t) * NH + h) * P + p] = qsum;
    }
  }
  if (dAm != nullptr) {
#pragma unroll
    for (int j = 0; j < NPER; ++j) {
      if (nv[j]) dAm[row * N + ln + LPC * j] = acc[j];
    }
  }
}

// ---- decay_grad_chunked: the same contract, inputs staged through shared memory -------------
//
// Same rows, lanes, grid, arguments, checkpoints (ck, every CH tokens) and per-row arithmetic
// as decay_grad, so qa and dAm are the same bits. The work is a fixed list of "jobs", each one
// sub-chunk of TS tokens (TS divides CH; m = CH / TS sub-chunks per checkpoint chunk, the last
// chunk's tail sub-chunks empty):
//   jobs [0, nck m):          F   forward sweep, sub-chunk j (checkpoints at chunk starts);
//   then per chunk c = nck-1 .. 0, 2m jobs: m x RF (recompute the chunk's S_{t-1} into the
//                             thread's buffer, sub-chunks in order), m x RB (the adjoint through
//                             the sub-chunks, last first).
// The inputs of job j+1 (F, RF: dA, coef, V, K rows; RB: dA, Vr, Kr rows) are copied with
// cp.async into the other half of a double buffer while job j runs: one barrier per job, reached
// by every thread. qa is staged per RB job and written coalesced after the next barrier.
// have_ck != 0: ck already holds the checkpoints (row_scan_tiled wrote them in the forward
// sweep of the same scan: cuda/scan_tiled.cu), so the F jobs are skipped and the list starts at
// the last chunk's RF jobs (the buffers keep the parity of the full list's job index).
// Shared memory (element offsets from the host, _scan.decay_config; two buffers each):
// oK: 2 x TS x R x Npad (K or Kr); oV: 2 x TS x R x rows (V or Vr); oD: 2 x TS x rows (dA);
// oC: same (coef); oQ: 2 x TS x rows (qa staging).
template <typename T, int NPER, bool AVEC, int CH>
__global__ void __launch_bounds__(DECAY_MAX_THREADS) decay_grad_chunked(
    const int L, const int NH, const int P, const int N, const int R, const int LPC,
    const T* __restrict__ dA, const i64 sDb, const i64 sDt, const i64 sDh, const i64 sDp,
    const T* __restrict__ Am, const i64 sAh, const i64 sAp, const i64 sAn,
    const T* __restrict__ coef, const i64 sCb, const i64 sCt, const i64 sCh, const i64 sCp,
    const T* __restrict__ V, const i64 sVb, const i64 sVt, const i64 sVr, const i64 sVh,
    const i64 sVp,
    const T* __restrict__ K, const i64 sKb, const i64 sKt, const i64 sKr, const i64 sKh,
    const T* __restrict__ Vr, const i64 sUb, const i64 sUt, const i64 sUr, const i64 sUh,
    const i64 sUp,
    const T* __restrict__ Kr, const i64 sRb, const i64 sRt, const i64 sRr, const i64 sRh,
    const int hpk,
    const T* __restrict__ init, const T* __restrict__ dfin,
    T* __restrict__ ck, T* __restrict__ qa, T* __restrict__ dAm,
    const int TS, const int oK, const int oV, const int oD, const int oC, const int oQ,
    const int have_ck) {
  extern __shared__ unsigned char smem_raw[];
  T* sm = reinterpret_cast<T*>(smem_raw);

  const int tile = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int nthr = blockDim.x, nwarps = blockDim.x >> 5;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int subs = 32 / LPC;
  const int sub = lane / LPC, ln = lane % LPC;
  const int nslots = nwarps * subs;
  const int slot = warp * subs + sub;
  const int p = tile * nslots + slot;
  const bool rv = p < P;
  const int Npad = LPC * NPER;
  const int kh = h / hpk;
  const int nck = (L + CH - 1) / CH;
  const int m = CH / TS;
  const int RS = R * nslots;
  const i64 row = ((i64)b * NH + h) * P + p;

  bool nv[NPER];
  T S[NPER], Arow[NPER];
#pragma unroll
  for (int j = 0; j < NPER; ++j) {
    const int n = ln + LPC * j;
    nv[j] = rv && n < N;
    S[j] = (init != nullptr && nv[j]) ? init[row * N + n] : T(0);
    Arow[j] = T(1);
    if (AVEC && nv[j]) Arow[j] = Am[h * sAh + p * sAp + n * sAn];
  }
  T Ascal = T(1);
  if (!AVEC && Am != nullptr && rv) Ascal = Am[h * sAh + p * sAp];

  // job j: kind (0 F, 1 RF, 2 RB) and its sub-chunk index (tokens [k TS, min(L, k TS + TS)))
  const int nF = nck * m;
  const int njobs = 3 * nF;
  auto job = [&](int j, int& kind, int& k) {
    if (j < nF) {
      kind = 0;
      k = j;
    } else {
      const int jj = j - nF;
      const int c = nck - 1 - jj / (2 * m), u = jj % (2 * m);
      kind = u < m ? 1 : 2;
      k = c * m + (u < m ? u : 2 * m - 1 - u);
    }
  };

  auto issue = [&](int j, int buf) {
    int kind, k;
    job(j, kind, k);
    const int s0 = k * TS;
    const int tc = min(TS, L - s0);  // <= 0: an empty tail sub-chunk
    const T* Kx = kind == 2 ? Kr : K;
    const i64 xKb = kind == 2 ? sRb : sKb, xKt = kind == 2 ? sRt : sKt;
    const i64 xKr = kind == 2 ? sRr : sKr, xKh = kind == 2 ? sRh : sKh;
    for (int rw = warp; rw < tc * R; rw += nwarps) {
      const int i = rw / R, r = rw - i * R;
      const T* ks = Kx + b * xKb + (i64)(s0 + i) * xKt + r * xKr + kh * xKh;
      T* kd = sm + oK + (buf * TS * R + rw) * Npad;
      for (int n = lane; n < N; n += 32) cp_async(kd + n, ks + n);
    }
    for (int e = threadIdx.x; e < tc * nslots; e += nthr) {
      const int i = e / nslots, sl = e - i * nslots;
      const int pp = tile * nslots + sl;
      const i64 t = s0 + i;
      T* dd = sm + oD + buf * TS * nslots + e;
      if (pp < P) cp_async(dd, dA + b * sDb + t * sDt + h * sDh + pp * sDp);
      else *dd = T(0);
      if (coef != nullptr && kind != 2) {
        T* cd = sm + oC + buf * TS * nslots + e;
        if (pp < P) cp_async(cd, coef + b * sCb + t * sCt + h * sCh + pp * sCp);
        else *cd = T(1);
      }
    }
    const T* Vx = kind == 2 ? Vr : V;
    const i64 xVb = kind == 2 ? sUb : sVb, xVt = kind == 2 ? sUt : sVt;
    const i64 xVr = kind == 2 ? sUr : sVr, xVh = kind == 2 ? sUh : sVh;
    const i64 xVp = kind == 2 ? sUp : sVp;
    for (int e = threadIdx.x; e < tc * RS; e += nthr) {
      const int i = e / RS, rem = e - i * RS;
      const int r = rem / nslots, sl = rem - r * nslots;
      const int pp = tile * nslots + sl;
      const i64 t = s0 + i;
      T* vd = sm + oV + buf * TS * RS + e;
      if (pp < P) cp_async(vd, Vx + b * xVb + t * xVt + r * xVr + h * xVh + pp * xVp);
      else *vd = T(0);
    }
    cp_async_commit();
  };

  auto write_qa = [&](int j) {
    int kind, k;
    job(j, kind, k);
    const int s0 = k * TS;
    const int tc = min(TS, L - s0);
    const T* qs = sm + oQ + (j & 1) * TS * nslots;
    for (int e = threadIdx.x; e < tc * nslots; e += nthr) {
      const int i = e / nslots, sl = e - i * nslots;
      const int pp = tile * nslots + sl;
      if (pp < P) qa[((b * (i64)L + s0 + i) * NH + h) * P + pp] = qs[e];
    }
  };

  T G[NPER], pend[NPER], acc[NPER];
#pragma unroll
  for (int j = 0; j < NPER; ++j) {
    G[j] = (dfin != nullptr && nv[j]) ? dfin[row * N + ln + LPC * j] : T(0);
    pend[j] = T(1);
    acc[j] = T(0);
  }
  T Sbuf[CH][NPER];

  const int j0 = have_ck ? nF : 0;  // the first job run
  issue(j0, j0 & 1);
  for (int jb = j0; jb < njobs; ++jb) {
    const int buf = jb & 1;
    cp_async_wait_all();
    __syncthreads();  // job jb's inputs are staged; every thread is done with job jb-1
    if (jb + 1 < njobs) issue(jb + 1, buf ^ 1);
    if (jb > j0) {
      int pk, pkk;
      job(jb - 1, pk, pkk);
      if (pk == 2) write_qa(jb - 1);
    }
    int kind, k;
    job(jb, kind, k);
    const int s0 = k * TS;
    const int tc = min(TS, L - s0);
    const int c0 = (s0 / CH) * CH;  // the checkpoint chunk's first token
    const T* Kc = sm + oK + buf * TS * R * Npad;
    const T* Vc = sm + oV + buf * TS * RS;
    const T* Dc = sm + oD + buf * TS * nslots;
    const T* Cc = sm + oC + buf * TS * nslots;
    if (kind != 2) {
      if (kind == 1 && s0 == c0 && tc > 0) {  // RF: restart from the chunk's checkpoint
        const T* cp = ck + ((((i64)b * nck + s0 / CH) * NH + h) * P + p) * N;
#pragma unroll
        for (int j = 0; j < NPER; ++j) S[j] = nv[j] ? cp[ln + LPC * j] : T(0);
      }
      for (int i = 0; i < tc; ++i) {
        const int t = s0 + i;
        if (kind == 0) {
          if (t % CH == 0) {
            T* c = ck + ((((i64)b * nck + t / CH) * NH + h) * P + p) * N;
#pragma unroll
            for (int j = 0; j < NPER; ++j) {
              if (nv[j]) c[ln + LPC * j] = S[j];
            }
          }
        } else {
#pragma unroll
          for (int j = 0; j < NPER; ++j) Sbuf[t - c0][j] = S[j];  // S_{t-1}
        }
        // forward step t (as decay_grad's fwd_step)
        const T da = rv ? Dc[i * nslots + slot] : T(0);
        T dec[NPER];
        if (AVEC) {
#pragma unroll
          for (int j = 0; j < NPER; ++j) dec[j] = m_exp(da * Arow[j]);
        } else {
          const T d0 = m_exp(da * Ascal);
#pragma unroll
          for (int j = 0; j < NPER; ++j) dec[j] = d0;
        }
        const T cf = (coef != nullptr && rv) ? Cc[i * nslots + slot] : T(1);
        T inp[NPER];
#pragma unroll
        for (int j = 0; j < NPER; ++j) inp[j] = T(0);
        for (int r = 0; r < R; ++r) {
          const T v = rv ? cf * Vc[i * RS + r * nslots + slot] : T(0);
          const T* Kt = Kc + (i * R + r) * Npad;
#pragma unroll
          for (int j = 0; j < NPER; ++j) {
            if (nv[j]) inp[j] += v * Kt[ln + LPC * j];
          }
        }
#pragma unroll
        for (int j = 0; j < NPER; ++j) S[j] = dec[j] * S[j] + inp[j];
      }
    } else {
      T* qs = sm + oQ + buf * TS * nslots;
      for (int i = tc - 1; i >= 0; --i) {
        const int t = s0 + i;
        const T da = rv ? Dc[i * nslots + slot] : T(0);
        T dec[NPER];
        if (AVEC) {
#pragma unroll
          for (int j = 0; j < NPER; ++j) dec[j] = m_exp(da * Arow[j]);
        } else {
          const T d0 = m_exp(da * Ascal);
#pragma unroll
          for (int j = 0; j < NPER; ++j) dec[j] = d0;
        }
        T inr[NPER];
#pragma unroll
        for (int j = 0; j < NPER; ++j) inr[j] = T(0);
        for (int r = 0; r < R; ++r) {
          const T v = rv ? Vc[i * RS + r * nslots + slot] : T(0);
          const T* Kt = Kc + (i * R + r) * Npad;
#pragma unroll
          for (int j = 0; j < NPER; ++j) {
            if (nv[j]) inr[j] += v * Kt[ln + LPC * j];
          }
        }
        T qsum = T(0);
#pragma unroll
        for (int j = 0; j < NPER; ++j) {
          G[j] = pend[j] * G[j] + inr[j];  // G_t
          pend[j] = dec[j];
          const T q = nv[j] ? dec[j] * G[j] * Sbuf[t - c0][j] : T(0);
          qsum += (AVEC ? Arow[j] : Ascal) * q;
          acc[j] += da * q;
        }
        qsum = group_sum(qsum, LPC);
        if (ln == 0) qs[i * nslots + slot] = qsum;
      }
    }
  }
  __syncthreads();  // the last job's qa staging is complete
  {
    int kind, k;
    job(njobs - 1, kind, k);
    if (kind == 2) write_qa(njobs - 1);
  }
  if (dAm != nullptr) {
#pragma unroll
    for (int j = 0; j < NPER; ++j) {
      if (nv[j]) dAm[row * N + ln + LPC * j] = acc[j];
    }
  }
}

// Explicit instantiations so that nvcc (CI) compiles every variant NVRTC may be asked for.
#define DECAY_GRAD_INST(T, NPER, CH)                                                             \
  template __global__ void decay_grad<T, NPER, true, CH>(                                        \
      int, int, int, int, int, int, const T*, i64, i64, i64, i64, const T*, i64, i64, i64,       \
      const T*, i64, i64, i64, i64, const T*, i64, i64, i64, i64, i64, const T*, i64, i64, i64,  \
      i64, const T*, i64, i64, i64, i64, i64, const T*, i64, i64, i64, i64, int, const T*,       \
      const T*, T*, T*, T*);                                                                     \
  template __global__ void decay_grad<T, NPER, false, CH>(                                       \
      int, int, int, int, int, int, const T*, i64, i64, i64, i64, const T*, i64, i64, i64,       \
      const T*, i64, i64, i64, i64, const T*, i64, i64, i64, i64, i64, const T*, i64, i64, i64,  \
      i64, const T*, i64, i64, i64, i64, i64, const T*, i64, i64, i64, i64, int, const T*,       \
      const T*, T*, T*, T*);
#define DECAY_GRAD_CHUNKED_INST1(T, NPER, AVEC, CH)                                              \
  template __global__ void decay_grad_chunked<T, NPER, AVEC, CH>(                                \
      int, int, int, int, int, int, const T*, i64, i64, i64, i64, const T*, i64, i64, i64,       \
      const T*, i64, i64, i64, i64, const T*, i64, i64, i64, i64, i64, const T*, i64, i64, i64,  \
      i64, const T*, i64, i64, i64, i64, i64, const T*, i64, i64, i64, i64, int, const T*,       \
      const T*, T*, T*, T*, int, int, int, int, int, int, int);
#define DECAY_GRAD_CHUNKED_INST(T, NPER, CH)                                                     \
  DECAY_GRAD_CHUNKED_INST1(T, NPER, true, CH)                                                    \
  DECAY_GRAD_CHUNKED_INST1(T, NPER, false, CH)
#ifdef MAMBA_CUPY_INSTANTIATE
DECAY_GRAD_CHUNKED_INST(float, 1, 32)
DECAY_GRAD_CHUNKED_INST(float, 2, 32)
DECAY_GRAD_CHUNKED_INST(float, 4, 32)
DECAY_GRAD_CHUNKED_INST(float, 8, 32)
DECAY_GRAD_CHUNKED_INST(double, 1, 32)
DECAY_GRAD_CHUNKED_INST(double, 2, 32)
DECAY_GRAD_CHUNKED_INST(double, 4, 32)
DECAY_GRAD_CHUNKED_INST(double, 8, 32)
DECAY_GRAD_INST(float, 1, 32)
DECAY_GRAD_INST(float, 2, 32)
DECAY_GRAD_INST(float, 4, 32)
DECAY_GRAD_INST(float, 8, 32)
DECAY_GRAD_INST(double, 1, 32)
DECAY_GRAD_INST(double, 2, 32)
DECAY_GRAD_INST(double, 4, 32)
DECAY_GRAD_INST(double, 8, 32)
#endif
