"""Scripted camera paths (keyframes, named presets) and pose files (.npy / .npz / .json).

Keyframe paths (JSON file or dict), OpenCV world (+X right, +Y down, +Z forward; a camera 1.5 above the
ground at y = 0 has y = -1.5)::

    {"fps": 16,
     "keyframes": [
        {"time": 0.0, "position": [0, 0, 0], "yaw": 0, "pitch": 0, "roll": 0, "fov": 60},
        {"time": 2.0, "position": [1, 0, 2], "look_at": [0, 0, 4]},
        {"time": 4.0, "position": [0, -0.5, 4], "yaw": 90}]}

``time`` in seconds (strictly increasing), ``position`` [x, y, z]; orientation either ``yaw``/``pitch``/``roll``
in degrees (each optional, default 0; ``R = rot_y(yaw) @ rot_x(pitch) @ rot_z(roll)``: +yaw turns right, +pitch
looks up, +roll tilts the camera's right side down) or ``look_at`` [x, y, z] (with an optional ``roll``);
``fov`` (horizontal, degrees) on all keyframes or none. Frames are sampled every 1/fps s (default 16) from the
first to the last keyframe; positions follow a natural cubic spline through the keyframes, rotations slerp
between consecutive keyframes, fov is linear. A path file may instead name a preset:
``{"preset": "orbit", "n_frames": 97, "radius": 2.0}``.

Pose files: ``.npy`` holds (F,4,4) (or (F,3,4)) camera-to-world; ``.npz`` holds ``c2w`` (or ``poses``) and
optionally ``intrinsics`` (any form ``as_intrinsics`` takes), ``fov_deg``, ``convention``; ``.json`` holds the
same fields as lists, or is a NeRF-style ``transforms.json`` (``frames[i].transform_matrix``, ``fl_x``/``fl_y``/
``cx``/``cy`` or ``camera_angle_x``; OpenGL convention unless told otherwise).
"""

from __future__ import annotations

import inspect
import json
import math
import numbers
from pathlib import Path

import numpy as np

from .actions import FPS, _rot_x, _rot_y
from .conventions import as_intrinsics, check_poses, convert_poses, fov_to_intrinsics

__all__ = [
    "PRESETS",
    "keyframe_path",
    "load_path",
    "preset",
    "load_poses",
    "save_poses",
    "look_at",
    "slerp",
    "quat_from_matrix",
    "matrix_from_quat",
]


# --------------------------------------------------------------------------- rotations


def _rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def look_at(position, target) -> np.ndarray:
    """(3,3) OpenCV camera rotation at ``position`` looking at ``target`` with the image's down along world +Y."""
    forward = np.asarray(target, dtype=np.float64) - np.asarray(position, dtype=np.float64)
    norm = np.linalg.norm(forward)
    if norm < 1e-9:
        raise ValueError(f"look_at target {list(target)} coincides with the camera position {list(position)}")
    forward /= norm
    right = np.cross([0.0, 1.0, 0.0], forward)
    if np.linalg.norm(right) < 1e-9:
        raise ValueError("look_at straight up or down leaves the camera's roll undefined; use yaw/pitch/roll")
    right /= np.linalg.norm(right)
    return np.stack([right, np.cross(forward, right), forward], axis=1)


