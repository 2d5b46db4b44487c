// The row scan: the one recurrence under the Mamba-1, Mamba-2 (SSD) and Mamba-3 kernels.
//
// A "row" is one line of a state matrix: (b, h, p) with N state entries (Mamba-2/3: head h,
// head-dim row p; Mamba-1: group h, channel p of the group). For t = 0 .. L-1 (or L-1 .. 0 when
// `reverse`), with everything in T (float for float32, double for float64):
//
//   dec_t[n] = exp(dA[b,t,h,p] * (Am ? Am[h,p,n] : 1))
//   in_t[n]  = (coef ? coef[b,t,h,p] : 1) * sum_r V[b,t,r,h,p] * K[b,t,r,h/hpk,n]
//   forward:  S_t = dec_t S_{t-1} + in_t                     (S_{-1} = init or 0)
//   reverse:  G_t = dec_{t+1} G_{t+1} + in_t                 (G_L   = init or 0, dec_L = 1)
//   Y[b,t,r,h,p]           = sum_n S_t[n] Q[b,t,r,h/hpk,n]                  (when Y)
//   Red[tile,b,t,r,h,n]    = sum_{p in tile} W[b,t,r,h,p] S_t[n]            (when Red)
//   fin[b,h,p,n] = S_{L-1} (forward) or dec_0 G_0 (reverse: the adjoint of the initial state).
//
// Layout: one warp lane group of LPC lanes (a power of two <= 32) holds one row, lane ln holding
// entries n = ln + LPC*j, j < NPER, in registers; a block of nwarps warps holds
// nwarps * (32/LPC) consecutive rows of one head (a "tile"); grid (tiles, NH, B). Readouts are
// lane-group shuffle sums; the row reduction goes through shared memory in a fixed order, so
// results are deterministic. Strides are in elements; the last axis of K, Q, init and fin is
// unit-stride; Y and Red are contiguous in the shapes above.
#include "common.cuh"

// at most 16 warps per block (_scan.MAX_WARPS): caps registers at 128 per thread, so the
// NPER = 8 instances (N > 128) still launch with 512 threads (they spill a little instead)
#define MAX_THREADS 512

