"""Generic weight I/O: read a state dict from disk and move it into a module without a second copy.

Formats read by :func:`read_state_dict`:

- a single ``.safetensors`` file (tensors are memory-mapped views of the file, nothing is copied);
- a sharded checkpoint: a ``*.safetensors.index.json`` (or ``*.bin.index.json``) file, or a folder holding
  exactly one such index, or a folder holding exactly one ``.safetensors`` file;
- a torch pickle (``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt``) read with ``torch.load(weights_only=True)``,
  memory-mapped when the file uses the zip format. Pickles that need arbitrary objects are refused.

:func:`load_into` checks the key set strictly (missing / unexpected / wrongly shaped keys are listed by name)
and then moves tensor by tensor into the module, casting each one as it goes. A module built on the ``meta``
device is materialised by assignment, so the only resident copy of the weights is the module's own.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

__all__ = ["format_key_report", "load_into", "read_state_dict"]

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
INDEX_SUFFIXES = (".safetensors.index.json", ".bin.index.json")
_LIST_LIMIT = 20


def _names(keys: Iterable[str], limit: int = _LIST_LIMIT) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... and {len(keys) - limit} more" if len(keys) > limit else "")


def format_key_report(
    source: str,
    missing: Iterable[str] = (),
    unexpected: Iterable[str] = (),
    wrong_shapes: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]] | None = None,
    against: str = "the model",
) -> str:
    """A readable multi-line report of key mismatches (each list truncated to 20 names)."""
    missing, unexpected, wrong_shapes = list(missing), list(unexpected), dict(wrong_shapes or {})
    lines = [f"weights in {source} do not match {against}:"]
    if missing:
        lines.append(f"  {len(missing)} missing key(s): {_names(missing)}")
    if unexpected:
        lines.append(f"  {len(unexpected)} unexpected key(s): {_names(unexpected)}")
    if wrong_shapes:
        items = sorted(wrong_shapes.items())
        shown = "; ".join(f"{k}: file {tuple(a)} vs model {tuple(b)}" for k, (a, b) in items[:_LIST_LIMIT])
        more = f"; ... and {len(items) - _LIST_LIMIT} more" if len(items) > _LIST_LIMIT else ""
        lines.append(f"  {len(items)} wrongly shaped key(s): {shown}{more}")
    return "\n".join(lines)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {name: f.get_tensor(name) for name in f.keys()}
    except SafetensorError as e:
        raise ValueError(f"{path} is not a readable .safetensors file (corrupt or truncated?): {e}") from e


def _unpickling_reason(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    for ln in lines:
        if "Unsupported" in ln or "GLOBAL" in ln or "Unpickler" in ln:
            return ln.split(" was not an allowed global")[0]
    return lines[-1] if lines else type(err).__name__


def _torch_load(path: Path) -> object:
    """``torch.load(weights_only=True)``, memory-mapped for zip-format files; clear errors naming the file."""
    try:
        mmap = zipfile.is_zipfile(path)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{path} holds objects other than tensors and plain containers, which are not loaded "
            f"(weights_only=True): {_unpickling_reason(e)}"
        ) from e
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise ValueError(f"{path} is not a readable torch checkpoint (corrupt or truncated?): {e}") from e


def _read_torch(path: Path, key: str | None) -> dict[str, torch.Tensor]:
    obj = _torch_load(path)
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, expected a dict of tensors")
    if key is not None and key in obj:
        obj = obj[key]
        if not isinstance(obj, Mapping):
            raise ValueError(f"{path}: entry {key!r} holds a {type(obj).__name__}, expected a dict of tensors")
    elif key is not None and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} has no entry {key!r}; its top-level entries are: {_names(map(str, obj))}")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(
            f"{path} is not a flat dict of tensors; entries that are not tensors: {_names(bad)}"
            + ("" if key is not None else " (pass key= to select a nested state dict)")
        )
    return dict(obj)


def _read_file(path: Path, key: str | None) -> dict[str, torch.Tensor]:
    if path.name.endswith(".safetensors"):
        return _read_safetensors(path)
    if path.suffix in TORCH_SUFFIXES:
        return _read_torch(path, key)
    raise ValueError(
        f"{path}: unknown weight file type; expected .safetensors, {'/'.join(TORCH_SUFFIXES)} or "
        f"{' / '.join(INDEX_SUFFIXES)}"
    )


def _read_index(index: Path) -> dict[str, torch.Tensor]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ValueError(f"{index} is not a valid shard index (expected JSON with a 'weight_map'): {e}") from e
    if not isinstance(weight_map, dict):
        raise ValueError(f"{index}: 'weight_map' must map tensor names to shard files")
    by_shard: dict[str, set[str]] = {}
    for name, shard in weight_map.items():
        by_shard.setdefault(shard, set()).add(name)
    state: dict[str, torch.Tensor] = {}
    for shard, names in sorted(by_shard.items()):
        shard_path = index.parent / shard
        if not shard_path.is_file():
            raise FileNotFoundError(f"shard {shard_path} listed in {index} does not exist")
        part = _read_file(shard_path, None)
        missing, extra = names - part.keys(), part.keys() - names
        if missing or extra:
            raise ValueError(format_key_report(f"shard {shard_path}", missing, extra, against=f"the index {index}"))
        state.update(part)
    return state


def _resolve_folder(folder: Path) -> Path:
    indexes = sorted(p for p in folder.iterdir() if p.name.endswith(INDEX_SUFFIXES))
    if len(indexes) == 1:
        return indexes[0]
    if len(indexes) > 1:
        raise ValueError(f"{folder} holds several shard indexes ({_names(p.name for p in indexes)}); pass one")
    files = sorted(p for p in folder.iterdir() if p.name.endswith(".safetensors"))
    if len(files) == 1:
        return files[0]
    if not files:
        raise FileNotFoundError(f"{folder} holds no .safetensors file and no shard index")
    raise ValueError(
        f"{folder} holds several .safetensors files ({_names(p.name for p in files)}) and no shard index; pass one"
    )


def read_state_dict(path: str | Path, *, key: str | None = None) -> dict[str, torch.Tensor]:
    """Read all tensors of a checkpoint into a ``{name: tensor}`` dict on the CPU.

    ``path``: a ``.safetensors`` file, a shard index file, a folder (one index or one ``.safetensors`` file
    inside), or a torch pickle. ``key``: for a torch pickle whose top level is a dict of sub-dicts (e.g. a
    training checkpoint ``{"generator": {...}, "optimizer": ...}``), the entry holding the weights; a pickle
    whose top level is already a flat dict of tensors is returned as it is.

    Safetensors tensors and zip-format pickles are memory-mapped: reading costs no resident memory until the
    tensors are used. Raises FileNotFoundError for a missing path and ValueError (naming the file) for corrupt,
    truncated or unsupported files and for pickles holding anything but tensors and plain containers.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.is_dir():
        path = _resolve_folder(path)
    if path.name.endswith(INDEX_SUFFIXES):
        return _read_index(path)
    return _read_file(path, key)


