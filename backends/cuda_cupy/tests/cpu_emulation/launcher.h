// A generic host for cuda_cupy kernels run on the CPU (cuda_on_cpu.h): the test writes one
// launch to a file, the harness runs it and writes every buffer back.
//
// IN (native byte order, all fields int64 unless noted): grid x, y, z; threads; number of
// buffers; number of arguments; the kernel's name expression (its length, then its bytes); each
// buffer (its byte count, then its bytes); each argument (kind, then 8 bytes of value):
//   0 a buffer (value: its index)   1 a null pointer   2 int32   3 int64   4 float   5 double
// (float and double values travel as a double). OUT: every buffer, in order, after the launch.
// A harness defines the table from name expressions to thunks and calls launcher_main.
#ifndef MAMBA_CPU_LAUNCHER_H
#define MAMBA_CPU_LAUNCHER_H

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

#include "cuda_on_cpu.h"

struct Launch {
  dim3 grid;
  unsigned threads = 0;
  std::string name;
  std::vector<std::pair<unsigned char*, int64_t>> bufs;  // 64-byte aligned copies
  std::vector<std::pair<int64_t, int64_t>> args;          // (kind, raw value)

  const std::pair<int64_t, int64_t>& at(size_t i) const {
    if (i >= args.size()) die("too few arguments");
    return args[i];
  }
  template <typename T>
  T* ptr(size_t i) const {
    const auto& a = at(i);
    if (a.first == 1) return nullptr;
    if (a.first != 0) die("argument is not a pointer");
    return reinterpret_cast<T*>(bufs.at(a.second).first);
  }
  int64_t integer(size_t i) const {
    const auto& a = at(i);
    if (a.first != 2 && a.first != 3) die("argument is not an integer");
    return a.second;
  }
  double real(size_t i) const {
    const auto& a = at(i);
    if (a.first != 4 && a.first != 5) die("argument is not a float");
    double d;
    std::memcpy(&d, &a.second, 8);
    return d;
  }
  [[noreturn]] static void die(const char* why) {
    std::fprintf(stderr, "cpu launcher: %s\n", why);
    std::exit(2);
  }
};

using Thunk = void (*)(const Launch&);

inline int64_t read_i64(FILE* f) {
  int64_t v;
  if (std::fread(&v, 8, 1, f) != 1) Launch::die("input ends early");
  return v;
}

inline int launcher_main(int argc, char** argv, const std::map<std::string, Thunk>& table) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s IN OUT\n", argv[0]);
    return 2;
  }
  FILE* in = std::fopen(argv[1], "rb");
  if (!in) Launch::die("cannot open the input");
  Launch L;
  L.grid.x = (unsigned)read_i64(in);
  L.grid.y = (unsigned)read_i64(in);
  L.grid.z = (unsigned)read_i64(in);
  L.threads = (unsigned)read_i64(in);
  const int64_t nbuf = read_i64(in), narg = read_i64(in), nlen = read_i64(in);
  L.name.resize(nlen);
  if (nlen && std::fread(L.name.data(), 1, nlen, in) != (size_t)nlen) Launch::die("short name");
  for (int64_t i = 0; i < nbuf; ++i) {
    const int64_t n = read_i64(in);
    auto* p = static_cast<unsigned char*>(std::aligned_alloc(64, (n + 63) / 64 * 64 + 64));
    if (n && std::fread(p, 1, n, in) != (size_t)n) Launch::die("short buffer");
    L.bufs.emplace_back(p, n);
  }
  for (int64_t i = 0; i < narg; ++i) {
    const int64_t kind = read_i64(in);
    L.args.emplace_back(kind, read_i64(in));
  }
  std::fclose(in);
  const auto it = table.find(L.name);
  if (it == table.end()) {
    std::fprintf(stderr, "cpu launcher: no kernel %s in this harness\n", L.name.c_str());
    return 3;
  }
  it->second(L);
  FILE* out = std::fopen(argv[2], "wb");
  if (!out) Launch::die("cannot open the output");
  for (auto& b : L.bufs) {
    std::fwrite(b.first, 1, b.second, out);
    std::free(b.first);
  }
  std::fclose(out);
  return 0;
}

#endif  // MAMBA_CPU_LAUNCHER_H