template <typename T, int NPER, bool AVEC>
__global__ void __launch_bounds__(MAX_THREADS) row_scan(
    const int L, const int NH, const int P, const int N, const int R, const int LPC,
    const int reverse,
    const T* __restrict__ dA, const i64 sDb, const i64 sDt, const i64 sDh, const i64 sDp,
    const T* __restrict__ Am, const i64 sAh, const i64 sAp, const i64 sAn,
    const T* __restrict__ coef, const i64 sCb, const i64 sCt, const i64 sCh, const i64 sCp,
    const T* __restrict__ V, const i64 sVb, const i64 sVt, const i64 sVr, const i64 sVh,
    const i64 sVp,
    const T* __restrict__ K, const i64 sKb, const i64 sKt, const i64 sKr, const i64 sKh,
    const int hpk,
    const T* __restrict__ Q, const i64 sQb, const i64 sQt, const i64 sQr, const i64 sQh,
    T* __restrict__ Y,
    const T* __restrict__ W, const i64 sWb, const i64 sWt, const i64 sWr, const i64 sWh,
    const i64 sWp,
    T* __restrict__ Red,
    const T* __restrict__ init, T* __restrict__ fin) {
  extern __shared__ unsigned char smem_raw[];
  T* red_s = reinterpret_cast<T*>(smem_raw);

  const int tile = blockIdx.x, h = blockIdx.y, b = blockIdx.z, Bsz = gridDim.z;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int subs = 32 / LPC;
  const int sub = lane / LPC, ln = lane % LPC;
  const int nslots = (blockDim.x >> 5) * subs;
  const int slot = warp * subs + sub;
  const int p = tile * nslots + slot;
  const bool rv = p < P;
  const int Npad = LPC * NPER;
  const int kh = h / hpk;

  bool nv[NPER];
  T S[NPER], pend[NPER], Arow[NPER];
#pragma unroll
  for (int j = 0; j < NPER; ++j) {
    const int n = ln + LPC * j;
    nv[j] = rv && n < N;
    S[j] = (init != nullptr && nv[j]) ? init[(((i64)b * NH + h) * P + p) * N + n] : T(0);
    pend[j] = T(1);
    Arow[j] = T(1);
    if (AVEC && nv[j]) Arow[j] = Am[h * sAh + p * sAp + n * sAn];
  }
  T Ascal = T(1);
  if (!AVEC && Am != nullptr && rv) Ascal = Am[h * sAh + p * sAp];

  for (int s = 0; s < L; ++s) {
    const int t = reverse ? L - 1 - s : s;
    // decay and input of step t
    const T da = rv ? dA[b * sDb + t * sDt + h * sDh + p * sDp] : T(0);
    T dec[NPER];
    if (AVEC) {
#pragma unroll
      for (int j = 0; j < NPER; ++j) dec[j] = m_exp(da * Arow[j]);
    } else {
      const T d0 = m_exp(da * Ascal);
#pragma unroll
      for (int j = 0; j < NPER; ++j) dec[j] = d0;
    }
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
    // the update
#pragma unroll
    for (int j = 0; j < NPER; ++j) {
      if (reverse) {
        S[j] = pend[j] * S[j] + inp[j];
        pend[j] = dec[j];
      } else {
        S[j] = dec[j] * S[j] + inp[j];
      }
    }
    // readout: Y = S . Q_r
    if (Y != nullptr) {
      for (int r = 0; r < R; ++r) {
        const T* Qt = Q + b * sQb + t * sQt + r * sQr + kh * sQh;
        T acc = T(0);
#pragma unroll
        for (int j = 0; j < NPER; ++j) {
          if (nv[j]) acc += S[j] * Qt[ln + LPC * j];
        }
        acc = group_sum(acc, LPC);
        if (ln == 0 && rv) Y[((((i64)b * L + t) * R + r) * NH + h) * P + p] = acc;
      }
    }
    // row reduction: Red = sum_p W_r[p] S[p, :]
    if (Red != nullptr) {
      for (int r = 0; r < R; ++r) {
        const T w = rv ? W[b * sWb + t * sWt + r * sWr + h * sWh + p * sWp] : T(0);
#pragma unroll
        for (int j = 0; j < NPER; ++j) red_s[slot * Npad + ln + LPC * j] = w * S[j];
        __syncthreads();
        T* out = Red + (((((i64)tile * Bsz + b) * L + t) * R + r) * NH + h) * N;
        for (int n = threadIdx.x; n < N; n += blockDim.x) {
          T acc = T(0);
          for (int sl = 0; sl < nslots; ++sl) acc += red_s[sl * Npad + n];
          out[n] = acc;
        }
        __syncthreads();
      }
    }
  }
  if (fin != nullptr) {
#pragma unroll
    for (int j = 0; j < NPER; ++j) {
      if (nv[j]) {
        fin[(((i64)b * NH + h) * P + p) * N + ln + LPC * j] = reverse ? pend[j] * S[j] : S[j];
      }
    }
  }
}

