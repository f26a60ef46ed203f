"""server.record: the record file format, its validation, and the timeline of a branching session."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from controllers import LiveController
from server.record import (
    Recorder,
    apply_control_events,
    decode_array,
    encode_array,
    frames_digest,
    load_record,
    timeline_poses,
)


def _poses(n, z0):
    p = np.tile(np.eye(4), (n, 1, 1))
    p[:, 2, 3] = z0 + 0.1 * np.arange(n)
    return p


def _write(path, **kw):
    img = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    return Recorder(
        path,
        image=img,
        prompt="a harbour",
        seed=5,
        model={"kind": "demo", "height": 64, "width": 96},
        height=64,
        width=96,
        intrinsics=[40.0, 40.0, 48.0, 32.0],
        **kw,
    )


def test_roundtrip_is_exact(tmp_path):
    poses = _poses(3, 1 / 3)
    frames = np.random.default_rng(0).integers(0, 255, (3, 4, 4, 3), dtype=np.uint8)
    with _write(tmp_path / "r.jsonl", meta={"client": "test"}) as rec:
        rec.step(0, actions="w-24")
        rec.step(1, poses=poses, frames=frames, frame_poses=poses)
        rec.step(2, keys=[{"w"}, {"w", "a"}])
    r = load_record(tmp_path / "r.jsonl")
    assert r.header["seed"] == 5 and r.header["prompt"] == "a harbour" and r.header["meta"] == {"client": "test"}
    assert set(r.header["versions"]) >= {"torch", "numpy", "sana_wm", "python"}
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.image))), np.arange(192, dtype=np.uint8).reshape(8, 8, 3))
    kw = r.start_kwargs()
    assert kw["prompt"] == "a harbour" and kw["seed"] == 5 and list(kw["intrinsics"]) == [40.0, 40.0, 48.0, 32.0]
    s = r.steps()
    assert s[0]["actions"] == "w-24" and s[2]["keys"] == [["w"], ["a", "w"]]
    assert s[1]["poses"].dtype == np.float64 and np.array_equal(s[1]["poses"], poses)  # bit-exact
    assert s[1]["digest"] == frames_digest(frames)


def test_mapping_and_live_events(tmp_path):
    events = [("down", "w", 0.5), ("mouse", (3, -2.5), 0.52), ("up", "w", 1.0)]
    with _write(tmp_path / "r.jsonl", mapping="sana-wm-v1") as rec:
        rec.step(0, events=events, frame_poses=_poses(2, 0))
        rec.step(1, events=[])
    r = load_record(tmp_path / "r.jsonl")
    assert r.start_kwargs()["mapping"] == "sana-wm-v1"
    assert r.steps()[0]["events"] == [["down", "w", 0.5], ["mouse", [3.0, -2.5], 0.52], ["up", "w", 1.0]]
    assert r.steps()[1]["events"] == []
    with _write(tmp_path / "d.jsonl") as rec:  # no mapping given: the engine's default at replay
        pass
    assert "mapping" not in load_record(tmp_path / "d.jsonl").start_kwargs()
    with _write(tmp_path / "x.jsonl") as rec, pytest.raises(ValueError, match=r"events\[0\]"):
        rec.step(0, events=[("jump", "w", 0.0)])


def test_apply_control_events_all_or_nothing():
    a, b = LiveController(), LiveController()
    apply_control_events(a, [["down", "w", 1.0], ["mouse", [10.0, 0.0], 1.1]])
    b.key_down("w", 1.0)
    b.mouse(10.0, 0.0, 1.1)
    np.testing.assert_array_equal(a.poses_for_next(24), b.poses_for_next(24))
    before = a.state_dict()
    with pytest.raises(ValueError, match="earlier"):  # the second event goes back in time: neither is applied
        apply_control_events(a, [["down", "d", 2.0], ["up", "d", 1.5]])
    assert a.state_dict() == before


def test_fork_record_replays_alone_and_restores_are_checked(tmp_path):
    with _write(tmp_path / "p.jsonl", mapping="sana-wm-v2", meta={"session": 1}) as parent:
        parent.step(0, poses=_poses(2, 0))
        parent.snapshot("s1", 1)
        parent.step(1, poses=_poses(2, 10))
        child = parent.fork(tmp_path / "c.jsonl", 2, meta={"session": 2, "parent": 1})
        parent.step(2, poses=_poses(2, 20))  # after the fork: not in the child's record
        parent.snapshot("s2", 3)
        with child:
            child.restore("s1", 2)  # taken before the fork
            child.step(1, poses=_poses(2, 30))
            with pytest.raises(ValueError, match="'s2'.*has not taken"):
                child.restore("s2", 2)
    p, c = load_record(tmp_path / "p.jsonl"), load_record(tmp_path / "c.jsonl")
    assert c.header["forked_from"] == {"record": str(tmp_path / "p.jsonl"), "chunk": 2}
    assert c.header["meta"] == {"session": 2, "parent": 1} and c.header["mapping"] == "sana-wm-v2"
    assert {k: v for k, v in c.header.items() if k not in ("forked_from", "meta", "created")} == {
        k: v for k, v in p.header.items() if k not in ("meta", "created")}
    assert [(e["type"], e["chunk"]) for e in c.events] == [("step", 0), ("snapshot", 1), ("step", 1), ("restore", 2),
                                                           ("step", 1)]
    assert np.array_equal(timeline_poses(c)[:, 2, 3], np.concatenate([_poses(2, z)[:, 2, 3] for z in (0, 30)]))


def test_array_encoding_keeps_dtype_and_bits():
    for a in (np.float32([[1 / 3, -0.0]]), np.arange(6, dtype=np.int64).reshape(2, 3), _poses(2, np.pi)):
        b = decode_array(json.loads(json.dumps(encode_array(a))))
        assert b.dtype == a.dtype and b.shape == a.shape and a.tobytes() == b.tobytes()
    with pytest.raises(ValueError, match="poses"):
        decode_array({"dtype": "float64", "shape": [4], "data": "!!"}, "poses")


def test_timeline_follows_restores_and_resets(tmp_path):
    with _write(tmp_path / "r.jsonl") as rec:
        rec.step(0, poses=_poses(2, 0))
        rec.snapshot("a", 1)
        rec.step(1, poses=_poses(2, 10))
        rec.restore("a", 2)
        rec.step(1, poses=_poses(2, 20))
        rec.step(2, actions="w-2", frame_poses=_poses(2, 30))
    t = timeline_poses(load_record(tmp_path / "r.jsonl"))
    assert np.array_equal(t[:, 2, 3], np.concatenate([_poses(2, z)[:, 2, 3] for z in (0, 20, 30)]))
    with _write(tmp_path / "s.jsonl") as rec:
        rec.step(0, poses=_poses(2, 0))
        rec.reset(1)
        rec.step(0, poses=_poses(2, 5))
    assert np.array_equal(timeline_poses(load_record(tmp_path / "s.jsonl"))[:, 2, 3], _poses(2, 5)[:, 2, 3])
    with _write(tmp_path / "u.jsonl") as rec:
        rec.step(0, actions="w-2")
    with pytest.raises(ValueError, match="no poses"):
        timeline_poses(load_record(tmp_path / "u.jsonl"))


def test_recorder_rejects_ambiguous_steps(tmp_path):
    with _write(tmp_path / "r.jsonl") as rec:
        with pytest.raises(ValueError, match="exactly one"):
            rec.step(0, actions="w-1", poses=_poses(1, 0))
        with pytest.raises(ValueError, match="exactly one"):
            rec.step(0)
    with pytest.raises(ValueError, match="closed"):
        rec.step(0, actions="w-1")
    with pytest.raises(ValueError, match="image"):
        Recorder(tmp_path / "x.jsonl", image=np.zeros((4, 4), np.uint8), prompt="", seed=0, model={}, height=4, width=4)


@pytest.mark.parametrize(
    "lines, match",
    [
        ([], "empty"),
        (["not json"], "not valid JSON"),
        (['{"type": "step", "chunk": 0, "actions": "w-1"}'], "header"),
        (["HEADER", '{"type": "jump"}'], "unknown event"),
        (["HEADER", '{"type": "step", "chunk": 0}'], "exactly one"),
        (["HEADER", '{"type": "restore", "name": "a", "chunk": 0}'], "not taken"),
        (["HEADER", '{"type": "snapshot", "chunk": 0}'], "needs a 'name'"),
        (["HEADER", '{"type": "step", "chunk": 0, "events": [["down", "w"]]}'], r"events\[0\]"),
    ],
)
def test_load_record_errors_name_the_line(tmp_path, lines, match):
    with _write(tmp_path / "good.jsonl"):
        pass
    header = (tmp_path / "good.jsonl").read_text().strip()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(header if line == "HEADER" else line for line in lines))
    with pytest.raises(ValueError, match=match) as e:
        load_record(bad)
    assert "bad.jsonl" in str(e.value)
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl"):
        load_record(tmp_path / "nope.jsonl")
