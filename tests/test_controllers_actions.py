"""Action strings -> poses: diffusers parity for sana-wm-v1, the NVlabs motion model for sana-wm-v2, errors."""

import math
import random

import numpy as np
import pytest
from diffusers.pipelines.sana_wm.cam_utils import action_string_to_c2w

import controllers
from controllers.actions import MAPPINGS, TAU_COAST, TAU_HELD, parse_actions


def _random_actions(rng: random.Random) -> str:
    segments = []
    for _ in range(rng.randint(1, 6)):
        keys = "".join(k for k in "wasdijkl" if rng.random() < 0.3) or "none"
        keys = "".join(rng.sample(keys, len(keys))) if keys != "none" else keys
        if rng.random() < 0.2:
            keys = keys.upper()
        segments.append(f"{keys}-{rng.randint(1, 30)}")
    return ",".join(segments)


def test_v1_matches_diffusers_on_random_strings():
    rng = random.Random(0)
    cases = [_random_actions(rng) for _ in range(150)]
    cases += ["w-80,jw-40,none-8", "i-100,k-5,i-20", "k-90,jl-30", "wasd-10,ijkl-10", " w - 3 ， d-2 ", "adws-7"]
    for actions in cases:
        ours = controllers.actions_to_poses(actions, mapping="sana-wm-v1")
        ref = action_string_to_c2w(actions)
        assert ours.shape == ref.shape and ours.dtype == np.float64
        assert np.abs(ours - ref).max() <= 1e-6, actions
    custom = dict(translation_speed=0.2, rotation_speed_deg=3.0, pitch_limit_deg=30.0)
    for actions in cases[:30]:
        ours = controllers.actions_to_poses(actions, mapping="sana-wm-v1", **custom)
        assert np.abs(ours - action_string_to_c2w(actions, **custom)).max() <= 1e-6, actions


def test_mappings_swap_strafe_and_yaw():
    v1 = controllers.actions_to_poses("a-10", mapping="sana-wm-v1")
    v2 = controllers.actions_to_poses("a-10", mapping="sana-wm-v2")
    assert np.allclose(v1[-1, :3, :3], np.eye(3)) and v1[-1, 0, 3] == pytest.approx(-0.5)  # strafe left
    assert np.allclose(v2[-1, :3, 3], 0) and v2[-1, 0, 2] < 0  # yaw left: forward turns towards -X
    j2 = controllers.actions_to_poses("j-10", mapping="sana-wm-v2")
    assert np.allclose(j2[-1, :3, :3], np.eye(3)) and j2[-1, 0, 3] < 0


def test_v2_velocity_model():
    spec = MAPPINGS["sana-wm-v2"]
    dt = 1 / 16
    poses = controllers.actions_to_poses("w-30,none-30", mapping="sana-wm-v2")
    step = np.diff(poses[:, 2, 3])
    norm = 1 / (1 + 1e-6)  # NVlabs normalises the horizontal axis by (|f| + 1e-6)
    assert np.allclose(step[:30], spec.translation_speed * norm, rtol=0, atol=1e-15)  # snap on press, held
    coast = step[30:] / step[29:-1]
    assert np.allclose(coast, math.exp(-dt / TAU_COAST), rtol=1e-9)  # release: exponential coast, tau 1 s
    # a key added while another is held snaps; a key released while another is held approaches with tau 0.45
    poses = controllers.actions_to_poses("wd-10,w-20", mapping="sana-wm-v2")
    yaw = np.arctan2(poses[:, 0, 2], poses[:, 2, 2])
    dyaw = np.diff(yaw)
    assert np.allclose(dyaw[:10], math.radians(spec.rotation_speed_deg))
    assert np.allclose(dyaw[11:] / dyaw[10:-1], math.exp(-dt / TAU_COAST))
    assert TAU_HELD == 0.45
    smooth_off = controllers.actions_to_poses("w-30,none-30", mapping="sana-wm-v2", smooth=False)
    assert np.allclose(smooth_off[30:, 2, 3], smooth_off[30, 2, 3])


def test_pitch_limits():
    v2 = controllers.actions_to_poses("i-200", mapping="sana-wm-v2")  # saturates at 60 degrees
    pitch = np.degrees(np.arcsin(-v2[:, 1, 2]))
    assert pitch.max() == pytest.approx(60.0) and pitch[-1] == pytest.approx(60.0)
    v1 = controllers.actions_to_poses("i-200", mapping="sana-wm-v1")  # the step past 85 is dropped
    assert np.degrees(np.arcsin(-v1[-1, 1, 2])) == pytest.approx(84.0)
    assert np.degrees(np.arcsin(-controllers.actions_to_poses("k-30", pitch_limit_deg=10)[-1, 1, 2])) == pytest.approx(
        -9.6
    )


def test_parse_actions():
    assert parse_actions("w-2,JW-1,none-1") == [{"w"}, {"w"}, {"j", "w"}, set()]
    for bad, match in [
        ("", "empty"),
        ("  ", "empty"),
        ("w-0", "duration"),
        ("w-x", "duration"),
        ("w--1", "duration"),
        ("w", "keys>-<frames"),
        ("-5", "keys>-<frames"),
        ("w-3,,d-2", "keys>-<frames"),
        ("wx-3", r"unknown keys \['x'\]"),
        ("q-1", "unknown keys"),
    ]:
        with pytest.raises(ValueError, match=match):
            controllers.actions_to_poses(bad)
    with pytest.raises(TypeError):
        parse_actions(None)
    with pytest.raises(ValueError, match="unknown key mapping"):
        controllers.actions_to_poses("w-1", mapping="sana-wm-v3")
    with pytest.raises(ValueError, match="translation_speed"):
        controllers.actions_to_poses("w-1", translation_speed=float("nan"))
    with pytest.raises(ValueError, match="pitch_limit_deg"):
        controllers.actions_to_poses("w-1", pitch_limit_deg=95)
