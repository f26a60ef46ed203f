"""Camera conventions, pose files, keyframe paths, presets and the top-down preview."""

import json
import math

import numpy as np
import pytest
from PIL import Image

import controllers
from controllers.paths import look_at, matrix_from_quat, quat_from_matrix, slerp


def _random_poses(rng, n):
    q = rng.normal(size=(n, 4))
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, :3, :3] = matrix_from_quat(q)
    c2w[:, :3, 3] = rng.normal(size=(n, 3)) * 3
    return c2w


# --------------------------------------------------------------------------- conventions


def test_convention_round_trips_are_exact():
    c2w = _random_poses(np.random.default_rng(0), 50)
    for other in ("opengl", "blender"):
        there = controllers.convert_poses(c2w, "opencv", other)
        assert np.abs(controllers.convert_poses(there, other, "opencv") - c2w).max() <= 1e-6
        assert np.abs(there - c2w).max() > 0.1
    gl = controllers.convert_poses(c2w, "opencv", "opengl")
    via = controllers.convert_poses(controllers.convert_poses(gl, "opengl", "blender"), "blender", "opencv")
    assert np.abs(via - c2w).max() <= 1e-6
    assert controllers.convert_poses(c2w[0], "OpenCV", "opengl").shape == (4, 4)
    # an upright camera looking along each convention's horizontal "forward" becomes our identity
    assert np.allclose(controllers.convert_poses(np.eye(4), "opengl", "opencv"), np.eye(4))
    blender_level = np.eye(4)
    blender_level[:3, :3] = [[1, 0, 0], [0, 0, -1], [0, 1, 0]]  # rotation X 90 deg: looks along +Y_world
    assert np.allclose(controllers.convert_poses(blender_level, "blender", "opencv"), np.eye(4))


def _opengl_orbit(centre, radius, n, height):
    """OpenGL c2w (camera looks down -Z, +Y up, world +Y up) circling ``centre`` and facing it."""
    poses = np.tile(np.eye(4), (n, 1, 1))
    for i, a in enumerate(np.linspace(0, 2 * np.pi, n, endpoint=False)):
        pos = centre + np.array([radius * np.cos(a), height, radius * np.sin(a)])
        back = (pos - centre) / np.linalg.norm(pos - centre)
        right = np.cross([0.0, 1.0, 0.0], back)
        right /= np.linalg.norm(right)
        poses[i, :3, :3] = np.stack([right, np.cross(back, right), back], axis=1)
        poses[i, :3, 3] = pos
    return poses


def test_opengl_orbit_faces_its_centre_in_opencv(tmp_path):
    centre = np.array([1.0, 0.5, -2.0])
    np.save(tmp_path / "orbit.npy", _opengl_orbit(centre, 3.0, 24, 1.0))
    c2w, intrinsics = controllers.load_poses(tmp_path / "orbit.npy", convention="opengl")
    assert intrinsics is None
    centre_cv = np.array([centre[0], -centre[1], -centre[2]])  # OpenGL world (Y up) -> ours (Y down)
    to_centre = centre_cv - c2w[:, :3, 3]
    to_centre /= np.linalg.norm(to_centre, axis=1, keepdims=True)
    assert np.abs(c2w[:, :3, 2] - to_centre).max() < 1e-9  # +Z (forward) points at the centre
    assert np.all(c2w[:, 1, 1] > 0.9)  # image "down" is world down: the cameras stay upright
    assert np.all(c2w[:, 1, 3] < centre_cv[1])  # the orbit is above its centre (smaller y)


def test_pose_files_round_trip(tmp_path):
    c2w = _random_poses(np.random.default_rng(1), 10)
    k = np.array([500.0, 505.0, 320.0, 240.0])
    for convention in ("opencv", "opengl", "blender"):
        for suffix, intr in ((".npy", None), (".npz", k), (".json", np.tile(k, (10, 1)))):
            path = controllers.save_poses(tmp_path / f"p_{convention}{suffix}", c2w, intr, convention=convention)
            back, back_k = controllers.load_poses(path, convention=None if suffix != ".npy" else convention)
            assert np.abs(back - c2w).max() <= 1e-12
            assert (back_k is None) if intr is None else np.array_equal(back_k, intr)
    raw = np.load(tmp_path / "p_opengl.npz")
    assert np.allclose(raw["c2w"], controllers.convert_poses(c2w, "opencv", "opengl"))
    with pytest.raises(ValueError, match="declares convention 'blender'"):
        controllers.load_poses(tmp_path / "p_blender.json", convention="opencv")


