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
#ifdef MAMBA_CUPY_INSTANTIATE
ROW_SCAN_INST(float, 1)
ROW_SCAN_INST(float, 2)
ROW_SCAN_INST(float, 4)
ROW_SCAN_INST(float, 8)
ROW_SCAN_INST(double, 1)
ROW_SCAN_INST(double, 2)
ROW_SCAN_INST(double, 4)
ROW_SCAN_INST(double, 8)
#endif
