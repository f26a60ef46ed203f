"""Session records: write every input of a session to a file, read it back, re-render it.

A record is a JSON-lines file. The first line is the header (everything needed to start the same
session again); each later line is one event, in the order it happened::

    {"type": "header", "format": "sana-wm-record", "version": 1, "seed": 0, "model": {...},
     "versions": {...}, "prompt": "...", "image": {"encoding": "base64", "data": "..."},
     "intrinsics": [fx, fy, cx, cy] | null, "fov_deg": null, "height": H, "width": W,
     "mapping": "sana-wm-v2" | null, ...}
    {"type": "step", "chunk": 0, "actions": "w-24"}               # session.step("w-24")
    {"type": "step", "chunk": 1, "poses": <array>}                # session.step(poses=(N,4,4))
    {"type": "step", "chunk": 2, "keys": [["w"], ["a", "w"], ...]}   # session.step(keys=...)
    {"type": "step", "chunk": 3, "events": [["down", "w", 1.5], ["mouse", [12.0, -3.0], 1.52]]}   # live
    {"type": "snapshot", "name": "s0", "chunk": 3}                # snap = session.snapshot()
    {"type": "restore", "name": "s0", "chunk": 5}                 # session.restore(snap)
    {"type": "reset", "chunk": 6}                                 # a fresh session, same header

Arrays are stored exactly: ``{"dtype": "float64", "shape": [N,4,4], "data": base64 of the raw
little-endian bytes}``. ``chunk`` is the index of the chunk the step produced (``chunk.index``) or, for
snapshot / restore / reset, the index of the next chunk at the time of the event. Each line is flushed as
it is written, so a record survives a crash up to its last complete line.

``mapping`` is the session's key mapping (``world.start(mapping=...)``; null: the engine's default). A live step's
``events`` are the control events given to ``session.controller`` before ``session.step()`` made the chunk
(``apply_control_events``): ``["down" | "up", key, t]`` and ``["mouse", [dx, dy], t]``, t in seconds. A fork of a
session gets its own record (``Recorder.fork``): the parent's header and events up to the fork, then its own, with
``"forked_from": {"record": parent file, "chunk": next chunk}`` in the header, so it replays alone. A step may carry
``"digest"``: the SHA-256 of its frames' raw bytes, which replay can check, and ``"frame_poses"``: the
chunk's per-frame poses (``chunk.poses``), which let a record be re-rendered offline with another sampler.

Replaying the same record on the same device and precision reproduces the frames bitwise.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "sana-wm-record"
VERSION = 1
_EVENT_TYPES = ("step", "snapshot", "restore", "reset")
_STEP_INPUTS = ("actions", "poses", "keys", "events")
_CONTROL_KINDS = ("down", "up", "mouse")


def frames_digest(frames: np.ndarray) -> str:
    """SHA-256 hex digest of uint8 frames (N,H,W,3): their shape and raw bytes."""
    frames = np.ascontiguousarray(frames)
    h = hashlib.sha256(repr((frames.dtype.str, frames.shape)).encode())
    h.update(frames.tobytes())
    return h.hexdigest()


def software_versions() -> dict[str, str]:
    """Versions of the software that decides the numbers: sana-wm, torch, numpy, python."""
    import torch

    try:
        from importlib.metadata import version

        ours = version("sana-wm")
    except Exception:  # not installed: running from a checkout
        ours = "checkout"
    return {"sana_wm": ours, "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()}


def encode_array(a: np.ndarray) -> dict[str, Any]:
    """An array as JSON, exactly: dtype, shape and base64 of its little-endian bytes."""
    a = np.asarray(a)
    a = np.ascontiguousarray(a.astype(a.dtype.newbyteorder("<"), copy=False))
    return {"dtype": a.dtype.name, "shape": list(a.shape), "data": base64.b64encode(a.tobytes()).decode()}


def decode_array(obj: dict[str, Any], what: str = "array") -> np.ndarray:
    """Inverse of ``encode_array``; ``what`` names the field in error messages."""
    try:
        dt = np.dtype(obj["dtype"]).newbyteorder("<")
        raw = base64.b64decode(obj["data"], validate=True)
        return np.frombuffer(raw, dtype=dt).reshape(obj["shape"]).astype(dt.newbyteorder("="))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{what}: expected {{dtype, shape, data(base64)}}, got an unreadable value ({e})") from None


def image_bytes(image: Any) -> bytes:
    """The first image as file bytes: PNG for arrays (H,W,3) uint8 and PIL images; bytes and paths as they are."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, (str, Path)):
        return Path(image).read_bytes()
    from PIL import Image

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image: expected a (H,W,3) uint8 array, got {image.dtype} {image.shape}")
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"image: expected a PIL image, (H,W,3) uint8 array, bytes or path, got {type(image).__name__}")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def control_events(events: Any) -> list[list]:
    """Live control events as a record stores them: ``[[kind, value, t], ...]`` with kind ``"down"`` / ``"up"``
    (value: a key name) or ``"mouse"`` (value: ``[dx, dy]`` pixels), t in seconds. ValueError names a bad one."""
    if not isinstance(events, (list, tuple)):
        raise ValueError(f"events: expected a list of [kind, value, t], got {type(events).__name__}")
    out = []
    for i, ev in enumerate(events):
        try:
            kind, value, t = ev
            if kind not in _CONTROL_KINDS:
                raise ValueError(f"kind {kind!r} is not one of {_CONTROL_KINDS}")
            value = [float(value[0]), float(value[1])] if kind == "mouse" else str(value)
            out.append([kind, value, float(t)])
        except (TypeError, ValueError, IndexError) as e:
            raise ValueError(f"events[{i}]: expected [kind, value, t] ({e})") from None
    return out


