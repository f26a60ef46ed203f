"""Live camera control: key-down/key-up events and mouse-look deltas -> per-frame poses for the next chunk.

Events carry timestamps in seconds (any clock, non-decreasing). ``poses_for_next(n)`` replays the events
received since the previous call, in order, on the ``n`` new frames: the first pending event lands on the
chunk's first frame and later ones follow at ``fps`` frames per second (compressed to fit when they span more
than the chunk). A key counts on a frame when it is held at the end of the frame or was pressed during it, so
a key pressed and released between two chunks still moves the camera for at least one frame. Keys still held
keep acting on every later frame. Motion follows the mapping's model (``controllers.actions``); with
``sana-wm-v2`` that is NVlabs' velocity smoothing: snap to the target on a new press, approach it with
tau 0.45 s while held, coast to zero with tau 1.0 s after release, dt = 1/fps.

Keys (case-insensitive): the action letters ``wasdijkl`` (meaning set by the mapping), the arrows ``up``/``down``
(= i/k, pitch) and ``left``/``right`` (= j/l: strafe in v2, yaw in v1; "ArrowUp" etc. work too), and ``shift``
(either side), which multiplies the key speeds (translation and rotation) by ``shift_multiplier`` (default 2).
Mouse look is direct: ``mouse_deg_per_px`` degrees per pixel (default 0.1), +dx turns right, +dy looks down;
pitch stays within the mapping's pitch limit.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence

import numpy as np

from .actions import CameraMotion, get_mapping, motion_params, parse_actions, target_velocity
from .conventions import check_poses

__all__ = ["LiveController"]

_ALIASES = {"up": "i", "down": "k", "left": "j", "right": "l", "arrowup": "i", "arrowdown": "k", "arrowleft": "j",
            "arrowright": "l", "lshift": "shift", "rshift": "shift", "left shift": "shift", "right shift": "shift",
            "shiftleft": "shift", "shiftright": "shift"}
_KEYS = frozenset("wasdijkl") | {"shift"}
_FAST = "fast"  # control token for Shift: pressing it counts as a new press (snaps to the faster target)
_STATE_VERSION = 1


def _number(name: str, value, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return float(value)


class LiveController:
    """The camera of one live session.

    Args:
        mapping: ``"sana-wm-v2"`` (default; a/d yaw, j/l strafe, smoothed) or ``"sana-wm-v1"``.
        translation_speed, rotation_speed_deg, pitch_limit_deg: per-frame speeds and pitch limit; None = the
            mapping's defaults (v2: 0.025, 0.6, 60; v1: 0.05, 1.2, 85).
        smooth: velocity smoothing; None = the mapping's model (v2 on, v1 off).
        mouse_deg_per_px: mouse-look degrees per pixel of mouse motion.
        shift_multiplier: speed factor while Shift is held.
        fps: frame rate (the smoothing dt and the event-to-frame spacing).
    """

    def __init__(
        self,
        mapping: str = "sana-wm-v2",
        *,
        translation_speed: float | None = None,
        rotation_speed_deg: float | None = None,
        pitch_limit_deg: float | None = None,
        smooth: bool | None = None,
        mouse_deg_per_px: float = 0.1,
        shift_multiplier: float = 2.0,
        fps: float = 16.0,
    ) -> None:
        self._mapping = get_mapping(mapping)
        self._speed, self._rot_speed, pitch_limit = motion_params(
            self._mapping, translation_speed, rotation_speed_deg, pitch_limit_deg
        )
        self._config = {
            "mapping": self._mapping.name,
            "translation_speed": self._speed,
            "rotation_speed_deg": math.degrees(self._rot_speed),
            "pitch_limit_deg": math.degrees(pitch_limit),
            "smooth": self._mapping.smooth if smooth is None else bool(smooth),
            "mouse_deg_per_px": _number("mouse_deg_per_px", mouse_deg_per_px),
            "shift_multiplier": _number("shift_multiplier", shift_multiplier, positive=True),
            "fps": _number("fps", fps, positive=True),
        }
        self._motion = CameraMotion(self._mapping, pitch_limit, self._config["smooth"], self._config["fps"])
        self._held: set[str] = set()  # keys down at the end of the last built frame
        self._down: set[str] = set()  # keys down after every event received
        self._pending: list[tuple[float, str, object, float]] = []  # (t, "down"|"up", key, 0) / (t, "mouse", dx, dy)
        self._last_t: float | None = None
        self._frame = 0

    # ---------------------------------------------------------------- events
    def _key(self, key: str) -> str:
        if not isinstance(key, str):
            raise TypeError(f"key must be a str, got {type(key).__name__}")
        name = key.strip().lower()
        name = _ALIASES.get(name, name)
        if name not in _KEYS:
            raise ValueError(
                f"unknown key {key!r}; expected one of 'wasdijkl', 'up', 'down', 'left', 'right', 'shift'"
            )
        return name

    def _time(self, t: float) -> float:
        t = _number("event time t", t)
        if self._last_t is not None and t < self._last_t:
            raise ValueError(f"event time t={t} is earlier than the previous event ({self._last_t}); "
                             "timestamps must not decrease")
        self._last_t = t
        return t

    def key_down(self, key: str, t: float) -> None:
        """Key ``key`` went down at time ``t`` (seconds). A repeat for a key already down is ignored."""
        key, t = self._key(key), self._time(t)
        if key not in self._down:
            self._down.add(key)
            self._pending.append((t, "down", key, 0.0))

    def key_up(self, key: str, t: float) -> None:
        """Key ``key`` went up at time ``t`` (seconds). A key that is not down is ignored."""
        key, t = self._key(key), self._time(t)
        if key in self._down:
            self._down.discard(key)
            self._pending.append((t, "up", key, 0.0))

    def mouse(self, dx: float, dy: float, t: float) -> None:
        """Mouse moved by (dx, dy) pixels at time ``t``: +dx turns right, +dy looks down."""
        dx, dy, t = _number("mouse dx", dx), _number("mouse dy", dy), self._time(t)
        self._pending.append((t, "mouse", dx, dy))

    # ---------------------------------------------------------------- poses
    def _step(self, keys: set[str] | frozenset[str], yaw: float = 0.0, pitch: float = 0.0) -> np.ndarray:
        controls = {self._mapping.keys[k] for k in keys if k != "shift"}
        factor = 1.0
        if "shift" in keys:
            controls.add(_FAST)
            factor = self._config["shift_multiplier"]
        controls = frozenset(controls)
        target = target_velocity(controls, self._speed * factor, self._rot_speed * factor)
        self._frame += 1
        return self._motion.step(controls, target, yaw, pitch)

    def _count(self, n_frames: int) -> int:
        if isinstance(n_frames, bool) or not isinstance(n_frames, numbers.Integral) or n_frames <= 0:
            raise ValueError(f"n_frames must be a positive int, got {n_frames!r}")
        return int(n_frames)

    def poses_for_next(self, n_frames: int) -> np.ndarray:
        """(n_frames, 4, 4) camera-to-world poses of the next frames, built from the held keys and the events
        received since the previous call (see the module docstring), continuing from the current pose."""
        n = self._count(n_frames)
        events, self._pending = self._pending, []
        per_frame: list[list[tuple]] = [[] for _ in range(n)]
        if events:
            t0 = events[0][0]
            span = (events[-1][0] - t0) * self._config["fps"]
            scale = (n - 1) / span if span > n - 1 else 1.0
            for event in events:
                per_frame[min(n - 1, round((event[0] - t0) * self._config["fps"] * scale))].append(event)
        deg = math.radians(self._config["mouse_deg_per_px"])
        out = np.empty((n, 4, 4))
        for f, frame_events in enumerate(per_frame):
            pressed, yaw, pitch = set(), 0.0, 0.0
            for _, kind, a, b in frame_events:
                if kind == "down":
                    self._held.add(a)
                    pressed.add(a)
                elif kind == "up":
                    self._held.discard(a)
                else:
                    yaw += a * deg
                    pitch -= b * deg
            out[f] = self._step(self._held | pressed, yaw, pitch)
        return out

    def poses_for_keys(self, keys_per_frame: Sequence[Iterable[str]]) -> np.ndarray:
        """(N, 4, 4) poses for explicit held-key sets, one per frame (e.g. ``[{"w"}] * 24``), continuing from the
        current pose and velocity. Live events and held keys are left as they are."""
        if isinstance(keys_per_frame, str) or not isinstance(keys_per_frame, Sequence):
            raise TypeError(f"keys_per_frame must be a sequence of key sets, one per frame, got {keys_per_frame!r}")
        if not keys_per_frame:
            raise ValueError("keys_per_frame is empty; expected at least one frame")
        frames = []
        for i, keys in enumerate(keys_per_frame):
            if isinstance(keys, str) or not isinstance(keys, Iterable):
                raise TypeError(f"keys_per_frame[{i}] must be a collection of key names, got {keys!r}")
            frames.append({self._key(k) for k in keys})
        return np.stack([self._step(keys) for keys in frames])

    def poses_for_actions(self, actions: str) -> np.ndarray:
        """(N, 4, 4) poses for an action string (``"w-24,none-8"``), continuing from the current pose.
        From a fresh controller this equals ``actions_to_poses(actions, mapping, ...)[1:]``."""
        return self.poses_for_keys(parse_actions(actions))

    def reset(self, pose=None) -> None:
        """Put the camera at ``pose`` (4,4) c2w (default identity) at rest; forget held keys and pending events."""
        pose = np.eye(4) if pose is None else check_poses(np.asarray(pose)[None], name="pose")[0]
        self._motion.pose = pose.copy()
        self._motion.pitch = math.asin(max(-1.0, min(1.0, -pose[1, 2])))
        self._motion.velocity = np.zeros(4)
        self._motion.controls = frozenset()
        self._held, self._down, self._pending, self._last_t = set(), set(), [], None

    @property
    def pose(self) -> np.ndarray:
        """(4, 4) current camera-to-world pose (a copy)."""
        return self._motion.pose.copy()

    @property
    def frame(self) -> int:
        """Number of frames produced so far."""
        return self._frame

    @property
    def held_keys(self) -> frozenset[str]:
        """Keys down after every event received."""
        return frozenset(self._down)

    # ---------------------------------------------------------------- snapshots
    def state_dict(self) -> dict:
        """The whole state as plain Python values (JSON-serialisable); exact round trip."""
        return {
            "version": _STATE_VERSION,
            "config": dict(self._config),
            "pose": self._motion.pose.tolist(),
            "pitch": self._motion.pitch,
            "velocity": self._motion.velocity.tolist(),
            "controls": sorted(self._motion.controls),
            "held": sorted(self._held),
            "down": sorted(self._down),
            "pending": [list(e) for e in self._pending],
            "last_t": self._last_t,
            "frame": self._frame,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict()`` taken from a controller with the same configuration."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict from LiveController.state_dict(), got {type(state).__name__}")
        missing = {"version", "config", "pose", "pitch", "velocity", "controls", "held", "down", "pending",
                   "last_t", "frame"} - set(state)
        if missing:
            raise ValueError(f"LiveController state is missing {sorted(missing)}")
        if state["version"] != _STATE_VERSION:
            raise ValueError(f"LiveController state version {state['version']!r}, expected {_STATE_VERSION}")
        if state["config"] != self._config:
            diff = {k: (state["config"].get(k), v) for k, v in self._config.items() if state["config"].get(k) != v}
            raise ValueError(f"LiveController state has a different configuration (state, this): {diff}")
        velocity = np.asarray(state["velocity"], dtype=np.float64)
        if velocity.shape != (4,) or not np.isfinite(velocity).all():
            raise ValueError(f"LiveController state velocity must be 4 finite numbers, got {state['velocity']!r}")
        pose = check_poses(np.asarray(state["pose"], dtype=np.float64)[None], name="state pose")[0]
        self._motion.pose = pose
        self._motion.pitch = _number("state pitch", state["pitch"])
        self._motion.velocity = velocity
        self._motion.controls = frozenset(state["controls"])
        self._held = {self._key(k) for k in state["held"]}
        self._down = {self._key(k) for k in state["down"]}
        self._pending = [(float(t), str(kind), a if kind in ("down", "up") else float(a), float(b))
                         for t, kind, a, b in state["pending"]]
        self._last_t = None if state["last_t"] is None else _number("state last_t", state["last_t"])
        self._frame = int(state["frame"])
