"""sana-wm render / image on the tiny demo world: real mp4 decoded with PyAV, sidecar poses, PNG size."""

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

import controllers
from server.cli import main

SIZE = ["--width", "64", "--height", "64"]
ROOT = Path(__file__).resolve().parents[1]


def _decode(path):
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_render_actions(tmp_path, capsys):
    out = tmp_path / "out.mp4"
    code = main(
        [
            "render",
            "--demo",
            *SIZE,
            "--actions",
            "w-24,l-24",
            "--output",
            str(out),
            "--preview",
            "--frames-npz",
            str(tmp_path / "raw.npz"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    frames = _decode(out)
    assert frames.shape == (48, 64, 64, 3)
    side = json.loads((tmp_path / "out.json").read_text())
    expected = controllers.actions_to_poses("w-24,l-24")[1:]
    got = np.array([f["c2w"] for f in side["frames"]])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert side["frame_count"] == 48 and side["fps"] == 16 and side["seed"] == 0
    assert side["model"]["kind"] == "demo" and side["sampler"] == "streaming"
    assert [f["index"] for f in side["frames"]] == list(range(1, 49))
    assert len(side["timings"]["chunk_s"]) == 2 and side["timings"]["total_s"] > 0
    fx, _, cx, cy = side["frames"][0]["intrinsics"]
    assert (cx, cy) == (32.0, 32.0) and fx > 0
    assert Image.open(tmp_path / "out.path.png").size[0] > 0
    with np.load(tmp_path / "raw.npz") as raw:  # the mp4 holds the raw frames, H.264 4:2:0-compressed
        luma = np.array([0.299, 0.587, 0.114])
        err = np.abs(raw["frames"] @ luma - frames @ luma).mean(axis=(1, 2))
        assert err.max() < 8  # the demo's random-weight frames are noise-like: luma survives, chroma is halved


def test_render_preset_path_and_poses(tmp_path, capsys):
    c2w = controllers.preset("orbit", 25)
    controllers.save_poses(tmp_path / "p.json", c2w, intrinsics=[40.0, 40.0, 32.0, 32.0], convention="opengl")
    path = tmp_path / "path.json"
    path.write_text(json.dumps({"preset": "dolly", "n_frames": 25}))
    for extra, name, expected in [
        (["--preset", "orbit", "--frames", "24"], "a", c2w[1:]),
        (["--path", str(path)], "b", controllers.load_path(path)[1:]),
        (["--poses", str(tmp_path / "p.json"), "--convention", "opengl"], "c", c2w[1:]),
    ]:
        code = main(["render", "--demo", *SIZE, *extra, "--output", str(tmp_path / f"{name}.mp4")])
        assert code == 0, capsys.readouterr().err
        side = json.loads((tmp_path / f"{name}.json").read_text())
        np.testing.assert_allclose(np.array([f["c2w"] for f in side["frames"]]), expected, atol=1e-9)
        assert _decode(tmp_path / f"{name}.mp4").shape == (24, 64, 64, 3)
    assert side["frames"][0]["intrinsics"] == [40.0, 40.0, 32.0, 32.0]


def test_render_partial_chunk_and_bidirectional(tmp_path, capsys):
    code = main(["render", "--demo", *SIZE, "--actions", "w-10", "--output", str(tmp_path / "s.mp4")])
    assert code == 0, capsys.readouterr().err
    assert _decode(tmp_path / "s.mp4").shape[0] == 10
    assert json.loads((tmp_path / "s.json").read_text())["padded_frames"] == 14
    code = main(
        [
            "render",
            "--demo",
            *SIZE,
            "--actions",
            "d-10",
            "--sampler",
            "bidirectional",
            "--num-steps",
            "2",
            "--output",
            str(tmp_path / "b.mp4"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    side = json.loads((tmp_path / "b.json").read_text())
    assert _decode(tmp_path / "b.mp4").shape == (10, 64, 64, 3) and side["sampler"] == "bidirectional"
    assert side["bidirectional"]["num_steps"] == 2


def test_render_dry_run_spends_no_compute(tmp_path, capsys):
    code = main(["render", "--demo", "--preset", "pan", "--output", str(tmp_path / "x.mp4"), "--dry-run"])
    assert code == 0
    assert (tmp_path / "x.path.png").is_file() and not (tmp_path / "x.mp4").exists()


def test_image_size(tmp_path, capsys):
    out = tmp_path / "still.png"
    code = main(
        ["image", "--demo", "--prompt", "a red lighthouse", "--width", "96", "--height", "64", "--output", str(out)]
    )
    assert code == 0, capsys.readouterr().err
    im = Image.open(out)
    assert im.format == "PNG" and im.size == (96, 64) and im.mode == "RGB"


@pytest.mark.slow
def test_render_subprocess(tmp_path):
    """The real console entry in a fresh interpreter (python -m server.cli)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", SDL_VIDEODRIVER="dummy")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "server.cli",
            "render",
            "--demo",
            *SIZE,
            "--actions",
            "w-24",
            "--output",
            str(tmp_path / "o.mp4"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert _decode(tmp_path / "o.mp4").shape == (24, 64, 64, 3)
    assert (tmp_path / "o.json").is_file() and "Traceback" not in r.stderr