def apply_control_events(controller: Any, events: list) -> None:
    """Give live control events (``[kind, value, t]``, see ``control_events``) to a ``controllers.LiveController``
    (``session.controller``): all of them, or none when one is refused (the ValueError propagates and the
    controller is as before)."""
    before = controller.state_dict()
    try:
        for kind, value, t in events:
            if kind == "down":
                controller.key_down(value, t)
            elif kind == "up":
                controller.key_up(value, t)
            else:
                controller.mouse(value[0], value[1], t)
    except ValueError:
        controller.load_state_dict(before)
        raise


class Recorder:
    """Writes a session record (JSON lines, flushed per line).

    Args:
        path: the record file to create (parent folders are created).
        image: the first image given to ``world.start`` (PIL, (H,W,3) uint8, bytes or a path).
        prompt, seed, intrinsics, fov_deg: the other ``world.start`` arguments.
        model: how to rebuild the world, e.g. ``{"kind": "demo", "height": 64, "width": 64, "seed": 0}``
            or ``{"kind": "folder", "path": "/models/sana-wm"}``.
        height, width: frame size of the session.
        device, dtype: where it ran (``"cpu"``, ``"float32"``); replay is bitwise only on the same.
        sampler: ``"streaming"`` for a live session.
        mapping: the session's key mapping (``world.start(mapping=...)``); None: the engine's default.
        meta: any other JSON-able facts (client name, server address, ...).

    Use ``step`` after each ``session.step``, and ``snapshot`` / ``restore`` / ``reset`` as they happen; ``fork``
    for a ``session.fork()``.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        image: Any,
        prompt: str,
        seed: int,
        model: dict[str, Any],
        height: int,
        width: int,
        intrinsics: Any = None,
        fov_deg: float | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        sampler: str = "streaming",
        fps: int = 16,
        mapping: str | None = None,
        meta: dict[str, Any] | None = None,
    ):
        header = {
            "type": "header",
            "format": FORMAT,
            "version": VERSION,
            "created": time.time(),
            "seed": int(seed),
            "model": model,
            "versions": software_versions(),
            "device": str(device),
            "dtype": str(dtype).removeprefix("torch."),
            "sampler": sampler,
            "fps": fps,
            "prompt": prompt,
            "height": int(height),
            "width": int(width),
            "intrinsics": None if intrinsics is None else [float(v) for v in np.asarray(intrinsics).reshape(-1)],
            "fov_deg": None if fov_deg is None else float(fov_deg),
            "mapping": None if mapping is None else str(mapping),
            "image": {"encoding": "base64", "data": base64.b64encode(image_bytes(image)).decode()},
            "meta": meta or {},
        }
        self._open(path, header, [], set())

    def _open(self, path: str | Path, header: dict[str, Any], lines: list[str], names: set[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.header = header
        self._names = names
        self._file = self.path.open("w", encoding="utf-8")
        self._write(header)
        self._file.writelines(line + "\n" for line in lines)
        self._file.flush()

    def _write(self, obj: dict[str, Any]) -> None:
        if self._file.closed:
            raise ValueError(f"record {self.path} is closed")
        self._file.write(json.dumps(obj, separators=(",", ":")) + "\n")
        self._file.flush()

    def step(
        self,
        chunk: int,
        *,
        actions: str | None = None,
        poses: np.ndarray | None = None,
        keys: list | None = None,
        events: list | None = None,
        frames: np.ndarray | None = None,
        frame_poses: np.ndarray | None = None,
    ) -> None:
        """Log one ``session.step`` call: exactly one of ``actions`` / ``poses`` / ``keys`` (as passed to
        ``session.step``) or ``events`` (live control: the events given to ``session.controller`` before a
        ``session.step()`` with no camera input, see ``control_events``), and the index of the chunk it produced
        (``chunk.index``). Optional: ``frames`` (``chunk.frames``; stores their digest) and ``frame_poses``
        (``chunk.poses``); pass both when you can."""
        inputs = (("actions", actions), ("poses", poses), ("keys", keys), ("events", events))
        given = [n for n, v in inputs if v is not None]
        if len(given) != 1:
            raise ValueError(f"Recorder.step: give exactly one of {' / '.join(_STEP_INPUTS)}, got {given or 'none'}")
        ev: dict[str, Any] = {"type": "step", "chunk": int(chunk)}
        if actions is not None:
            ev["actions"] = str(actions)
        elif poses is not None:
            ev["poses"] = encode_array(np.asarray(poses))
        elif keys is not None:
            ev["keys"] = [sorted(str(k) for k in frame_keys) for frame_keys in keys]
        else:
            ev["events"] = control_events(events)
        if frames is not None:
            ev["digest"] = frames_digest(frames)
        if frame_poses is not None:
            ev["frame_poses"] = encode_array(np.asarray(frame_poses, dtype=np.float64))
        self._write(ev)

    def snapshot(self, name: str, chunk: int) -> None:
        """Log ``session.snapshot()`` stored under ``name``; ``chunk`` = index of the next chunk."""
        self._write({"type": "snapshot", "name": str(name), "chunk": int(chunk)})
        self._names.add(str(name))

    def restore(self, name: str, chunk: int) -> None:
        """Log ``session.restore(snapshot named name)``; ``chunk`` = index of the next chunk before restoring.
        ValueError if this record has not taken that snapshot (it could not be replayed)."""
        if str(name) not in self._names:
            raise ValueError(f"restore of snapshot {str(name)!r}, which record {self.path} has not taken")
        self._write({"type": "restore", "name": str(name), "chunk": int(chunk)})

    def reset(self, chunk: int) -> None:
        """Log a reset: the session is started again from the header's image, prompt and seed."""
        self._write({"type": "reset", "chunk": int(chunk)})
        self._names.clear()

    def fork(self, path: str | Path, chunk: int, *, meta: dict[str, Any] | None = None) -> Recorder:
        """A record for ``session.fork()`` at this point (``chunk`` = index of the fork's next chunk), written to
        ``path``: this record's header (``meta`` merged into its meta, ``forked_from`` naming this file and
        ``chunk``) and all its events so far, so the fork's record replays alone. Log the fork's events to it."""
        if self._file.closed:
            raise ValueError(f"record {self.path} is closed")
        lines = self.path.read_text(encoding="utf-8").splitlines()[1:]
        header = {**self.header, "created": time.time(), "forked_from": {"record": str(self.path), "chunk": int(chunk)},
                  "meta": {**self.header["meta"], **(meta or {})}}
        child = Recorder.__new__(Recorder)
        child._open(path, header, lines, set(self._names))
        return child

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class Record:
    """A loaded record: ``header`` (dict, see module docstring) and ``events`` (list of dicts)."""

    header: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)
    path: Path | None = None

    @property
    def image(self) -> bytes:
        """The first image's file bytes."""
        return base64.b64decode(self.header["image"]["data"])

    def start_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``world.start`` that reproduce the recorded session's start."""
        kw: dict[str, Any] = {"prompt": self.header["prompt"], "seed": self.header["seed"]}
        if self.header.get("intrinsics") is not None:
            kw["intrinsics"] = np.asarray(self.header["intrinsics"], dtype=np.float64)
        if self.header.get("fov_deg") is not None:
            kw["fov_deg"] = self.header["fov_deg"]
        if self.header.get("mapping") is not None:
            kw["mapping"] = self.header["mapping"]
        return kw

    def steps(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == "step"]


