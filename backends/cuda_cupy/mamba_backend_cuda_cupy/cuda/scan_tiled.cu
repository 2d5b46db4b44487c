// row_scan_tiled: the row scan of cuda/scan.cu (same contract, same outputs up to rounding) for
// the calls whose decay and input coefficient are the same on every row of a head, i.e. dA and
// coef do not vary along p and Am is a per-head scalar or absent. That is every call of the
// Mamba-2 (SSD) and Mamba-3 wrappers: dec_t = exp(dt_t A_h) and coef_t = dt_t (SSD) or the
// trapezoid scale (Mamba-3) per (b, t, h). Mamba-1 (decay per state entry) stays on scan.cu.
//
// Why a second kernel: row_scan(_chunked) gives each row a whole lane group (N = 128: one warp a
// row, 4 entries a lane), so every step costs a 5-round shuffle sum per row for the readout and
// one exp and one K/Q read per row. Here a thread holds an RP x NPT tile of state: RP
// consecutive rows p and NPT consecutive entries n (N = 128: RP = 4, NPT = 8, 32 states). A
// lane group of LG = Npad / NPT lanes holds RP rows, a warp 32 / LG such groups. Per step a
// thread reads K and Q once (16-byte shared-memory vectors) for its RP rows, computes the decay
// once (one exp), and the readout of its RP rows is one transposed reduction over the LG lanes
// (RP/2 + RP/4 + ... + 1 shuffles for the halving rounds, then one per remaining round:
// N = 128 -> 2 + 1 + 1 + 1 = 5 shuffles for 4 rows, against 4 x 5 in row_scan).
//
// Everything else follows row_scan_chunked: time in chunks of TC steps staged through shared
// memory with cp.async one chunk ahead (double buffers); Y staged per chunk and written
// coalesced; the row reduction Red = sum_p W_r[p] S[p, :] summed per thread over its rows, then
// over the warp's lane groups (butterfly shuffles), written per warp into a ring of DR slabs
// (two rings in turn) and summed over the warps in warp order by the whole block at each flush:
// deterministic. Barriers: one per chunk and one per DR slabs, reached by every thread (rows
// past P and entries past N compute zeros; no early return).
//
// Arguments: row_scan_chunked's (the host builds one list for both), LPC read as LG; the
// strides along p of dA and coef and along p, n of Am are not read (they are 0 here). Then
// ck, CKCH: when ck is not null (forward only), S_{t-1} for every t = c CKCH is written to
// ck (B, nck, NH, P, N), decay_grad's checkpoints, so that its own forward sweep is skipped.
//
// Block (tile, h, b): rows p = tile * RB + (warp * RG + group) * RP + k, k < RP
// (RB = warps * RG * RP rows a block, RG = 32 / LG groups a warp); lane ln of its group holds
// n = ln * NPT + j, j < NPT.
//
// Shared memory (element offsets from the host, _scan.tiled_config; every region starts on a
// 16-byte boundary; two chunk buffers each): oK: 2 x TC x R x Npad; oQ: same (when Q);
// oD: 2 x TC (dA); oC: 2 x TC (coef); oV: 2 x TC x R x RB; oW: same (when W); oY: same (when Q);
// oR: 2 x DR x warps x Npad (when W).
#include "common.cuh"

#define TILED_MAX_THREADS 512

// NV consecutive shared-memory elements, as 16-byte vectors where the type and count allow
// (the host keeps every region, row and tile start aligned to them)
template <typename T, int NV>
__device__ __forceinline__ void lds_vec(const T* p, T (&out)[NV]) {
  if constexpr (sizeof(T) == 4 && NV % 4 == 0) {
#pragma unroll
    for (int v = 0; v < NV; v += 4) {
      const float4 q = *reinterpret_cast<const float4*>(p + v);
      out[v] = q.x;
      out[v + 1] = q.y;
      out[v + 2] = q.z;
      out[v + 3] = q.w;
    }
  } else if constexpr (sizeof(T) == 8 && NV % 2 == 0) {
#pragma unroll
    for (int v = 0; v < NV; v += 2) {
      const double2 q = *reinterpret_cast<const double2*>(p + v);
      out[v] = q.x;
      out[v + 1] = q.y;
    }
  } else {
#pragma unroll
    for (int v = 0; v < NV; ++v) out[v] = p[v];
  }
}

