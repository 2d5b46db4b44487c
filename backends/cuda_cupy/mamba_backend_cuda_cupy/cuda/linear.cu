// Linear layer for few rows (decode): Y = X W^T + b, a memory-bound GEMV that needs no cuBLAS
// (so it can be captured in a CUDA graph) and reads each weight row once for all batch rows.
//
// X: M rows of K (row stride ldx), W: N rows of K (row stride ldw), bias: N or null,
// Y: M rows of N (row stride ldy); every inner stride is 1. M <= MR (the host splits larger M).
// Each row group of KS warps (KS = 1: one warp; see "KS" below) owns NR weight rows
// n0 .. n0 + NR - 1 (n0 = (block * LINEAR_WARPS / KS + group) * NR, then strided by the grid);
// lane l of a warp reads vectors l, l + 32, ... (of the warp's part of K) of VEC entries of those rows
// (coalesced, 16-byte loads when VEC > 1; the host checks K, the row strides and the pointers
// are multiples of VEC) and of the M rows of X, keeping MR x NR partial sums in T (float for
// float, double for double). A butterfly shuffle sums them over the warp (fixed order:
// deterministic), and lane (j * MR + m) % 32 writes Y[m, n0 + j] = sum + bias[n0 + j].
// Loads in flight: a lane copies its next U = gemv_unroll(MR, NR) vectors of the NR weight rows
// (U = 8 for MR NR <= 2, 4 up to 8, else 2) with cp.async into its slots of a shared buffer
// (U NR 16 B a lane: 16 KB a block at most), waits for them all, then computes; its last < U
// vectors one at a time from registers. Without that (plain loads, which ptxas interleaves with
// the FMAs: 1 to 2 weight loads in flight a warp), a narrow GEMV is bound by latency, not
// bandwidth: out_proj of a 370M Mamba-2 at batch 1 (N = 1024, K = 2048) has 1024 warps with
// ~512 B in flight each (~0.5 MB; ~2.4 MB are needed to cover ~0.8 us of DRAM latency at
// 3 TB/s): ~0.6 TB/s; with U = 8, ~4 MB in flight. (U = 16 with warp-uniform predicated rounds
// was tried: its 33 KB of shared memory a block halved in_proj's resident warps, and x's loads,
// behind a branch each, no longer went out together: 1.3 to 1.6x slower.) The sums are the
// same, in the same order
// (lane l: vectors l, l + 32, ... ascending).
//
// Group scales (PART not null): the gated RMSNorm of a fused Mamba-2 decode step folded into
// out_proj (kernels/mixer_steps.py). Column k >= skip of row m of X is multiplied, as it is
// loaded, by rs[m][g] = 1 / sqrt(sum_q PART[m, g npg + q] / gsz + eps), g = (k - skip) / gsz,
// gsz = (K - skip) / groups channels a group, npg = npart / groups partial sums of squares a
// group (PART: M rows of npart, row stride npart; added in a fixed order: deterministic).
// Each warp computes its rows' scales once, after its first weight copies are issued, so their
// L2 reads overlap the weights' DRAM reads. groups <= GEMV_GROUPS_MAX.
//
// Programmatic dependent launch (kernels/_launch.py, common.cuh pdl_wait): before its wait a warp
// only prefetches the weight rows of its first n0 into L2, so in decode the weights stream in
// while the kernel before still runs; X, PART and Y are touched only after the wait.

#include "common.cuh"

#define LINEAR_WARPS 4
#define GEMV_GROUPS_MAX 16

// vectors of each weight row a lane loads before using them (see the header)
__host__ __device__ constexpr int gemv_unroll(int mr, int nr) {
  return mr * nr <= 2 ? 8 : (mr * nr <= 8 ? 4 : 2);
}

template <typename T, int VEC>
__device__ __forceinline__ void load_vec(const T* __restrict__ p, T (&out)[VEC]) {
  if constexpr (VEC == 1) {
    out[0] = __ldg(p);
  } else if constexpr (sizeof(T) == 4 && VEC == 4) {
    const float4 v = __ldg(reinterpret_cast<const float4*>(p));
    out[0] = v.x; out[1] = v.y; out[2] = v.z; out[3] = v.w;
  } else if constexpr (sizeof(T) == 8 && VEC == 2) {
    const double2 v = __ldg(reinterpret_cast<const double2*>(p));
    out[0] = v.x; out[1] = v.y;
  } else {
#pragma unroll
    for (int v = 0; v < VEC; ++v) out[v] = __ldg(p + v);
  }
}

