"""The websocket server end to end on loopback: real demo world, real server, real client, real codecs.

Frames that come over the wire are compared with the same world run in-process (a second ``World.demo``
with the same seed has bitwise the same weights): raw frames exactly, JPEG / H.264 by PSNR (bounds in
docs/protocol.md, "Frame encodings").
"""

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

msgpack = pytest.importorskip("msgpack")  # optional on a bare GPU box: skip cleanly rather than error
Image = pytest.importorskip("PIL.Image")
ConnectionClosed = pytest.importorskip("websockets.exceptions").ConnectionClosed

from engine import World
from server.app import ServerConfig, ServerThread
from server.client import Client, ServerError
from server.codecs import psnr

H, W = 64, 64
PROMPT = "a harbour at dusk"
ROOT = Path(__file__).resolve().parents[1]
#: PSNR floors (dB) on the demo world's noise-like frames; measured 35.7 (JPEG q95 4:4:4) and 34.0-35.3
#: (H.264 4:4:4 crf 10, depending on the frames). Raw is exact.
MIN_PSNR = {"jpeg": 35.0, "h264": 33.5}
ENCODING_OPTIONS = {"raw": {}, "jpeg": {"jpeg_quality": 95}, "h264": {"h264_pix_fmt": "yuv444p", "h264_crf": 10}}


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def reference() -> World:
    """The in-process twin of the served world."""
    return World.demo(height=H, width=W)


@pytest.fixture(scope="module")
def server():
    with ServerThread(World.demo(height=H, width=W), ServerConfig(port=0, max_image_pixels=256 * 256)) as srv:
        yield srv


@pytest.fixture()
def client(server):
    with Client(server.url) as c:
        yield c


def check_frames(got: np.ndarray, want: np.ndarray, encoding: str) -> None:
    assert got.shape == want.shape and got.dtype == np.uint8
    if encoding == "raw":
        np.testing.assert_array_equal(got, want)
    else:
        assert psnr(got, want) >= MIN_PSNR[encoding], f"{encoding}: PSNR {psnr(got, want):.2f} dB"


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


@pytest.mark.parametrize("encoding", ["raw", "jpeg", "h264"])
def test_lockstep_lifecycle_matches_engine(client, reference, image, encoding):
    ref = reference.start(image, PROMPT, seed=7)
    s = client.start(image, PROMPT, seed=7, encoding=encoding, **ENCODING_OPTIONS[encoding])
    assert (s.mode, s.encoding, s.height, s.width, s.frames_per_chunk) == ("lockstep", encoding, H, W, 24)
    np.testing.assert_allclose(s.intrinsics, ref.intrinsics)

    out = s.step("w-24")
    want = ref.step("w-24")
    check_frames(out.frames, want.frames, encoding)
    np.testing.assert_array_equal(out.c2w, want.poses)
    np.testing.assert_array_equal(out.frame_indices, want.frame_indices)
    assert out.chunk == 0 and out.stats["frames"] == 24 and out.stats["timings_ms"]["engine_total"] > 0
    assert out.stats["gpu_memory"] is None, "a CPU world reports no GPU memory"

    snap = s.snapshot()
    ref_snap = ref.snapshot()
    out = s.step(keys=[{"d", "w"}] * 24)
    want = ref.step(keys=[{"d", "w"}] * 24)
    check_frames(out.frames, want.frames, encoding)

    s.restore(snap)  # the same inputs from the snapshot repeat the chunk
    again = s.step(keys=[{"d", "w"}] * 24)
    assert again.chunk == 1
    check_frames(again.frames, want.frames, encoding)

    fork = s.fork()  # a fork continues from the parent's state; the parent is unaffected
    poses = np.repeat(want.poses[-1:], 24, axis=0)
    poses[:, 0, 3] += np.linspace(0.01, 0.24, 24)
    want = ref.step(poses=poses)
    check_frames(fork.step(poses=poses).frames, want.frames, encoding)
    check_frames(s.step(poses=poses).frames, want.frames, encoding)

    still = s.still()
    check_frames(still.frames, ref.render_image()[None], encoding)
    np.testing.assert_array_equal(still.c2w[0], ref.pose)

    ref.restore(ref_snap)
    s.close()
    fork.close()
    with pytest.raises(ServerError) as err:
        s.step("w-24")
    assert err.value.code == "unknown_session"


