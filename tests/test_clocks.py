"""server.clocks: nvidia-smi samples summarised beside benchmark timings."""

from __future__ import annotations

import os
import shutil
import stat
import time

import pytest
import torch

from server import clocks
from server.clocks import ClockSampler, summarise

# lines as an H100 printed them for clocks.sm,power.draw,power.limit,temperature.gpu,clocks_throttle_reasons.active
H100_LINES = [
    "345, 72.82, 700.00, 39, 0x0000000000000001\n",  # idle: left out
    "1980, 123.07, 700.00, 40, 0x0000000000000000\n",
    "1710, 692.53, 700.00, 72, 0x0000000000000004\n",  # at the power cap
    "1680, 692.59, 700.00, 70, 0x0000000000000004\n",
]


def test_summary_of_busy_samples_counts_the_power_cap():
    s = summarise(H100_LINES)
    assert s["samples"] == 3
    assert s["sm_mhz"] == {"mean": pytest.approx((1980 + 1710 + 1680) / 3, abs=0.1), "min": 1680.0, "max": 1980.0}
    assert s["power_w"] == pytest.approx((123.07 + 692.53 + 692.59) / 3, abs=0.1)
    assert s["power_limit_w"] == 700.0 and s["temperature_c_max"] == 72.0
    assert s["power_capped"] == pytest.approx(2 / 3, abs=1e-3) and s["slowdown"] == 0.0


def test_summary_skips_malformed_lines_and_unsupported_fields():
    lines = [
        "No devices were found\n",
        "1500, [N/A], [N/A], 80, 0x0000000000000020\n",  # thermal slowdown, no power reading
        "1600, 500.0, 700.0, 81, not-hex\n",
        "[N/A], 500.0, 700.0, 81, 0x0\n",
    ]
    s = summarise(lines)
    assert s["samples"] == 1 and s["power_w"] is None and s["slowdown"] == 1.0 and s["power_capped"] == 0.0
    assert summarise([]) is None and summarise(H100_LINES[:1]) is None


def test_sampler_on_the_cpu_samples_nothing():
    with ClockSampler("cpu") as sampler:
        time.sleep(0.01)
    assert sampler.summary() is None


def test_sampler_runs_nvidia_smi_in_the_background_and_stops_it(tmp_path, monkeypatch):
    """A stand-in nvidia-smi (CI has no GPU) that prints a sample every loop period: the sampler passes the device's
    UUID and the query, collects the lines while the block runs, and ends the process on exit."""
    args_file = tmp_path / "args"
    fake = tmp_path / "nvidia-smi"
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$@" > "{args_file}"\n'
        "while true; do echo '1710, 692.53, 700.00, 72, 0x0000000000000004'; sleep 0.02; done\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    props = type("Props", (), {"uuid": "1f2e3d4c-0000-1111-2222-333344445555"})()
    monkeypatch.setattr(clocks.torch.cuda, "get_device_properties", lambda device: props)
    with ClockSampler(torch.device("cuda", 0), period_ms=20) as sampler:
        time.sleep(0.3)
        proc = sampler._proc
    assert proc.poll() is not None  # stopped
    summary = sampler.summary()
    assert summary["samples"] >= 3 and summary["power_capped"] == 1.0
    args = args_file.read_text().split()
    assert args[:2] == ["-i", "GPU-1f2e3d4c-0000-1111-2222-333344445555"] and "-lms" in args


@pytest.mark.gpu
def test_sampler_reads_the_real_gpu_under_load():
    """On a CUDA machine with nvidia-smi: samples arrive while matrix products keep the GPU busy, with a plausible
    SM clock and power limit."""
    if shutil.which("nvidia-smi") is None:
        pytest.skip("no nvidia-smi on this machine")
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    with ClockSampler(torch.device("cuda"), period_ms=50) as sampler:
        end = time.perf_counter() + 1.5
        while time.perf_counter() < end:
            for _ in range(4):
                a @ a
            torch.cuda.synchronize()
    summary = sampler.summary()
    assert summary is not None and summary["samples"] >= 5
    assert 300 <= summary["sm_mhz"]["mean"] <= 3000 and summary["power_limit_w"] > 0