def load_record(path: str | Path) -> Record:
    """Read a record file; raises FileNotFoundError / ValueError naming the file and line on bad input."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"record file not found: {path}")
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        raise ValueError(f"{path}: empty file, expected a sana-wm record (JSON lines, header first)")
    objs = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict) or "type" not in obj:
            what = f"a '{FORMAT}' header" if not objs else "a JSON object with a 'type' field"
            raise ValueError(f"{path}:{n}: expected {what}")
        objs.append((n, obj))
    n0, header = objs[0]
    if header.get("type") != "header" or header.get("format") != FORMAT:
        raise ValueError(f"{path}:{n0}: expected a '{FORMAT}' header line first")
    if header.get("version") != VERSION:
        raise ValueError(f"{path}: record version {header.get('version')!r} is not supported (expected {VERSION})")
    for key in ("seed", "prompt", "image", "model", "height", "width"):
        if key not in header:
            raise ValueError(f"{path}:{n0}: header lacks '{key}'")
    events = []
    taken: set[str] = set()
    for n, ev in objs[1:]:
        if ev["type"] not in _EVENT_TYPES:
            raise ValueError(f"{path}:{n}: unknown event type {ev['type']!r}, expected one of {_EVENT_TYPES}")
        if ev["type"] == "step":
            given = [k for k in _STEP_INPUTS if k in ev]
            if len(given) != 1:
                raise ValueError(f"{path}:{n}: a step needs exactly one of {_STEP_INPUTS}, got {given}")
            for key in ("poses", "frame_poses"):
                if key in ev:
                    ev[key] = decode_array(ev[key], f"{path}:{n}: {key}")
            if "events" in ev:
                try:
                    ev["events"] = control_events(ev["events"])
                except ValueError as e:
                    raise ValueError(f"{path}:{n}: {e}") from None
        elif ev["type"] in ("snapshot", "restore"):
            if "name" not in ev:
                raise ValueError(f"{path}:{n}: a {ev['type']} event needs a 'name'")
            if ev["type"] == "snapshot":
                taken.add(ev["name"])
            elif ev["name"] not in taken:
                raise ValueError(f"{path}:{n}: restore of snapshot {ev['name']!r}, which was not taken before")
        else:
            taken.clear()
        events.append(ev)
    return Record(header=header, events=events, path=path)


def _step(session: Any, ev: dict[str, Any]) -> Any:
    """Make a recorded step's chunk on ``session``."""
    if "actions" in ev:
        return session.step(ev["actions"])
    if "poses" in ev:
        return session.step(poses=ev["poses"])
    if "keys" in ev:
        return session.step(keys=[set(k) for k in ev["keys"]])
    apply_control_events(session.controller, ev["events"])
    return session.step()