def _owner(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    prefix, _, leaf = name.rpartition(".")
    return (module.get_submodule(prefix) if prefix else module), leaf


@torch.no_grad()
def load_into(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    source: str,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """Load ``state`` into ``module`` strictly, tensor by tensor, and return the module.

    Every entry of ``module.state_dict()`` (parameters and persistent buffers) must be present with the same
    shape, and ``state`` may hold nothing else; otherwise a ValueError lists the missing, unexpected and
    wrongly shaped keys by name (``source`` names the file in the message). Each tensor takes the module's
    dtype for it, or ``dtype`` for floating-point tensors when given, and goes to ``device`` (default: the
    module's device, or the tensor's own device for a module built on ``meta``). A tensor already on the target
    device with the target dtype is copied in place; otherwise (meta module, different device or dtype) the
    converted tensor is assigned, so no second full copy of the weights is ever held. ``state`` is not changed.
    """
    expected = module.state_dict(keep_vars=True)
    missing = expected.keys() - state.keys()
    unexpected = state.keys() - expected.keys()
    wrong = {
        k: (tuple(state[k].shape), tuple(expected[k].shape))
        for k in expected.keys() & state.keys()
        if tuple(state[k].shape) != tuple(expected[k].shape)
    }
    if missing or unexpected or wrong:
        raise ValueError(format_key_report(source, missing, unexpected, wrong))
    target_device = torch.device(device) if device is not None else None
    for name, current in expected.items():
        value = state[name]
        want_dtype = dtype if dtype is not None and current.is_floating_point() else current.dtype
        want_device = target_device or (value.device if current.is_meta else current.device)
        owner, leaf = _owner(module, name)
        if not current.is_meta and current.device == want_device and current.dtype == want_dtype:
            current.copy_(value)
            continue
        value = value.to(device=want_device, dtype=want_dtype)
        if leaf in owner._parameters:
            owner._parameters[leaf] = nn.Parameter(value, requires_grad=current.requires_grad)
        else:
            owner._buffers[leaf] = value
    still_meta = [n for n, t in (*module.named_parameters(), *module.named_buffers()) if t.is_meta]
    if still_meta:
        raise ValueError(
            f"after loading {source}, {len(still_meta)} tensor(s) of the module are still on the meta device "
            f"(not in the checkpoint, e.g. non-persistent buffers; build those on a real device): {_names(still_meta)}"
        )
    return module
