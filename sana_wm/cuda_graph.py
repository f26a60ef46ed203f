"""CUDA-graph capture shared by the VAE's decode graphs and the engine's chunk graphs."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["capture"]


@contextmanager
def capture(graph: torch.cuda.CUDAGraph, **kwargs) -> Iterator[None]:
    """``torch.cuda.graph(graph, capture_error_mode="thread_local", **kwargs)`` with Python's garbage collector
    paused for the capture. torch no longer collects before a capture, so a collection could start inside it and run
    finalizers that free CUDA memory (a dropped cache's graphs and their pool): a ``cudaFree`` during capture
    invalidates it ("operation failed due to a previous error during capture"). Garbage waits for the next
    collection instead."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        with torch.cuda.graph(graph, capture_error_mode="thread_local", **kwargs):
            yield
    finally:
        if enabled:
            gc.enable()
