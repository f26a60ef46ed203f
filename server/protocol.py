"""Wire protocol of ``sana-wm serve``: message types, strict validation, packing (see docs/protocol.md).

Every websocket message, both ways, is one binary frame holding one msgpack map with a string ``type``.
``parse_request(data)`` turns a client frame into a validated request dict (defaults filled in, arrays as
numpy) or raises ``ProtocolError`` with a typed ``code``; ``pack(msg)`` encodes a server message.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np

from controllers.actions import ACTION_KEYS, MAPPINGS

PROTOCOL_VERSION = 1
ENCODINGS = ("raw", "jpeg", "h264")
H264_PIX_FMTS = ("yuv420p", "yuv444p")
MODES = ("live", "lockstep")
SAMPLERS = ("streaming", "bidirectional")

#: Error codes (``{"type": "error", "code": ...}``) and when they are sent.
ERROR_CODES = {
    "bad_frame": "a text frame, or a binary frame that is not valid msgpack",
    "bad_message": "valid msgpack, but not a map with a string 'type'",
    "unknown_type": "'type' names no request of this protocol version",
    "invalid_field": "a field is missing, unknown, of the wrong type or out of range",
    "hello_required": "the first request of a connection must be 'hello'",
    "unsupported_version": "the hello's version is not spoken by this server (the connection is closed)",
    "unauthorized": "wrong or missing token (the connection is closed)",
    "unknown_session": "no open session with this id on this connection",
    "unknown_snapshot": "no snapshot with this id on this connection",
    "wrong_mode": "the request needs the other session mode (step: lockstep; control: live)",
    "limit_exceeded": "a server limit (sessions, snapshots, path length, image pixels) would be exceeded",
    "bad_image": "the image bytes are not a decodable image",
    "invalid_argument": "the engine rejected a value (e.g. a snapshot of another session set-up)",
    "session_failed": "the session hit an internal error and was closed",
    "idle_timeout": "nothing was received or delivered for too long (the connection is closed)",
    "internal": "an unexpected server error outside any session",
}


class ProtocolError(Exception):
    """A request the server answers with ``{"type": "error", "code", "message", "id"}``."""

    def __init__(self, code: str, message: str, id: Any = None, session: int | None = None):
        if code not in ERROR_CODES:
            raise ValueError(f"unknown protocol error code {code!r}")
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.id = id
        self.session = session

    def to_message(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"type": "error", "code": self.code, "message": self.message}
        if self.id is not None:
            msg["id"] = self.id
        if self.session is not None:
            msg["session"] = self.session
        return msg


def pack(msg: dict[str, Any]) -> bytes:
    """One message as msgpack bytes (bytes stay bytes, str stays str)."""
    return msgpack.packb(msg, use_bin_type=True)


def _no_ext(code: int, data: bytes):
    raise ValueError(f"msgpack extension type {code} is not used by this protocol")


def unpack(data: bytes | str) -> Any:
    """Decode one frame; raises ProtocolError("bad_frame") for text frames and invalid msgpack."""
    if isinstance(data, str):
        raise ProtocolError("bad_frame", "expected a binary frame holding msgpack, got a text frame")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_no_ext)
    except Exception as e:  # msgpack raises ValueError subclasses, UnicodeDecodeError, StackError, ...
        raise ProtocolError("bad_frame", f"binary frame is not one valid msgpack value ({type(e).__name__}: {e})")


# ----------------------------------------------------------------------------------------------------- fields
# A checker takes (value, field name) and returns the normalised value or raises ValueError with a message.

Checker = Callable[[Any, str], Any]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool))


def integer(lo: int, hi: int) -> Checker:
    def check(v: Any, name: str) -> int:
        if not _is_int(v):
            raise ValueError(f"'{name}' must be an integer, got {type(v).__name__}")
        if not lo <= v <= hi:
            raise ValueError(f"'{name}' must be in [{lo}, {hi}], got {v}")
        return v
    return check


def number(lo: float, hi: float, *, open_lo: bool = False) -> Checker:
    def check(v: Any, name: str) -> float:
        if not _is_num(v) or not math.isfinite(v):
            raise ValueError(f"'{name}' must be a finite number, got {v!r}" if _is_num(v)
                             else f"'{name}' must be a number, got {type(v).__name__}")
        if not (lo < v if open_lo else lo <= v) or v > hi:
            raise ValueError(f"'{name}' must be in {'(' if open_lo else '['}{lo}, {hi}], got {v}")
        return float(v)
    return check


def string(max_len: int, *, nonempty: bool = False) -> Checker:
    def check(v: Any, name: str) -> str:
        if not isinstance(v, str):
            raise ValueError(f"'{name}' must be a string, got {type(v).__name__}")
        if len(v) > max_len:
            raise ValueError(f"'{name}' is {len(v)} characters long; at most {max_len} allowed")
        if nonempty and not v.strip():
            raise ValueError(f"'{name}' must not be empty")
        return v
    return check


def binary(max_len: int) -> Checker:
    def check(v: Any, name: str) -> bytes:
        if not isinstance(v, bytes):
            raise ValueError(f"'{name}' must be msgpack bin (raw bytes), got {type(v).__name__}")
        if not v:
            raise ValueError(f"'{name}' is empty")
        if len(v) > max_len:
            raise ValueError(f"'{name}' is {len(v)} bytes; at most {max_len} allowed")
        return v
    return check


def choice(options: tuple[str, ...]) -> Checker:
    def check(v: Any, name: str) -> str:
        if not isinstance(v, str) or v not in options:
            raise ValueError(f"'{name}' must be one of {list(options)}, got {v!r}")
        return v
    return check


def request_id(v: Any, name: str) -> int | str:
    if _is_int(v) and -(2**63) <= v < 2**64:
        return v
    if isinstance(v, str) and len(v) <= 64:
        return v
    raise ValueError(f"'{name}' must be an integer or a string of at most 64 characters, got {v!r:.80}")


def floats(n: int, *, positive: bool = False) -> Checker:
    def check(v: Any, name: str) -> list[float]:
        if not isinstance(v, list) or len(v) != n:
            raise ValueError(f"'{name}' must be a list of {n} numbers, got {_describe(v)}")
        for i, x in enumerate(v):
            if not _is_num(x) or not math.isfinite(x) or (positive and x <= 0):
                want = "a positive finite number" if positive else "a finite number"
                raise ValueError(f"'{name}[{i}]' must be {want}, got {x!r:.40}")
        return [float(x) for x in v]
    return check


def intrinsics(v: Any, name: str) -> list[float]:
    """[fx, fy, cx, cy] in pixels: fx, fy > 0; cx, cy finite."""
    vals = floats(4)(v, name)
    if vals[0] <= 0 or vals[1] <= 0:
        raise ValueError(f"'{name}' focal lengths fx, fy must be > 0, got {vals[:2]}")
    return vals


KEYS = tuple(ACTION_KEYS) + ("shift",)
"""Key names of ``control`` and ``step`` (the mapping gives the letters their meaning; shift doubles speeds)."""


def key_set(v: Any, name: str) -> frozenset[str]:
    if not isinstance(v, list) or len(v) > len(KEYS):
        raise ValueError(f"'{name}' must be a list of at most {len(KEYS)} keys from {list(KEYS)}, got {_describe(v)}")
    for k in v:
        if not isinstance(k, str) or k not in KEYS:
            raise ValueError(f"'{name}' holds {k!r:.20}; keys are the letters {ACTION_KEYS!r} and 'shift'")
    return frozenset(v)


def action_string(max_frames: int) -> Checker:
    """An action string (``"w-24,none-8"``, grammar of ``controllers.parse_actions``) covering at most
    ``max_frames`` frames. Durations are summed without expanding them, so ``"w-99999999999"`` is refused here
    instead of making the engine build billions of frames; the engine checks the rest of the grammar."""
    text = string(1024, nonempty=True)

    def check(v: Any, name: str) -> str:
        v = text(v, name)
        total = 0
        for segment in "".join(v.replace("\uff0c", ",").split()).split(","):
            duration = segment.partition("-")[2]
            if duration.isdecimal():  # what int() reads, Unicode digits included
                total += int(duration)
                if total > max_frames:
                    raise ValueError(f"'{name}' covers more than {max_frames} frames (a chunk is {max_frames}), "
                                     f"got {v!r:.60}")
        return v
    return check


def key_frames(max_frames: int) -> Checker:
    def check(v: Any, name: str) -> list[frozenset[str]]:
        if not isinstance(v, list) or not 1 <= len(v) <= max_frames:
            raise ValueError(f"'{name}' must be a list of 1..{max_frames} key lists (one per frame), "
                             f"got {_describe(v)}")
        return [key_set(k, f"{name}[{i}]") for i, k in enumerate(v)]
    return check


def pose_matrix(v: Any, name: str) -> np.ndarray:
    """A 4x4 camera-to-world matrix: 16 numbers row-major, or 4 rows of 4; last row must be [0, 0, 0, 1]."""
    if isinstance(v, list) and len(v) == 4 and all(isinstance(r, list) for r in v):
        rows = [floats(4)(r, f"{name}[{i}]") for i, r in enumerate(v)]
        m = np.array(rows, dtype=np.float64)
    else:
        m = np.array(floats(16)(v, name), dtype=np.float64).reshape(4, 4)
    if not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], atol=1e-6):
        raise ValueError(f"'{name}' last row must be [0, 0, 0, 1], got {m[3].tolist()}")
    return m


def pose_list(max_frames: int, min_frames: int = 1) -> Checker:
    def check(v: Any, name: str) -> np.ndarray:
        if not isinstance(v, list) or not min_frames <= len(v) <= max_frames:
            raise ValueError(f"'{name}' must be a list of {min_frames}..{max_frames} poses (each 16 numbers row-major "
                             f"or 4 rows of 4), got {_describe(v)}")
        return np.stack([pose_matrix(p, f"{name}[{i}]") for i, p in enumerate(v)])
    return check


def _describe(v: Any) -> str:
    if isinstance(v, (list, tuple, dict, str, bytes)):
        return f"{type(v).__name__} of length {len(v)}"
    return type(v).__name__


# ---------------------------------------------------------------------------------------------------- schemas

REQUIRED = object()
"""Marks a field without a default."""


class Limits:
    """Size limits that shape the schemas (the server passes its configured values)."""

    def __init__(self, max_image_bytes: int = 32 << 20, max_prompt_chars: int = 4000, max_path_frames: int = 1024,
                 max_step_frames: int = 24):
        self.max_image_bytes = max_image_bytes
        self.max_prompt_chars = max_prompt_chars
        self.max_path_frames = max_path_frames
        self.max_step_frames = max_step_frames


def build_schemas(limits: Limits) -> dict[str, dict[str, tuple[Checker, Any]]]:
    """Request type -> {field: (checker, default or REQUIRED)}; ``type`` and ``id`` are allowed everywhere."""
    session = (integer(1, 2**53), REQUIRED)
    seed = (integer(0, 2**63 - 1), 0)
    prompt = (string(limits.max_prompt_chars, nonempty=True), REQUIRED)
    image = (binary(limits.max_image_bytes), REQUIRED)
    camera = {"intrinsics": (intrinsics, None), "fov_deg": (number(1.0, 179.0), None)}
    enc = {"encoding": (choice(ENCODINGS), "raw"), "jpeg_quality": (integer(1, 100), 95),
           "h264_crf": (integer(0, 51), 18), "h264_pix_fmt": (choice(H264_PIX_FMTS), "yuv420p")}
    return {
        "hello": {"version": (integer(0, 2**31), REQUIRED), "token": (string(1024), None),
                  "client": (string(128), None)},
        "ping": {},
        "start": {"image": image, "prompt": prompt, "seed": seed, **camera,
                  "mode": (choice(MODES), "lockstep"), "mapping": (choice(tuple(MAPPINGS)), None), **enc},
        "close": {"session": session},
        "control": {"session": session, "keys": (key_set, REQUIRED), "mouse": (floats(2), None),
                    "t": (number(-1e18, 1e18), None)},
        "step": {"session": session, "actions": (action_string(limits.max_step_frames), None),
                 "keys": (key_frames(limits.max_step_frames), None),
                 "poses": (pose_list(limits.max_step_frames), None)},
        "snapshot": {"session": session},
        "restore": {"session": session, "snapshot": (integer(1, 2**53), REQUIRED)},
        "drop_snapshot": {"snapshot": (integer(1, 2**53), REQUIRED)},
        "fork": {"session": session, "mode": (choice(MODES), None), "encoding": (choice(ENCODINGS), None),
                 "jpeg_quality": (integer(1, 100), None), "h264_crf": (integer(0, 51), None),
                 "h264_pix_fmt": (choice(H264_PIX_FMTS), None)},
        "still": {"session": session, "pose": (pose_matrix, None), **enc},
        "image": {"prompt": prompt, "seed": seed, **enc},
        "render_path": {"image": image, "prompt": prompt, "seed": seed, **camera,
                        "poses": (pose_list(limits.max_path_frames + 1, min_frames=2), REQUIRED),
                        "sampler": (choice(SAMPLERS), None), **enc},
    }


def parse_request(data: bytes | str, schemas: dict[str, dict[str, tuple[Checker, Any]]]) -> dict[str, Any]:
    """Decode and validate one client frame against ``schemas`` (``build_schemas``).

    Returns the request with defaults filled in. Raises ProtocolError: ``bad_frame``, ``bad_message``,
    ``unknown_type`` or ``invalid_field`` (carrying the request's ``id`` when it could be read).
    """
    msg = unpack(data)
    if not isinstance(msg, dict):
        raise ProtocolError("bad_message", f"expected a msgpack map with a 'type' field, got {type(msg).__name__}")
    rid = msg.get("id")
    try:
        rid = request_id(rid, "id") if rid is not None else None
    except ValueError as e:
        raise ProtocolError("invalid_field", str(e)) from None
    kind = msg.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("bad_message", "the map has no string 'type' field", id=rid)
    if kind not in schemas:
        raise ProtocolError("unknown_type", f"unknown message type {kind!r:.60}; expected one of {sorted(schemas)}",
                            id=rid)
    schema = schemas[kind]
    extra = sorted(str(k) for k in msg if k not in schema and k not in ("type", "id"))
    if extra:
        raise ProtocolError("invalid_field", f"'{kind}' does not take field(s) {extra}; "
                            f"allowed: {sorted(schema) + ['id']}", id=rid)
    out: dict[str, Any] = {"type": kind, "id": rid}
    for name, (check, default) in schema.items():
        if name not in msg or msg[name] is None:
            if default is REQUIRED:
                raise ProtocolError("invalid_field", f"'{kind}' needs the field '{name}'", id=rid)
            out[name] = default
            continue
        try:
            out[name] = check(msg[name], name)
        except ValueError as e:
            raise ProtocolError("invalid_field", f"{kind}: {e}", id=rid) from None
    _cross_checks(out)
    return out


def _cross_checks(req: dict[str, Any]) -> None:
    kind, rid = req["type"], req["id"]
    if req.get("intrinsics") is not None and req.get("fov_deg") is not None:
        raise ProtocolError("invalid_field", f"{kind}: give 'intrinsics' or 'fov_deg', not both", id=rid)
    if kind == "step":
        given = [n for n in ("actions", "keys", "poses") if req[n] is not None]
        if len(given) != 1:
            raise ProtocolError("invalid_field", f"step: give exactly one of 'actions', 'keys', 'poses'; got "
                                f"{given or 'none'}", id=rid)


# ---------------------------------------------------------------------------------------------- server output

def frames_header(*, session: int | None, chunk: int | None, part: int, frame_indices: np.ndarray,
                  poses: np.ndarray, intrinsics: np.ndarray, height: int, width: int, encoding: str,
                  timings: dict[str, float], rid: Any = None, control: dict[str, Any] | None = None) -> dict[str, Any]:
    """The header fields of a ``frames`` message (``payload`` and ``sizes`` are added by the codec).

    poses (N,4,4) c2w; intrinsics (4,) for all frames or (N,4); timings in seconds (sent in ms).
    """
    n = len(frame_indices)
    k = np.broadcast_to(np.asarray(intrinsics, dtype=np.float64), (n, 4))
    msg: dict[str, Any] = {
        "type": "frames", "session": session, "chunk": chunk, "part": part,
        "count": n, "height": height, "width": width, "encoding": encoding,
        "frame_indices": [int(i) for i in frame_indices],
        "c2w": np.asarray(poses, dtype=np.float64).reshape(n, 16).tolist(),
        "intrinsics": k.tolist(),
        "timings_ms": {name: round(float(s) * 1000.0, 3) for name, s in timings.items()},
    }
    if rid is not None:
        msg["id"] = rid
    if control is not None:
        msg["control"] = control
    return msg