def quat_from_matrix(rot: np.ndarray) -> np.ndarray:
    """Unit quaternion ``[w, x, y, z]`` (w >= 0) of a (3,3) rotation."""
    m = np.asarray(rot, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * math.sqrt(trace + 1.0)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * math.sqrt(1.0 + m[i, i] - m[j, j] - m[k, k])
        q = [0.0] * 4
        q[0] = (m[k, j] - m[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (m[j, i] + m[i, j]) / s
        q[1 + k] = (m[k, i] + m[i, k]) / s
    q = np.array(q)
    q /= np.linalg.norm(q)
    return -q if q[0] < 0 else q


def matrix_from_quat(q: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotations of (..., 4) quaternions ``[w, x, y, z]`` (normalised first)."""
    q = np.asarray(q, dtype=np.float64)
    w, x, y, z = np.moveaxis(q / np.linalg.norm(q, axis=-1, keepdims=True), -1, 0)
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def slerp(q0: np.ndarray, q1: np.ndarray, u) -> np.ndarray:
    """Spherical linear interpolation of unit quaternions along the shorter arc; ``u`` scalar or (N,) in
    [0, 1] -> (4,) or (N, 4) unit quaternions."""
    q0, q1 = np.asarray(q0, dtype=np.float64), np.asarray(q1, dtype=np.float64)
    u = np.asarray(u, dtype=np.float64)[..., None]
    dot = float(np.dot(q0, q1))
    if dot < 0:
        q1, dot = -q1, -dot
    if dot > 1 - 1e-12:
        out = q0 + u * (q1 - q0)
    else:
        theta = math.acos(dot)
        out = (np.sin((1 - u) * theta) * q0 + np.sin(u * theta) * q1) / math.sin(theta)
    return out / np.linalg.norm(out, axis=-1, keepdims=True)


# --------------------------------------------------------------------------- keyframes


def _vector(value, what: str) -> np.ndarray:
    try:
        v = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        v = np.zeros(0)
    if v.shape != (3,) or not np.isfinite(v).all():
        raise ValueError(f"{what} must be 3 finite numbers [x, y, z], got {value!r}")
    return v


def _scalar(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return float(value)


_KEYFRAME_FIELDS = {"time", "position", "yaw", "pitch", "roll", "look_at", "fov"}


def _keyframe(k, i: int) -> tuple[float, np.ndarray, np.ndarray, float | None]:
    where = f"keyframes[{i}]"
    if not isinstance(k, dict):
        raise ValueError(f"{where} must be an object with time, position and an orientation, got {k!r}")
    unknown = sorted(set(k) - _KEYFRAME_FIELDS)
    if unknown:
        raise ValueError(f"{where} has unknown fields {unknown}; expected some of {sorted(_KEYFRAME_FIELDS)}")
    for field in ("time", "position"):
        if field not in k:
            raise ValueError(f"{where} is missing {field!r}")
    position = _vector(k["position"], f"{where}.position")
    roll = _rot_z(math.radians(_scalar(k.get("roll", 0.0), f"{where}.roll")))
    if "look_at" in k:
        if "yaw" in k or "pitch" in k:
            raise ValueError(f"{where} gives both look_at and yaw/pitch; use one orientation")
        rot = look_at(position, _vector(k["look_at"], f"{where}.look_at")) @ roll
    else:
        yaw = math.radians(_scalar(k.get("yaw", 0.0), f"{where}.yaw"))
        pitch = math.radians(_scalar(k.get("pitch", 0.0), f"{where}.pitch"))
        rot = _rot_y(yaw) @ _rot_x(pitch) @ roll
    fov = k.get("fov")
    if fov is not None:
        fov = _scalar(fov, f"{where}.fov")
        if not 0 < fov < 180:
            raise ValueError(f"{where}.fov must be in (0, 180) degrees, got {fov}")
    return _scalar(k["time"], f"{where}.time"), position, rot, fov


def _natural_cubic(times: np.ndarray, values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Natural cubic spline through (times[i], values[i]) evaluated at ``at``. values (K, D) -> (N, D)."""
    n = len(times)
    h = np.diff(times)
    second = np.zeros_like(values)
    if n > 2:
        a = np.zeros((n - 2, n - 2))
        idx = np.arange(n - 2)
        a[idx, idx] = 2 * (h[:-1] + h[1:])
        a[idx[1:], idx[:-1]] = h[1:-1]
        a[idx[:-1], idx[1:]] = h[1:-1]
        slope = np.diff(values, axis=0) / h[:, None]
        second[1:-1] = np.linalg.solve(a, 6 * np.diff(slope, axis=0))
    seg = np.clip(np.searchsorted(times, at, side="right") - 1, 0, n - 2)
    t0, hs = times[seg], h[seg]
    u = ((at - t0) / hs)[:, None]
    hs = hs[:, None]
    y0, y1, m0, m1 = values[seg], values[seg + 1], second[seg], second[seg + 1]
    return (1 - u) * y0 + u * y1 + hs**2 / 6 * (((1 - u) ** 3 - (1 - u)) * m0 + (u**3 - u) * m1)


def keyframe_path(spec, fps: float | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Interpolate keyframes (a dict ``{"fps": ..., "keyframes": [...]}`` or the list itself; see the module
    docstring) into per-frame poses.

    Returns:
        ``c2w`` (F, 4, 4) float64 OpenCV camera-to-world, one pose every 1/fps s from the first keyframe to the
        last (F = floor(duration * fps) + 1), passing through every keyframe that falls on a frame; and
        ``fov_deg`` (F,) when the keyframes give ``fov``, else None.
    """
    if isinstance(spec, dict):
        unknown = sorted(set(spec) - {"fps", "keyframes"})
        if unknown or "keyframes" not in spec:
            raise ValueError(f"keyframe path must have 'keyframes' (and optionally 'fps'), got fields {sorted(spec)}")
        fps = spec.get("fps", fps)
        frames = spec["keyframes"]
    else:
        frames = spec
    fps = _scalar(FPS if fps is None else fps, "fps")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if not isinstance(frames, (list, tuple)) or len(frames) < 2:
        raise ValueError("a keyframe path needs a list of at least 2 keyframes")
    parsed = [_keyframe(k, i) for i, k in enumerate(frames)]
    times = np.array([p[0] for p in parsed])
    if (np.diff(times) <= 0).any():
        raise ValueError(f"keyframe times must strictly increase, got {times.tolist()}")
    fovs = [p[3] for p in parsed]
    if any(f is None for f in fovs) and any(f is not None for f in fovs):
        raise ValueError("give 'fov' on every keyframe or on none")

    at = times[0] + np.arange(math.floor((times[-1] - times[0]) * fps + 1e-9) + 1) / fps
    seg = np.clip(np.searchsorted(times, at, side="right") - 1, 0, len(times) - 2)
    u = np.clip((at - times[seg]) / (times[seg + 1] - times[seg]), 0.0, 1.0)
    quats = [quat_from_matrix(p[2]) for p in parsed]
    q = np.empty((len(at), 4))
    for s in np.unique(seg):
        q[seg == s] = slerp(quats[s], quats[s + 1], u[seg == s])
    c2w = np.tile(np.eye(4), (len(at), 1, 1))
    c2w[:, :3, :3] = matrix_from_quat(q)
    c2w[:, :3, 3] = _natural_cubic(times, np.stack([p[1] for p in parsed]), at)
    fov = None if fovs[0] is None else np.interp(at, times, np.array(fovs))
    return c2w, fov


def load_path(file: str | Path) -> np.ndarray:
    """Read a path JSON file (keyframes, or ``{"preset": name, "n_frames": N, ...params}``) -> (F, 4, 4) c2w.
    Use ``keyframe_path(json.load(...))`` to get the per-frame fov as well."""
    spec = _read_json(file)
    if isinstance(spec, dict) and "preset" in spec:
        params = {k: v for k, v in spec.items() if k not in ("preset", "n_frames")}
        if "n_frames" not in spec:
            raise ValueError(f"{file}: a preset path needs 'n_frames'")
        return preset(spec["preset"], spec["n_frames"], **params)
    try:
        return keyframe_path(spec)[0]
    except ValueError as exc:
        raise ValueError(f"{file}: {exc}") from None


# --------------------------------------------------------------------------- presets


def _relative(c2w: np.ndarray) -> np.ndarray:
    """Make frame 0 the identity (the engine's trajectories start there)."""
    return np.linalg.inv(c2w[0]) @ c2w


def _poses(positions: np.ndarray, rotations: np.ndarray) -> np.ndarray:
    c2w = np.tile(np.eye(4), (len(positions), 1, 1))
    c2w[:, :3, :3] = rotations
    c2w[:, :3, 3] = positions
    return _relative(c2w)


def _heading(dx: np.ndarray, dz: np.ndarray) -> np.ndarray:
    return np.stack([_rot_y(a) for a in np.arctan2(dx, dz)])


def _orbit(n_frames: int, *, radius: float = 2.0, degrees: float = 360.0) -> np.ndarray:
    """Circle around a point ``radius`` ahead of the start, always facing it, moving right first."""
    theta = np.radians(degrees) * np.linspace(0.0, 1.0, n_frames)
    centre = np.array([0.0, 0.0, radius])
    positions = centre + radius * np.stack([np.sin(theta), np.zeros_like(theta), -np.cos(theta)], axis=1)
    return _poses(positions, np.stack([look_at(p, centre) for p in positions]))


def _dolly(n_frames: int, *, distance: float = 1.0) -> np.ndarray:
    """Straight forward by ``distance``, facing ahead."""
    z = distance * np.linspace(0.0, 1.0, n_frames)
    return _poses(np.stack([np.zeros_like(z), np.zeros_like(z), z], axis=1), np.tile(np.eye(3), (n_frames, 1, 1)))


def _pan(n_frames: int, *, degrees: float = 90.0) -> np.ndarray:
    """Turn right by ``degrees`` in place."""
    yaw = np.radians(degrees) * np.linspace(0.0, 1.0, n_frames)
    return _poses(np.zeros((n_frames, 3)), np.stack([_rot_y(a) for a in yaw]))


def _figure_eight(n_frames: int, *, size: float = 1.0) -> np.ndarray:
    """A figure eight on the ground plane (``size`` across), facing along the direction of travel."""
    phi = 2 * np.pi * np.linspace(0.0, 1.0, n_frames)
    x, z = size * np.sin(2 * phi) / 2, size * np.sin(phi)
    positions = np.stack([x, np.zeros_like(x), z], axis=1)
    return _poses(positions, _heading(size * np.cos(2 * phi), size * np.cos(phi)))


def _walk_forward(n_frames: int, *, speed: float = 0.025, bob: float = 0.005, step_hz: float = 2.0) -> np.ndarray:
    """Forward at ``speed`` units per frame with a vertical head bob of ``bob`` at ``step_hz`` steps/s (16 fps)."""
    k = np.arange(n_frames)
    y = -bob * np.abs(np.sin(np.pi * step_hz * k / FPS))
    return _poses(np.stack([np.zeros(n_frames), y, speed * k], axis=1), np.tile(np.eye(3), (n_frames, 1, 1)))


PRESETS = {
    "orbit": _orbit,
    "dolly": _dolly,
    "pan": _pan,
    "figure-eight": _figure_eight,
    "walk-forward": _walk_forward,
}


def preset(name: str, n_frames: int, **params) -> np.ndarray:
    """A named path of ``n_frames`` poses (float64 (F,4,4) OpenCV c2w), identity first.

    ``orbit`` (radius=2.0, degrees=360.0), ``dolly`` (distance=1.0), ``pan`` (degrees=90.0),
    ``figure-eight`` (size=1.0), ``walk-forward`` (speed=0.025 per frame, bob=0.005, step_hz=2.0).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown path preset {name!r}; expected one of {sorted(PRESETS)}")
    if isinstance(n_frames, bool) or not isinstance(n_frames, numbers.Integral) or n_frames < 2:
        raise ValueError(f"n_frames must be an int >= 2, got {n_frames!r}")
    allowed = [p for p in inspect.signature(PRESETS[name]).parameters if p != "n_frames"]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"preset {name!r} has no parameters {unknown}; it takes {allowed}")
    values = {k: _scalar(v, f"preset {name!r} parameter {k}") for k, v in params.items()}
    return PRESETS[name](int(n_frames), **values)


# --------------------------------------------------------------------------- pose files


def _read_json(file: str | Path):
    path = Path(file)
    if not path.is_file():
        raise FileNotFoundError(f"camera file not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None


def _as_c2w(array, source: str) -> np.ndarray:
    try:
        poses = np.asarray(array, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: poses must be numbers shaped (F, 4, 4) or (F, 3, 4)") from None
    if poses.ndim == 3 and poses.shape[1:] == (3, 4):
        poses = np.concatenate([poses, np.broadcast_to([0.0, 0.0, 0.0, 1.0], (len(poses), 1, 4))], axis=1)
    return check_poses(poses, name=f"{source} poses")


def _transforms_json(data: dict, source: str, image_size):
    frames = data["frames"]
    if not isinstance(frames, list) or not frames or not all(
        isinstance(f, dict) and "transform_matrix" in f for f in frames
    ):
        raise ValueError(f"{source}: 'frames' must be a non-empty list of objects with 'transform_matrix'")
    c2w = _as_c2w([f["transform_matrix"] for f in frames], source)
    if all(k in data for k in ("fl_x", "cx", "cy")):
        intr = as_intrinsics([data["fl_x"], data.get("fl_y", data["fl_x"]), data["cx"], data["cy"]], name=source)
    elif "camera_angle_x" in data:
        size = (data["h"], data["w"]) if "w" in data and "h" in data else image_size
        if size is None:
            raise ValueError(f"{source}: camera_angle_x needs 'w' and 'h' in the file or image_size=(H, W)")
        intr = fov_to_intrinsics(math.degrees(_scalar(data["camera_angle_x"], "camera_angle_x")), size)
    else:
        intr = None
    return c2w, intr, "opengl"


def load_poses(
    file: str | Path, convention: str | None = None, image_size: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Read camera-to-world poses (and intrinsics) from ``.npy``, ``.npz`` or ``.json`` (module docstring).

    Args:
        file: the pose file.
        convention: ``"opencv"``, ``"opengl"`` or ``"blender"``: how the file's poses are written. None = the
            file's ``convention`` field, else ``"opengl"`` for transforms.json, else ``"opencv"``. A value that
            contradicts the file's field is an error.
        image_size: (H, W), needed only to turn a field of view into pixel intrinsics.

    Returns:
        ``c2w`` (F, 4, 4) float64 in OpenCV convention, and intrinsics ``[fx, fy, cx, cy]`` (4,) or (F, 4)
        (float64) or None when the file has none.
    """
    path = Path(file)
    source = str(path)
    if not path.is_file():
        raise FileNotFoundError(f"pose file not found: {path}")
    suffix = path.suffix.lower()
    declared = default = None
    fov = intr = None
    if suffix == ".npy":
        c2w = _as_c2w(np.load(path, allow_pickle=False), source)
    elif suffix in (".npz", ".json"):
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                data = {k: npz[k] for k in npz.files}
            if "convention" in data:
                data["convention"] = str(data["convention"])
        else:
            data = _read_json(path)
            if not isinstance(data, dict):
                raise ValueError(f"{source}: expected a JSON object with 'c2w' (or 'poses') or 'frames'")
        if suffix == ".json" and "frames" in data:
            c2w, intr, default = _transforms_json(data, source, image_size)
        else:
            key = "c2w" if "c2w" in data else "poses"
            if key not in data:
                raise ValueError(f"{source}: no 'c2w' or 'poses' entry (found {sorted(data)})")
            c2w = _as_c2w(data[key], source)
            if "intrinsics" in data:
                intr = as_intrinsics(data["intrinsics"], n_frames=len(c2w), name=f"{source} intrinsics")
            fov = data.get("fov_deg")
        declared = data.get("convention")
    else:
        raise ValueError(f"{source}: unsupported pose file type {suffix!r}; expected .npy, .npz or .json")
    if declared is not None and convention is not None and declared.lower() != convention.lower():
        raise ValueError(f"{source} declares convention {declared!r} but convention={convention!r} was passed")
    chosen = convention or declared or default or "opencv"
    if fov is not None:
        if intr is not None:
            raise ValueError(f"{source}: give either 'intrinsics' or 'fov_deg', not both")
        if image_size is None:
            raise ValueError(f"{source} gives fov_deg; pass image_size=(H, W) to turn it into pixel intrinsics")
        intr = fov_to_intrinsics(np.asarray(fov, dtype=np.float64), image_size)
    return convert_poses(c2w, chosen, "opencv"), intr


def save_poses(file: str | Path, c2w, intrinsics=None, convention: str = "opencv") -> Path:
    """Write OpenCV camera-to-world poses (F,4,4) and optional intrinsics to ``.npy`` (poses only), ``.npz`` or
    ``.json``, converted to ``convention``. ``load_poses`` reads them back. Returns the path."""
    path = Path(file)
    poses = convert_poses(check_poses(c2w), "opencv", convention)
    intr = None if intrinsics is None else as_intrinsics(intrinsics, n_frames=len(poses))
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if intr is not None:
            raise ValueError(f"{path}: .npy holds poses only; use .npz or .json to store intrinsics")
        np.save(path, poses)
    elif suffix == ".npz":
        extra = {} if intr is None else {"intrinsics": intr}
        np.savez(path, c2w=poses, convention=np.array(convention.lower()), **extra)
    elif suffix == ".json":
        data = {"convention": convention.lower(), "c2w": poses.tolist()}
        if intr is not None:
            data["intrinsics"] = intr.tolist()
        path.write_text(json.dumps(data))
    else:
        raise ValueError(f"{path}: unsupported pose file type {suffix!r}; expected .npy, .npz or .json")
    return path

