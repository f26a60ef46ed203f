"""Offline sm_90a compiles of our Triton kernels (no GPU needed) and their register and local-memory use, read with
the ``cuobjdump`` that Triton bundles (where it ships one)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path


def compile_sm90(fn, ptrs: dict[str, str], constexprs: dict, *, floats=(), options: dict | None = None, attrs=None):
    """``fn`` (a ``@triton.jit`` kernel) compiled for sm_90a: arguments in ``constexprs`` are compile-time constants,
    ``ptrs`` maps pointer arguments to their type (``"*bf16"``), ``floats`` names fp32 scalars, the rest are i32;
    ``options`` the launch options (default 4 warps); ``attrs`` e.g. pointer alignment."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = {n: "constexpr" if n in constexprs else ptrs.get(n, "fp32" if n in floats else "i32") for n in fn.arg_names}
    src = ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options or {"num_warps": 4})


def launch_attrs(fn, ptrs: dict[str, str], ints: dict[str, int]) -> dict:
    """``attrs`` for :func:`compile_sm90` that specialise ``fn`` as a launch does: pointers 16-byte aligned, and
    every integer argument whose value in ``ints`` (e.g. the streaming shape's strides) is a multiple of 16 marked so.
    Without them the compiler cannot vectorise or pipeline the loads, and register counts come out far higher."""
    names = [n for n in fn.arg_names if n in ptrs or ints.get(n, 1) % 16 == 0]
    return {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in names}


def cuobjdump() -> Path | None:
    """Triton's bundled cuobjdump, or None when this install has none."""
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return path if path.exists() else None


def resource_usage(kernel) -> dict[str, int] | None:
    """``REG``, ``STACK``, ``LOCAL``, ... of a compiled kernel (cuobjdump's ``-res-usage`` line), or None without
    cuobjdump."""
    tool = cuobjdump()
    if tool is None:
        return None
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(kernel.asm["cubin"])
        text = subprocess.run([str(tool), "-res-usage", str(cubin)], capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in text.splitlines() if "REG:" in ln)
    return {k: int(v) for k, v in (f.split(":") for f in line.split() if ":" in f) if v.isdigit()}
