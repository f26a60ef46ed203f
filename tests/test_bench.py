"""``sana-wm bench`` on the CPU with the tiny model: every JSON field is written, the numbers are sane, bad options
fail with one line; on CUDA, the profiler's kernel time. (Full-size numbers come from a GPU run: bench/gpu_check.py.)"""

from __future__ import annotations

import json
import time

import pytest
import torch

from server import bench
from server.cli import main as cli_main


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "out.json"
    status = cli_main(["bench", "--demo", "--device", "cpu", "--chunks", "3", "--batch", "1,2", "--json", str(out)])
    assert status == 0
    return json.loads(out.read_text())


def test_every_field_is_written(report):
    assert set(bench.FIELDS) <= set(report)
    assert report["model"] == "tiny" and report["device"] == "cpu" and report["dtype"] == "fp32"
    assert report["tokens_per_chunk"] == 3 * 2 * 3  # 64x96 pixels -> 2x3 latent tokens per frame


def test_numbers_are_sane(report):
    fwd = report["forward_ms"]
    assert fwd["eager_reference"] > 0 and fwd["best"] > 0
    assert fwd["graph"] is None and fwd["graph_sustained"] is None  # no CUDA graphs on the CPU
    assert report["clocks"] == {"diffusers": None, "stream": None}  # nvidia-smi samples CUDA devices only
    diff = report["diffusers"]
    assert diff["forward_ms"] > 0 and diff["ratio"] == pytest.approx(diff["forward_ms"] / fwd["best"], rel=1e-2)
    assert diff["kernel_ms"] is None  # the profiler's device time is measured on CUDA only
    chunk = report["chunk_ms"]
    assert chunk["total"] > 0 and chunk["transformer"] > 0 and chunk["decode"] > 0 and chunk["chunks"] == 3
    assert report["fps"] == pytest.approx(24 / (chunk["total"] / 1000), rel=1e-2)
    assert report["realtime_multiple"] == pytest.approx(report["fps"] / 16, rel=1e-2)
    assert report["ttff_ms"] > 0
    assert [b["batch"] for b in report["batched"]] == [1, 2]
    for b in report["batched"]:
        assert b["aggregate_fps"] == pytest.approx(b["batch"] * b["per_session_fps"], rel=1e-2)
    memory = report["memory_gb"]
    assert {"peak", "chunk5", "chunk12", "equal", "cache_gb"} <= set(memory)
    assert memory["peak"] is None and memory["equal"] is None  # device memory is a CUDA measurement
    assert all(v is None for v in report["targets"].values())  # targets apply to the full-size GPU run
    assert not any("capture" in note for note in report["notes"])  # no CUDA graphs: every interval is steady


def test_bad_options_fail_in_one_line(capsys):
    assert cli_main(["bench", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sana-wm bench: error:") and "--demo" in err and "\n" not in err
    assert cli_main(["bench", "--demo", "--device", "cpu", "--height", "70"]) == 2
    assert "multiples of 32" in capsys.readouterr().err
    assert cli_main(["bench", "--demo", "--device", "cpu", "--batch", "1,x"]) == 2
    assert "--batch" in capsys.readouterr().err
    assert cli_main(["bench", "--demo", "--device", "cpu", "--sustain-s", "-1"]) == 2
    assert "--sustain-s" in capsys.readouterr().err
    assert cli_main(["bench", "--demo", "--device", "cpu", "--chunks", "2"]) == 2
    assert "--chunks must be at least 3" in capsys.readouterr().err


@pytest.mark.gpu
def test_kernel_ms_is_the_device_time_of_one_call():
    dev = torch.device("cuda")
    a = torch.randn(4096, 4096, device=dev)
    one = bench.kernel_ms(lambda: a @ a, dev)
    four = bench.kernel_ms(lambda: [a @ a for _ in range(4)], dev)
    assert one > 0 and four == pytest.approx(4 * one, rel=0.2)
    assert one <= bench.time_ms(lambda: a @ a, dev, reps=5) * 1.2


def test_run_for_calls_back_to_back_for_the_given_time():
    calls = []
    t = time.perf_counter()
    n = bench.run_for(lambda: calls.append(1), torch.device("cpu"), 0.05)
    assert time.perf_counter() - t >= 0.05 and n == len(calls) > 0 and n % 8 == 0


def test_time_graph_times_again_after_the_sustain_only_when_asked():
    calls = []
    timed = bench.time_graph(lambda: calls.append(1), torch.device("cpu"), 3, 0.0)
    assert timed["graph"] >= 0 and timed["graph_sustained"] is None and timed["clocks"] == {"forward_graph": None}
    timed = bench.time_graph(lambda: calls.append(1), torch.device("cpu"), 3, 0.02)
    assert timed["graph_sustained"] >= 0 and timed["clocks"] == {"forward_graph": None, "forward_graph_sustained": None}


def test_trace_chunk_analysis_finds_idle_gaps_and_the_host_frame_behind_them():
    """``bench/trace_chunk.analyse`` on a hand-made trace: two streams, one 300 us idle gap while the host ran
    ``engine/session.py``'s ``_launch``, one 20 us gap below the threshold."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from trace_chunk import analyse

    def dev(ts, dur, stream):
        return {"cat": "kernel", "ts": ts, "dur": dur, "args": {"stream": stream}}

    events = [
        dev(0, 100, 7), dev(50, 100, 9), dev(170, 30, 7), dev(500, 100, 7),
        {"cat": "python_function", "ts": 150, "dur": 400, "name": "/x/engine/session.py(10): _launch"},
        {"cat": "python_function", "ts": 100, "dur": 600, "name": "/x/server/bench.py(5): run"},
        {"cat": "python_function", "ts": 190, "dur": 5, "name": "threading.py(1): wait"},
    ]
    out = analyse(events, gap_us=50)
    assert out["window_ms"] == 0.6 and out["device_busy_ms"] == 0.28 and out["device_idle_ms"] == 0.32
    assert out["streams"]["7"] == {"busy_ms": 0.23, "events": 3} and out["streams"]["9"]["busy_ms"] == 0.1
    assert out["gaps_over_threshold"] == 1 and out["largest_gaps"][0]["ms"] == 0.3
    assert out["idle_by_host_frame_ms"] == {"/x/engine/session.py(10): _launch": 0.3}
    assert out["largest_gaps"][0]["inner"] == "/x/engine/session.py(10): _launch [thread None]"
    assert analyse([], 50) == {"note": "no device events (CPU run)"}


def test_bench_session_smoke_reports_every_stage_and_equal_frames():
    """``bench/bench_session.py --smoke`` (tiny networks on the CPU): every mode's fields, the stages of a streamed
    chunk in order (its denoise queued before its first frames arrive), bitwise-equal frames across modes."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import bench_session

    out = bench_session.run("cpu", smoke=True)
    assert out["frames_bitwise_equal"] is True
    for mode in ("stream_sequential", "stream_overlap"):
        stream = out[mode]
        assert set(stream) == {"first_part_ms", "chunk_ms", "camera_ms", "queued_ms"}
        assert 0 < stream["camera_ms"] <= stream["queued_ms"] <= stream["first_part_ms"] <= stream["chunk_ms"]
    for mode in ("pipeline_sequential", "pipeline_overlap"):
        assert out[mode]["fps"] == pytest.approx(24000 / out[mode]["chunk_interval_ms"], rel=1e-3)
