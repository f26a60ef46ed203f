"""Run a test script under Triton's CPU interpreter (``TRITON_INTERPRET=1``) in a fresh process.

The environment variable must be set before Triton is imported, hence the subprocess. The script runs after a
small patch (numpy >= 2 refuses ``int()`` of 1-element arrays, which Triton 3.6's interpreter uses for loop bounds)
with the repository and ``tests/`` importable; it reports its result on stdout as ``WORST <numbers>``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_PREAMBLE = """
import torch
import triton.runtime.interpreter as interp

_patch = interp._patch_lang_tensor
def _patched(tensor, scope):
    _patch(tensor, scope)
    scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))
interp._patch_lang_tensor = _patched
torch.set_num_threads(1)
"""


def run_interpreted(script: str, timeout: float = 600) -> list[float]:
    """Run ``script`` (dedented) in Triton's interpreter; returns the numbers after its last ``WORST``."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    code = _PREAMBLE + textwrap.dedent(script)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [float(v) for v in proc.stdout.split("WORST")[-1].split()]
