"""Kernels: a plain PyTorch reference for every op, Triton versions beside it (used on CUDA only)."""
