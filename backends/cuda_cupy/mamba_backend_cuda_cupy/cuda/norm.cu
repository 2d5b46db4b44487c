// Gated, grouped RMSNorm with the fused residual add: forward and backward.
//
// Rows are M = prod(leading dims) lines of E channels, contiguous; normalisation runs over groups
// of GS channels. One block per (row, group) in the forward; in the backward block (rb, g) walks
// rows rb, rb + gridDim.x, ... of group g and keeps its weight-gradient partial in registers
// (NORM_CPT columns a thread), written to DWP[rb, :]; the partials are summed over rb in a fixed
// order (deterministic, no atomics). Everything is computed in T (float or double).
//   gate = silu(z);  nbg = norm_before_gate
//   no z:        y = n(x) w
//   z, nbg:      y = n(x) w gate
//   z, !nbg:     y = n(x gate) w          n(v) = v / sqrt(mean(v^2 over the group) + eps)
// With residual R: x <- x + R first, written to RO (the residual_out of add_rmsnorm).
//
// Kernels <T, V>: V-wide vector loads (16 bytes: float4, double2; V = 1 when a size or an
// address is not aligned), one paired block reduction a row in the backward (sum v^2 and
// sum dn v together: mean(dn n) = r sum(dn v) / GS), and the residual add, the residual_out
// cotangent and the residual gradient fused into the backward, so add_rmsnorm's VJP is one pass
// (x, residual, dy, dresidual_out in; dx, dresidual out); rmsnorm_dw_sum adds the partials in a
// fixed order.
#include "common.cuh"

#define NORM_CPT 8

// Thread tid holds the NORM_CPT channels of the NORM_CPT / V vectors starting at channel
// (tid + k blockDim.x) V, k < NORM_CPT / V, of its group: consecutive threads read consecutive
// 16-byte vectors. V > 1 only when GS and E are multiples of V and every array is 16-byte
// aligned (kernels/norm.py), so a vector starting inside the group lies wholly inside it.
#define NORM_MAX_THREADS 1024

template <typename T, int V>
__device__ __forceinline__ void norm_ld(T* r, const T* __restrict__ p) {
  if constexpr (sizeof(T) == 4 && V == 4) {
    const float4 q = *reinterpret_cast<const float4*>(p);
    r[0] = q.x; r[1] = q.y; r[2] = q.z; r[3] = q.w;
  } else if constexpr (sizeof(T) == 8 && V == 2) {
    const double2 q = *reinterpret_cast<const double2*>(p);
    r[0] = q.x; r[1] = q.y;
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) r[j] = p[j];
  }
}

template <typename T, int V>
__device__ __forceinline__ void norm_st(T* __restrict__ p, const T* r) {
  if constexpr (sizeof(T) == 4 && V == 4) {
    *reinterpret_cast<float4*>(p) = make_float4(r[0], r[1], r[2], r[3]);
  } else if constexpr (sizeof(T) == 8 && V == 2) {
    *reinterpret_cast<double2*>(p) = make_double2(r[0], r[1]);
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) p[j] = r[j];
  }
}

// Two block sums with one pair of barriers; every thread gets both totals. buf: >= 64 T, shared.
template <typename T>
__device__ __forceinline__ void norm_block_sum2(T& a, T& b, T* buf) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  a = group_sum(a, 32);
  b = group_sum(b, 32);
  __syncthreads();  // buf may still be read from the previous row
  if (lane == 0) {
    buf[warp] = a;
    buf[32 + warp] = b;
  }
  __syncthreads();
  T ta = T(0), tb = T(0);
  for (int w = 0; w < nw; ++w) {  // fixed order: deterministic
    ta += buf[w];
    tb += buf[32 + w];
  }
  a = ta;
  b = tb;
}

