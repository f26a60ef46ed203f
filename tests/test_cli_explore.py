"""sana-wm explore headless (SDL dummy driver) with scripted keys, recorded, then replayed bitwise."""

import json

import numpy as np

from server.cli import main
from server.record import load_record, timeline_poses

SIZE = ["--width", "64", "--height", "64"]


def test_explore_record_replay_bitwise(tmp_path, capsys):
    rec, live, again = tmp_path / "s.jsonl", tmp_path / "live.npz", tmp_path / "replay.npz"
    # forward, look right with the arrow, snapshot, a mouse drag, restore the snapshot, strafe with shift
    events = (
        "0:keydown:w,0.05:keydown:right,0.3:keyup:right,0.35:press:f5,0.4:mouse:25:-10,0.5:keyup:w,"
        "0.6:press:f9,0.7:keydown:left shift,0.7:keydown:d"
    )
    code = main(
        [
            "explore",
            "--demo",
            *SIZE,
            "--seed",
            "3",
            "--fps",
            "48",
            "--events",
            events,
            "--max-chunks",
            "4",
            "--record",
            str(rec),
            "--frames-npz",
            str(live),
            "--output-dir",
            str(tmp_path),
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert "explore: 4 chunks" in err
    record = load_record(rec)
    assert record.header["seed"] == 3 and record.header["model"]["kind"] == "demo"
    kinds = [e["type"] for e in record.events]
    assert kinds.count("step") == 4 and "snapshot" in kinds and "restore" in kinds
    moved = [np.abs(e["poses"][-1] - np.eye(4)).max() for e in record.steps()]
    assert max(moved) > 0.05  # the keys moved the camera

    code = main(["replay", str(rec), "--output", str(tmp_path / "r.mp4"), "--frames-npz", str(again), "--strict"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "4/4 recorded chunks bitwise identical" in err
    with np.load(live) as a, np.load(again) as b:
        assert a["frames"].shape == (96, 64, 64, 3)
        assert np.array_equal(a["frames"], b["frames"])
    side = json.loads((tmp_path / "r.json").read_text())
    assert side["frame_count"] == 96 and side["sampler"] == "streaming"

    # a bidirectional take of the final timeline (the restore cut the branch after the snapshot)
    code = main(
        ["replay", str(rec), "--sampler", "bidirectional", "--num-steps", "2", "--output", str(tmp_path / "b.mp4")]
    )
    assert code == 0, capsys.readouterr().err
    timeline = timeline_poses(record)
    side = json.loads((tmp_path / "b.json").read_text())
    assert side["frame_count"] == len(timeline) and side["sampler"] == "bidirectional"
    np.testing.assert_array_equal(np.array([f["c2w"] for f in side["frames"]]), timeline)


def test_explore_hotkeys_capture_and_screenshot(tmp_path, capsys):
    events = "0:press:f8,0:keydown:w,0.1:press:f12,0.2:press:p,0.3:press:p,0.4:press:h"
    code = main(["explore", "--demo", *SIZE, "--events", events, "--max-chunks", "2", "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 0, err
    mp4s, pngs = list(tmp_path.glob("*.mp4")), list(tmp_path.glob("*.png"))
    assert len(mp4s) == 1 and len(pngs) == 1, err
    import av

    with av.open(str(mp4s[0])) as c:
        n = sum(1 for _ in c.decode(video=0))
    assert n > 0 and "explore: 2 chunks" in err


def test_explore_connect_to_server_and_replay(tmp_path, capsys):
    """explore --connect against a real server on loopback; its client-side record replays bitwise in-process."""
    from engine import World
    from server.app import ServerConfig, ServerThread

    rec, live, again = tmp_path / "s.jsonl", tmp_path / "live.npz", tmp_path / "replay.npz"
    with ServerThread(World.demo(height=64, width=64), ServerConfig(port=0)) as srv:
        code = main(
            [
                "explore",
                "--connect",
                srv.url,
                "--prompt",
                "a harbour",
                "--seed",
                "2",
                "--fps",
                "48",
                "--events",
                "0:keydown:a,0.2:keyup:a,0.2:keydown:up",
                "--max-chunks",
                "2",
                "--record",
                str(rec),
                "--frames-npz",
                str(live),
            ]
        )
        err = capsys.readouterr().err
    assert code == 0, err
    assert "explore: 2 chunks" in err
    assert load_record(rec).header["model"]["kind"] == "server"
    code = main(["replay", str(rec), "--output", str(tmp_path / "r.mp4"), "--frames-npz", str(again)])
    assert code == 2 and "--demo or --model" in capsys.readouterr().err
    code = main(
        [
            "replay",
            str(rec),
            "--demo",
            *SIZE,
            "--output",
            str(tmp_path / "r.mp4"),
            "--frames-npz",
            str(again),
            "--strict",
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert "2/2 recorded chunks bitwise identical" in err
    with np.load(live) as a, np.load(again) as b:
        assert a["frames"].shape == (48, 64, 64, 3) and np.array_equal(a["frames"], b["frames"])