// cp.async of one vector of VEC entries (16 bytes, or VEC copies of one entry)
template <typename T, int VEC>
__device__ __forceinline__ void cp_async_vec(T* dst, const T* src) {
  if constexpr (VEC * sizeof(T) == 16) {
    cp_async(reinterpret_cast<float4*>(dst), reinterpret_cast<const float4*>(src));
  } else {
#pragma unroll
    for (int v = 0; v < VEC; ++v) cp_async(dst + v, src + v);
  }
}

// rs[m][g] (see the header) for the warp's rows m < min(M, MR); written by lane 0
template <typename T, int MR>
__device__ __forceinline__ void gemv_group_scales(const T* __restrict__ PART, const int npart,
                                                  const int groups, const int M, const int gsz,
                                                  const T eps, T (*rs)[GEMV_GROUPS_MAX]) {
  const int lane = threadIdx.x & 31, npg = npart / groups;
#pragma unroll
  for (int m = 0; m < MR; ++m) {
    if (m < M) {
      for (int g = 0; g < groups; ++g) {
        const T* p = PART + (i64)m * npart + (i64)g * npg;
        T s = T(0);
#pragma unroll 4
        for (int q = lane; q < npg; q += 32) s += __ldcg(p + q);
        s = group_sum(s, 32);  // every lane gets the same total
        if (lane == 0) rs[m][g] = T(1) / m_sqrt(s / T(gsz) + eps);
      }
    }
  }
  __syncwarp();
}

// x *= rs[(k0 - skip) / gsz] when k0 >= skip: one scale for the whole vector (the host gives
// VEC > 1 only when skip and gsz are multiples of VEC, so a vector never straddles a group)
template <typename T, int VEC>
__device__ __forceinline__ void gemv_scale_cols(T (&x)[VEC], const int k0, const int skip,
                                                const int gsz, const T* rs) {
  if (k0 >= skip) {
    const T r = rs[(k0 - skip) / gsz];
#pragma unroll
    for (int v = 0; v < VEC; ++v) x[v] *= r;
  }
}