// ---- row_scan_chunked: the same contract, time staged through shared memory in chunks ---------
//
// Same rows, lanes, grid, arguments and per-row arithmetic as row_scan (so Y and fin are the
// same bits, and Red too when the launch has the same rows per block). Time runs in chunks of
// TC steps. Before a chunk is computed its inputs are in shared memory: the K (and Q) rows of
// the head (TC x R x Npad) and the tile's dA, coef, V, W (TC x [R x] rows), copied coalesced
// with cp.async one chunk ahead (double buffer: chunk c+1 is in flight while chunk c computes),
// so the T steps read only shared memory and registers. Y is staged per chunk and written
// coalesced after the next barrier. The row reduction writes w S of each (step, rank) into a
// ring of DR slabs (rows x Npad each, two rings in turn): one barrier per DR slabs, after which
// the whole block sums the ring's DR x N columns over the rows in slot order (the order of
// row_scan: deterministic) and writes them coalesced. Barriers: one per chunk and one per DR
// slabs, reached by every thread (rows past P compute zeros; no early return).
//
// Shared memory (element offsets from the host, _scan.chunk_config; each staged input region
// holds two chunk buffers): oK: 2 x TC x R x Npad; oQ: same (Q); oD: 2 x TC x rows (dA);
// oC: same (coef); oV: 2 x TC x R x rows; oW: same (W); oY: same (Q); oR: 2 x DR x rows x Npad
// (W). An absent input's region is never touched.
template <typename T, int NPER, bool AVEC>
__global__ void __launch_bounds__(MAX_THREADS) row_scan_chunked(
    const int L, const int NH, const int P, const int N, const int R, const int LPC,
    const int reverse,
    const T* __restrict__ dA, const i64 sDb, const i64 sDt, const i64 sDh, const i64 sDp,
    const T* __restrict__ Am, const i64 sAh, const i64 sAp, const i64 sAn,
    const T* __restrict__ coef, const i64 sCb, const i64 sCt, const i64 sCh, const i64 sCp,
    const T* __restrict__ V, const i64 sVb, const i64 sVt, const i64 sVr, const i64 sVh,
    const i64 sVp,
    const T* __restrict__ K, const i64 sKb, const i64 sKt, const i64 sKr, const i64 sKh,
    const int hpk,
    const T* __restrict__ Q, const i64 sQb, const i64 sQt, const i64 sQr, const i64 sQh,
    T* __restrict__ Y,
    const T* __restrict__ W, const i64 sWb, const i64 sWt, const i64 sWr, const i64 sWh,
    const i64 sWp,
    T* __restrict__ Red,
    const T* __restrict__ init, T* __restrict__ fin,
    const int TC, const int DR, const int oK, const int oQ, const int oD, const int oC,
    const int oV, const int oW, const int oY, const int oR) {
  extern __shared__ unsigned char smem_raw[];
  T* sm = reinterpret_cast<T*>(smem_raw);

  const int tile = blockIdx.x, h = blockIdx.y, b = blockIdx.z, Bsz = gridDim.z;
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
  const int RS = R * nslots;        // one step of V, W, Y staging
  const int RN = R * Npad;          // one step of K, Q staging
  const int slab = nslots * Npad;   // one (step, rank) of the reduction ring
  const int nq = L * R;             // reduction slabs in all

  bool nv[NPER];
  T S[NPER], pend[NPER], Arow[NPER];
#pragma unroll
  for (int j = 0; j < NPER; ++j) {
    const int n = ln + LPC * j;
    nv[j] = rv && n < N;
    S[j] = (init != nullptr && nv[j]) ? init[(((i64)b * NH + h) * P + p) * N + n] : T(0);
    pend[j] = T(1);
    Arow[j] = T(1);
    if (AVEC && nv[j]) Arow[j] = Am[h * sAh + p * sAp + n * sAn];
  }
  T Ascal = T(1);
  if (!AVEC && Am != nullptr && rv) Ascal = Am[h * sAh + p * sAp];

  // step s of the scan is time t(s)
  auto time_of = [&](int s) { return reverse ? L - 1 - s : s; };

  // issue the copies of chunk c into buffer buf (one commit group per chunk)
  auto issue = [&](int c, int buf) {
    const int s0 = c * TC;
    const int tc = min(TC, L - s0);
    // K, Q rows: one warp per (step, rank), lanes along n (unit stride: coalesced)
    for (int row = warp; row < tc * R; row += nwarps) {
      const int i = row / R, r = row - i * R;
      const i64 t = time_of(s0 + i);
      const T* ks = K + b * sKb + t * sKt + r * sKr + kh * sKh;
      T* kd = sm + oK + (buf * TC * R + row) * Npad;
      for (int n = lane; n < N; n += 32) cp_async(kd + n, ks + n);
      if (Q != nullptr) {
        const T* qs = Q + b * sQb + t * sQt + r * sQr + kh * sQh;
        T* qd = sm + oQ + (buf * TC * R + row) * Npad;
        for (int n = lane; n < N; n += 32) cp_async(qd + n, qs + n);
      }
    }
    // per-row scalars of the tile: dA, coef (rows past P read as 0 and 1)
    for (int e = threadIdx.x; e < tc * nslots; e += nthr) {
      const int i = e / nslots, sl = e - i * nslots;
      const int pp = tile * nslots + sl;
      const i64 t = time_of(s0 + i);
      T* dd = sm + oD + buf * TC * nslots + e;
      if (pp < P) cp_async(dd, dA + b * sDb + t * sDt + h * sDh + pp * sDp);
      else *dd = T(0);
      if (coef != nullptr) {
        T* cd = sm + oC + buf * TC * nslots + e;
        if (pp < P) cp_async(cd, coef + b * sCb + t * sCt + h * sCh + pp * sCp);
        else *cd = T(1);
      }
    }
    // per-(rank, row) scalars: V, W
    for (int e = threadIdx.x; e < tc * RS; e += nthr) {
      const int i = e / RS, rem = e - i * RS;
      const int r = rem / nslots, sl = rem - r * nslots;
      const int pp = tile * nslots + sl;
      const i64 t = time_of(s0 + i);
      T* vd = sm + oV + buf * TC * RS + e;
      if (pp < P) cp_async(vd, V + b * sVb + t * sVt + r * sVr + h * sVh + pp * sVp);
      else *vd = T(0);
      if (W != nullptr) {
        T* wd = sm + oW + buf * TC * RS + e;
        if (pp < P) cp_async(wd, W + b * sWb + t * sWt + r * sWr + h * sWh + pp * sWp);
        else *wd = T(0);
      }
    }
    cp_async_commit();
  };

  // write chunk c's staged Y (buffer c & 1), coalesced along p
  auto write_y = [&](int c) {
    const int s0 = c * TC;
    const int tc = min(TC, L - s0);
    const T* ys = sm + oY + (c & 1) * TC * RS;
    for (int e = threadIdx.x; e < tc * RS; e += nthr) {
      const int i = e / RS, rem = e - i * RS;
      const int r = rem / nslots, sl = rem - r * nslots;
      const int pp = tile * nslots + sl;
      if (pp < P) {
        const i64 t = time_of(s0 + i);
        Y[(((b * (i64)L + t) * R + r) * NH + h) * P + pp] = ys[e];
      }
    }
  };

  const int nch = (L + TC - 1) / TC;
  issue(0, 0);
  for (int c = 0; c < nch; ++c) {
    const int buf = c & 1;
    cp_async_wait_all();
    // chunk c is staged; every thread is done with chunk c-1 (its buffers may be refilled)
    __syncthreads();
    if (c + 1 < nch) issue(c + 1, buf ^ 1);
    if (Y != nullptr && c > 0) write_y(c - 1);
    const int s0 = c * TC;
    const int tc = min(TC, L - s0);
    const T* Kc = sm + oK + buf * TC * RN;
    const T* Qc = sm + oQ + buf * TC * RN;
    const T* Dc = sm + oD + buf * TC * nslots;
    const T* Cc = sm + oC + buf * TC * nslots;
    const T* Vc = sm + oV + buf * TC * RS;
    const T* Wc = sm + oW + buf * TC * RS;
    T* Yc = sm + oY + buf * TC * RS;
    for (int i = 0; i < tc; ++i) {
      const int s = s0 + i;
      // decay and input of step s
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
      // the update
#pragma unroll
      for (int j = 0; j < NPER; ++j) {
        if (reverse) {
          S[j] = pend[j] * S[j] + inp[j];
          pend[j] = dec[j];
        } else {
          S[j] = dec[j] * S[j] + inp[j];
        }
      }
      // readout: Y = S . Q_r, staged
      if (Y != nullptr) {
        for (int r = 0; r < R; ++r) {
          const T* Qt = Qc + (i * R + r) * Npad;
          T acc = T(0);
#pragma unroll
          for (int j = 0; j < NPER; ++j) {
            if (nv[j]) acc += S[j] * Qt[ln + LPC * j];
          }
          acc = group_sum(acc, LPC);
          if (ln == 0) Yc[i * RS + r * nslots + slot] = acc;
        }
      }
      // row reduction: w S into the ring; every DR slabs (and at the end) the block sums them
      if (Red != nullptr) {
        for (int r = 0; r < R; ++r) {
          const int q = s * R + r;
          const int d = q % DR;
          const int par = (q / DR) & 1;
          const T w = rv ? Wc[i * RS + r * nslots + slot] : T(0);
          T* ring = sm + oR + par * DR * slab;
#pragma unroll
          for (int j = 0; j < NPER; ++j) ring[d * slab + slot * Npad + ln + LPC * j] = w * S[j];
          if (d == DR - 1 || q + 1 == nq) {
            __syncthreads();
            const int q0 = q - d;
            for (int e = threadIdx.x; e < (d + 1) * N; e += nthr) {
              const int dd = e / N, n = e - dd * N;
              const int qq = q0 + dd;
              const int ss = qq / R, rr = qq - ss * R;
              const T* col = ring + dd * slab + n;
              T acc = T(0);
              for (int sl = 0; sl < nslots; ++sl) acc += col[sl * Npad];
              const i64 t = time_of(ss);
              Red[((((i64)tile * Bsz + b) * L + t) * R + rr) * NH * N + (i64)h * N + n] = acc;
            }
            // the other ring is written next; this one is rewritten only after the next flush's
            // barrier, which every thread reaches after finishing the sums above
          }
        }
      }
    }
  }
  __syncthreads();  // the last chunk's Y staging is complete
  if (Y != nullptr) write_y(nch - 1);
  if (fin != nullptr) {
#pragma unroll
    for (int j = 0; j < NPER; ++j) {
      if (nv[j]) {
        fin[(((i64)b * NH + h) * P + p) * N + ln + LPC * j] = reverse ? pend[j] * S[j] : S[j];
      }
    }
  }
}