def test_pose_file_intrinsics_forms(tmp_path):
    c2w = controllers.preset("dolly", 5)
    (tmp_path / "fov.json").write_text(json.dumps({"c2w": c2w.tolist(), "fov_deg": 90.0}))
    with pytest.raises(ValueError, match="image_size"):
        controllers.load_poses(tmp_path / "fov.json")
    _, k = controllers.load_poses(tmp_path / "fov.json", image_size=(704, 1280))
    assert np.allclose(k, [640.0, 640.0, 640.0, 352.0])
    K = np.array([[800.0, 0, 400], [0, 810, 300], [0, 0, 1]])
    np.savez(tmp_path / "k.npz", poses=c2w[:, :3], intrinsics=np.broadcast_to(K, (5, 3, 3)))  # (F,3,4) poses
    back, k = controllers.load_poses(tmp_path / "k.npz")
    assert np.allclose(back, c2w) and k.shape == (5, 4) and np.allclose(k[2], [800, 810, 400, 300])
    gl = controllers.convert_poses(c2w, "opencv", "opengl")
    transforms = {"camera_angle_x": math.radians(60), "w": 640, "h": 360,
                  "frames": [{"file_path": f"{i}.png", "transform_matrix": m.tolist()} for i, m in enumerate(gl)]}
    (tmp_path / "transforms.json").write_text(json.dumps(transforms))
    back, k = controllers.load_poses(tmp_path / "transforms.json")  # NeRF transforms.json: OpenGL by default
    focal = 320 / math.tan(math.radians(30))
    assert np.allclose(back, c2w) and np.allclose(k, [focal, focal, 320, 180])


def test_pose_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        controllers.load_poses(tmp_path / "missing.npy")
    np.save(tmp_path / "bad_shape.npy", np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"must have shape \(F, 4, 4\)"):
        controllers.load_poses(tmp_path / "bad_shape.npy")
    nan = np.tile(np.eye(4), (3, 1, 1))
    nan[1, 2, 3] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    with pytest.raises(ValueError, match=r"nan.npy poses\[1\] holds NaN"):
        controllers.load_poses(tmp_path / "nan.npy")
    shear = np.tile(np.eye(4), (3, 1, 1))
    shear[2, 0, 1] = 0.3
    np.save(tmp_path / "shear.npy", shear)
    with pytest.raises(ValueError, match=r"poses\[2\] 3x3 block is not a rotation"):
        controllers.load_poses(tmp_path / "shear.npy")
    np.save(tmp_path / "ok.npy", np.eye(4)[None])
    with pytest.raises(ValueError, match="unknown source camera convention 'vulkan'"):
        controllers.load_poses(tmp_path / "ok.npy", convention="vulkan")
    with pytest.raises(ValueError, match="unknown target camera convention"):
        controllers.convert_poses(np.eye(4), "opencv", "unity")
    (tmp_path / "x.txt").write_text("1")
    with pytest.raises(ValueError, match="unsupported pose file type '.txt'"):
        controllers.load_poses(tmp_path / "x.txt")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        controllers.load_poses(tmp_path / "broken.json")
    with pytest.raises(ValueError, match=r"\.npy holds poses only"):
        controllers.save_poses(tmp_path / "p.npy", np.eye(4)[None], [1.0, 1.0, 0.0, 0.0])
    for bad in ([1, 2, 3], np.ones((2, 5)), np.ones((2, 2, 3))):
        with pytest.raises(ValueError, match="intrinsics must have shape"):
            controllers.as_intrinsics(bad)


# --------------------------------------------------------------------------- keyframes


def test_keyframes_pass_through_and_interpolate(tmp_path):
    spec = {
        "fps": 16,
        "keyframes": [
            {"time": 0.0, "position": [0, 0, 0], "fov": 60},
            {"time": 1.0, "position": [1, 0, 2], "look_at": [0, 0, 4], "fov": 50},
            {"time": 2.5, "position": [0, -0.5, 4], "yaw": 90, "pitch": 10, "roll": 5, "fov": 70},
            {"time": 3.0, "position": [-1, -0.5, 4.5], "yaw": 170},
        ],
    }
    spec["keyframes"][3]["fov"] = 65
    c2w, fov = controllers.keyframe_path(spec)
    assert c2w.shape == (49, 4, 4) and fov.shape == (49,)
    controllers.check_poses(c2w)
    for frame, key in zip((0, 16, 40, 48), spec["keyframes"]):
        assert np.abs(c2w[frame, :3, 3] - key["position"]).max() < 1e-12
        assert fov[frame] == pytest.approx(key["fov"])
    assert np.allclose(c2w[0], np.eye(4))
    assert np.abs(c2w[16, :3, :3] - look_at([1, 0, 2], [0, 0, 4])).max() < 1e-12
    ypr = np.radians([90, 10, 5])
    ry = np.array([[math.cos(ypr[0]), 0, math.sin(ypr[0])], [0, 1, 0], [-math.sin(ypr[0]), 0, math.cos(ypr[0])]])
    rx = np.array([[1, 0, 0], [0, math.cos(ypr[1]), -math.sin(ypr[1])], [0, math.sin(ypr[1]), math.cos(ypr[1])]])
    rz = np.array([[math.cos(ypr[2]), -math.sin(ypr[2]), 0], [math.sin(ypr[2]), math.cos(ypr[2]), 0], [0, 0, 1]])
    assert np.abs(c2w[40, :3, :3] - ry @ rx @ rz).max() < 1e-12
    # the position spline is smooth: first differences change gradually across interior keyframes
    velocity = np.diff(c2w[:, :3, 3], axis=0)
    assert np.abs(np.diff(velocity, axis=0)).max() < 0.02
    (tmp_path / "path.json").write_text(json.dumps(spec))
    assert np.array_equal(controllers.load_path(tmp_path / "path.json"), c2w)
    (tmp_path / "orbit.json").write_text(json.dumps({"preset": "orbit", "n_frames": 33, "radius": 1.5}))
    assert np.array_equal(controllers.load_path(tmp_path / "orbit.json"), controllers.preset("orbit", 33, radius=1.5))