// Sums of RP row partials over an aligned group of LG lanes (RP <= LG, powers of two): every
// lane holds v[k] for rows k < RP; the halving rounds (offsets LG/2, LG/4, ..., LG/RP) leave each
// lane with one row, `row`, whose sum the remaining rounds complete. On return every lane holds
// the full sum of its `row`; the lanes with ln % (LG / RP) == 0 hold distinct rows.
template <typename T, int RP>
__device__ __forceinline__ T rows_sum(T (&v)[RP], const int LG, const int ln, int& row) {
  int off = LG >> 1;
  row = 0;
#pragma unroll
  for (int half = RP >> 1; half >= 1; half >>= 1) {
    const bool upper = (ln & off) != 0;
#pragma unroll
    for (int k = 0; k < half; ++k) {
      const T send = upper ? v[k] : v[k + half];
      const T keep = upper ? v[k + half] : v[k];
      v[k] = keep + __shfl_xor_sync(0xffffffffu, send, off);
    }
    if (upper) row += half;
    off >>= 1;
  }
  T s = v[0];
  for (; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
  return s;
}

template <typename T, int NPT, int RP>
__global__ void __launch_bounds__(TILED_MAX_THREADS) row_scan_tiled(
    const int L, const int NH, const int P, const int N, const int R, const int LG,
    const int reverse,
    const T* __restrict__ dA, const i64 sDb, const i64 sDt, const i64 sDh, const i64 /*sDp*/,
    const T* __restrict__ Am, const i64 sAh, const i64 /*sAp*/, const i64 /*sAn*/,
    const T* __restrict__ coef, const i64 sCb, const i64 sCt, const i64 sCh, const i64 /*sCp*/,
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
    const int oV, const int oW, const int oY, const int oR, T* __restrict__ ck, const int CKCH) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sm = reinterpret_cast<T*>(smem_raw);

  const int tile = blockIdx.x, h = blockIdx.y, b = blockIdx.z, Bsz = gridDim.z;
  const int nthr = blockDim.x, nwarps = blockDim.x >> 5;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int RG = 32 / LG;
  const int grp = lane / LG, ln = lane % LG;
  const int RB = nwarps * RG * RP;         // rows of the block
  const int r0 = (warp * RG + grp) * RP;   // the thread's first row within the block
  const int p0 = tile * RB + r0;
  const int Npad = LG * NPT;
  const int n0 = ln * NPT;
  const int kh = h / hpk;
  const int RS = R * RB;                   // one step of V, W, Y staging
  const int RN = R * Npad;                 // one step of K, Q staging
  const int slab = nwarps * Npad;          // one (step, rank) of the reduction ring
  const int nq = L * R;                    // reduction slabs in all
  const int lowmask = LG / RP - 1;         // rows_sum: the lanes holding distinct rows

  T S[RP][NPT];
#pragma unroll
  for (int k = 0; k < RP; ++k) {
#pragma unroll
    for (int j = 0; j < NPT; ++j) {
      const int p = p0 + k, n = n0 + j;
      S[k][j] = (init != nullptr && p < P && n < N) ? init[(((i64)b * NH + h) * P + p) * N + n]
                                                     : T(0);
    }
  }
  const T Ah = Am != nullptr ? Am[h * sAh] : T(1);
  T pend = T(1);  // reverse: the decay of the step after

  auto time_of = [&](int s) { return reverse ? L - 1 - s : s; };

  // issue the copies of chunk c into buffer buf (one commit group per chunk)
  auto issue = [&](int c, int buf) {
    const int s0 = c * TC;
    const int tc = min(TC, L - s0);
    // K, Q rows: one warp per (step, rank), lanes along n; entries N .. Npad-1 are zeros
    for (int row = warp; row < tc * R; row += nwarps) {
      const int i = row / R, r = row - i * R;
      const i64 t = time_of(s0 + i);
      const T* ks = K + b * sKb + t * sKt + r * sKr + kh * sKh;
      T* kd = sm + oK + (buf * TC * R + row) * Npad;
      for (int n = lane; n < Npad; n += 32) {
        if (n < N) cp_async(kd + n, ks + n);
        else kd[n] = T(0);
      }
      if (Q != nullptr) {
        const T* qs = Q + b * sQb + t * sQt + r * sQr + kh * sQh;
        T* qd = sm + oQ + (buf * TC * R + row) * Npad;
        for (int n = lane; n < Npad; n += 32) {
          if (n < N) cp_async(qd + n, qs + n);
          else qd[n] = T(0);
        }
      }
    }
    // per-step scalars of the head: dA, coef
    for (int i = threadIdx.x; i < tc; i += nthr) {
      const i64 t = time_of(s0 + i);
      cp_async(sm + oD + buf * TC + i, dA + b * sDb + t * sDt + h * sDh);
      if (coef != nullptr) cp_async(sm + oC + buf * TC + i, coef + b * sCb + t * sCt + h * sCh);
    }
    // per-(rank, row) scalars: V, W (rows past P are zeros)
    for (int e = threadIdx.x; e < tc * RS; e += nthr) {
      const int i = e / RS, rem = e - i * RS;
      const int r = rem / RB, sl = rem - r * RB;
      const int pp = tile * RB + sl;
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
      const int r = rem / RB, sl = rem - r * RB;
      const int pp = tile * RB + sl;
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
    const T* Dc = sm + oD + buf * TC;
    const T* Cc = sm + oC + buf * TC;
    const T* Vc = sm + oV + buf * TC * RS;
    const T* Wc = sm + oW + buf * TC * RS;
    T* Yc = sm + oY + buf * TC * RS;
#pragma unroll 2
    for (int i = 0; i < tc; ++i) {
      const int s = s0 + i;
      if (ck != nullptr && s % CKCH == 0) {  // forward only: S_{s-1}, decay_grad's checkpoint
        const int nck = (L + CKCH - 1) / CKCH;
#pragma unroll
        for (int k = 0; k < RP; ++k) {
#pragma unroll
          for (int j = 0; j < NPT; ++j) {
            const int p = p0 + k, n = n0 + j;
            if (p < P && n < N) ck[((((i64)b * nck + s / CKCH) * NH + h) * P + p) * N + n] = S[k][j];
          }
        }
      }
      const T dec = m_exp(Dc[i] * Ah);
      const T cf = coef != nullptr ? Cc[i] : T(1);
      // the update: S = dec S + cf sum_r V_r K_r^T (reverse: the previous step's decay)
      const T a = reverse ? pend : dec;
      for (int r = 0; r < R; ++r) {
        T v[RP], kv[NPT];
        lds_vec<T, RP>(Vc + (i * R + r) * RB + r0, v);
        lds_vec<T, NPT>(Kc + (i * R + r) * Npad + n0, kv);
#pragma unroll
        for (int k = 0; k < RP; ++k) {
          const T cv = cf * v[k];
#pragma unroll
          for (int j = 0; j < NPT; ++j) S[k][j] = (r == 0 ? a * S[k][j] : S[k][j]) + cv * kv[j];
        }
      }
      if (reverse) pend = dec;
      // readout: Y = S . Q_r, staged
      if (Y != nullptr) {
        for (int r = 0; r < R; ++r) {
          T qv[NPT], acc[RP];
          lds_vec<T, NPT>(Qc + (i * R + r) * Npad + n0, qv);
#pragma unroll
          for (int k = 0; k < RP; ++k) {
            T sacc = T(0);
#pragma unroll
            for (int j = 0; j < NPT; ++j) sacc += S[k][j] * qv[j];
            acc[k] = sacc;
          }
          int row;
          const T ysum = rows_sum<T, RP>(acc, LG, ln, row);
          if ((ln & lowmask) == 0) Yc[(i * R + r) * RB + r0 + row] = ysum;
        }
      }
      // row reduction: w S over the thread's rows, the warp's groups, then the ring
      if (Red != nullptr) {
        for (int r = 0; r < R; ++r) {
          const int q = s * R + r;
          const int d = q % DR;
          const int par = (q / DR) & 1;
          T w[RP], red[NPT];
          lds_vec<T, RP>(Wc + (i * R + r) * RB + r0, w);
#pragma unroll
          for (int j = 0; j < NPT; ++j) {
            T acc = T(0);
#pragma unroll
            for (int k = 0; k < RP; ++k) acc += w[k] * S[k][j];
            for (int off = LG; off < 32; off <<= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
            red[j] = acc;
          }
          T* ring = sm + oR + par * DR * slab;
          if (grp == 0) {
#pragma unroll
            for (int j = 0; j < NPT; ++j) ring[d * slab + warp * Npad + n0 + j] = red[j];
          }
          if (d == DR - 1 || q + 1 == nq) {
            __syncthreads();
            const int q0 = q - d;
            for (int e = threadIdx.x; e < (d + 1) * N; e += nthr) {
              const int dd = e / N, n = e - dd * N;
              const int qq = q0 + dd;
              const int ss = qq / R, rr = qq - ss * R;
              const T* col = ring + dd * slab + n;
              T acc = T(0);
              for (int wp = 0; wp < nwarps; ++wp) acc += col[wp * Npad];
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
    for (int k = 0; k < RP; ++k) {
#pragma unroll
      for (int j = 0; j < NPT; ++j) {
        const int p = p0 + k, n = n0 + j;
        if (p < P && n < N) {
          fin[(((i64)b * NH + h) * P + p) * N + n] = reverse ? pend * S[k][j] : S[k][j];
        }
      }
    }
  }
}

// Explicit instantiations so that nvcc (CI) compiles every variant NVRTC may be asked for.
#define ROW_SCAN_TILED_INST(T, NPT, RP)                                                          \
  template __global__ void row_scan_tiled<T, NPT, RP>(                                           \
      int, int, int, int, int, int, int, const T*, i64, i64, i64, i64, const T*, i64, i64, i64,  \
      const T*, i64, i64, i64, i64, const T*, i64, i64, i64, i64, i64, const T*, i64, i64, i64,  \
      i64, int, const T*, i64, i64, i64, i64, T*, const T*, i64, i64, i64, i64, i64, T*,         \
      const T*, T*, int, int, int, int, int, int, int, int, int, int, T*, int);
#define ROW_SCAN_TILED_INST_RP(T, NPT) \
  ROW_SCAN_TILED_INST(T, NPT, 1)       \
  ROW_SCAN_TILED_INST(T, NPT, 2)       \
  ROW_SCAN_TILED_INST(T, NPT, 4)       \
  ROW_SCAN_TILED_INST(T, NPT, 8)
// (_scan.TILED_NPT x _scan.TILED_RP; float64 RP = 8 spills: only MAMBA_CUPY_TILED asks for it)
#ifdef MAMBA_CUPY_INSTANTIATE
ROW_SCAN_TILED_INST_RP(float, 1)
ROW_SCAN_TILED_INST_RP(float, 2)
ROW_SCAN_TILED_INST_RP(float, 4)
ROW_SCAN_TILED_INST_RP(float, 8)
ROW_SCAN_TILED_INST_RP(double, 1)
ROW_SCAN_TILED_INST_RP(double, 2)
ROW_SCAN_TILED_INST_RP(double, 4)
ROW_SCAN_TILED_INST_RP(double, 8)
#endif
