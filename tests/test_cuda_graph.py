"""``sana_wm.cuda_graph.capture``: Python's garbage collector is paused for the capture and restored after it, also
when the capture fails, and the cuBLAS workspace sizes likewise (CPU: torch.cuda.graph replaced by a recording
stand-in); on CUDA, the streams of a capture keep full cuBLASLt workspaces."""

from __future__ import annotations

import gc
import os
import warnings
from contextlib import contextmanager

import pytest
import torch

from sana_wm import cuda_graph


def test_capture_pauses_gc_and_restores_it(monkeypatch):
    seen = []

    @contextmanager
    def fake_graph(graph, **kwargs):
        seen.append((graph, kwargs, gc.isenabled()))
        yield

    monkeypatch.setattr(torch.cuda, "graph", fake_graph)
    assert gc.isenabled()
    with cuda_graph.capture("g", pool="p"):
        assert not gc.isenabled()
    assert gc.isenabled()
    assert seen == [("g", {"capture_error_mode": "thread_local", "pool": "p"}, False)]
    with pytest.raises(RuntimeError, match="capture failed"), cuda_graph.capture("g"):
        raise RuntimeError("capture failed")
    assert gc.isenabled()
    gc.disable()
    try:  # a caller that had it off keeps it off
        with cuda_graph.capture("g"):
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_capture_runs_without_blas_workspace_and_restores_it(monkeypatch):
    sizes = {"cublas_workspace_size": 4096, "cublaslt_workspace_size": 1024}
    seen = []

    def setter(name):
        def size(value=None):
            if value is not None:
                sizes[name] = value
            return sizes[name]

        return size

    @contextmanager
    def fake_graph(graph, **kwargs):
        seen.append(dict(sizes))
        yield

    for name in sizes:
        monkeypatch.setattr(torch.backends.cuda, name, setter(name), raising=False)
    monkeypatch.setattr(torch.cuda, "graph", fake_graph)
    with cuda_graph.capture("g"):
        assert sizes == {"cublas_workspace_size": 0, "cublaslt_workspace_size": 0}
    assert seen == [{"cublas_workspace_size": 0, "cublaslt_workspace_size": 0}]
    assert sizes == {"cublas_workspace_size": 4096, "cublaslt_workspace_size": 1024}
    with pytest.raises(RuntimeError, match="capture failed"), cuda_graph.capture("g"):
        raise RuntimeError("capture failed")
    assert sizes == {"cublas_workspace_size": 4096, "cublaslt_workspace_size": 1024}


def test_capture_without_cuda_blas_falls_back_to_the_variable(monkeypatch):
    def missing(value=None):
        raise AttributeError("module 'torch._C' has no attribute '_cuda_getCublasWorkspaceSize'")

    @contextmanager
    def fake_graph(graph, **kwargs):
        yield

    monkeypatch.setattr(torch.backends.cuda, "cublas_workspace_size", missing, raising=False)
    monkeypatch.setattr(torch.backends.cuda, "cublaslt_workspace_size", missing, raising=False)
    monkeypatch.setattr(torch.cuda, "graph", fake_graph)
    monkeypatch.setenv("CUBLASLT_WORKSPACE_SIZE", "7")
    with cuda_graph.capture("g"):
        assert os.environ["CUBLASLT_WORKSPACE_SIZE"] == "0"
    assert os.environ.get("CUBLASLT_WORKSPACE_SIZE") == "7"


def test_capture_sets_the_lt_workspace_variable_where_torch_has_no_setter(monkeypatch):
    seen = []

    @contextmanager
    def fake_graph(graph, **kwargs):
        seen.append(os.environ.get("CUBLASLT_WORKSPACE_SIZE"))
        yield

    for name in ("cublas_workspace_size", "cublaslt_workspace_size"):
        monkeypatch.delattr(torch.backends.cuda, name, raising=False)
    monkeypatch.setattr(torch.cuda, "graph", fake_graph)
    monkeypatch.delenv("CUBLASLT_WORKSPACE_SIZE", raising=False)
    with cuda_graph.capture("g"):
        pass
    assert seen == ["0"] and "CUBLASLT_WORKSPACE_SIZE" not in os.environ
    monkeypatch.setenv("CUBLASLT_WORKSPACE_SIZE", "2048")
    with pytest.raises(RuntimeError, match="capture failed"), cuda_graph.capture("g"):
        raise RuntimeError("capture failed")
    assert seen == ["0", "0"] and os.environ["CUBLASLT_WORKSPACE_SIZE"] == "2048"


def _fallbacks(stream: torch.cuda.Stream, gemm) -> int:
    """``gemm_and_bias`` fallback warnings of one eager ``gemm()`` on ``stream``."""
    with warnings.catch_warnings(record=True) as caught, torch.cuda.stream(stream):
        warnings.simplefilter("always")
        gemm()
        torch.cuda.synchronize()
    return sum("gemm_and_bias" in str(c.message) for c in caught)


@pytest.mark.gpu
def test_streams_of_a_capture_keep_full_cublaslt_workspaces():
    """A stream whose first cuBLASLt call ran without a workspace keeps an empty one, and later eager bias GEMMs on it
    fall back to the unfused path; ``capture`` gives the capture stream and the fork stream theirs first."""
    from sana_wm.transformer import _side_by_side

    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    x, w, b = (torch.randn(*shape, device=dev, dtype=torch.bfloat16, generator=gen)
               for shape in ((12, 64), (512, 64), (512,)))

    def gemm():
        return torch.nn.functional.linear(x, w, b)

    torch._C._cuda_clearCublasWorkspaces()  # no stream has a workspace yet (the graphs here need none)
    try:
        probe = torch.cuda.Stream()
        with torch.cuda.stream(probe), cuda_graph._no_blas_workspace():
            gemm()
        if not _fallbacks(probe, gemm):
            pytest.skip("this torch / cuBLAS runs the bias GEMM with an empty workspace: nothing to guard against")
        torch._C._cuda_clearCublasWorkspaces()
        stream, graph = torch.cuda.Stream(), torch.cuda.CUDAGraph()
        with cuda_graph.capture(graph, stream=stream):
            _side_by_side(gemm, gemm)
        graph.replay()
        assert _fallbacks(stream, gemm) == 0
        assert _fallbacks(cuda_graph.fork_stream(dev), gemm) == 0
    finally:
        torch._C._cuda_clearCublasWorkspaces()
