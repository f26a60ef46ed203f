"""LiveController: key and mouse events -> per-frame poses, velocity smoothing, taps, snapshots."""

import json
import math

import numpy as np
import pytest

import controllers
from controllers.actions import MAPPINGS, TAU_COAST, TAU_HELD

SPEED = MAPPINGS["sana-wm-v2"].translation_speed
AXIS = 1 / (1 + 1e-6)  # NVlabs normalises the horizontal axes by (|f| + 1e-6)
DT = 1 / 16


def _forward_steps(poses, start_z=0.0):
    return np.diff(np.concatenate([[start_z], poses[:, 2, 3]]))


def test_events_reproduce_action_strings():
    cam = controllers.LiveController()
    cam.key_down("w", 0.0)
    first = cam.poses_for_next(24)
    cam.key_up("w", 1.5)
    second = cam.poses_for_next(24)
    ref = controllers.actions_to_poses("w-24,none-24", mapping="sana-wm-v2")[1:]
    assert np.abs(np.concatenate([first, second]) - ref).max() == 0
    assert cam.frame == 48 and np.array_equal(cam.pose, ref[-1])
    fresh = controllers.LiveController(mapping="sana-wm-v1")
    assert np.array_equal(
        fresh.poses_for_actions("w-5,jd-7"), controllers.actions_to_poses("w-5,jd-7", mapping="sana-wm-v1")[1:]
    )


def test_tap_between_chunks_moves_the_camera():
    cam = controllers.LiveController()
    cam.poses_for_next(24)  # idle chunk
    assert np.array_equal(cam.pose, np.eye(4))
    cam.key_down("w", 10.0)
    cam.key_up("w", 10.02)  # down and up before the next chunk is built
    poses = cam.poses_for_next(24)
    steps = _forward_steps(poses)
    assert steps[0] == pytest.approx(SPEED * AXIS)  # the press snaps to full speed for one frame
    assert np.allclose(steps[1:] / steps[:-1], math.exp(-DT / TAU_COAST))  # then coasts
    assert poses[-1, 2, 3] > SPEED
    # a longer tap (0.5 s = 8 frames) keeps full speed for 8 frames
    cam = controllers.LiveController()
    cam.key_down("w", 0.0)
    cam.key_up("w", 0.5)
    steps = _forward_steps(cam.poses_for_next(24))
    assert np.allclose(steps[:8], SPEED * AXIS) and steps[8] < steps[7]


def test_held_key_approaches_target_smoothly():
    cam = controllers.LiveController()
    cam.key_down("w", 0.0)
    cam.key_down("shift", 0.0)  # Shift: a new press, snaps to double speed
    fast = _forward_steps(cam.poses_for_next(8))
    assert np.allclose(fast, 2 * SPEED * AXIS)
    z = cam.pose[2, 3]
    cam.key_up("shift", 1.0)  # w still held: approach the normal speed with tau 0.45 s
    steps = _forward_steps(cam.poses_for_next(16), z)
    decay = math.exp(-DT / TAU_HELD)
    expected = SPEED + (2 * SPEED - SPEED) * decay ** np.arange(1, 17)
    assert np.allclose(steps, expected * AXIS, rtol=1e-12)
    assert np.all(np.diff(steps) < 0) and steps[-1] > SPEED * AXIS


def test_release_coasts_to_zero():
    cam = controllers.LiveController()
    cam.key_down("d", 0.0)  # v2: d = yaw right
    cam.poses_for_next(10)
    cam.key_up("d", 0.6)
    poses = cam.poses_for_next(48)
    yaw = np.unwrap(np.arctan2(poses[:, 0, 2], poses[:, 2, 2]))
    dyaw = np.diff(yaw)
    assert np.allclose(dyaw[1:] / dyaw[:-1], math.exp(-DT / TAU_COAST))
    assert dyaw[-1] < 0.06 * math.radians(0.6) and np.all(dyaw > 0)