// FX: 0 the plain GEMV (PART taken as null: it keeps its 40 registers at MR = NR = 1); 1 one
// scale a row (groups 1, skip 0: the row's sum is scaled once, at the end; 40 registers); 2
// group scales applied as X is loaded (94 registers at MR = NR = 1).
// KS (split K; 1, 2 or 4, dividing LINEAR_WARPS and K / VEC; kernels/linear.py split_k): the
// KS warps kq = warp % KS of a row group rg = warp / KS share its NR rows, warp kq taking the
// vectors [kq per, (kq + 1) per) of each row (per = K / VEC / KS), so a row's loads are spread
// over KS warps and all go out in one round when per <= 32 U; the warps' sums meet in shared
// memory and warp kq = 0 adds them in the order kq = 0, 1, .. (deterministic) and writes Y.
// Rows are walked block by block (every warp of a block takes the same trips: __syncthreads
// is reached by all); a row group past N computes nothing.
template <typename T, int VEC, int MR, int NR, int FX, int KS>
__global__ void __launch_bounds__(LINEAR_WARPS * 32, (MR == 1 && FX < 2) ? 9 : 1) linear_gemv(
    const T* __restrict__ X, const T* __restrict__ W, const T* __restrict__ bias,
    T* __restrict__ Y, const int M, const int N, const int K, const i64 ldx, const i64 ldw,
    const i64 ldy, const T* __restrict__ PART, const int npart, const int groups,
    const int skip, const T eps) {
  static_assert(KS >= 1 && LINEAR_WARPS % KS == 0, "KS divides the block's warps");
  if constexpr (FX == 0) PART = nullptr;
  constexpr int U = gemv_unroll(MR, NR);
  constexpr bool XPRE = MR * U * VEC <= 64;  // x of the round held in registers (MR <= 2)
  __shared__ __align__(16) T sw[LINEAR_WARPS][U][NR][32 * VEC];
  __shared__ T srs[LINEAR_WARPS][MR][GEMV_GROUPS_MAX];
  __shared__ T sred[KS > 1 ? LINEAR_WARPS : 1][NR][MR];  // the warps' sums of their K parts
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  constexpr int RPB = LINEAR_WARPS / KS;  // row groups a block
  const int rg = warp / KS, kq = warp % KS;
  const int per = K / VEC / KS;  // vectors of a row each of its warps reads
  const int kbeg = kq * per, kend = kbeg + per;
  const int gsz = PART != nullptr ? (K - skip) / groups : 1;
  bool scaled = PART == nullptr;  // the warp's scales are computed (or not needed)
  const i64 step = (i64)gridDim.x * RPB * NR;
  const i64 base = (i64)blockIdx.x * RPB * NR;  // the block's first row
  const i64 first = base + (i64)rg * NR;        // the warp's first n0
  // PDL prologue (common.cuh): the warp's part of the weight rows of its first n0 into L2 while
  // the kernel before (the norm, or the fused step, in decode) still runs; nothing is read
  // before pdl_wait
#pragma unroll
  for (int j = 0; j < NR; ++j)
    if (first + j < N)
      pdl_prefetch_range(W + (first + j) * ldw + (i64)kbeg * VEC, (i64)per * VEC * sizeof(T), lane, 32);
  pdl_wait();
  pdl_trigger();
  for (i64 nb = base; nb < N; nb += step) {
    const i64 n0 = nb + (i64)rg * NR;
    T acc[NR][MR];
#pragma unroll
    for (int j = 0; j < NR; ++j)
#pragma unroll
      for (int m = 0; m < MR; ++m) acc[j][m] = T(0);
    if (n0 < N) {
      if (!scaled && per < 32 * U) {  // no round every lane runs: the scales first
        gemv_group_scales<T, MR>(PART, npart, groups, M, gsz, eps, srs[warp]);
        scaled = true;
      }
      int kv = kbeg + lane;
      // rounds of U vectors: the lane's U x NR weight vectors of the round are copied
      // asynchronously (cp.async) into its own slots of the warp's shared buffer, so they are all
      // in flight together (plain loads into registers, ptxas interleaves with the FMAs, keeping
      // ~2 in flight), then read back into registers; the lane reads only what it copied itself
      for (; kv + 32 * (U - 1) < kend; kv += 32 * U) {
#pragma unroll
        for (int u = 0; u < U; ++u) {
#pragma unroll
          for (int j = 0; j < NR; ++j) {
            const i64 row = n0 + j < N ? n0 + j : (i64)N - 1;  // a real row; its sums are dropped
            const T* src = W + row * ldw + (i64)(kv + 32 * u) * VEC;
            cp_async_vec<T, VEC>(&sw[warp][u][j][lane * VEC], src);
          }
        }
        cp_async_commit();
        // few rows: their x vectors of the round are loaded while the weights are in flight
        T xp[XPRE ? MR : 1][XPRE ? U : 1][VEC];
        if constexpr (XPRE) {
#pragma unroll
          for (int m = 0; m < MR; ++m)
#pragma unroll
            for (int u = 0; u < U; ++u)
              if (m < M) load_vec<T, VEC>(X + m * ldx + (i64)(kv + 32 * u) * VEC, xp[m][u]);
        }
        if (!scaled) {  // while the copies are in flight (per >= 32 U: every lane is here)
          gemv_group_scales<T, MR>(PART, npart, groups, M, gsz, eps, srs[warp]);
          scaled = true;
        }
        cp_async_wait_all();
        T w[U][NR][VEC];
#pragma unroll
        for (int u = 0; u < U; ++u)
#pragma unroll
          for (int j = 0; j < NR; ++j)
#pragma unroll
            for (int v = 0; v < VEC; ++v) w[u][j][v] = sw[warp][u][j][lane * VEC + v];
#pragma unroll
        for (int m = 0; m < MR; ++m) {
          if (m < M) {
            T x[U][VEC];
#pragma unroll
            for (int u = 0; u < U; ++u) {
              if constexpr (XPRE) {
#pragma unroll
                for (int v = 0; v < VEC; ++v) x[u][v] = xp[m][u][v];
              } else {
                load_vec<T, VEC>(X + m * ldx + (i64)(kv + 32 * u) * VEC, x[u]);
              }
            }
            if (FX == 2 && PART != nullptr) {
#pragma unroll
              for (int u = 0; u < U; ++u)
                gemv_scale_cols<T, VEC>(x[u], (kv + 32 * u) * VEC, skip, gsz, srs[warp][m]);
            }
#pragma unroll
            for (int u = 0; u < U; ++u)
#pragma unroll
              for (int j = 0; j < NR; ++j)
#pragma unroll
                for (int v = 0; v < VEC; ++v) acc[j][m] += w[u][j][v] * x[u][v];
          }
        }
      }
      // the lane's last (< U) vectors, one at a time
      for (; kv < kend; kv += 32) {
        const i64 k = (i64)kv * VEC;
        T w[NR][VEC];
#pragma unroll
        for (int j = 0; j < NR; ++j) {
          if (n0 + j < N) {
            load_vec<T, VEC>(W + (n0 + j) * ldw + k, w[j]);
          } else {
#pragma unroll
            for (int v = 0; v < VEC; ++v) w[j][v] = T(0);
          }
        }
#pragma unroll
        for (int m = 0; m < MR; ++m) {
          if (m < M) {
            T x[VEC];
            load_vec<T, VEC>(X + m * ldx + k, x);
            if (FX == 2 && PART != nullptr) {
              gemv_scale_cols<T, VEC>(x, (int)k, skip, gsz, srs[warp][m]);
            }
#pragma unroll
            for (int j = 0; j < NR; ++j)
#pragma unroll
              for (int v = 0; v < VEC; ++v) acc[j][m] += w[j][v] * x[v];
          }
        }
      }
    }
    if constexpr (KS > 1) {  // the row group's K parts meet in shared memory
      if (n0 < N) {
#pragma unroll
        for (int j = 0; j < NR; ++j)
#pragma unroll
          for (int m = 0; m < MR; ++m) {
            const T s = group_sum(acc[j][m], 32);  // every lane calls it: full-warp shuffles
            if (lane == 0) sred[warp][j][m] = s;
          }
      }
      __syncthreads();
    }
    if (n0 < N && kq == 0) {
#pragma unroll
      for (int j = 0; j < NR; ++j) {
        const i64 n = n0 + j;
        const T b = (bias != nullptr && n < N) ? bias[n] : T(0);
#pragma unroll
        for (int m = 0; m < MR; ++m) {
          T s;
          if constexpr (KS > 1) {  // the warps' sums in the order kq = 0, 1, ..: deterministic
            s = sred[warp][j][m];
#pragma unroll
            for (int q = 1; q < KS; ++q) s += sred[warp + q][j][m];
          } else {
            s = group_sum(acc[j][m], 32);  // every lane calls it: full-warp shuffles
          }
          if (FX == 1 && PART != nullptr) s *= srs[warp][m < M ? m : 0][0];
          if (m < M && n < N && lane == ((j * MR + m) & 31)) Y[m * ldy + n] = s + b;
        }
      }
    }
    if constexpr (KS > 1) __syncthreads();  // sred is written again on the next trip
  }
}

