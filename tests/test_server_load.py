"""Server behaviour under load on loopback: concurrent clients with one that never reads, many sessions opened
and closed, disconnects mid-chunk, idle connections. Real demo world, real server, real sockets."""

import asyncio
import gc
import io
import socket
import threading
import time

import msgpack
import numpy as np
import pytest
from PIL import Image
from websockets.exceptions import ConnectionClosed

from engine import Session, World
from server.app import ServerConfig, ServerThread
from server.client import AsyncClient, Client

H, W = 64, 64
PROMPT = "a harbour at dusk"
MiB = 1 << 20


@pytest.fixture(scope="module")
def world() -> World:
    return World.demo(height=H, width=W)


@pytest.fixture(scope="module")
def png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def open_engine_sessions() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is Session and o._state is not None)


def wait_for(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def stalled_connection(url: str, port: int, png: bytes):
    """A client that starts a live session and then never reads (tiny receive buffer, no reader)."""
    from websockets.sync.client import connect

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    ws = connect(url, sock=sock, max_queue=1, proxy=None)
    ws.send(msgpack.packb({"type": "hello", "version": 1}))
    ws.send(msgpack.packb({"type": "start", "image": png, "prompt": PROMPT, "mode": "live"}))
    return ws


def test_eight_clients_one_never_reads(world, png):
    """Seven live readers keep their share of the worker while an eighth client never reads: its stream drops
    its oldest chunks (live policy), its queue stays bounded, and the readers see no drops."""
    cfg = ServerConfig(port=0, live_queue_chunks=1, send_buffer_bytes=64 << 10)
    window = 10.0
    with ServerThread(world, cfg) as srv:
        stalled = stalled_connection(srv.url, srv.server.port, png)
        samples: list[dict] = []

        async def reader(i: int) -> list:
            async with await AsyncClient.connect(srv.url) as c:
                s = await c.start(png, PROMPT, seed=i, mode="live")
                got = [await s.next_chunk(timeout=60)]
                t0 = time.monotonic()
                while time.monotonic() - t0 < window:
                    got.append(await s.next_chunk(timeout=60))
                await s.close()
                return got

        async def run() -> list:
            async def sample():
                while True:
                    samples.append({"status": srv.server.status(), "rss": rss_bytes()})
                    await asyncio.sleep(0.25)

            sampler = asyncio.create_task(sample())
            try:
                return await asyncio.gather(*(reader(i) for i in range(7)))
            finally:
                sampler.cancel()

        rss0 = rss_bytes()
        t0 = time.monotonic()
        results = asyncio.run(run())
        elapsed = time.monotonic() - t0
        stalled.socket.close()

    stalled_stats = [c for s in samples for c in s["status"]["per_connection"] if c["connection"] == 1]
    assert stalled_stats and all(c["queued"]["chunks"] <= cfg.live_queue_chunks + 1 for c in stalled_stats)
    assert all(c["queued"]["frames"] <= (cfg.live_queue_chunks + 1) * 24 for c in stalled_stats)
    dropped = max(sum(c["dropped_chunks"].values()) for c in stalled_stats)
    assert dropped > 0, "the never-reading client's live stream must drop chunks"

    engine_s = np.median([c.stats["timings_ms"]["engine_total"] for got in results for c in got]) / 1e3
    fair = window / (8 * engine_s)  # chunks a reader gets in the window with the worker shared 8 ways
    counts = [len(got) - 1 for got in results]
    print(f"readers got {counts} chunks in {window} s (fair share {fair:.1f}, engine chunk {engine_s:.3f} s); "
          f"stalled client: {dropped} chunks dropped; total {elapsed:.1f} s")
    assert min(counts) >= 0.5 * fair, f"reader chunk counts {counts}, fair share {fair:.1f} (chunk {engine_s:.3f} s)"
    for got in results:
        assert [c.chunk for c in got] == list(range(len(got))), "a reading client loses no chunk"
        assert all(c.stats["dropped_chunks"] == 0 for c in got)
    assert max(s["rss"] for s in samples) - rss0 < 150 * MiB


def test_200_sessions_leave_no_growth(world, png):
    with ServerThread(world, ServerConfig(port=0)) as srv, Client(srv.url) as c:
        def cycle(n: int) -> None:
            for i in range(n):
                c.start(png, PROMPT, seed=i).close()

        cycle(20)
        gc.collect()
        rss0 = rss_bytes()
        cycle(200)
        wait_for(lambda: srv.status()["sessions_open"] == 0)
        gc.collect()
        growth = rss_bytes() - rss0
        status = srv.status()
    assert growth < 16 * MiB, f"RSS grew by {growth / MiB:.1f} MiB over 200 sessions"
    assert status["per_connection"][0]["queued"] == {"messages": 0, "chunks": 0, "frames": 0, "streams": 0}
    assert open_engine_sessions() == 0


def test_disconnect_mid_chunk_frees_sessions(world, png):
    from websockets.sync.client import connect

    with ServerThread(world, ServerConfig(port=0, max_sessions_total=2)) as srv:
        ws = connect(srv.url, proxy=None, max_size=None)
        ws.send(msgpack.packb({"type": "hello", "version": 1}))
        for mode in ("live", "lockstep"):
            ws.send(msgpack.packb({"type": "start", "id": mode, "image": png, "prompt": PROMPT, "mode": mode}))
        sid = None
        while sid is None:
            msg = msgpack.unpackb(ws.recv(timeout=30), raw=False)
            if msg.get("id") == "lockstep":
                sid = msg["session"]
        ws.send(msgpack.packb({"type": "step", "id": "s", "session": sid, "actions": "w-24"}))
        while True:  # the step's first part arrived: its chunk is still being generated
            msg = msgpack.unpackb(ws.recv(timeout=30), raw=False)
            if msg.get("id") == "s" and msg["type"] == "frames":
                break
        assert srv.status()["sessions_open"] == 2
        ws.socket.shutdown(socket.SHUT_RDWR)  # vanish without a closing handshake
        ws.socket.close()
        wait_for(lambda: srv.status() == {"connections": 0, "sessions_open": 0, "per_connection": []})
        assert open_engine_sessions() == 0
        with Client(srv.url) as c:  # the slots are free and the world still works
            a, b = c.start(png, PROMPT), c.start(png, PROMPT)
            assert a.step("w-24").frames.shape == (24, H, W, 3)
            a.close()
            b.close()


def test_idle_connection_is_closed(world):
    from websockets.sync.client import connect

    with ServerThread(world, ServerConfig(port=0, idle_timeout_s=0.5)) as srv:
        with connect(srv.url, proxy=None) as ws:
            ws.send(msgpack.packb({"type": "hello", "version": 1}))
            assert msgpack.unpackb(ws.recv(timeout=5))["type"] == "welcome"
            msg = msgpack.unpackb(ws.recv(timeout=5))
            assert msg["type"] == "error" and msg["code"] == "idle_timeout"
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=5)
        wait_for(lambda: srv.status()["connections"] == 0)


