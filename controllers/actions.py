"""Action strings ("w-80,jw-40,none-8") and the camera motion model that turns held keys into poses.

A *mapping* names a key layout together with the motion model of the release that used it:

- ``sana-wm-v1`` (the first release; diffusers ``action_string_to_c2w``): w/s forward/back, a/d strafe left/right,
  j/l yaw left/right, i/k pitch up/down (SGLang uses this layout too, plus a 0.4 strafe-to-yaw coupling that is
  not reproduced here). Constant speed while a key is held; a pitch step that would cross the limit is dropped.
  Defaults per frame: 0.05 units, 1.2 degrees, pitch limit 85 degrees.
- ``sana-wm-v2`` (NVlabs' current streaming code, ``camera_control.py``): w/s forward/back, **a/d yaw**,
  **j/l strafe**, i/k pitch. NVlabs velocity smoothing with dt = 1/16 s: snap to the target velocity on a new
  press, approach it with tau 0.45 s while held, coast to zero with tau 1.0 s after release; pitch saturates at
  the limit. Defaults per frame: 0.025 units, 0.6 degrees, pitch limit 60 degrees.

Axes are OpenCV (+X right, +Y down, +Z forward), poses camera-to-world. Per frame:
``R <- rot_y(yaw) @ R @ rot_x(pitch)`` (yaw about world Y, positive = turn right; pitch about the camera X,
positive = look up), then the position moves by ``forward * v_fwd + right * v_strafe`` where forward/right
are the camera's Z/X axes projected onto the horizontal (world XZ) plane.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

__all__ = ["CONTROLS", "KeyMapping", "MAPPINGS", "get_mapping", "parse_actions", "actions_to_poses"]

#: Canonical controls every key maps to.
CONTROLS = ("forward", "back", "strafe_left", "strafe_right", "yaw_left", "yaw_right", "pitch_up", "pitch_down")

#: Exponential smoothing time constants (seconds) of the NVlabs velocity model.
TAU_HELD = 0.45
TAU_COAST = 1.0
#: Camera frame rate of the velocity model (frames per second).
FPS = 16.0


@dataclass(frozen=True)
class KeyMapping:
    """A key layout plus the motion model and default speeds of one release.

    ``keys`` maps each action letter to a canonical control (see ``CONTROLS``). ``smooth`` turns on the NVlabs
    velocity model; otherwise the velocity equals the target on every frame. ``pitch_saturates``: True clamps
    the accumulated pitch at the limit, False drops a pitch step that would cross it (diffusers).
    ``axis_eps`` is added to the norm when the horizontal forward/right axes are normalised (NVlabs: 1e-6).
    """

    name: str
    keys: dict[str, str]
    translation_speed: float
    rotation_speed_deg: float
    pitch_limit_deg: float
    smooth: bool
    pitch_saturates: bool
    axis_eps: float


_COMMON = {"w": "forward", "s": "back", "i": "pitch_up", "k": "pitch_down"}

MAPPINGS: dict[str, KeyMapping] = {
    "sana-wm-v1": KeyMapping(
        name="sana-wm-v1",
        keys={**_COMMON, "a": "strafe_left", "d": "strafe_right", "j": "yaw_left", "l": "yaw_right"},
        translation_speed=0.05,
        rotation_speed_deg=1.2,
        pitch_limit_deg=85.0,
        smooth=False,
        pitch_saturates=False,
        axis_eps=0.0,
    ),
    "sana-wm-v2": KeyMapping(
        name="sana-wm-v2",
        keys={**_COMMON, "a": "yaw_left", "d": "yaw_right", "j": "strafe_left", "l": "strafe_right"},
        translation_speed=0.025,
        rotation_speed_deg=0.6,
        pitch_limit_deg=60.0,
        smooth=True,
        pitch_saturates=True,
        axis_eps=1e-6,
    ),
}

ACTION_KEYS = "adijklsw"


def get_mapping(mapping: str | KeyMapping) -> KeyMapping:
    """Look a mapping up by name (``"sana-wm-v1"`` or ``"sana-wm-v2"``); a ``KeyMapping`` passes through."""
    if isinstance(mapping, KeyMapping):
        return mapping
    if mapping not in MAPPINGS:
        raise ValueError(f"unknown key mapping {mapping!r}; expected one of {sorted(MAPPINGS)}")
    return MAPPINGS[mapping]


def parse_actions(actions: str) -> list[frozenset[str]]:
    """Parse an action string into the set of held keys per frame.

    Grammar: comma-separated segments ``<keys>-<frames>``; ``<keys>`` is any combination of ``wasdijkl``
    (case-insensitive) or ``none``; ``<frames>`` a positive integer. Whitespace is ignored and the full-width
    comma "，" counts as a comma. ``"w-2,jw-1,none-1"`` -> ``[{w}, {w}, {j, w}, {}]``.
    """
    if not isinstance(actions, str):
        raise TypeError(f"action string must be a str, got {type(actions).__name__}")
    cleaned = "".join(actions.replace("，", ",").split())
    if not cleaned:
        raise ValueError("action string is empty; expected segments like 'w-24,none-8'")
    frames: list[frozenset[str]] = []
    for segment in cleaned.split(","):
        keys, sep, duration = segment.partition("-")
        if not segment or not sep or not keys:
            raise ValueError(f"action segment {segment!r} in {actions!r} is not '<keys>-<frames>' (e.g. 'w-24')")
        if not duration.isdigit() or int(duration) <= 0:
            raise ValueError(
                f"action segment {segment!r} in {actions!r} has duration {duration!r}; expected a positive integer"
            )
        keys = keys.lower()
        if keys == "none":
            held: frozenset[str] = frozenset()
        else:
            unknown = sorted(set(keys) - set(ACTION_KEYS))
            if unknown:
                raise ValueError(
                    f"action segment {segment!r} in {actions!r} has unknown keys {unknown}; "
                    f"expected letters from {ACTION_KEYS!r} or 'none'"
                )
            held = frozenset(keys)
        frames.extend([held] * int(duration))
    return frames


def _rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rot_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def target_velocity(controls: frozenset[str], translation_speed: float, rotation_speed_rad: float) -> np.ndarray:
    """Target per-frame velocity ``[forward, strafe_right, yaw_right, pitch_up]`` for a set of controls."""

    def axis(pos: str, neg: str) -> float:
        return (1.0 if pos in controls else 0.0) - (1.0 if neg in controls else 0.0)

    return np.array(
        [
            axis("forward", "back") * translation_speed,
            axis("strafe_right", "strafe_left") * translation_speed,
            axis("yaw_right", "yaw_left") * rotation_speed_rad,
            axis("pitch_up", "pitch_down") * rotation_speed_rad,
        ]
    )


def motion_params(
    spec: KeyMapping,
    translation_speed: float | None,
    rotation_speed_deg: float | None,
    pitch_limit_deg: float | None,
) -> tuple[float, float, float]:
    """Resolve optional speeds against a mapping's defaults and check them.
    Returns ``(translation per frame, rotation rad per frame, pitch limit rad)``."""
    values = {
        "translation_speed": spec.translation_speed if translation_speed is None else translation_speed,
        "rotation_speed_deg": spec.rotation_speed_deg if rotation_speed_deg is None else rotation_speed_deg,
        "pitch_limit_deg": spec.pitch_limit_deg if pitch_limit_deg is None else pitch_limit_deg,
    }
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if not 0 < values["pitch_limit_deg"] <= 90:
        raise ValueError(f"pitch_limit_deg must be in (0, 90], got {values['pitch_limit_deg']!r}")
    return (
        float(values["translation_speed"]),
        math.radians(values["rotation_speed_deg"]),
        math.radians(values["pitch_limit_deg"]),
    )


class CameraMotion:
    """Integrates per-frame controls into camera-to-world poses (the motion model shared by action strings and
    the live controller). State: ``pose`` (4,4) float64, ``pitch`` (rad), ``velocity`` (4,), ``controls`` (last
    frame's controls, to detect new presses)."""

    def __init__(self, mapping: KeyMapping, pitch_limit_rad: float, smooth: bool, fps: float = FPS) -> None:
        self.mapping = mapping
        self.pitch_limit = pitch_limit_rad
        self.smooth = smooth
        self.dt = 1.0 / fps
        self.pose = np.eye(4)
        self.pitch = 0.0
        self.velocity = np.zeros(4)
        self.controls: frozenset[str] = frozenset()

    def step(self, controls: frozenset[str], target: np.ndarray, extra_yaw: float = 0.0, extra_pitch: float = 0.0):
        """Advance one frame towards ``target`` velocity; ``extra_*`` (rad) are direct rotations (mouse look).
        Returns the new pose (4,4)."""
        if not self.smooth or controls - self.controls:
            velocity = target.tolist()
        else:
            velocity = [
                v + (1.0 - math.exp(-self.dt / (TAU_HELD if abs(t) > 1e-12 else TAU_COAST))) * (t - v)
                for v, t in zip(self.velocity.tolist(), target.tolist())
            ]
        self.velocity = np.array(velocity)
        self.controls = controls
        fwd_speed, strafe_speed, yaw, pitch_step = velocity
        yaw += extra_yaw
        pitch_step += extra_pitch

        new_pitch = self.pitch + pitch_step
        # a pose placed beyond the limit (reset to an imported pose) may move back but not further out
        low, high = min(-self.pitch_limit, self.pitch), max(self.pitch_limit, self.pitch)
        if self.mapping.pitch_saturates:
            new_pitch = min(high, max(low, new_pitch))
            pitch_step = new_pitch - self.pitch
        elif not low <= new_pitch <= high:
            new_pitch, pitch_step = self.pitch, 0.0
        self.pitch = new_pitch

        # rot = rot_y(yaw) @ R @ rot_x(pitch_step), on Python floats (24 steps a chunk sit on the key-to-frame path)
        (r0, r1, r2), pos = self.pose[:3, :3].tolist(), self.pose[:3, 3].tolist()
        cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch_step), math.sin(pitch_step)
        rows = [[cy * a + sy * b for a, b in zip(r0, r2)], r1, [cy * b - sy * a for a, b in zip(r0, r2)]]
        rot = [[x, cp * y + sp * z, cp * z - sp * y] for x, y, z in rows]
        move = [0.0, 0.0, 0.0]
        for column, speed in ((2, fwd_speed), (0, strafe_speed)):  # the camera's Z / X axes on the world XZ plane
            ax, az = rot[0][column], rot[2][column]
            norm = math.hypot(ax, az)
            if norm > 0:
                ax, az = ax / (norm + self.mapping.axis_eps), az / (norm + self.mapping.axis_eps)
            move[0] += ax * speed
            move[2] += az * speed
        pose = np.eye(4)
        pose[:3, :3] = rot
        pose[:3, 3] = [p + m for p, m in zip(pos, move)]
        self.pose = pose
        return pose.copy()


