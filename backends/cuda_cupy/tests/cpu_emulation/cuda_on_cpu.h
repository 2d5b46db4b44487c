// Enough of CUDA to run a cuda_cupy kernel on the CPU, for tests of its index math and control
// flow where no GPU is (CI). Every CUDA thread of a block is a std::thread; blocks run one after
// another. __shared__ arrays are function statics (one block at a time: the block's shared
// memory), __syncthreads is a barrier of the block's threads, __syncwarp and the shuffles are
// barriers of the warp's 32 threads with an exchange buffer; atomicAdd is the host's atomic (a
// grid's blocks run in x, y, z order, so a "last block" ticket goes to the last one). Without
// __CUDA_ARCH__ the kernels' own headers take their portable branches (cp.async as a plain copy,
// no PDL, no prefetch).
// Only full-warp shuffles are modelled (every lane of the warp must call them, as in the
// kernels); float arithmetic is the host's (no FMA contraction guarantees): compare results
// with a tolerance, not bit for bit. Blocks never overlap here, so a race between blocks (or a
// kernel that waits on another block) cannot show: the GPU tests cover those. Within a block the
// threads do run at once, so a missing __syncthreads can show, though not reliably.
#ifndef MAMBA_CUDA_ON_CPU_H
#define MAMBA_CUDA_ON_CPU_H

#include <array>
#include <barrier>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
struct float4 {
  float x, y, z, w;
};
struct double2 {
  double x, y;
};
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline double2 make_double2(double x, double y) { return double2{x, y}; }

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 gridDim, blockDim;

namespace cuda_on_cpu {
struct Block {
  std::unique_ptr<std::barrier<>> all;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  std::vector<std::array<unsigned char[16], 32>> xchg;  // a slot a lane, per warp
};
inline Block* block = nullptr;

inline void warp_sync() { block->warps[threadIdx.x >> 5]->arrive_and_wait(); }

// run kernel() as a grid of blocks of `threads` threads (a multiple of 32; x dimension), blocks
// in x-fastest order, one block at a time
inline void launch(dim3 grid, unsigned threads, const std::function<void()>& kernel) {
  gridDim = grid;
  blockDim = dim3{threads, 1, 1};
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        Block blk;
        blk.all = std::make_unique<std::barrier<>>(threads);
        for (unsigned w = 0; w < threads / 32; ++w)
          blk.warps.push_back(std::make_unique<std::barrier<>>(32));
        blk.xchg.resize(threads / 32);
        block = &blk;
        std::vector<std::thread> pool;
        for (unsigned t = 0; t < threads; ++t)
          pool.emplace_back([&, t] {
            threadIdx = dim3{t, 0, 0};
            blockIdx = dim3{bx, by, bz};
            kernel();
          });
        for (auto& th : pool) th.join();
        block = nullptr;
      }
}

inline void launch(unsigned blocks, unsigned threads, const std::function<void()>& kernel) {
  launch(dim3{blocks, 1, 1}, threads, kernel);
}
}  // namespace cuda_on_cpu

inline void __syncthreads() { cuda_on_cpu::block->all->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { cuda_on_cpu::warp_sync(); }

template <typename T>
T __shfl_xor_sync(unsigned, T v, int off) {
  static_assert(sizeof(T) <= 16, "a shuffled value fits a slot");
  const int lane = threadIdx.x & 31;
  auto& buf = cuda_on_cpu::block->xchg[threadIdx.x >> 5];
  std::memcpy(buf[lane], &v, sizeof(T));
  cuda_on_cpu::warp_sync();
  T r;
  std::memcpy(&r, buf[lane ^ off], sizeof(T));
  cuda_on_cpu::warp_sync();  // the slots are written again by the next shuffle
  return r;
}

// atomics (the blocks of a grid run one after another; a block's threads at once)
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

template <typename T>
T __ldg(const T* p) { return *p; }
template <typename T>
T __ldcg(const T* p) { return *p; }

#endif  // MAMBA_CUDA_ON_CPU_H
