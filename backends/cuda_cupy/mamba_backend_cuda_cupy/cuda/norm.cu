// Gated, grouped RMSNorm with the fused residual add: forward and backward.
//
// Rows are M = prod(leading dims) lines of E channels, contiguous; normalisation runs over groups
// of GS channels. One block per (row, group) in the forward; in the backward block (rb, g) walks
// rows rb, rb + gridDim.x, ... of group g and keeps its weight-gradient partial in registers
// (column tid + k * blockDim.x, k < 8), written to DWP[rb, :]; the host sums DWP over rb
// (deterministic, no atomics). Everything is computed in T (float or double).
//   gate = silu(z);  nbg = norm_before_gate
//   no z:        y = n(x) w
//   z, nbg:      y = n(x) w gate
//   z, !nbg:     y = n(x gate) w          n(v) = v / sqrt(mean(v^2 over the group) + eps)
// With residual R: x <- x + R first, written to RO (the residual_out of add_rmsnorm).
#include "common.cuh"

#define NORM_CPT 8

// Forward: block (row, group), blockDim.x * NORM_CPT >= GS threads (kernels/norm.py); thread
// holds channels tid + k blockDim.x, k < NORM_CPT, in registers between the sum of squares and
// the output: x, z and the residual are read once.
template <typename T>
__global__ void __launch_bounds__(1024) rmsnorm_fwd(const T* __restrict__ X, const T* __restrict__ R,
                            const T* __restrict__ Z, const T* __restrict__ Wt, T* __restrict__ Y,
                            T* __restrict__ RO, const int E, const int GS, const T eps,
                            const int nbg) {
  __shared__ T buf[32];
  const long long o = (long long)blockIdx.x * E + (long long)blockIdx.y * GS;
  const int c0 = blockIdx.y * GS;
  const bool hz = Z != nullptr;
  T v[NORM_CPT], g[NORM_CPT];
  T ss = T(0);
#pragma unroll
  for (int k = 0; k < NORM_CPT; ++k) {
    const int i = threadIdx.x + k * blockDim.x;
    v[k] = T(0);
    g[k] = T(1);
    if (i < GS) {
      T xv = X[o + i];
      if (R != nullptr) {
        xv += R[o + i];
        RO[o + i] = xv;
      }
      v[k] = xv;
      if (hz) g[k] = m_silu(Z[o + i]);
      const T u = (hz && !nbg) ? xv * g[k] : xv;
      ss += u * u;
    }
  }
  const T r = T(1) / m_sqrt(block_sum(ss, buf) / T(GS) + eps);
#pragma unroll
  for (int k = 0; k < NORM_CPT; ++k) {
    const int i = threadIdx.x + k * blockDim.x;
    if (i < GS) {
      T y = (nbg || !hz) ? v[k] * r * Wt[c0 + i] : v[k] * g[k] * r * Wt[c0 + i];
      if (hz && nbg) y *= g[k];
      Y[o + i] = y;
    }
  }
}


// Both kernels launch with up to 1024 threads (kernels/norm.py): __launch_bounds__(1024) caps
// registers at 64 per thread (the double backward needed 82 and would not launch above 512;
// with x, z and dy held across its passes it spills a little, in float64 only).

template <typename T>
__global__ void __launch_bounds__(1024) rmsnorm_bwd(const T* __restrict__ X, const T* __restrict__ Z,
                            const T* __restrict__ Wt, const T* __restrict__ DY,
                            T* __restrict__ DX, T* __restrict__ DZ, T* __restrict__ DWP,
                            const long long M, const int E, const int GS, const T eps,
                            const int nbg) {
  __shared__ T buf[32];
  const int c0 = blockIdx.y * GS;
  const bool hz = Z != nullptr;
  T dw[NORM_CPT];
#pragma unroll
  for (int k = 0; k < NORM_CPT; ++k) dw[k] = T(0);
  for (long long row = blockIdx.x; row < M; row += gridDim.x) {
    const long long o = row * E + c0;
    // pass 1: the norm of v; x, z, dy read once into registers for the three passes
    T xs[NORM_CPT], zs[NORM_CPT], dys[NORM_CPT];
    T ss = T(0);
#pragma unroll
    for (int k = 0; k < NORM_CPT; ++k) {
      const int i = threadIdx.x + k * blockDim.x;
      xs[k] = zs[k] = dys[k] = T(0);
      if (i < GS) {
        xs[k] = X[o + i];
        if (hz) zs[k] = Z[o + i];
        dys[k] = DY[o + i];
        T v = xs[k];
        if (hz && !nbg) v *= m_silu(zs[k]);
        ss += v * v;
      }
    }
    const T r = T(1) / m_sqrt(block_sum(ss, buf) / T(GS) + eps);
    // pass 2: mean(dn * n)
    T s2 = T(0);
#pragma unroll
    for (int k = 0; k < NORM_CPT; ++k) {
      const int i = threadIdx.x + k * blockDim.x;
      if (i < GS) {
        const T g = hz ? m_silu(zs[k]) : T(1);
        const T v = (hz && !nbg) ? xs[k] * g : xs[k];
        T dn = dys[k] * Wt[c0 + i];
        if (hz && nbg) dn *= g;
        s2 += dn * v * r;
      }
    }
    const T mdn = block_sum(s2, buf) / T(GS);
    // pass 3: gradients
#pragma unroll
    for (int k = 0; k < NORM_CPT; ++k) {
      const int i = threadIdx.x + k * blockDim.x;
      if (i < GS) {
        const T xv = xs[k];
        const T zv = zs[k];
        const T g = hz ? m_silu(zv) : T(1);
        const T v = (hz && !nbg) ? xv * g : xv;
        const T n = v * r;
        const T dyv = dys[k];
        const T w = Wt[c0 + i];
        T dn = dyv * w;
        if (hz && nbg) dn *= g;
        const T dv = r * (dn - n * mdn);
        if (!hz) {
          DX[o + i] = dv;
          dw[k] += dyv * n;
        } else if (nbg) {
          DX[o + i] = dv;
          dw[k] += dyv * n * g;
          DZ[o + i] = dyv * n * w * m_dsilu(zv);
        } else {
          DX[o + i] = dv * g;
          dw[k] += dyv * n;
          DZ[o + i] = dv * xv * m_dsilu(zv);
        }
      }
    }
  }
#pragma unroll
  for (int k = 0; k < NORM_CPT; ++k) {
    const int i = threadIdx.x + k * blockDim.x;
    if (i < GS) DWP[(long long)blockIdx.x * E + c0 + i] = dw[k];
  }
}

#ifdef MAMBA_CUPY_INSTANTIATE
template __global__ void rmsnorm_fwd<float>(const float*, const float*, const float*, const float*,
                                            float*, float*, int, int, float, int);
template __global__ void rmsnorm_fwd<double>(const double*, const double*, const double*,
                                             const double*, double*, double*, int, int, double, int);
template __global__ void rmsnorm_bwd<float>(const float*, const float*, const float*, const float*,
                                            float*, float*, float*, long long, int, int, float, int);
template __global__ void rmsnorm_bwd<double>(const double*, const double*, const double*,
                                             const double*, double*, double*, double*, long long,
                                             int, int, double, int);
#endif
