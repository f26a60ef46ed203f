"""CUDA-graph capture shared by the VAE's decode graphs and the engine's chunk graphs."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["capture"]

_LT_ENV = "CUBLASLT_WORKSPACE_SIZE"


@contextmanager
def _no_blas_workspace() -> Iterator[None]:
    """No cuBLASLt workspace for the block, then the sizes from before. With a workspace, cuBLASLt picks Hopper GEMM
    kernels that first zero a scheduling counter in it: in a graph, a memset node before each such GEMM (the
    transformer's bias GEMMs), and the device idles ~7 us around every memset node (0.4 ms per forward). Without one it
    picks their statically scheduled twins (``ssched``), as fast on the transformer's shapes (``bench/micro_blas.py``).

    Where torch sets the sizes at run time (``torch.backends.cuda.cublas[lt]_workspace_size``, e.g. 2.13) they are set;
    else (e.g. 2.11, which reads ``CUBLASLT_WORKSPACE_SIZE`` at each cuBLASLt call: measured on an H100, 65 memset
    nodes per forward graph -> 25, the rest cuDNN's attention) the variable is 0 for the block."""
    cuda = torch.backends.cuda
    setters = [getattr(cuda, name, None) for name in ("cublas_workspace_size", "cublaslt_workspace_size")]
    try:
        saved = [setter() for setter in setters] if all(setters) else None
    except (AttributeError, RuntimeError):  # a torch build without CUDA
        saved = None
    if saved is None:
        old = os.environ.get(_LT_ENV)
        os.environ[_LT_ENV] = "0"
        try:
            yield
        finally:
            if old is None:
                del os.environ[_LT_ENV]
            else:
                os.environ[_LT_ENV] = old
        return
    for setter in setters:
        setter(0)
    try:
        yield
    finally:
        for setter, size in zip(setters, saved, strict=True):
            setter(size)


@contextmanager
def capture(graph: torch.cuda.CUDAGraph, **kwargs) -> Iterator[None]:
    """``torch.cuda.graph(graph, capture_error_mode="thread_local", **kwargs)`` with Python's garbage collector
    paused and without a cuBLAS workspace (:func:`_no_blas_workspace`) for the capture.

    torch no longer collects before a capture, so a collection could start inside it and run finalizers that free
    CUDA memory (a dropped cache's graphs and their pool): a ``cudaFree`` during capture invalidates it ("operation
    failed due to a previous error during capture"). Garbage waits for the next collection instead."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        with _no_blas_workspace(), torch.cuda.graph(graph, capture_error_mode="thread_local", **kwargs):
            yield
    finally:
        if enabled:
            gc.enable()