def replay_chunks(record: Record, world, *, verify: bool = False) -> Iterator[Any]:
    """Re-run a record's events on ``world`` with the streaming sampler; yields each step's chunk in order.

    With ``verify=True`` a step's frames must match its recorded digest (same device and precision),
    else ValueError names the chunk.
    """
    session = world.start(record.image, **record.start_kwargs())
    snaps: dict[str, Any] = {}
    try:
        for ev in record.events:
            kind = ev["type"]
            if kind == "step":
                chunk = _step(session, ev)
                if verify and "digest" in ev and frames_digest(chunk.frames) != ev["digest"]:
                    raise ValueError(f"replay of {record.path}: chunk {ev['chunk']} differs from the recorded frames")
                yield chunk
            elif kind == "snapshot":
                snaps[ev["name"]] = session.snapshot()
            elif kind == "restore":
                session.restore(snaps[ev["name"]])
            else:  # reset
                session.close()
                snaps.clear()
                session = world.start(record.image, **record.start_kwargs())
    finally:
        session.close()


def replay(record: Record | str | Path, world) -> np.ndarray:
    """Re-render a record with the streaming sampler: all frames in the order they were produced, (N,H,W,3) uint8."""
    if not isinstance(record, Record):
        record = load_record(record)
    chunks = [c.frames for c in replay_chunks(record, world)]
    if not chunks:
        return np.zeros((0, record.header["height"], record.header["width"], 3), np.uint8)
    return np.concatenate(chunks)


def timeline_poses(record: Record) -> np.ndarray:
    """The camera path of the record's final timeline, (F,4,4) c2w of every frame after frame 0.

    Restores cut the timeline back to their snapshot and a reset starts it again, so this is the branch that
    was played last: the path to re-render offline (e.g. with the bidirectional sampler). Each step needs
    ``frame_poses`` or a ``poses`` input; ValueError names the first step with neither.
    """
    marks: dict[str, int] = {}
    kept: list[np.ndarray] = []
    for ev in record.events:
        if ev["type"] == "step":
            poses = ev.get("frame_poses", ev.get("poses"))
            if poses is None:
                raise ValueError(
                    f"{record.path}: step of chunk {ev['chunk']} has no poses (recorded from "
                    f"{next(k for k in _STEP_INPUTS if k in ev)} without frame_poses)"
                )
            kept.append(poses)
        elif ev["type"] == "snapshot":
            marks[ev["name"]] = len(kept)
        elif ev["type"] == "restore":
            del kept[marks[ev["name"]] :]
        else:
            kept.clear()
            marks.clear()
    return np.concatenate(kept) if kept else np.zeros((0, 4, 4))
