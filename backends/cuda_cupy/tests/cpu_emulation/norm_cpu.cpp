// norm.cu's forward (rmsnorm_fwd_v2: the gated, grouped RMSNorm and add_rmsnorm of decode) run on
// the CPU (launcher.h), for tests/test_cpu_emulation.py.
#include "launcher.h"
#include "norm.cu"

template <typename T, int V>
void fwd(const Launch& L) {
  cuda_on_cpu::launch(L.grid, L.threads, [&] {
    rmsnorm_fwd_v2<T, V>(L.ptr<T>(0), L.ptr<T>(1), L.ptr<T>(2), L.ptr<T>(3), L.ptr<T>(4),
                         L.ptr<T>(5), (int)L.integer(6), (int)L.integer(7), (T)L.real(8),
                         (int)L.integer(9));
  });
}

int main(int argc, char** argv) {
  // the forward instances kernels/norm.py launches (V: 16-byte vectors, or 1)
  const std::map<std::string, Thunk> table = {
      {"rmsnorm_fwd_v2<float, 1>", fwd<float, 1>},   {"rmsnorm_fwd_v2<float, 4>", fwd<float, 4>},
      {"rmsnorm_fwd_v2<double, 1>", fwd<double, 1>}, {"rmsnorm_fwd_v2<double, 2>", fwd<double, 2>},
  };
  return launcher_main(argc, argv, table);
}
