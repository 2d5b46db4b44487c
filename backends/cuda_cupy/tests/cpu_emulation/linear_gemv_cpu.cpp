// linear.cu's linear_gemv run on the CPU (launcher.h), for tests/test_cpu_emulation.py: every
// instance linear.cu lists (LINEAR_INSTANCES), by the name expression kernels/linear.py builds.
#include "launcher.h"
#include "linear.cu"

template <typename T, int VEC, int MR, int NR, int FX, int KS>
void thunk(const Launch& L) {
  cuda_on_cpu::launch(L.grid, L.threads, [&] {
    linear_gemv<T, VEC, MR, NR, FX, KS>(
        L.ptr<T>(0), L.ptr<T>(1), L.ptr<T>(2), L.ptr<T>(3), (int)L.integer(4), (int)L.integer(5),
        (int)L.integer(6), L.integer(7), L.integer(8), L.integer(9), L.ptr<T>(10),
        (int)L.integer(11), (int)L.integer(12), (int)L.integer(13), (T)L.real(14));
  });
}

#define GEMV_ENTRY(T, VEC, MR, NR, FX, KS) \
  {"linear_gemv<" #T ", " #VEC ", " #MR ", " #NR ", " #FX ", " #KS ">", thunk<T, VEC, MR, NR, FX, KS>},

int main(int argc, char** argv) {
  const std::map<std::string, Thunk> table = {LINEAR_INSTANCES(GEMV_ENTRY)};
  return launcher_main(argc, argv, table);
}
