"""``sana-wm serve``: a world behind a websocket (msgpack messages; the protocol is docs/protocol.md).

    python -m server.app --demo --port 8765            # tiny random world on ws://127.0.0.1:8765/
    python -m server.app --model /models/SANA-WM_streaming --device cuda --dtype bf16

Layout: one asyncio event loop serves every connection. All engine work (starting sessions, chunks, snapshots,
renders) runs on one worker thread in submission order (``GpuWorker``), never on the event loop; each session
submits one chunk at a time, so sessions take turns. Frames are encoded on a small thread pool when they are
sent (``server.outbox``: bounded per-connection queues and the slow-client policy). A malformed message gets a
typed error and the connection stays usable; a failure inside one session closes that session with an error.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import io
import itertools
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from server.outbox import ChunkItem, Outbox, Stream
from server.protocol import (
    ENCODINGS,
    KEYS,
    MODES,
    PROTOCOL_VERSION,
    Limits,
    ProtocolError,
    build_schemas,
    pack,
    parse_request,
)
from server.record import Recorder, apply_control_events

logger = logging.getLogger("sana_wm.server")

FPS = 16
FRAMES_PER_CHUNK = 24
SERVER_NAME = "sana-wm"


@dataclass
class ServerConfig:
    """Limits and policies of a server (the ``sana-wm serve`` flags set them)."""

    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    max_message_bytes: int = 16 << 20
    max_image_pixels: int = 4096 * 4096
    max_prompt_chars: int = 4000
    max_path_frames: int = 1024
    max_sessions_total: int = 16
    max_sessions_per_connection: int = 4
    max_snapshots_per_connection: int = 32
    max_pending_requests: int = 32
    max_queued_messages: int = 256
    live_queue_chunks: int = 2
    idle_timeout_s: float = 300.0
    record_dir: str | None = None
    encode_threads: int = 2
    send_buffer_bytes: int | None = None  # kernel send buffer per connection (SO_SNDBUF); None: the OS's autotuning

    def public_limits(self) -> dict[str, Any]:
        """The limits a client sees in ``welcome``."""
        hidden = ("host", "port", "token", "record_dir", "encode_threads", "max_queued_messages", "send_buffer_bytes")
        return {k: v for k, v in asdict(self).items() if k not in hidden}


class GpuWorker:
    """Runs engine calls on one thread, one at a time, in submission order."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sana-wm-engine")

    async def run(self, fn: Callable, *args: Any, cancellable: bool = True) -> Any:
        """Run ``fn(*args)`` on the worker. Cancelling the caller skips ``fn`` if it has not started yet; with
        ``cancellable=False`` it runs regardless (cleanup)."""
        fut = asyncio.wrap_future(self._pool.submit(fn, *args))
        return await (fut if cancellable else asyncio.shield(fut))

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Image file bytes -> (H,W,3) uint8; more than ``max_pixels`` is refused before the pixels are decoded."""
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(data))
    except Exception as e:
        raise ProtocolError("bad_image", f"image: not a readable image file ({type(e).__name__}: {e})") from None
    w, h = im.size
    if w * h > max_pixels:
        raise ProtocolError("limit_exceeded", f"image: {w}x{h} = {w * h} pixels; this server accepts at most "
                            f"{max_pixels}")
    try:
        return np.asarray(im.convert("RGB"))
    except Exception as e:
        raise ProtocolError("bad_image", f"image: decoding failed ({type(e).__name__}: {e})") from None


class ControlInbox:
    """Live control of one session, from the event loop to the worker (thread-safe).

    ``push`` turns a held-key state into key-down/up events (the difference to the previous state) and a mouse
    event, stamped with the client's time (seconds; the server's clock when the client gives none). ``drain``
    hands the worker what arrived since the last chunk and the receipt of the newest control message among it.
    """

    def __init__(self, last_t: float | None = None, t0: float | None = None) -> None:
        self._lock = threading.Lock()
        self._events: list[tuple[str, Any, float]] = []
        self._held: frozenset[str] = frozenset()
        self._count = 0
        self.last_t = last_t
        self.t0 = time.monotonic() if t0 is None else t0
        self._receipt: dict[str, Any] | None = None

    def push(self, keys: frozenset[str], mouse: list[float] | None, t_ms: float | None, rid: Any) -> int:
        """Queue one control message; returns its event number (1, 2, ... per session)."""
        now_ms = (time.monotonic() - self.t0) * 1e3
        t = (now_ms if t_ms is None else t_ms) / 1000.0
        with self._lock:
            if self.last_t is not None and t < self.last_t:
                raise ValueError(f"control: t = {t * 1e3:g} ms is earlier than the previous control's "
                                 f"{self.last_t * 1e3:g} ms; times must not decrease within a session")
            self.last_t = t
            self._events += [("down", k, t) for k in sorted(keys - self._held)]
            self._events += [("up", k, t) for k in sorted(self._held - keys)]
            if mouse is not None and (mouse[0] or mouse[1]):
                self._events.append(("mouse", (mouse[0], mouse[1]), t))
            self._held = keys
            self._count += 1
            self._receipt = {"event": self._count, "id": rid, "t": t_ms, "received_ms": round(now_ms, 3)}
            return self._count

    def drain(self) -> tuple[list[tuple[str, Any, float]], dict[str, Any] | None]:
        with self._lock:
            events, self._events = self._events, []
            receipt, self._receipt = self._receipt, None
            return events, receipt


class ServedSession:
    """An engine session as a connection sees it: id, mode, output stream, lock and live controls."""

    def __init__(self, sid: int, engine_session: Any, mode: str, stream: Stream, inbox: ControlInbox):
        self.id = sid
        self.engine = engine_session
        self.mode = mode
        self.stream = stream
        self.lock = asyncio.Lock()  # one operation at a time, in arrival order
        self.stop = threading.Event()  # set on close: a running chunk stops after its current part
        self.inbox = inbox
        self.last_control: dict[str, Any] | None = None  # receipt of the newest control a chunk applied
        self.live_task: asyncio.Task | None = None
        self.recorder: Recorder | None = None
        self.closed = False

    def info(self) -> dict[str, Any]:
        e = self.engine
        return {"session": self.id, "mode": self.mode, "encoding": self.stream.encoding, "height": e.height,
                "width": e.width, "frames_per_chunk": e.frames_per_chunk, "fps": FPS,
                "intrinsics": [float(v) for v in e.intrinsics], "chunk": e.chunk_index,
                "pose": np.asarray(e.pose, dtype=np.float64).reshape(16).tolist()}


def _encoder_options(req: dict[str, Any]) -> dict[str, Any]:
    """The encoder settings a request gives (None values: not given)."""
    names = ("jpeg_quality", "h264_crf", "h264_pix_fmt")
    return {name: req[name] for name in names if req.get(name) is not None}


def _frames(frames: np.ndarray, poses: np.ndarray, intrinsics: np.ndarray, frame_indices: np.ndarray) -> Any:
    """Rendered frames as an ``engine.Chunk`` without a chunk index (stills, images, paths)."""
    from engine import Chunk

    return Chunk(frames=frames, poses=poses, intrinsics=np.asarray(intrinsics, dtype=np.float64), index=None,
                 frame_indices=frame_indices)


class Connection:
    """One websocket client: its sessions, snapshots, requests and outbox."""

    def __init__(self, server: WorldServer, ws: Any, number: int):
        self.server = server
        self.ws = ws
        self.number = number
        cfg = server.config
        self.outbox = Outbox(ws.send, server.encode_pool, live_queue_chunks=cfg.live_queue_chunks,
                             max_queued_messages=cfg.max_queued_messages, on_progress=self._touch)
        self.sessions: dict[int, ServedSession] = {}
        self.snapshots: dict[int, Any] = {}  # id -> engine Snapshot
        self.greeted = False
        self.last_activity = time.monotonic()
        self._session_ids = itertools.count(1)
        self._snapshot_ids = itertools.count(1)
        self._request_ids = itertools.count(1)
        self._requests = asyncio.Semaphore(cfg.max_pending_requests)
        self._render_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        self._reserved = 0

    def _touch(self) -> None:
        self.last_activity = time.monotonic()

    # ------------------------------------------------------------------------------------------- main loop
    async def run(self) -> None:
        sender = asyncio.create_task(self.outbox.run())
        watchdog = asyncio.create_task(self._watchdog())
        try:
            async for data in self.ws:
                self._touch()
                if sender.done():
                    break
                try:
                    await self._dispatch(parse_request(data, self.server.schemas))
                except ProtocolError as e:
                    await self.outbox.put(e.to_message())
        finally:
            sender.cancel()
            watchdog.cancel()
            await self.cleanup()

    async def _dispatch(self, req: dict[str, Any]) -> None:
        kind, rid = req["type"], req["id"]
        if kind == "hello":
            await self._hello(req)
        elif not self.greeted:
            raise ProtocolError("hello_required", f"send 'hello' (version {PROTOCOL_VERSION}) before '{kind}'", id=rid)
        elif kind == "ping":
            await self.outbox.put({"type": "pong", "id": rid, "time": time.time()})
        elif kind == "control":
            event = self._control(req)
            if rid is not None:
                await self.outbox.put({"type": "control_ack", "id": rid, "session": req["session"], "event": event})
        else:
            await self._requests.acquire()
            task = asyncio.create_task(self._guarded(getattr(self, f"_req_{kind}"), req))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _guarded(self, handler: Callable, req: dict[str, Any]) -> None:
        try:
            await handler(req)
        except ProtocolError as e:
            e.id = req["id"] if e.id is None else e.id
            await self.outbox.put(e.to_message())
        except Exception as e:  # a server bug outside any session: report it, keep the connection
            logger.exception("request %s failed", req["type"])
            await self.outbox.put(ProtocolError("internal", f"{req['type']} failed: {type(e).__name__}: {e}",
                                                id=req["id"]).to_message())
        finally:
            self._requests.release()

    async def _watchdog(self) -> None:
        timeout = self.server.config.idle_timeout_s
        while True:
            await asyncio.sleep(min(timeout / 4, 5.0))
            if time.monotonic() - self.last_activity > timeout:
                logger.info("connection %d: idle for %g s, closing", self.number, timeout)
                msg = ProtocolError("idle_timeout", f"nothing received or delivered for {timeout:g} s").to_message()
                try:
                    await asyncio.wait_for(self.ws.send(pack(msg)), 1.0)
                except Exception as e:  # the client is not reading: close anyway
                    logger.debug("connection %d: idle notice not sent (%s)", self.number, e)
                await self.ws.close(1000, "idle timeout")
                return

    # ------------------------------------------------------------------------------------------- handshake
    async def _hello(self, req: dict[str, Any]) -> None:
        cfg = self.server.config
        if self.greeted:
            raise ProtocolError("invalid_field", "hello was already exchanged on this connection", id=req["id"])
        if req["version"] != PROTOCOL_VERSION:
            await self._refuse("unsupported_version", f"protocol version {req['version']} is not spoken here; "
                               f"this server speaks version {PROTOCOL_VERSION}", req["id"])
        elif cfg.token is not None and not hmac.compare_digest((req["token"] or "").encode(), cfg.token.encode()):
            await self._refuse("unauthorized", "missing or wrong token", req["id"])
        else:
            self.greeted = True
            world = self.server.world
            await self.outbox.put({
                "type": "welcome", "id": req["id"], "version": PROTOCOL_VERSION, "server": SERVER_NAME,
                "world": {"height": world.height, "width": world.width, "frames_per_chunk": FRAMES_PER_CHUNK,
                          "fps": FPS, "variant": world.variant, "name": world.name},
                "encodings": list(ENCODINGS), "modes": list(MODES), "keys": list(KEYS),
                "limits": cfg.public_limits(),
            })

    async def _refuse(self, code: str, message: str, rid: Any) -> None:
        """Send an error and close the connection (policy violation)."""
        await self.outbox.put(ProtocolError(code, message, id=rid).to_message())
        deadline = time.monotonic() + 1.0
        while self.outbox.queued()["messages"] and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await self.ws.close(1008, code)

    # ------------------------------------------------------------------------------------------- sessions
    def _session(self, req: dict[str, Any]) -> ServedSession:
        sess = self.sessions.get(req["session"])
        if sess is None or sess.closed:
            raise ProtocolError("unknown_session", f"no open session {req['session']} on this connection",
                                id=req["id"], session=req["session"])
        return sess

    def _reserve_session(self, rid: Any) -> None:
        cfg = self.server.config
        if len(self.sessions) + self._reserved >= cfg.max_sessions_per_connection:
            raise ProtocolError("limit_exceeded", f"at most {cfg.max_sessions_per_connection} sessions per "
                                "connection; close one first", id=rid)
        self.server.reserve_session(rid)
        self._reserved += 1

    def _add_session(self, engine_session: Any, mode: str, encoding: str, encoder_options: dict[str, Any],
                     inbox: ControlInbox) -> ServedSession:
        """Register a started engine session (its reservation becomes the session)."""
        self._reserved -= 1
        sid = next(self._session_ids)
        stream = self.outbox.add_stream(Stream(("session", sid), live=mode == "live", encoding=encoding,
                                               height=engine_session.height, width=engine_session.width,
                                               encoder_options=encoder_options))
        sess = ServedSession(sid, engine_session, mode, stream, inbox)
        self.sessions[sid] = sess
        return sess

    async def _req_start(self, req: dict[str, Any]) -> None:
        self._reserve_session(req["id"])
        try:
            image = await asyncio.get_running_loop().run_in_executor(
                self.server.encode_pool, decode_image, req["image"], self.server.config.max_image_pixels)
            try:
                engine_session = await self.server.worker.run(self.server.start_engine_session, image, req)
            except (ValueError, TypeError) as e:
                raise ProtocolError("invalid_argument", f"start: {e}", id=req["id"]) from None
        except BaseException:
            self._reserved -= 1
            self.server.release_session()
            raise
        sess = self._add_session(engine_session, req["mode"], req["encoding"], _encoder_options(req), ControlInbox())
        sess.recorder = self.server.open_recorder(self.number, sess, req)
        await self.outbox.put({"type": "started", "id": req["id"], **sess.info()}, sess.stream)
        if sess.mode == "live":
            sess.live_task = asyncio.create_task(self._live_loop(sess))

    async def _req_close(self, req: dict[str, Any]) -> None:
        await self._end_session(self._session(req), reason="closed by client", rid=req["id"])

    async def _end_session(self, sess: ServedSession, *, reason: str, rid: Any = None,
                           error: ProtocolError | None = None) -> None:
        """Close a session: stop its chunk, drop its queued output, release it on the worker, then say why
        (``error`` first if it failed, then ``closed``, the session's last message)."""
        if sess.closed:
            return
        sess.closed = True
        sess.stop.set()
        if sess.live_task is not None and sess.live_task is not asyncio.current_task():
            sess.live_task.cancel()
        self.outbox.close_stream(sess.stream)
        self.sessions.pop(sess.id, None)
        await self.server.release_engine_session(sess)
        if error is not None:
            self.outbox.put_final(sess.stream, error.to_message())
        closed = {"type": "closed", "session": sess.id, "reason": reason}
        if rid is not None:
            closed["id"] = rid
        self.outbox.put_final(sess.stream, closed)

    def _control(self, req: dict[str, Any]) -> int:
        sess = self._session(req)
        if sess.mode != "live":
            raise ProtocolError("wrong_mode", f"session {sess.id} is a lockstep session; send 'step' instead of "
                                "'control'", id=req["id"], session=sess.id)
        try:
            return sess.inbox.push(req["keys"], req["mouse"], req["t"], req["id"])
        except ValueError as e:
            raise ProtocolError("invalid_field", str(e), id=req["id"], session=sess.id) from None

    async def _req_step(self, req: dict[str, Any]) -> None:
        sess = self._session(req)
        if sess.mode != "lockstep":
            raise ProtocolError("wrong_mode", f"session {sess.id} is live (it advances by itself); send 'control', "
                                "or fork it into a lockstep session", id=req["id"], session=sess.id)
        inputs = {name: req[name] for name in ("actions", "keys", "poses") if req[name] is not None}
        async with sess.lock:
            self._session(req)  # closed while waiting?
            await self._run_chunk(sess, req["id"], inputs)

    async def _live_loop(self, sess: ServedSession) -> None:
        """Generate chunk after chunk with the newest controls until the session closes."""
        while not sess.closed:
            async with sess.lock:
                if sess.closed:
                    return
                try:
                    await self._run_chunk(sess, None, None)
                except ProtocolError as e:  # e.g. controls the camera model refused: report, keep going
                    await self.outbox.put(e.to_message())
            await asyncio.sleep(0)

    async def _run_chunk(self, sess: ServedSession, rid: Any, inputs: dict[str, Any] | None) -> None:
        """One chunk on the worker, its parts handed to the session's stream as they are decoded."""
        item = ChunkItem(session=sess.id, rid=rid)
        await self.outbox.put_chunk(sess.stream, item)
        if item.dropped:  # the session closed while waiting
            return
        loop = asyncio.get_running_loop()

        def on_part(part: Any, control: dict | None) -> None:
            loop.call_soon_threadsafe(self.outbox.add_part, item, part, control)

        try:
            timings = await self.server.worker.run(self.server.chunk_job, sess, inputs, on_part)
        except asyncio.CancelledError:
            self.outbox.discard(sess.stream, item)
            raise
        except Exception as e:
            self.outbox.discard(sess.stream, item)
            if isinstance(e, (ValueError, TypeError)) and not item.parts and not item.started:
                raise ProtocolError("invalid_argument", f"step: {e}", id=rid, session=sess.id) from None
            await self._fail(sess, "chunk", e, rid)
            return
        self.outbox.finish(item, engine_timings=timings, gpu_memory=self.server.gpu_memory())

    async def _fail(self, sess: ServedSession, what: str, exc: Exception, rid: Any) -> None:
        logger.error("session %d failed in %s", sess.id, what, exc_info=exc)
        err = ProtocolError("session_failed", f"session {sess.id} failed in {what} and was closed: "
                            f"{type(exc).__name__}: {exc}", id=rid, session=sess.id)
        await self._end_session(sess, reason="failed", error=err)

    async def _session_call(self, sess: ServedSession, req: dict[str, Any], fn: Callable) -> tuple[bool, Any]:
        """Run ``fn()`` on the worker for ``sess`` (call with ``sess.lock`` held). ValueError/TypeError are the
        client's (invalid_argument, the session stays); anything else closes the session.
        Returns (ok, result)."""
        self._session(req)
        try:
            return True, await self.server.worker.run(fn)
        except (ValueError, TypeError) as e:
            raise ProtocolError("invalid_argument", f"{req['type']}: {e}", id=req["id"], session=sess.id) from None
        except Exception as e:
            await self._fail(sess, req["type"], e, req["id"])
            return False, None

    async def _req_snapshot(self, req: dict[str, Any]) -> None:
        sess = self._session(req)
        limit = self.server.config.max_snapshots_per_connection
        async with sess.lock:
            if len(self.snapshots) >= limit:
                raise ProtocolError("limit_exceeded", f"at most {limit} snapshots per connection; drop one first",
                                    id=req["id"], session=sess.id)
            ok, snap = await self._session_call(sess, req, sess.engine.snapshot)
            if not ok:
                return
            snap_id = next(self._snapshot_ids)
            self.snapshots[snap_id] = snap
            chunk = sess.engine.chunk_index
            self.server.record(sess, "snapshot", str(snap_id), chunk)
            await self.outbox.put({"type": "snapshot", "id": req["id"], "session": sess.id, "snapshot": snap_id,
                                   "chunk": chunk, "bytes": int(snap.nbytes())}, sess.stream)

    async def _req_restore(self, req: dict[str, Any]) -> None:
        sess = self._session(req)
        if req["snapshot"] not in self.snapshots:
            raise ProtocolError("unknown_snapshot", f"no snapshot {req['snapshot']} on this connection",
                                id=req["id"], session=sess.id)
        snap = self.snapshots[req["snapshot"]]
        async with sess.lock:
            chunk_before = sess.engine.chunk_index
            ok, _ = await self._session_call(sess, req, lambda: sess.engine.restore(snap))
            if not ok:
                return
            # a snapshot its record has not taken (another session's) ends the record: it could not replay
            self.server.record(sess, "restore", str(req["snapshot"]), chunk_before)
            await self.outbox.put({"type": "restored", "id": req["id"], "snapshot": req["snapshot"], **sess.info()},
                                  sess.stream)

    async def _req_drop_snapshot(self, req: dict[str, Any]) -> None:
        if self.snapshots.pop(req["snapshot"], None) is None:
            raise ProtocolError("unknown_snapshot", f"no snapshot {req['snapshot']} on this connection", id=req["id"])
        await self.outbox.put({"type": "snapshot_dropped", "id": req["id"], "snapshot": req["snapshot"]})

    async def _req_fork(self, req: dict[str, Any]) -> None:
        parent = self._session(req)
        self._reserve_session(req["id"])
        ok = False
        try:
            async with parent.lock:
                ok, child = await self._session_call(parent, req, parent.engine.fork)
                if ok:  # the fork's record copies the parent's, so it is taken before the parent moves on
                    options = {**parent.stream.encoder_options, **_encoder_options(req)}
                    inbox = ControlInbox(last_t=parent.inbox.last_t, t0=parent.inbox.t0)
                    sess = self._add_session(child, req["mode"] or parent.mode,
                                             req["encoding"] or parent.stream.encoding, options, inbox)
                    sess.recorder = self.server.fork_recorder(self.number, parent, sess)
        finally:
            if not ok:  # refused, or the parent failed (its error and closed were sent)
                self._reserved -= 1
                self.server.release_session()
        if not ok:
            return
        await self.outbox.put({"type": "forked", "id": req["id"], "parent": parent.id, **sess.info()}, sess.stream)
        if sess.mode == "live":
            sess.live_task = asyncio.create_task(self._live_loop(sess))

    # --------------------------------------------------------------------------------------------- renders
    async def _render(self, req: dict[str, Any], height: int, width: int, fn: Callable,
                      session: int | None = None) -> None:
        """Run a one-off render on the worker and send its frames (``frames`` messages, then ``stats``). One
        render per connection at a time, and the next waits until the previous one was delivered."""
        async with self._render_lock:
            stream = self.outbox.add_stream(Stream(("render", next(self._request_ids)), live=False,
                                                   encoding=req["encoding"], height=height, width=width,
                                                   encoder_options=_encoder_options(req)))
            item = ChunkItem(session=session, rid=req["id"])
            try:
                await self.outbox.put_chunk(stream, item)
                t0 = time.perf_counter()
                try:
                    parts = await self.server.worker.run(fn)
                except (ValueError, TypeError) as e:
                    self.outbox.discard(stream, item)
                    raise ProtocolError("invalid_argument", f"{req['type']}: {e}", id=req["id"],
                                        session=session) from None
                for part in parts:
                    self.outbox.add_part(item, part)
                self.outbox.finish(item, engine_timings={"total": time.perf_counter() - t0},
                                   gpu_memory=self.server.gpu_memory())
                await self.outbox.wait_delivered(stream)
            finally:
                self.outbox.retire(stream)

    async def _req_still(self, req: dict[str, Any]) -> None:
        sess = self._session(req)
        engine = sess.engine

        def render() -> list[Any]:
            frame = engine.render_image(req["pose"])
            pose = engine.pose if req["pose"] is None else req["pose"]
            return [_frames(frame[None], np.asarray(pose)[None], engine.intrinsics, np.array([engine.frame_index]))]

        async with sess.lock:
            self._session(req)
            try:
                await self._render(req, engine.height, engine.width, render, session=sess.id)
            except ProtocolError:
                raise
            except Exception as e:
                await self._fail(sess, "still", e, req["id"])

    async def _req_image(self, req: dict[str, Any]) -> None:
        from sana_wm.image import default_intrinsics

        world = self.server.world

        def render() -> list[Any]:
            frame = world.render_image(req["prompt"], seed=req["seed"])
            k = default_intrinsics(world.width, world.height)
            return [_frames(frame[None], np.eye(4)[None], k, np.array([0]))]

        await self._render(req, world.height, world.width, render)

    async def _req_render_path(self, req: dict[str, Any]) -> None:
        world = self.server.world
        image = await asyncio.get_running_loop().run_in_executor(
            self.server.encode_pool, decode_image, req["image"], self.server.config.max_image_pixels)
        c2w = req["poses"]

        def render() -> list[Any]:
            frames = world.render_path(image, req["prompt"], c2w, seed=req["seed"], intrinsics=req["intrinsics"],
                                       fov_deg=req["fov_deg"], sampler=req["sampler"], progress=False)
            k = world.frame_intrinsics(image, req["intrinsics"], req["fov_deg"])
            rel = np.linalg.inv(c2w[0]) @ c2w
            return [_frames(frames[i:i + FRAMES_PER_CHUNK], rel[1 + i:1 + i + FRAMES_PER_CHUNK], k,
                            np.arange(1 + i, 1 + min(i + FRAMES_PER_CHUNK, len(frames))))
                    for i in range(0, len(frames), FRAMES_PER_CHUNK)]

        await self._render(req, world.height, world.width, render)

    # ------------------------------------------------------------------------------------------- cleanup
    async def cleanup(self) -> None:
        """The connection ended: stop running chunks, release every session (also mid-chunk), drop snapshots."""
        for task in list(self._tasks):
            task.cancel()
        ending = list(self.sessions.values())
        for sess in ending:
            sess.closed = True
            sess.stop.set()
            if sess.live_task is not None:
                sess.live_task.cancel()
        self.sessions.clear()
        self.snapshots.clear()
        await asyncio.gather(*(self.server.release_engine_session(s) for s in ending), return_exceptions=True)

    def status(self) -> dict[str, Any]:
        return {"connection": self.number, "sessions": sorted(self.sessions), "snapshots": len(self.snapshots),
                "queued": self.outbox.queued(),
                "dropped_chunks": {sid: s.stream.dropped_total for sid, s in self.sessions.items()}}


class WorldServer:
    """Serves one ``engine.World`` over websockets (``await start()``, ``await stop()``)."""

    def __init__(self, world: Any, config: ServerConfig | None = None, *, model_info: dict[str, Any] | None = None):
        self.world = world
        self.config = config or ServerConfig()
        cfg = self.config
        self.schemas = build_schemas(Limits(max_image_bytes=cfg.max_message_bytes,
                                            max_prompt_chars=cfg.max_prompt_chars,
                                            max_path_frames=cfg.max_path_frames, max_step_frames=FRAMES_PER_CHUNK))
        self.worker = GpuWorker()
        self.encode_pool = ThreadPoolExecutor(max_workers=cfg.encode_threads, thread_name_prefix="sana-wm-encode")
        # how to rebuild the world (session records): at the size sessions are served
        self.model_info = {**(model_info or {"kind": "unknown", "name": getattr(world, "name", None)}),
                           "height": world.height, "width": world.width}
        self.connections: set[Connection] = set()
        self.sessions_open = 0  # open engine sessions plus starts in progress
        self._numbers = itertools.count(1)
        self._ws_server: Any = None
        self.port: int | None = None

    # ---------------------------------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        from websockets.asyncio.server import serve

        cfg = self.config
        self._ws_server = await serve(self._handle, cfg.host, cfg.port, max_size=cfg.max_message_bytes, max_queue=4,
                                      compression=None, close_timeout=2, ping_interval=20, ping_timeout=20)
        self.port = self._ws_server.sockets[0].getsockname()[1]
        logger.info("serving %s on %s", self.world.name, self.url)

    @property
    def url(self) -> str:
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        return f"ws://{host}:{self.port}/"

    async def stop(self) -> None:
        if self._ws_server is not None:
            self._ws_server.close()
            await self._ws_server.wait_closed()
        self.worker.shutdown()
        self.encode_pool.shutdown(wait=True, cancel_futures=True)

    async def _handle(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        if self.config.send_buffer_bytes is not None:
            sock = ws.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.config.send_buffer_bytes)
        conn = Connection(self, ws, next(self._numbers))
        self.connections.add(conn)
        try:
            await conn.run()
        except ConnectionClosed as e:  # closed abnormally (peer vanished, message too big, keepalive timeout)
            logger.info("connection %d closed: %s", conn.number, e)
        except Exception:  # a bug in this connection: never the server
            logger.exception("connection %d ended with an error", conn.number)
        finally:
            self.connections.discard(conn)

    def gpu_memory(self) -> dict[str, int] | None:
        """The world's CUDA device memory for ``stats`` (bytes, all sessions): ``allocated_bytes`` now and
        ``max_allocated_bytes`` since the server started (``torch.cuda.memory_allocated`` /
        ``max_memory_allocated``); None off CUDA."""
        import torch

        device = torch.device(self.world.device)
        if device.type != "cuda":
            return None
        return {"allocated_bytes": torch.cuda.memory_allocated(device),
                "max_allocated_bytes": torch.cuda.max_memory_allocated(device)}

    def status(self) -> dict[str, Any]:
        """Counts for tests and logs: connections, open sessions, what each connection has queued."""
        return {"connections": len(self.connections), "sessions_open": self.sessions_open,
                "per_connection": [c.status() for c in self.connections]}

    # ------------------------------------------------------------------------------------- session slots
    def reserve_session(self, rid: Any) -> None:
        if self.sessions_open >= self.config.max_sessions_total:
            raise ProtocolError("limit_exceeded", f"the server runs its maximum of {self.config.max_sessions_total} "
                                "sessions; try again later", id=rid)
        self.sessions_open += 1

    def release_session(self) -> None:
        self.sessions_open -= 1

    async def release_engine_session(self, sess: ServedSession) -> None:
        """Close the engine session on the worker (after any chunk it is running), then free its slot."""
        try:
            await self.worker.run(sess.engine.close, cancellable=False)
        finally:
            if sess.recorder is not None:
                sess.recorder.close()
                sess.recorder = None
            self.release_session()

    # ----------------------------------------------------------------------------------- worker-side jobs
    def start_engine_session(self, image: np.ndarray, req: dict[str, Any]) -> Any:
        mapping = {} if req["mapping"] is None else {"mapping": req["mapping"]}
        return self.world.start(image, req["prompt"], seed=req["seed"], intrinsics=req["intrinsics"],
                                fov_deg=req["fov_deg"], **mapping)

    def chunk_job(self, sess: ServedSession, inputs: dict[str, Any] | None,
                  on_part: Callable[[Any, dict | None], None]) -> dict[str, float]:
        """Generate one chunk of ``sess`` (worker thread). ``inputs``: the lockstep step's camera input, or None
        for a live chunk (the newest controls). Each part goes to ``on_part(part, receipt)`` as it is decoded.
        Returns the chunk's engine timings (seconds)."""
        if sess.stop.is_set():
            return {}
        engine = sess.engine
        receipt = None
        if inputs is None:
            events, new = sess.inbox.drain()
            apply_control_events(engine.controller, events)
            if new is not None:
                sess.last_control = new
            if sess.last_control is not None:
                receipt = {**sess.last_control, "new": new is not None}
            parts = engine.stream()  # poses from the controller's events, taken now: the receipt is exact
        else:
            parts = engine.stream(**inputs)
        kept, timings = [], {}
        try:
            for part in parts:
                on_part(part, receipt)
                kept.append(part)
                timings = dict(part.timings)
                if sess.stop.is_set():
                    return timings
        finally:
            parts.close()
        if sess.recorder is not None:  # as given: a live chunk's control events, a step's actions / keys / poses
            self.record(sess, "step", kept[0].index, **({"events": events} if inputs is None else inputs),
                        frames=np.concatenate([p.frames for p in kept]),
                        frame_poses=np.concatenate([p.poses for p in kept]))
        return timings

    # ------------------------------------------------------------------------------------------ records
    def _record_path(self, conn_number: int, sid: int) -> Path:
        return Path(self.config.record_dir) / f"{time.strftime('%Y%m%d-%H%M%S')}-c{conn_number}-s{sid}.jsonl"

    def open_recorder(self, conn_number: int, sess: ServedSession, req: dict[str, Any]) -> Recorder | None:
        """A ``server.record.Recorder`` for a new session when ``record_dir`` is set."""
        if self.config.record_dir is None:
            return None
        world = self.world
        try:
            return Recorder(self._record_path(conn_number, sess.id), image=req["image"], prompt=req["prompt"],
                            seed=req["seed"], model=self.model_info, height=sess.engine.height,
                            width=sess.engine.width, intrinsics=req["intrinsics"], fov_deg=req["fov_deg"],
                            device=str(world.device), dtype=str(world.dtype), mapping=sess.engine.mapping,
                            meta={"connection": conn_number, "session": sess.id, "mode": sess.mode})
        except OSError as e:
            logger.warning("session %d is not recorded: %s", sess.id, e)
            return None

    def fork_recorder(self, conn_number: int, parent: ServedSession, child: ServedSession) -> Recorder | None:
        """The record of a fork (``Recorder.fork``: the parent's record so far, then the fork's own events) when
        the parent is recorded; call before the parent makes its next chunk."""
        if parent.recorder is None:
            return None
        try:
            return parent.recorder.fork(self._record_path(conn_number, child.id), child.engine.chunk_index,
                                        meta={"session": child.id, "mode": child.mode, "parent": parent.id})
        except (OSError, ValueError) as e:
            logger.warning("session %d (a fork of %d) is not recorded: %s", child.id, parent.id, e)
            return None

    def record(self, sess: ServedSession, event: str, *args: Any, **kwargs: Any) -> None:
        """Log ``Recorder.<event>(*args, **kwargs)`` for ``sess`` if it is recorded; a failing record (disk full,
        a restore the record cannot replay) stops recording that session, never the session itself."""
        if sess.recorder is None:
            return
        try:
            getattr(sess.recorder, event)(*args, **kwargs)
        except (OSError, ValueError) as e:
            logger.warning("session %d: record %s ends here: %s failed (%s)", sess.id, sess.recorder.path, event, e)
            sess.recorder.close()
            sess.recorder = None


class ServerThread:
    """A ``WorldServer`` on its own event loop in a background thread (tests, notebooks, embedding).

    ``with ServerThread(world, ServerConfig(port=0)) as srv: Client(srv.url)``.
    """

    def __init__(self, world: Any, config: ServerConfig | None = None, **kwargs: Any):
        self.server = WorldServer(world, config, **kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sana-wm-server", daemon=True)

    def start(self) -> ServerThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(timeout=30)
        return self

    @property
    def url(self) -> str:
        return self.server.url

    def status(self) -> dict[str, Any]:
        async def get() -> dict[str, Any]:
            return self.server.status()

        return asyncio.run_coroutine_threadsafe(get(), self._loop).result(timeout=10)

    def stop(self) -> None:
        if not self._loop.is_running():
            return
        asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------------------------------------------ CLI

def build_parser() -> argparse.ArgumentParser:
    d = ServerConfig()
    p = argparse.ArgumentParser(prog="sana-wm serve", description="Serve a SANA-WM world over websockets "
                                "(msgpack protocol, docs/protocol.md).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", metavar="DIR", help="a SANA-WM release folder (World.load)")
    src.add_argument("--demo", action="store_true", help="a tiny random world (World.demo), CPU, for trying it out")
    p.add_argument("--device", default=None, help="torch device (default: cuda if present, else cpu)")
    p.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32", "bfloat16", "float16", "float32"],
                   help="weights and activations (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--height", type=int, default=None, help="frame height, a multiple of 32 (default: 704; --demo: "
                   "the demo world's)")
    p.add_argument("--width", type=int, default=None, help="frame width, a multiple of 32 (default: 1280; --demo: "
                   "the demo world's)")
    p.add_argument("--host", default=d.host, help=f"address to bind (default {d.host}: this machine only)")
    p.add_argument("--port", type=int, default=d.port, help=f"port (default {d.port}; 0 picks a free one)")
    p.add_argument("--token", default=None, help="require this token in every client's hello")
    p.add_argument("--max-sessions", type=int, default=d.max_sessions_total, help="sessions open at once, in total")
    p.add_argument("--max-sessions-per-connection", type=int, default=d.max_sessions_per_connection)
    p.add_argument("--max-snapshots", type=int, default=d.max_snapshots_per_connection, help="per connection")
    p.add_argument("--max-message-mb", type=float, default=d.max_message_bytes / (1 << 20),
                   help="largest message a client may send (MiB); larger ones close the connection")
    p.add_argument("--max-image-pixels", type=int, default=d.max_image_pixels, help="largest first image (W*H)")
    p.add_argument("--max-path-frames", type=int, default=d.max_path_frames, help="longest render_path")
    p.add_argument("--live-queue-chunks", type=int, default=d.live_queue_chunks,
                   help="live sessions: undelivered chunks kept per client before the oldest is dropped")
    p.add_argument("--send-buffer-kb", type=int, default=None,
                   help="kernel send buffer per connection in KiB (default: the OS's autotuning); smaller bounds "
                        "memory per slow client and makes the live drop policy act sooner")
    p.add_argument("--idle-timeout", type=float, default=d.idle_timeout_s,
                   help="close a connection after this many seconds without a message either way")
    p.add_argument("--record", metavar="DIR", default=None, help="write a record (server.record) of every session")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def _config_from_args(args: argparse.Namespace) -> ServerConfig:
    positive = {"--port": args.port >= 0, "--max-sessions": args.max_sessions >= 1,
                "--max-sessions-per-connection": args.max_sessions_per_connection >= 1,
                "--max-snapshots": args.max_snapshots >= 0, "--max-message-mb": args.max_message_mb > 0,
                "--max-image-pixels": args.max_image_pixels >= 1, "--max-path-frames": args.max_path_frames >= 1,
                "--live-queue-chunks": args.live_queue_chunks >= 1, "--idle-timeout": args.idle_timeout > 0,
                "--send-buffer-kb": args.send_buffer_kb is None or args.send_buffer_kb >= 1}
    bad = [flag for flag, ok in positive.items() if not ok]
    if bad:
        raise ValueError(f"{', '.join(bad)}: must be positive (port: >= 0)")
    if args.token is not None and not args.token:
        raise ValueError("--token must not be empty")
    return ServerConfig(host=args.host, port=args.port, token=args.token,
                        max_message_bytes=int(args.max_message_mb * (1 << 20)),
                        max_image_pixels=args.max_image_pixels, max_path_frames=args.max_path_frames,
                        max_sessions_total=args.max_sessions,
                        max_sessions_per_connection=args.max_sessions_per_connection,
                        max_snapshots_per_connection=args.max_snapshots, live_queue_chunks=args.live_queue_chunks,
                        idle_timeout_s=args.idle_timeout, record_dir=args.record,
                        send_buffer_bytes=None if args.send_buffer_kb is None else args.send_buffer_kb << 10)


def load_world(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The world named by ``--demo`` / ``--model`` and a description of it for session records (``WorldServer``
    adds the frame size)."""
    import torch

    from engine import World

    dtype = None if args.dtype is None else {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
                                             "fp16": torch.float16, "float16": torch.float16,
                                             "fp32": torch.float32, "float32": torch.float32}[args.dtype]
    if args.demo:
        given = (("height", args.height), ("width", args.width), ("device", args.device), ("dtype", dtype))
        world = World.demo(**{k: v for k, v in given if v is not None})
        return world, {"kind": "demo", "seed": 0}
    size = {"height": args.height or 704, "width": args.width or 1280}
    world = World.load(args.model, device=args.device, dtype=dtype, **size)
    return world, {"kind": "folder", "path": str(Path(args.model).resolve())}


async def serve(world: Any, config: ServerConfig, model_info: dict[str, Any] | None = None,
                ready: Callable[[WorldServer], None] | None = None) -> None:
    """Run a server until cancelled."""
    server = WorldServer(world, config, model_info=model_info)
    await server.start()
    if ready is not None:
        ready(server)
    try:
        await asyncio.Future()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    """``sana-wm serve``: returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = _config_from_args(args)
    except ValueError as e:
        parser.error(str(e))
    try:
        world, model_info = load_world(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"sana-wm serve: {e}", file=sys.stderr)
        return 2

    def ready(server: WorldServer) -> None:
        print(f"sana-wm serving on {server.url}", flush=True)

    try:
        asyncio.run(serve(world, config, model_info, ready))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
