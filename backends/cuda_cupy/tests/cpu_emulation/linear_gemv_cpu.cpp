// linear.cu's linear_gemv run on the CPU (cuda_on_cpu.h), for tests/test_cpu_emulation.py.
//
// usage: linear_gemv_cpu IN OUT
// IN (native byte order): int64 header[18] = itemsize, vec, mr, nr, fx, ks, blocks, M, N, K, ldx,
// ldw, ldy, npart, groups, skip, has_bias, has_part; float64 eps; then, in the itemsize's float
// type, X (M ldx), W (N ldw), bias (N, when has_bias), PART (M npart, when has_part).
// OUT: Y (M ldy) in the same type, NaN where the kernel wrote nothing.
#include "cuda_on_cpu.h"
#include "linear.cu"

#include <cstdint>
#include <cstdio>
#include <limits>

namespace {

struct Args {
  int64_t h[18];
  double eps;
};

template <typename T>
std::vector<T> read_n(FILE* f, int64_t n) {
  std::vector<T> v(n);
  if (n && std::fread(v.data(), sizeof(T), n, f) != (size_t)n) {
    std::fprintf(stderr, "linear_gemv_cpu: input ends early\n");
    std::exit(2);
  }
  return v;
}

template <typename T, int VEC, int MR, int NR, int FX, int KS>
int run(const Args& a, FILE* in, FILE* out) {
  const int64_t blocks = a.h[6], M = a.h[7], N = a.h[8], K = a.h[9];
  const int64_t ldx = a.h[10], ldw = a.h[11], ldy = a.h[12], npart = a.h[13];
  const int64_t groups = a.h[14], skip = a.h[15], has_bias = a.h[16], has_part = a.h[17];
  auto X = read_n<T>(in, M * ldx);
  auto W = read_n<T>(in, N * ldw);
  auto B = read_n<T>(in, has_bias ? N : 0);
  auto P = read_n<T>(in, has_part ? M * npart : 0);
  std::vector<T> Y(M * ldy, std::numeric_limits<T>::quiet_NaN());
  const T* bias = has_bias ? B.data() : nullptr;
  const T* part = has_part ? P.data() : nullptr;
  cuda_on_cpu::launch((unsigned)blocks, LINEAR_WARPS * 32, [&] {
    linear_gemv<T, VEC, MR, NR, FX, KS>(X.data(), W.data(), bias, Y.data(), (int)M, (int)N, (int)K,
                                    ldx, ldw, ldy, part, (int)npart, (int)groups, (int)skip,
                                    (T)a.eps);
  });
  std::fwrite(Y.data(), sizeof(T), Y.size(), out);
  return 0;
}

// every instance linear.cu lists (LINEAR_INSTANCES), chosen by the header's fields
#define GEMV_TRY(T, VEC, MR, NR, FX, KS)                                                     \
  if (it == (int)sizeof(T) && vec == VEC && mr == MR && nr == NR && fx == FX && ks == KS) \
    return run<T, VEC, MR, NR, FX, KS>(a, in, out);

int dispatch(const Args& a, FILE* in, FILE* out) {
  const int it = (int)a.h[0], vec = (int)a.h[1], mr = (int)a.h[2], nr = (int)a.h[3], fx = (int)a.h[4];
  const int ks = (int)a.h[5];
  LINEAR_INSTANCES(GEMV_TRY)
  std::fprintf(stderr, "linear_gemv_cpu: no instance for itemsize %d vec %d mr %d nr %d fx %d ks %d\n",
               it, vec, mr, nr, fx, ks);
  return 3;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: linear_gemv_cpu IN OUT\n");
    return 2;
  }
  FILE* in = std::fopen(argv[1], "rb");
  FILE* out = std::fopen(argv[2], "wb");
  if (!in || !out) {
    std::fprintf(stderr, "linear_gemv_cpu: cannot open %s or %s\n", argv[1], argv[2]);
    return 2;
  }
  Args a;
  if (std::fread(a.h, sizeof(int64_t), 18, in) != 18 || std::fread(&a.eps, sizeof(double), 1, in) != 1) {
    std::fprintf(stderr, "linear_gemv_cpu: short header\n");
    return 2;
  }
  const int rc = dispatch(a, in, out);
  std::fclose(in);
  std::fclose(out);
  return rc;
}