def actions_to_poses(
    actions: str,
    mapping: str = "sana-wm-v1",
    translation_speed: float | None = None,
    rotation_speed_deg: float | None = None,
    pitch_limit_deg: float | None = None,
    smooth: bool | None = None,
) -> np.ndarray:
    """Roll an action string out into camera-to-world poses.

    Args:
        actions: e.g. ``"w-80,jw-40,none-8"`` (see ``parse_actions``).
        mapping: ``"sana-wm-v1"`` (a/d strafe, j/l yaw; diffusers/SGLang) or ``"sana-wm-v2"`` (a/d yaw,
            j/l strafe; NVlabs streaming). See the module docstring.
        translation_speed: units per frame; None = the mapping's default (v1 0.05, v2 0.025).
        rotation_speed_deg: degrees per frame for yaw and pitch; None = default (v1 1.2, v2 0.6).
        pitch_limit_deg: largest absolute pitch; None = default (v1 85, v2 60).
        smooth: NVlabs velocity smoothing; None = the mapping's model (v1 off, v2 on).

    Returns:
        (N+1, 4, 4) float64 camera-to-world poses (OpenCV), identity first, one per frame after it.
        With ``sana-wm-v1`` this equals diffusers ``action_string_to_c2w``.
    """
    frames = parse_actions(actions)
    spec = get_mapping(mapping)
    t_speed, r_speed, limit = motion_params(spec, translation_speed, rotation_speed_deg, pitch_limit_deg)
    motion = CameraMotion(spec, limit, spec.smooth if smooth is None else smooth)
    poses = np.empty((len(frames) + 1, 4, 4))
    poses[0] = np.eye(4)
    for i, keys in enumerate(frames):
        controls = frozenset(spec.keys[k] for k in keys)
        poses[i + 1] = motion.step(controls, target_velocity(controls, t_speed, r_speed))
    return poses
