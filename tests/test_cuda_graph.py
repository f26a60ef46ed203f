"""``sana_wm.cuda_graph.capture``: Python's garbage collector is paused for the capture and restored after it, also
when the capture fails (CPU: torch.cuda.graph replaced by a recording stand-in)."""

from __future__ import annotations

import gc
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