def test_slow_lockstep_client_waits(world, png):
    """Lockstep never drops: a client that sends steps without reading gets every chunk, in order, later."""
    from websockets.sync.client import connect

    with ServerThread(world, ServerConfig(port=0, send_buffer_bytes=16 << 10)) as srv:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", srv.server.port))
        with connect(srv.url, sock=sock, proxy=None, max_queue=1) as ws:
            ws.send(msgpack.packb({"type": "hello", "version": 1}))
            ws.send(msgpack.packb({"type": "start", "id": 0, "image": png, "prompt": PROMPT}))
            assert msgpack.unpackb(ws.recv(timeout=30))["type"] == "welcome"
            assert msgpack.unpackb(ws.recv(timeout=30))["type"] == "started"
            for i in range(1, 5):
                ws.send(msgpack.packb({"type": "step", "id": i, "session": 1, "actions": "w-24"}))
            time.sleep(2.0)
            queued = srv.status()["per_connection"][0]["queued"]
            assert queued["chunks"] <= 1, "no chunk is generated ahead of an undelivered one"
            stats = []
            while len(stats) < 4:
                msg = msgpack.unpackb(ws.recv(timeout=60), raw=False)
                if msg["type"] == "stats":
                    stats.append(msg)
        assert [(s["id"], s["chunk"], s["frames"], s["dropped_chunks"]) for s in stats] == \
            [(i, i - 1, 24, 0) for i in range(1, 5)]


def test_threads_are_released(world, png):
    """Stopping a server ends its threads (worker, encoders, loop)."""
    before = {t.ident for t in threading.enumerate()}
    with ServerThread(world, ServerConfig(port=0)) as srv, Client(srv.url) as c:
        c.start(png, PROMPT, encoding="jpeg").step("w-24")
    wait_for(lambda: {t.ident for t in threading.enumerate()} <= before, timeout=10)