// The instances kernels/linear.py asks for, as an X-macro X(T, VEC, MR, NR, FX, KS):
// rows_per_warp(MR, itemsize) gives NR (NR8 at MR >= 8), split_k gives KS. Instantiated below for
// nvcc (CI), and run on the CPU by tests/cpu_emulation/linear_gemv_cpu.cpp.
#define LINEAR_KS(X, T, VEC, MR, NR, FX) X(T, VEC, MR, NR, FX, 1) X(T, VEC, MR, NR, FX, 2) X(T, VEC, MR, NR, FX, 4)
#define LINEAR_FX(X, T, VEC, MR, NR) \
  LINEAR_KS(X, T, VEC, MR, NR, 0) LINEAR_KS(X, T, VEC, MR, NR, 1) LINEAR_KS(X, T, VEC, MR, NR, 2)
#define LINEAR_MR(X, T, VEC, NR8)                                                     \
  LINEAR_FX(X, T, VEC, 1, 1) LINEAR_FX(X, T, VEC, 2, 1) LINEAR_FX(X, T, VEC, 4, 2)   \
  LINEAR_FX(X, T, VEC, 8, NR8) LINEAR_FX(X, T, VEC, 16, NR8)
#define LINEAR_INSTANCES(X) \
  LINEAR_MR(X, float, 1, 4) LINEAR_MR(X, float, 4, 4) LINEAR_MR(X, double, 1, 2) LINEAR_MR(X, double, 2, 2)

#ifdef MAMBA_CUPY_INSTANTIATE
#define LINEAR_INST(T, VEC, MR, NR, FX, KS)                          \
  template __global__ void linear_gemv<T, VEC, MR, NR, FX, KS>(      \
      const T*, const T*, const T*, T*, int, int, int, i64, i64, i64, const T*, int, int, int, T);
LINEAR_INSTANCES(LINEAR_INST)
#endif