def _angle(a, b):
    """Rotation angle between two unit quaternions."""
    return 2 * math.acos(min(1.0, abs(float(np.dot(a, b)))))


def test_slerp_gives_unit_quaternions_on_the_great_arc():
    rng = np.random.default_rng(3)
    for _ in range(20):
        r0, r1 = matrix_from_quat(rng.normal(size=(2, 4)))
        q0, q1 = quat_from_matrix(r0), quat_from_matrix(r1)
        assert np.allclose(matrix_from_quat(q0), r0) and np.allclose(matrix_from_quat(q1), r1)
        u = np.linspace(0, 1, 11)
        q = slerp(q0, q1, u)
        assert np.allclose(np.linalg.norm(q, axis=1), 1, atol=1e-12)
        assert np.allclose(matrix_from_quat(q[0]), r0) and np.allclose(matrix_from_quat(q[-1]), r1)
        total = _angle(q0, q1)
        assert np.allclose([_angle(q0, qi) for qi in q], u * total, atol=1e-9)  # constant angular speed
    assert np.allclose(slerp(q0, q0, 0.5), q0)


def test_keyframe_errors():
    base = [{"time": 0, "position": [0, 0, 0]}, {"time": 1, "position": [0, 0, 1]}]
    controllers.keyframe_path(base)
    for frames, match in [
        (base[:1], "at least 2 keyframes"),
        ([base[0], {**base[1], "time": 0}], "strictly increase"),
        ([base[0], {"time": 1}], "missing 'position'"),
        ([base[0], {**base[1], "look_at": [0, 0, 3], "yaw": 3}], "both look_at and yaw"),
        ([base[0], {**base[1], "look_at": [0, 0, 1]}], "coincides"),
        ([base[0], {**base[1], "look_at": [0, 5, 1]}], "straight up or down"),
        ([base[0], {**base[1], "speed": 2}], r"unknown fields \['speed'\]"),
        ([base[0], {**base[1], "fov": 50}], "fov' on every keyframe or on none"),
        ([base[0], {**base[1], "position": [0, 0]}], r"keyframes\[1\].position must be 3 finite numbers"),
        ([base[0], {**base[1], "yaw": "left"}], r"keyframes\[1\].yaw must be a finite number"),
    ]:
        with pytest.raises(ValueError, match=match):
            controllers.keyframe_path(frames)
    with pytest.raises(ValueError, match="fps must be > 0"):
        controllers.keyframe_path({"fps": 0, "keyframes": base})


# --------------------------------------------------------------------------- presets and preview


def test_presets():
    for name in controllers.PRESETS:
        c2w = controllers.preset(name, 40)
        assert c2w.shape == (40, 4, 4) and np.allclose(c2w[0], np.eye(4))
        controllers.check_poses(c2w)
        assert np.allclose(c2w[:, 1, 1], 1.0)  # all presets stay level
    orbit = controllers.preset("orbit", 40, radius=2.0, degrees=270)
    to_centre = np.array([0, 0, 2.0]) - orbit[:, :3, 3]
    assert np.allclose(np.linalg.norm(to_centre, axis=1), 2.0)
    assert np.allclose(orbit[:, :3, 2], to_centre / 2.0)
    assert controllers.preset("dolly", 11, distance=2.0)[-1, 2, 3] == pytest.approx(2.0)
    assert math.degrees(math.atan2(*controllers.preset("pan", 5, degrees=60)[-1, [0, 2], 2])) == pytest.approx(60)
    with pytest.raises(ValueError, match="unknown path preset 'spiral'"):
        controllers.preset("spiral", 10)
    with pytest.raises(ValueError, match=r"has no parameters \['speed'\]"):
        controllers.preset("orbit", 10, speed=3)
    with pytest.raises(ValueError, match="n_frames must be an int >= 2"):
        controllers.preset("orbit", 1)


def test_preview_png(tmp_path):
    c2w = controllers.actions_to_poses("w-40,jw-40,lw-80")
    image = controllers.preview_png(c2w, tmp_path / "path.png", size=256)
    decoded = np.asarray(Image.open(tmp_path / "path.png").convert("RGB"))
    assert image.shape == (256, 256, 3) and np.array_equal(decoded, image)
    colours = {tuple(c) for c in image.reshape(-1, 3)}
    assert {(40, 90, 200), (235, 140, 30), (30, 160, 60), (210, 40, 40)} <= colours  # path, heading, start, end
    controllers.preview_png(controllers.preset("pan", 10), tmp_path / "still.png")  # a camera that never moves
    with pytest.raises(ValueError, match=r"c2w must have shape"):
        controllers.preview_png(np.eye(4), tmp_path / "bad.png")