// Forward: block (row, group); R, Z and RO may be null (RO is written when R is given).
template <typename T, int V>
__global__ void __launch_bounds__(NORM_MAX_THREADS)
    rmsnorm_fwd_v2(const T* __restrict__ X, const T* __restrict__ R, const T* __restrict__ Z,
                   const T* __restrict__ Wt, T* __restrict__ Y, T* __restrict__ RO, const int E,
                   const int GS, const T eps, const int nbg) {
  constexpr int NV = NORM_CPT / V;
  __shared__ T buf[32];
  const long long o = (long long)blockIdx.x * E + (long long)blockIdx.y * GS;
  const int c0 = blockIdx.y * GS;
  const bool hz = Z != nullptr;
  T v[NORM_CPT], g[NORM_CPT];
  T ss = T(0);
  // PDL prologue (common.cuh): the weight into L2; nothing is read before pdl_wait
  pdl_prefetch_range(Wt + c0, (i64)GS * sizeof(T), threadIdx.x, blockDim.x);
  pdl_wait();
  pdl_trigger();
#pragma unroll
  for (int k = 0; k < NV; ++k) {
    const int i = (threadIdx.x + k * blockDim.x) * V;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      v[k * V + j] = T(0);
      g[k * V + j] = T(1);
    }
    if (i < GS) {
      norm_ld<T, V>(v + k * V, X + o + i);
      if (R != nullptr) {
        T rr[V];
        norm_ld<T, V>(rr, R + o + i);
#pragma unroll
        for (int j = 0; j < V; ++j) v[k * V + j] += rr[j];
        norm_st<T, V>(RO + o + i, v + k * V);
      }
      if (hz) {
        norm_ld<T, V>(g + k * V, Z + o + i);
#pragma unroll
        for (int j = 0; j < V; ++j) g[k * V + j] = m_silu(g[k * V + j]);
      }
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const T u = (hz && !nbg) ? v[k * V + j] * g[k * V + j] : v[k * V + j];
        ss += u * u;
      }
    }
  }
  const T r = T(1) / m_sqrt(block_sum(ss, buf) / T(GS) + eps);
#pragma unroll
  for (int k = 0; k < NV; ++k) {
    const int i = (threadIdx.x + k * blockDim.x) * V;
    if (i < GS) {
      T w[V], y[V];
      norm_ld<T, V>(w, Wt + c0 + i);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const T vv = v[k * V + j], gg = g[k * V + j];
        T yy = (nbg || !hz) ? vv * r * w[j] : vv * gg * r * w[j];
        if (hz && nbg) yy *= gg;
        y[j] = yy;
      }
      norm_st<T, V>(Y + o + i, y);
    }
  }
}

