"""What the GPU's clocks and power did while a benchmark ran: ``nvidia-smi`` sampled in the background.

An H100 SXM runs the transformer's forward at its 700 W board limit: the SM clock then drops from 1,980 MHz to
~1,700 MHz, by how much depends on the data and the card's temperature, and the same code measures up to a few
percent apart on two instances. Benchmarks record these samples beside their timings so a reader can tell a slower
card from slower code::

    with ClockSampler(device) as clocks:
        ms = time_ms(forward, device, reps)
    report["clocks"] = clocks.summary()    # None where nvidia-smi is missing (CPU runs, CI)
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import threading

import torch

__all__ = ["ClockSampler", "summarise"]

_QUERY = "clocks.sm,power.draw,power.limit,temperature.gpu,clocks_throttle_reasons.active"
# clock-event reason bits (nvmlClocksEventReasons): the power cap, and any thermal or hardware slowdown
_IDLE, _POWER_CAP = 0x1, 0x4
_SLOWDOWN = 0x8 | 0x20 | 0x40 | 0x80


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # "[N/A]", "[Not Supported]"
        return None


def summarise(lines: list[str]) -> dict | None:
    """``nvidia-smi --query-gpu=<_QUERY> --format=csv,noheader,nounits`` lines -> summary of the busy samples (the
    GPU-idle reason bit clear): count, SM clock mean / min / max (MHz), power mean and limit (W), peak temperature,
    and the fraction of samples at the power cap and in a thermal or hardware slowdown. None without busy samples."""
    rows = []
    for line in lines:
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 5:
            continue
        clock, power, limit, temp = (_number(p) for p in parts[:4])
        try:
            reasons = int(parts[4], 16)
        except ValueError:
            continue
        if clock is not None and not reasons & _IDLE:
            rows.append((clock, power, limit, temp, reasons))
    if not rows:
        return None

    def mean(values) -> float | None:
        values = [v for v in values if v is not None]
        return round(statistics.fmean(values), 1) if values else None

    clocks = [r[0] for r in rows]
    temps = [r[3] for r in rows if r[3] is not None]
    return {
        "samples": len(rows),
        "sm_mhz": {"mean": mean(clocks), "min": min(clocks), "max": max(clocks)},
        "power_w": mean(r[1] for r in rows),
        "power_limit_w": mean(r[2] for r in rows),
        "temperature_c_max": max(temps) if temps else None,
        "power_capped": round(sum(bool(r[4] & _POWER_CAP) for r in rows) / len(rows), 3),
        "slowdown": round(sum(bool(r[4] & _SLOWDOWN) for r in rows) / len(rows), 3),
    }


class ClockSampler:
    """Context manager: ``nvidia-smi`` samples one CUDA device every ``period_ms`` while the block runs;
    :meth:`summary` then gives :func:`summarise` of them (None on a CPU device or without ``nvidia-smi``)."""

    def __init__(self, device: torch.device | str, period_ms: int = 50) -> None:
        self.device = torch.device(device)
        self.period_ms = period_ms
        self._proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._lines: list[str] = []
        self._started = threading.Event()

    def _target(self) -> str | None:
        """nvidia-smi's id of the device (its UUID: CUDA's and nvidia-smi's indices may differ)."""
        if self.device.type != "cuda" or shutil.which("nvidia-smi") is None:
            return None
        uuid = str(getattr(torch.cuda.get_device_properties(self.device), "uuid", "") or "")
        if uuid:
            return uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
        return str(self.device.index or 0)

    def __enter__(self) -> ClockSampler:
        target = self._target()
        if target is not None:
            cmd = ["nvidia-smi", "-i", target, f"--query-gpu={_QUERY}", "--format=csv,noheader,nounits"]
            self._proc = subprocess.Popen(
                [*cmd, "-lms", str(self.period_ms)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
            )
            self._reader = threading.Thread(target=self._read, daemon=True)
            self._reader.start()
            self._started.wait(timeout=3.0)  # nvidia-smi takes a moment to start: sample the whole block
        return self

    def _read(self) -> None:
        for line in self._proc.stdout:
            self._lines.append(line)
            self._started.set()
        self._started.set()

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._reader.join(timeout=5)
            self._proc = None

    @property
    def lines(self) -> list[str]:
        """The raw nvidia-smi lines so far (for summaries over several blocks)."""
        return list(self._lines)

    def summary(self) -> dict | None:
        return summarise(self.lines)
