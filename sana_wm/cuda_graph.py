"""CUDA-graph capture shared by the VAE's decode graphs and the engine's chunk graphs, and the one side stream that
work forked inside a capture runs on."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

__all__ = ["capture", "fork_stream"]

_LT_ENV = "CUBLASLT_WORKSPACE_SIZE"
_FORK_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


def fork_stream(device: torch.device) -> torch.cuda.Stream:
    """The process's side stream on CUDA ``device`` for work forked from the current stream (also inside captures,
    which prepare it: :func:`capture`)."""
    stream = _FORK_STREAMS.get(device)
    if stream is None:
        stream = _FORK_STREAMS[device] = torch.cuda.Stream(device)
    return stream


def _give_full_workspaces(*streams: torch.cuda.Stream) -> None:
    """One small bias GEMM on each stream at the default workspace size, before a capture without a workspace.

    torch keeps one cuBLASLt workspace per (handle, stream), allocated at the size in force at that stream's first
    cuBLASLt call and not grown later (torch 2.11). A stream first used inside such a capture keeps an empty one, and
    every later eager bias GEMM on it fails over to the unfused path with a ``gemm_and_bias error`` warning (measured
    on an H100: 0.32 -> 0.40 ms for the merged projection); streams come from a pool of 32, so sooner or later any
    new stream is such a one."""
    for stream in streams:
        with torch.cuda.stream(stream):
            square = torch.zeros(16, 16, device=stream.device, dtype=torch.bfloat16)
            F.linear(square, square, square[0])


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
    paused and without a cuBLAS workspace (:func:`_no_blas_workspace`) for the capture; the capture stream and the
    fork stream get their full workspaces first (:func:`_give_full_workspaces`).

    torch no longer collects before a capture, so a collection could start inside it and run finalizers that free
    CUDA memory (a dropped cache's graphs and their pool): a ``cudaFree`` during capture invalidates it ("operation
    failed due to a previous error during capture"). Garbage waits for the next collection instead."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        context = torch.cuda.graph(graph, capture_error_mode="thread_local", **kwargs)
        if torch.cuda.is_available():
            stream = context.capture_stream
            _give_full_workspaces(stream, fork_stream(stream.device))
        with _no_blas_workspace(), context:
            yield
    finally:
        if enabled:
            gc.enable()