@pytest.mark.parametrize("encoding", ["raw", "jpeg", "h264"])
def test_live_chunks_match_engine(client, reference, image, encoding):
    """Live chunks carry their poses; the in-process engine fed those poses makes the same frames."""
    s = client.start(image, PROMPT, seed=3, mode="live", encoding=encoding, **ENCODING_OPTIONS[encoding])
    s.control(keys={"w"}, mouse=(4.0, 0.0))
    chunks = [s.next_chunk() for _ in range(3)]
    s.close()
    assert [c.chunk for c in chunks] == [0, 1, 2] and not any(c.dropped for c in chunks)
    ref = reference.start(image, PROMPT, seed=3)
    for c in chunks:
        want = ref.step(poses=c.c2w)
        check_frames(c.frames, want.frames, encoding)
        np.testing.assert_array_equal(c.frame_indices, want.frame_indices)
    assert chunks[-1].c2w[-1, 2, 3] > 0.05, "holding w moves the camera forward (+Z)"


def test_control_receipt_on_first_chunk_that_used_it(client, image):
    s = client.start(image, PROMPT, seed=1, mode="live")
    first = s.next_chunk()
    assert first.control is None and np.allclose(first.c2w, np.eye(4)), "no control yet: the camera rests"
    event = s.control(keys={"w"}, t=1000.0)
    seen = []
    while True:
        c = s.next_chunk()
        seen.append(c)
        if c.control is not None and c.control["event"] == event:
            break
        assert np.allclose(c.c2w, c.c2w[0]), "a chunk before the receipt must not move"
    c = seen[-1]
    assert c.control["new"] is True and c.control["t"] == 1000.0
    assert c.c2w[-1, 2, 3] > c.c2w[0, 2, 3] > 0, "the chunk that reflects 'w' moves forward from its first frame"
    assert len(seen) <= 3, "a control applies at the next chunk (the one in flight may not have it)"
    nxt = s.next_chunk()
    assert nxt.control["event"] == event and nxt.control["new"] is False
    assert c.stats["control"] == c.control
    s.close()


def test_records_replay_exactly(tmp_path, reference, image):
    """``--record``: a live session (its control events), and a lockstep session with the v1 key mapping, a
    snapshot, a fork and restores, replay bitwise in-process; the fork's record replays alone."""
    from server.record import load_record, replay_chunks

    with ServerThread(World.demo(height=H, width=W), ServerConfig(port=0, record_dir=str(tmp_path))) as srv:
        with Client(srv.url) as c:
            live = c.start(image, PROMPT, seed=5, mode="live")
            live.control(keys={"w"}, mouse=(20.0, 5.0), t=0.0)
            got_live = [live.next_chunk() for _ in range(2)]
            live.control(keys={"d"}, t=50.0)
            got_live += [live.next_chunk() for _ in range(2)]
            live.close()
            lock = c.start(image, PROMPT, seed=6, mapping="sana-wm-v1")
            got_lock = [lock.step("dw-24")]
            snap = lock.snapshot()
            got_lock.append(lock.step(keys=[["j"]] * 24))
            fork = lock.fork()
            lock.restore(snap)
            got_lock.append(lock.step("w-24"))
            got_fork = got_lock[:2] + [fork.step("a-24")]
            fork.restore(snap)  # taken by the parent before the fork: in the fork's record too
            got_fork.append(fork.step(keys=[["l", "w"]] * 24))
            for s in (lock, fork):
                s.close()
    live_rec, lock_rec, fork_rec = sorted(tmp_path.glob("*.jsonl"), key=lambda p: load_record(p).header["created"])
    head = load_record(lock_rec).header
    assert head["mapping"] == "sana-wm-v1" and (head["model"]["height"], head["model"]["width"]) == (H, W)
    assert "events" in load_record(live_rec).steps()[0], "live steps are recorded as their control events"
    assert load_record(fork_rec).header["forked_from"] == {"record": str(lock_rec), "chunk": 2}
    # the live session may have made more chunks than were read
    live_chunks = {c.index: c.frames for c in replay_chunks(load_record(live_rec), reference, verify=True)}
    for out in got_live:
        np.testing.assert_array_equal(live_chunks[out.chunk], out.frames)
    for path, got in ((lock_rec, got_lock), (fork_rec, got_fork)):  # replayed in order, restores included
        chunks = list(replay_chunks(load_record(path), reference, verify=True))
        assert [c.index for c in chunks] == [out.chunk for out in got]
        for chunk, out in zip(chunks, got):
            np.testing.assert_array_equal(chunk.frames, out.frames)


