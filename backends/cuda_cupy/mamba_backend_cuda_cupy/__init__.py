"""mamba-core backend on CuPy arrays; CUDA C kernels are added op by op (issue: cuda_cupy)."""