// Backward: block (rb, group) walks rows rb, rb + gridDim.x, ... Optional: R (the residual, added
// to x as it is read), Z, DY (null: zero), DRO (the residual_out cotangent, added to dx), DX2 (a
// second copy of dx: the residual's gradient), DZ (written when Z is given).
// DWP[rb, c]: the block's weight-gradient partial, summed by rmsnorm_dw_sum.
template <typename T, int V>
__global__ void __launch_bounds__(NORM_MAX_THREADS)
    rmsnorm_bwd_v2(const T* __restrict__ X, const T* __restrict__ R, const T* __restrict__ Z,
                   const T* __restrict__ Wt, const T* __restrict__ DY, const T* __restrict__ DRO,
                   T* __restrict__ DX, T* __restrict__ DX2, T* __restrict__ DZ,
                   T* __restrict__ DWP, const long long M, const int E, const int GS, const T eps,
                   const int nbg) {
  constexpr int NV = NORM_CPT / V;
  __shared__ T buf[64];
  const int c0 = blockIdx.y * GS;
  const bool hz = Z != nullptr;
  T dw[NORM_CPT];
#pragma unroll
  for (int k = 0; k < NORM_CPT; ++k) dw[k] = T(0);
  for (long long row = blockIdx.x; row < M; row += gridDim.x) {
    const long long o = row * E + c0;
    // pass 1: x (+ residual), z, dy read once into registers; sum v^2 and sum dn v
    T xs[NORM_CPT], zs[NORM_CPT], dys[NORM_CPT];
    T ss = T(0), sdv = T(0);
#pragma unroll
    for (int k = 0; k < NV; ++k) {
      const int i = (threadIdx.x + k * blockDim.x) * V;
#pragma unroll
      for (int j = 0; j < V; ++j) xs[k * V + j] = zs[k * V + j] = dys[k * V + j] = T(0);
      if (i < GS) {
        norm_ld<T, V>(xs + k * V, X + o + i);
        if (R != nullptr) {
          T rr[V];
          norm_ld<T, V>(rr, R + o + i);
#pragma unroll
          for (int j = 0; j < V; ++j) xs[k * V + j] += rr[j];
        }
        if (hz) norm_ld<T, V>(zs + k * V, Z + o + i);
        if (DY != nullptr) norm_ld<T, V>(dys + k * V, DY + o + i);
        T w[V];
        norm_ld<T, V>(w, Wt + c0 + i);
#pragma unroll
        for (int j = 0; j < V; ++j) {
          const T g = hz ? m_silu(zs[k * V + j]) : T(1);
          const T v = (hz && !nbg) ? xs[k * V + j] * g : xs[k * V + j];
          T dn = dys[k * V + j] * w[j];
          if (hz && nbg) dn *= g;
          ss += v * v;
          sdv += dn * v;
        }
      }
    }
    norm_block_sum2(ss, sdv, buf);
    const T r = T(1) / m_sqrt(ss / T(GS) + eps);
    const T mdn = r * sdv / T(GS);  // mean(dn n), n = v r
    // pass 2: gradients
#pragma unroll
    for (int k = 0; k < NV; ++k) {
      const int i = (threadIdx.x + k * blockDim.x) * V;
      if (i < GS) {
        T w[V], dro[V], dxo[V], dzo[V];
        norm_ld<T, V>(w, Wt + c0 + i);
        if (DRO != nullptr) norm_ld<T, V>(dro, DRO + o + i);
#pragma unroll
        for (int j = 0; j < V; ++j) {
          const T xv = xs[k * V + j];
          const T zv = zs[k * V + j];
          const T s = hz ? m_sigmoid(zv) : T(1);
          const T g = hz ? zv * s : T(1);  // silu(z)
          const T v = (hz && !nbg) ? xv * g : xv;
          const T n = v * r;
          const T dyv = dys[k * V + j];
          T dn = dyv * w[j];
          if (hz && nbg) dn *= g;
          const T dv = r * (dn - n * mdn);
          T dxv;
          dzo[j] = T(0);
          if (!hz) {
            dxv = dv;
            dw[k * V + j] += dyv * n;
          } else if (nbg) {
            dxv = dv;
            dw[k * V + j] += dyv * n * g;
            dzo[j] = dyv * n * w[j] * (s * (T(1) + zv * (T(1) - s)));  // dsilu(z)
          } else {
            dxv = dv * g;
            dw[k * V + j] += dyv * n;
            dzo[j] = dv * xv * (s * (T(1) + zv * (T(1) - s)));
          }
          if (DRO != nullptr) dxv += dro[j];
          dxo[j] = dxv;
        }
        norm_st<T, V>(DX + o + i, dxo);
        if (DX2 != nullptr) norm_st<T, V>(DX2 + o + i, dxo);
        if (hz) norm_st<T, V>(DZ + o + i, dzo);
      }
    }
  }
#pragma unroll
  for (int k = 0; k < NV; ++k) {
    const int i = (threadIdx.x + k * blockDim.x) * V;
    if (i < GS) norm_st<T, V>(DWP + (long long)blockIdx.x * E + c0 + i, dw + k * V);
  }
}

// DW[e] = sum over r < nrows of P[r, e], in a fixed order: block (32 columns, 8 lanes), lane y
// adds rows y, y + 8, ... in turn, then lane 0 adds the 8 lane sums in turn. Grid ceil(E / 32).
template <typename T>
__global__ void __launch_bounds__(256) rmsnorm_dw_sum(const T* __restrict__ P, T* __restrict__ DW,
                                                      const int nrows, const int E) {
  __shared__ T s[8][33];
  const int e = blockIdx.x * 32 + threadIdx.x;
  T acc = T(0);
  if (e < E)
    for (int r = threadIdx.y; r < nrows; r += 8) acc += P[(long long)r * E + e];
  s[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && e < E) {
    T t = T(0);
#pragma unroll
    for (int y = 0; y < 8; ++y) t += s[y][threadIdx.x];
    DW[e] = t;
  }
}

#ifdef MAMBA_CUPY_INSTANTIATE
#define NORM_V2_INST(T, V)                                                                        \
  template __global__ void rmsnorm_fwd_v2<T, V>(const T*, const T*, const T*, const T*, T*, T*,   \
                                                int, int, T, int);                                \
  template __global__ void rmsnorm_bwd_v2<T, V>(const T*, const T*, const T*, const T*, const T*, \
                                                const T*, T*, T*, T*, T*, long long, int, int, T, \
                                                int);
NORM_V2_INST(float, 1)
NORM_V2_INST(float, 4)
NORM_V2_INST(double, 1)
NORM_V2_INST(double, 2)
template __global__ void rmsnorm_dw_sum<float>(const float*, float*, int, int);
template __global__ void rmsnorm_dw_sum<double>(const double*, double*, int, int);
#endif