@pytest.mark.gpu
def test_stats_report_gpu_memory(image):
    import torch

    with ServerThread(World.demo(height=H, width=W, device="cuda"), ServerConfig(port=0)) as srv:
        with Client(srv.url) as c:
            s = c.start(image, PROMPT)
            mem = s.step("w-24").stats["gpu_memory"]
            s.close()
    assert 0 < mem["allocated_bytes"] <= mem["max_allocated_bytes"] <= torch.cuda.max_memory_allocated()


def test_render_image_and_path_match_engine(client, reference, image):
    out = client.render_image(PROMPT, seed=5)
    np.testing.assert_array_equal(out.frames[0], reference.render_image(PROMPT, seed=5))
    c2w = np.repeat(np.eye(4)[None], 25, axis=0)
    c2w[:, 2, 3] = np.linspace(0, 0.5, 25)
    out = client.render_path(image, PROMPT, c2w, seed=2, encoding="raw")
    want = reference.render_path(image, PROMPT, c2w, seed=2, progress=False)
    np.testing.assert_array_equal(out.frames, want)
    np.testing.assert_allclose(out.c2w, c2w[1:])
    np.testing.assert_array_equal(out.intrinsics, np.broadcast_to(reference.frame_intrinsics(image), (24, 4)))
    assert out.chunk is None and out.stats["frames"] == 24


def _raw_exchange(ws, data) -> dict:
    ws.send(data)
    return msgpack.unpackb(ws.recv(timeout=10), raw=False)


def test_malformed_messages_get_typed_errors_and_connection_stays(server, image):
    from websockets.sync.client import connect

    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    big = io.BytesIO()
    Image.new("RGB", (300, 300)).save(big, format="PNG")
    with connect(server.url, proxy=None) as ws:
        assert _raw_exchange(ws, msgpack.packb({"type": "ping", "id": 1}))["code"] == "hello_required"
        assert _raw_exchange(ws, msgpack.packb({"type": "hello", "version": 1}))["type"] == "welcome"
        cases = [
            ("text frame", "hello", "bad_frame"),
            ("not msgpack", b"\xc1\x00", "bad_frame"),
            ("a msgpack list", msgpack.packb([1, 2]), "bad_message"),
            ("no type", msgpack.packb({"id": 3}), "bad_message"),
            ("unknown type", msgpack.packb({"type": "teleport", "id": 4}), "unknown_type"),
            ("extra field", msgpack.packb({"type": "ping", "id": 5, "x": 1}), "invalid_field"),
            ("missing field", msgpack.packb({"type": "close", "id": 6}), "invalid_field"),
            ("bool for int", msgpack.packb({"type": "close", "id": 7, "session": True}), "invalid_field"),
            ("image as path", msgpack.packb({"type": "start", "id": 8, "image": "/etc/passwd", "prompt": "x"}),
             "invalid_field"),
            ("bad image", msgpack.packb({"type": "start", "id": 9, "image": b"not an image", "prompt": "x"}),
             "bad_image"),
            ("too many pixels", msgpack.packb({"type": "start", "id": 10, "image": big.getvalue(), "prompt": "x"}),
             "limit_exceeded"),
            ("unknown session", msgpack.packb({"type": "step", "id": 11, "session": 99, "actions": "w-24"}),
             "unknown_session"),
            ("two camera inputs", msgpack.packb({"type": "step", "id": 12, "session": 1, "actions": "w-24",
                                                 "keys": [["w"]]}), "invalid_field"),
            ("unknown key", msgpack.packb({"type": "control", "id": 13, "session": 1, "keys": ["q"]}),
             "invalid_field"),
            ("nan pose", msgpack.packb({"type": "still", "id": 14, "session": 1, "pose": [float("nan")] * 16}),
             "invalid_field"),
            ("unknown snapshot", msgpack.packb({"type": "drop_snapshot", "id": 15, "snapshot": 4}),
             "unknown_snapshot"),
        ]
        for name, data, code in cases:
            reply = _raw_exchange(ws, data)
            assert reply["type"] == "error" and reply["code"] == code, (name, reply)
            if isinstance(data, bytes) and reply.get("id") is None:
                assert code in ("bad_frame", "bad_message"), name
        start = {"type": "start", "id": 20, "image": png.getvalue(), "prompt": PROMPT, "mode": "lockstep"}
        started = _raw_exchange(ws, msgpack.packb(start))
        assert started["type"] == "started" and started["id"] == 20
        sid = started["session"]
        reply = _raw_exchange(ws, msgpack.packb({"type": "control", "id": 21, "session": sid, "keys": ["w"]}))
        assert reply["code"] == "wrong_mode" and reply["id"] == 21
        reply = _raw_exchange(ws, msgpack.packb({"type": "step", "id": 22, "session": sid, "actions": "w-10"}))
        assert reply["code"] == "invalid_argument" and "24" in reply["message"], "the engine's message is passed on"
        ws.send(msgpack.packb({"type": "step", "id": 23, "session": sid, "actions": "w-24"}))
        kinds = []
        while not kinds or kinds[-1] != "stats":
            msg = msgpack.unpackb(ws.recv(timeout=30), raw=False)
            assert msg["id"] == 23
            kinds.append(msg["type"])
        assert kinds == ["frames"] * 3 + ["stats"]
        assert _raw_exchange(ws, msgpack.packb({"type": "close", "id": 24, "session": sid}))["type"] == "closed"


