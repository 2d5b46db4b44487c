// mixer_step.cu's mamba2_step run on the CPU (launcher.h), for tests/test_cpu_emulation.py.
#include "launcher.h"
#include "mixer_step.cu"

template <typename T, int NPT>
void thunk(const Launch& L) {
  cuda_on_cpu::launch(L.grid, L.threads, [&] {
    mamba2_step<T, NPT>(L.ptr<T>(0), L.integer(1), L.ptr<T>(2), L.ptr<T>(3), L.ptr<T>(4),
                        L.ptr<T>(5), L.ptr<T>(6), L.ptr<T>(7), L.ptr<T>(8), L.ptr<T>(9),
                        L.ptr<T>(10), L.ptr<T>(11), L.ptr<T>(12), L.ptr<T>(13), L.ptr<int>(14),
                        (int)L.integer(15), (int)L.integer(16), (int)L.integer(17),
                        (int)L.integer(18), (int)L.integer(19), (int)L.integer(20),
                        (int)L.integer(21), (int)L.integer(22), (T)L.real(23), (T)L.real(24),
                        (int)L.integer(25));
  });
}

int main(int argc, char** argv) {
  // the instances kernels/mixer_steps.py launches (NPTS)
  const std::map<std::string, Thunk> table = {
      {"mamba2_step<float, 1>", thunk<float, 1>},   {"mamba2_step<float, 2>", thunk<float, 2>},
      {"mamba2_step<float, 4>", thunk<float, 4>},   {"mamba2_step<float, 8>", thunk<float, 8>},
      {"mamba2_step<double, 1>", thunk<double, 1>}, {"mamba2_step<double, 2>", thunk<double, 2>},
      {"mamba2_step<double, 4>", thunk<double, 4>}, {"mamba2_step<double, 8>", thunk<double, 8>},
  };
  return launcher_main(argc, argv, table);
}