def test_events_follow_timestamps_inside_a_chunk():
    cam = controllers.LiveController()
    cam.key_down("w", 0.0)
    cam.key_up("w", 0.25)  # 4 frames forward
    cam.key_down("j", 0.5)  # then strafe left (v2), still held at build time
    poses = cam.poses_for_next(24)
    assert np.allclose(_forward_steps(poses)[:4], SPEED * AXIS)
    assert np.all(poses[:8, 0, 3] == 0)  # frames 4-7 coast forward; no strafe before frame 8
    assert np.allclose(np.diff(poses[7:, 0, 3]), -SPEED * AXIS)  # the new press snaps (forward coast ends)
    assert np.all(np.diff(poses[8:, 2, 3]) == 0)
    # events spanning more than the chunk are compressed to fit, in order
    cam = controllers.LiveController()
    cam.key_down("w", 0.0)
    cam.key_up("w", 10.0)
    steps = _forward_steps(cam.poses_for_next(24))
    assert np.allclose(steps[:23], SPEED * AXIS) and steps[23] < SPEED * AXIS


def test_mouse_look_and_aliases():
    cam = controllers.LiveController(mouse_deg_per_px=0.5)
    cam.mouse(10, 0, 0.0)  # 5 degrees right
    pose = cam.poses_for_next(4)[-1]
    assert math.degrees(math.atan2(pose[0, 2], pose[2, 2])) == pytest.approx(5.0)
    cam.mouse(0, 400, 1.0)  # 200 degrees down: the pitch stops at the limit
    pose = cam.poses_for_next(4)[-1]
    assert math.degrees(math.asin(-pose[1, 2])) == pytest.approx(-60.0)
    cam = controllers.LiveController()
    cam.key_down("ArrowLeft", 0.0)  # v2: left = strafe left (like j)
    cam.key_down("UP", 0.0)  # pitch up (like i)
    pose = cam.poses_for_next(4)[-1]
    assert pose[0, 3] < 0 and pose[1, 2] < 0
    assert cam.held_keys == {"j", "i"}
    cam.key_down("w", 1.0)
    cam.key_down("w", 1.1)  # auto-repeat is ignored
    cam.key_up("s", 1.2)  # not down: ignored
    assert cam.held_keys == {"j", "i", "w"}


def test_state_dict_round_trip():
    cam = controllers.LiveController()
    cam.key_down("w", 0.0)
    cam.key_down("d", 0.1)
    cam.poses_for_next(24)
    cam.key_up("d", 1.0)
    cam.mouse(3, -2, 1.1)
    cam.key_down("shift", 1.2)
    state = json.loads(json.dumps(cam.state_dict()))  # plain JSON values
    other = controllers.LiveController()
    other.load_state_dict(state)
    assert np.array_equal(other.poses_for_next(24), cam.poses_for_next(24))
    assert np.array_equal(other.poses_for_next(5), cam.poses_for_next(5))
    assert other.state_dict() == cam.state_dict()
    with pytest.raises(ValueError, match="different configuration"):
        controllers.LiveController(mapping="sana-wm-v1").load_state_dict(state)
    with pytest.raises(ValueError, match="missing"):
        other.load_state_dict({"version": 1})


def test_reset_and_errors():
    cam = controllers.LiveController()
    start = controllers.preset("orbit", 9)[4]
    cam.reset(start)
    cam.key_down("w", 0.0)
    poses = cam.poses_for_next(3)
    assert np.allclose(poses[0, :3, :3], start[:3, :3]) and not np.allclose(poses[0, :3, 3], start[:3, 3])
    with pytest.raises(ValueError, match="unknown key 'q'"):
        cam.key_down("q", 1.0)
    with pytest.raises(ValueError, match="earlier than the previous event"):
        cam.key_up("w", -1.0)
    with pytest.raises(ValueError, match="finite"):
        cam.mouse(float("nan"), 0, 2.0)
    with pytest.raises(ValueError, match="n_frames must be a positive int"):
        cam.poses_for_next(0)
    with pytest.raises(TypeError, match="keys_per_frame"):
        cam.poses_for_keys("w")
    with pytest.raises(ValueError, match=r"pose\[0\] 3x3 block is not a rotation"):
        cam.reset(np.diag([2.0, 1, 1, 1]))
    with pytest.raises(ValueError, match="keys_per_frame"):
        cam.poses_for_keys([])
    with pytest.raises(ValueError, match=r"unknown key 'x'"):
        cam.poses_for_keys([{"w"}, {"x"}])