def test_session_limits(image):
    cfg = ServerConfig(port=0, max_sessions_total=3, max_sessions_per_connection=2, max_snapshots_per_connection=1)
    with ServerThread(World.demo(height=H, width=W), cfg) as srv, Client(srv.url) as a, Client(srv.url) as b:
        s1, s2 = a.start(image, PROMPT), a.start(image, PROMPT)
        with pytest.raises(ServerError, match="per connection") as err:
            a.start(image, PROMPT)
        assert err.value.code == "limit_exceeded"
        s3 = b.start(image, PROMPT)
        with pytest.raises(ServerError, match="maximum of 3"):
            b.start(image, PROMPT)
        with pytest.raises(ServerError, match="per connection"):
            s1.fork()
        s1.snapshot()
        with pytest.raises(ServerError, match="snapshots"):
            s2.snapshot()
        s3.close()
        b.start(image, PROMPT)  # a closed session frees its slot
        wait_for(lambda: srv.status()["sessions_open"] == 3)
    assert s2.closed


def test_token_and_version(image):
    with ServerThread(World.demo(height=H, width=W), ServerConfig(port=0, token="s3cret")) as srv:
        with pytest.raises(ServerError) as err:
            Client(srv.url)
        assert err.value.code == "unauthorized"
        with pytest.raises(ServerError):
            Client(srv.url, token="wrong")
        with Client(srv.url, token="s3cret") as c:
            assert c.ping() >= 0
        from websockets.sync.client import connect

        with connect(srv.url, proxy=None) as ws:
            reply = _raw_exchange(ws, msgpack.packb({"type": "hello", "version": 99, "token": "s3cret"}))
            assert reply["code"] == "unsupported_version"
            with pytest.raises(ConnectionClosed):  # closed by the server (1008)
                ws.recv(timeout=5)


def test_cli_serve(tmp_path, image):
    """``sana-wm serve --demo --host 127.0.0.1 --port PORT`` (through ``server.cli``) serves at
    ws://127.0.0.1:PORT/ and answers a non-map binary frame with a typed error map, keeping the connection open."""
    import socket

    from websockets.sync.client import connect

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    helped = subprocess.run([sys.executable, "-m", "server.app", "--help"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    assert helped.returncode == 0 and "--demo" in helped.stdout and "127.0.0.1" in helped.stdout
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--demo", "--host", "127.0.0.1", "--port",
                             str(port), "--height", "64", "--width", "64", "--record", str(tmp_path)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = ""
        deadline = time.monotonic() + 90
        while "serving on" not in line:
            assert time.monotonic() < deadline and proc.poll() is None, "server did not start"
            line = proc.stdout.readline()
        assert f"ws://127.0.0.1:{port}/" in line
        with connect(f"ws://127.0.0.1:{port}/", proxy=None) as ws:
            reply = _raw_exchange(ws, msgpack.packb("not a map"))
            assert reply["type"] == "error" and reply["code"] == "bad_message"
            assert _raw_exchange(ws, msgpack.packb({"type": "hello", "version": 1}))["type"] == "welcome"
        with Client(f"ws://127.0.0.1:{port}/") as c:
            s = c.start(image, PROMPT, seed=4)
            out = s.step("w-24")
            s.close()
        assert out.frames.shape == (24, H, W, 3)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    from server.record import load_record

    (record,) = tmp_path.glob("*.jsonl")
    rec = load_record(record)
    assert rec.header["seed"] == 4 and [e["actions"] for e in rec.steps()] == ["w-24"]
    assert (rec.header["model"]["kind"], rec.header["model"]["height"], rec.header["model"]["width"]) == ("demo", H, W)
