"""An earlier version of one of our kernel modules (from git, or from a file exported with it), imported beside the
current one for a same-run comparison."""

from __future__ import annotations

import importlib.util
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def module_at(rev: str, name: str) -> tuple[ModuleType | None, str]:
    """``sana_wm/ops/<name>.py`` at git revision ``rev``, imported as ``sana_wm.ops._<name>_baseline`` (same
    package, so its relative imports resolve): (module, rev), or (None, reason) when git or the revision is absent
    (e.g. on a device machine without the repository's history)."""
    try:
        src = subprocess.run(
            ["git", "show", f"{rev}:sana_wm/ops/{name}.py"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        return None, f"unavailable: {e}"
    path = Path(tempfile.mkdtemp()) / f"{name}.py"
    path.write_text(src)
    return module_from(path), rev


def module_from(path: Path, package: str = "sana_wm.ops") -> ModuleType:
    """The module file ``path`` (an earlier ``sana_wm/ops/<name>.py``, or with ``package="sana_wm"`` an earlier
    ``sana_wm/<name>.py``) imported as ``<package>._<name>_baseline``: same package, so its relative imports
    resolve (registered in ``sys.modules`` first, as an import does: dataclasses need that)."""
    spec = importlib.util.spec_from_file_location(f"{package}._{path.stem}_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def mean_se(values: list[float]) -> dict:
    """Mean and standard error of the mean (NaN for one value), rounded to 3 places: of an A/B's paired differences."""
    se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")
    return {"mean": round(statistics.fmean(values), 3), "standard_error": round(se, 3)}