// Explicit instantiations so that nvcc (CI) compiles every variant NVRTC may be asked for.
#define ROW_SCAN_INST(T, NPER)                                                                   \
  template __global__ void row_scan<T, NPER, true>(                                              \
      int, int, int, int, int, int, int, const T*, i64, i64, i64, i64, const T*, i64, i64, i64,  \
      const T*, i64, i64, i64, i64, const T*, i64, i64, i64, i64, i64, const T*, i64, i64, i64,  \
      i64, int, const T*, i64, i64, i64, i64, T*, const T*, i64, i64, i64, i64, i64, T*,         \
      const T*, T*);                                                                             \
  template __global__ void row_scan<T, NPER, false>(                                             \
      int, int, int, int, int, int, int, const T*, i64, i64, i64, i64, const T*, i64, i64, i64,  \
      const T*, i64, i64, i64, i64, const T*, i64, i64, i64, i64, i64, const T*, i64, i64, i64,  \
      i64, int, const T*, i64, i64, i64, i64, T*, const T*, i64, i64, i64, i64, i64, T*,         \
      const T*, T*);
#define ROW_SCAN_CHUNKED_INST1(T, NPER, AVEC)                                                    \
  template __global__ void row_scan_chunked<T, NPER, AVEC>(                                      \
      int, int, int, int, int, int, int, const T*, i64, i64, i64, i64, const T*, i64, i64, i64,  \
      const T*, i64, i64, i64, i64, const T*, i64, i64, i64, i64, i64, const T*, i64, i64, i64,  \
      i64, int, const T*, i64, i64, i64, i64, T*, const T*, i64, i64, i64, i64, i64, T*,         \
      const T*, T*, int, int, int, int, int, int, int, int, int, int);
#define ROW_SCAN_CHUNKED_INST(T, NPER)                                                           \
  ROW_SCAN_CHUNKED_INST1(T, NPER, true)                                                          \
  ROW_SCAN_CHUNKED_INST1(T, NPER, false)
#ifdef MAMBA_CUPY_INSTANTIATE
ROW_SCAN_CHUNKED_INST(float, 1)
ROW_SCAN_CHUNKED_INST(float, 2)
ROW_SCAN_CHUNKED_INST(float, 4)
ROW_SCAN_CHUNKED_INST(float, 8)
ROW_SCAN_CHUNKED_INST(double, 1)
ROW_SCAN_CHUNKED_INST(double, 2)
ROW_SCAN_CHUNKED_INST(double, 4)
ROW_SCAN_CHUNKED_INST(double, 8)
ROW_SCAN_INST(float, 1)
ROW_SCAN_INST(float, 2)
ROW_SCAN_INST(float, 4)
ROW_SCAN_INST(float, 8)
ROW_SCAN_INST(double, 1)
ROW_SCAN_INST(double, 2)
ROW_SCAN_INST(double, 4)
ROW_SCAN_INST(double, 8)
#endif
