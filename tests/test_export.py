"""server.export: H.264 mp4 decoded back with PyAV, sidecar JSON, PNG and raw-frame archives."""

import json

import av
import numpy as np
import pytest
from PIL import Image

from server.export import VideoWriter, save_frames_npz, save_png, sidecar_path, write_sidecar


def _smooth_frames(n, h=64, w=96):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack(
        [np.stack([(x * 2 + 5 * i) % 256, (y * 3 + 2 * i) % 256, np.full_like(x, 40 * (i % 6))], -1) for i in range(n)]
    ).astype(np.uint8)


def test_mp4_roundtrip(tmp_path):
    frames = _smooth_frames(20)
    out = tmp_path / "sub" / "clip.mp4"
    with VideoWriter(out, fps=16) as video:
        video.write(frames[:8])
        video.write(frames[8])  # a single (H,W,3) frame
        video.write(frames[9:])
    assert video.frame_count == 20
    with av.open(str(out)) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.average_rate == 16
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    assert decoded.shape == frames.shape
    assert np.abs(decoded.astype(int) - frames).mean() < 6  # lossy, but the same pictures in the same order


def test_writer_rejects_bad_frames(tmp_path):
    with VideoWriter(tmp_path / "a.mp4") as video:
        with pytest.raises(ValueError, match="uint8"):
            video.write(np.zeros((2, 64, 96, 3), np.float32))
        with pytest.raises(ValueError, match="even"):
            video.write(np.zeros((2, 63, 96, 3), np.uint8))
        video.write(np.zeros((1, 64, 96, 3), np.uint8))
        with pytest.raises(ValueError, match="size changed"):
            video.write(np.zeros((1, 32, 96, 3), np.uint8))


def test_sidecar(tmp_path):
    poses = np.tile(np.eye(4), (3, 1, 1))
    poses[:, 2, 3] = [0.1, 0.2, 0.3]
    path = write_sidecar(
        tmp_path / "out.mp4",
        poses=poses,
        intrinsics=[50.0, 50.0, 48.0, 32.0],
        fps=16,
        width=96,
        height=64,
        seed=7,
        model={"kind": "demo"},
        prompt="p",
        sampler="streaming",
        timings={"total_s": 1.5},
    )
    assert path == sidecar_path(tmp_path / "out.mp4") == tmp_path / "out.json"
    doc = json.loads(path.read_text())
    assert doc["frame_count"] == 3 and doc["seed"] == 7 and doc["video"] == "out.mp4"
    assert np.array_equal(np.array([f["c2w"] for f in doc["frames"]]), poses)
    assert doc["frames"][2]["intrinsics"] == [50.0, 50.0, 48.0, 32.0]
    with pytest.raises(ValueError, match="intrinsics"):
        write_sidecar(
            tmp_path / "b.mp4", poses=poses, intrinsics=np.zeros((2, 4)), fps=16, width=96, height=64, seed=0, model="m"
        )


def test_png_and_npz(tmp_path):
    img = _smooth_frames(1)[0]
    save_png(tmp_path / "a.png", img)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), img)
    frames = _smooth_frames(3)
    save_frames_npz(tmp_path / "f.npz", frames, poses=np.zeros((3, 4, 4)))
    with np.load(tmp_path / "f.npz") as z:
        assert np.array_equal(z["frames"], frames) and z["poses"].shape == (3, 4, 4)
    with pytest.raises(ValueError, match="uint8"):
        save_png(tmp_path / "b.png", img.astype(np.float32))
