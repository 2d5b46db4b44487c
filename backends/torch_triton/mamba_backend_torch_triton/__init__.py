"""mamba-core backend on torch tensors; Triton kernels are added op by op (issue: torch_triton)."""
