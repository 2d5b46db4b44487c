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

template <typename T>
__global__ void __launch_bounds__(1024) rmsnorm_fwd(const T* __restrict__ X, const T* __restrict__ R,
                            const T* __restrict__ Z, const T* __restrict__ Wt, T* __restrict__ Y,
                            T* __restrict__ RO, const int E, const int GS, const T eps,
                            const int nbg) {
  __shared__ T buf[32];
  const long long row = blockIdx.x;
  const int c0 = blockIdx.y * GS;
  const T* x = X + row * E + c0;
  T ss = T(0);
  for (int i = threadIdx.x; i < GS; i += blockDim.x) {
    T v = x[i];
    if (R != nullptr) {
      v += R[row * E + c0 + i];
      RO[row * E + c0 + i] = v;
    }
    if (Z != nullptr && !nbg) v *= m_silu(Z[row * E + c0 + i]);
    ss += v * v;
  }
  const T r = T(1) / m_sqrt(block_sum(ss, buf) / T(GS) + eps);
  for (int i = threadIdx.x; i < GS; i += blockDim.x) {
    T v = x[i];
    if (R != nullptr) v += R[row * E + c0 + i];
    T g = T(1);
    if (Z != nullptr) g = m_silu(Z[row * E + c0 + i]);
    T y = (nbg || Z == nullptr) ? v * r * Wt[c0 + i] : v * g * r * Wt[c0 + i];
    if (Z != nullptr && nbg) y *= g;
    Y[row * E + c0 + i] = y;
  }
}

#define NORM_CPT 8

// Both kernels launch with up to 1024 threads (kernels/norm.py): __launch_bounds__(1024) caps
// registers at 64 per thread (the double backward needed 82 and would not launch above 512).

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
    // pass 1: the norm of v
    T ss = T(0);
#pragma unroll
    for (int k = 0; k < NORM_CPT; ++k) {
      const int i = threadIdx.x + k * blockDim.x;
      if (i < GS) {
        T v = X[o + i];
        if (hz && !nbg) v *= m_silu(Z[o + i]);
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
        const T g = hz ? m_silu(Z[o + i]) : T(1);
        const T v = (hz && !nbg) ? X[o + i] * g : X[o + i];
        T dn = DY[o + i] * Wt[c0 + i];
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
        const T xv = X[o + i];
        const T zv = hz ? Z[o + i] : T(0);
        const T g = hz ? m_silu(zv) : T(1);
        const T v = (hz && !nbg) ? xv * g : xv;
        const T n = v * r;
        const T dyv = DY[o + i];
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
