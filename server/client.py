"""Python clients for ``sana-wm serve`` (protocol: docs/protocol.md): ``AsyncClient`` and ``Client`` (sync).

    from server.client import Client
    with Client("ws://127.0.0.1:8765/") as client:
        s = client.start(open("first.png", "rb").read(), "a harbour at dusk", seed=0, mode="lockstep")
        out = s.step("w-24")              # out.frames (24,H,W,3) uint8, out.c2w (24,4,4), out.stats
        snap = s.snapshot(); s.restore(snap); t = s.fork(); still = s.still()
        live = client.start(image, "a forest", mode="live", encoding="jpeg")
        live.control(keys={"w"}); out = live.next_chunk()   # out.control: which control event it reflects

``Client`` runs an ``AsyncClient`` on a private event loop thread; both have the same methods (sync vs
``await``). Frames are decoded on arrival (raw, JPEG, H.264) into ``Frames`` objects.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from server.codecs import FrameDecoder
from server.protocol import ERROR_CODES, PROTOCOL_VERSION, pack

DEFAULT_TIMEOUT = 120.0


class ServerError(Exception):
    """An ``error`` message from the server (``code`` is one of ``server.protocol.ERROR_CODES``)."""

    def __init__(self, code: str, message: str, id: Any = None, session: int | None = None):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.id, self.session = code, message, id, session


class ConnectionClosed(ServerError):
    """The connection ended while a reply was awaited."""

    def __init__(self, message: str = "the connection to the server closed"):
        super().__init__("connection_closed", message)


@dataclass
class Frames:
    """Decoded frames of one chunk (or one still / image / path render).

    frames (N,H,W,3) uint8; c2w (N,4,4) float64 camera-to-world (OpenCV) relative to the session's frame 0;
    intrinsics (N,4) ``[fx, fy, cx, cy]``; frame_indices (N,) global pixel-frame indices. ``chunk`` is None for
    renders. ``stats``: the server's ``stats`` message (timings_ms, bytes, dropped_chunks, dropped, gpu_memory, ...);
    ``control``: the receipt of the newest control event this chunk applied (live), e.g.
    ``{"event": 3, "id": ..., "t": ..., "new": True}``.
    """

    session: int | None
    chunk: int | None
    frames: np.ndarray
    c2w: np.ndarray
    intrinsics: np.ndarray
    frame_indices: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)
    control: dict[str, Any] | None = None
    part_timings_ms: list[dict[str, float]] = field(default_factory=list)

    @property
    def dropped(self) -> list[int]:
        """Chunks the server dropped for this client (slow reader) since the previous chunk."""
        return list(self.stats.get("dropped", []))


class _Assembler:
    """Collects the ``frames`` messages of one chunk or render until its ``stats`` arrives."""

    def __init__(self, decoder: FrameDecoder):
        self.decoder = decoder
        self.frames: list[np.ndarray] = []
        self.c2w: list[list[float]] = []
        self.intrinsics: list[list[float]] = []
        self.indices: list[int] = []
        self.timings: list[dict[str, float]] = []
        self.control: dict[str, Any] | None = None
        self.height = self.width = 0

    def add(self, msg: dict[str, Any]) -> None:
        n, h, w = msg["count"], msg["height"], msg["width"]
        self.height, self.width = h, w
        self.frames.append(self.decoder.decode(msg["payload"], msg.get("sizes"), n, h, w))
        self.c2w += msg["c2w"]
        self.intrinsics += msg["intrinsics"]
        self.indices += msg["frame_indices"]
        self.timings.append(msg.get("timings_ms", {}))
        self.control = msg.get("control", self.control)

    def result(self, stats: dict[str, Any]) -> Frames:
        frames = np.concatenate(self.frames) if self.frames else np.zeros((0, self.height, self.width, 3), np.uint8)
        return Frames(session=stats.get("session"), chunk=stats.get("chunk"), frames=frames,
                      c2w=np.asarray(self.c2w, dtype=np.float64).reshape(-1, 4, 4),
                      intrinsics=np.asarray(self.intrinsics, dtype=np.float64).reshape(-1, 4),
                      frame_indices=np.asarray(self.indices, dtype=np.int64), stats=stats,
                      control=stats.get("control", self.control), part_timings_ms=self.timings)


def _image_bytes(image: Any) -> bytes:
    """File bytes of the first image: bytes as they are, a local path read here, arrays/PIL as PNG."""
    from server.record import image_bytes

    return image_bytes(image)


def _poses(poses: Any, name: str) -> list[list[float]]:
    arr = np.asarray(poses, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != (4, 4):
        raise ValueError(f"{name}: expected (N,4,4) camera-to-world matrices, got shape {arr.shape}")
    return arr.reshape(len(arr), 16).tolist()


def _keys(keys: Iterable[str]) -> list[str]:
    """A held-key collection as a sorted list; a string counts as its letters ("wd" -> ["d", "w"])."""
    return sorted(set(keys))


class AsyncSession:
    """A session on the server (made by ``AsyncClient.start`` / ``fork``)."""

    def __init__(self, client: AsyncClient, info: dict[str, Any], live_buffer: int):
        self._client = client
        self.info = info
        self.id: int = info["session"]
        self.mode: str = info["mode"]
        self.encoding: str = info["encoding"]
        self.height: int = info["height"]
        self.width: int = info["width"]
        self.frames_per_chunk: int = info["frames_per_chunk"]
        self.intrinsics = np.asarray(info["intrinsics"], dtype=np.float64)
        self.closed = False
        self.close_reason: str | None = None
        self.decoder = FrameDecoder(self.encoding)
        self.assembler: _Assembler | None = None
        self._live: deque[Frames | ServerError] = deque(maxlen=live_buffer)
        self._live_event = asyncio.Event()
        self.client_dropped = 0  # live chunks dropped here because the caller did not take them

    # ----------------------------------------------------------------------------------------- requests
    async def step(self, actions: str | None = None, *, keys: Iterable[Iterable[str]] | None = None,
                   poses: Any = None, timeout: float | None = DEFAULT_TIMEOUT) -> Frames:
        """Lockstep: generate the next chunk from an action string (``"w-24"``), held keys per frame, or
        (N,4,4) poses, and return its frames."""
        msg: dict[str, Any] = {"type": "step", "session": self.id}
        if actions is not None:
            msg["actions"] = actions
        if keys is not None:
            msg["keys"] = [_keys(k) for k in keys]
        if poses is not None:
            msg["poses"] = _poses(poses, "poses")
        return await self._client.request(msg, timeout=timeout)

    async def control(self, keys: Iterable[str] = (), mouse: tuple[float, float] | None = None,
                      t: float | None = None, *, wait: bool = True,
                      timeout: float | None = DEFAULT_TIMEOUT) -> int | None:
        """Live: the keys held now (e.g. ``{"w", "shift"}``), mouse motion (dx, dy) in pixels since the last
        control, client time ``t`` in ms. ``wait``: wait for the server's ``control_ack`` and return the event
        number that chunk receipts (``Frames.control["event"]``) refer to; otherwise fire and forget."""
        msg: dict[str, Any] = {"type": "control", "session": self.id, "keys": _keys(keys)}
        if mouse is not None:
            msg["mouse"] = [float(mouse[0]), float(mouse[1])]
        if t is not None:
            msg["t"] = float(t)
        if not wait:
            await self._client.send(msg)
            return None
        return (await self._client.request(msg, timeout=timeout))["event"]

    async def next_chunk(self, timeout: float | None = DEFAULT_TIMEOUT) -> Frames:
        """Live: the oldest chunk received and not yet taken (waits for one)."""
        async def wait() -> Frames:
            while not self._live:
                if self.closed:
                    raise ServerError("unknown_session", f"session {self.id} is closed ({self.close_reason})",
                                      session=self.id)
                self._live_event.clear()
                await self._live_event.wait()
            item = self._live.popleft()
            if isinstance(item, ServerError):
                raise item
            return item

        return await asyncio.wait_for(wait(), timeout)

    async def chunks(self, timeout: float | None = DEFAULT_TIMEOUT) -> AsyncIterator[Frames]:
        """Live: chunks as they arrive, until the session closes."""
        while True:
            try:
                yield await self.next_chunk(timeout)
            except ServerError as e:
                if e.code == "unknown_session":
                    return
                raise

    async def snapshot(self, timeout: float | None = DEFAULT_TIMEOUT) -> int:
        """Copy the session's state; returns the snapshot id (valid on this connection)."""
        return (await self._client.request({"type": "snapshot", "session": self.id}, timeout=timeout))["snapshot"]

    async def restore(self, snapshot: int, timeout: float | None = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """Return to a snapshot (of this session or of one it was forked from / into)."""
        return await self._client.request({"type": "restore", "session": self.id, "snapshot": snapshot},
                                          timeout=timeout)

    async def fork(self, mode: str | None = None, encoding: str | None = None,
                   timeout: float | None = DEFAULT_TIMEOUT) -> AsyncSession:
        """A new session continuing from a copy of this one's state (default: same mode and encoding)."""
        msg: dict[str, Any] = {"type": "fork", "session": self.id}
        if mode is not None:
            msg["mode"] = mode
        if encoding is not None:
            msg["encoding"] = encoding
        return self._client._add_session(await self._client.request(msg, timeout=timeout))

    async def still(self, pose: Any = None, encoding: str = "raw",
                    timeout: float | None = DEFAULT_TIMEOUT) -> Frames:
        """The frame the session would show at ``pose`` ((4,4) c2w; default: the current pose); no advance."""
        msg: dict[str, Any] = {"type": "still", "session": self.id, "encoding": encoding}
        if pose is not None:
            msg["pose"] = _poses(pose, "pose")[0]
        return await self._client.request(msg, timeout=timeout)

    async def close(self, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        if not self.closed:
            await self._client.request({"type": "close", "session": self.id}, timeout=timeout)

    # ------------------------------------------------------------------------------------ from the reader
    def _push_live(self, item: Frames | ServerError) -> None:
        if len(self._live) == self._live.maxlen:
            self.client_dropped += 1
        self._live.append(item)
        self._live_event.set()

    def _mark_closed(self, reason: str) -> None:
        self.closed = True
        self.close_reason = reason
        self._live_event.set()


@dataclass
class _Pending:
    future: asyncio.Future
    kind: str
    assembler: _Assembler | None = None


class AsyncClient:
    """asyncio client: ``client = await AsyncClient.connect(url)``; ``async with`` closes it."""

    def __init__(self, ws: Any, *, live_buffer: int = 8):
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self.sessions: dict[int, AsyncSession] = {}
        self.errors: deque[ServerError] = deque(maxlen=100)  # errors that answer no request of this client
        self.welcome: dict[str, Any] = {}
        self._live_buffer = live_buffer
        self._reader: asyncio.Task | None = None

    @classmethod
    async def connect(cls, url: str, *, token: str | None = None, client_name: str = "sana-wm-python",
                      open_timeout: float = 30.0, max_message_bytes: int | None = 1 << 30,
                      live_buffer: int = 8) -> AsyncClient:
        """Open the websocket and exchange hello/welcome. ``live_buffer``: live chunks kept per session until
        taken (older ones are dropped and counted in ``AsyncSession.client_dropped``)."""
        from websockets.asyncio.client import connect

        ws = await connect(url, max_size=max_message_bytes, compression=None, proxy=None, open_timeout=open_timeout)
        client = cls(ws, live_buffer=live_buffer)
        client._reader = asyncio.create_task(client._read())
        hello: dict[str, Any] = {"type": "hello", "version": PROTOCOL_VERSION, "client": client_name}
        if token is not None:
            hello["token"] = token
        try:
            client.welcome = await client.request(hello, timeout=open_timeout)
        except BaseException:
            await client.close()
            raise
        return client

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    # ------------------------------------------------------------------------------------------- requests
    async def send(self, msg: dict[str, Any]) -> None:
        """Send one message as it is (no reply awaited)."""
        await self._ws.send(pack(msg))

    async def request(self, msg: dict[str, Any], timeout: float | None = DEFAULT_TIMEOUT) -> Any:
        """Send ``msg`` with a fresh ``id`` and wait for its reply (frames requests: the decoded ``Frames``)."""
        rid = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[rid] = _Pending(future, msg["type"])
        try:
            await self.send({**msg, "id": rid})
            return await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(rid, None)

    async def start(self, image: Any, prompt: str, *, seed: int = 0, mode: str = "lockstep", encoding: str = "raw",
                    intrinsics: Any = None, fov_deg: float | None = None, jpeg_quality: int | None = None,
                    h264_crf: int | None = None, h264_pix_fmt: str | None = None, mapping: str | None = None,
                    timeout: float | None = DEFAULT_TIMEOUT) -> AsyncSession:
        """Start a session from a first image (file bytes, a local path, a (H,W,3) uint8 array or PIL image).
        ``mode``: "lockstep" (advances only on ``step``) or "live" (advances by itself, steered by ``control``);
        ``encoding``: "raw", "jpeg" (``jpeg_quality``) or "h264" (``h264_crf``, ``h264_pix_fmt``); ``mapping``: the
        key layout of actions and keys ("sana-wm-v2" NVlabs streaming, the default; "sana-wm-v1" diffusers)."""
        msg: dict[str, Any] = {"type": "start", "image": _image_bytes(image), "prompt": prompt, "seed": seed,
                               "mode": mode, "encoding": encoding}
        for name, value in (("fov_deg", fov_deg), ("jpeg_quality", jpeg_quality), ("h264_crf", h264_crf),
                            ("h264_pix_fmt", h264_pix_fmt), ("mapping", mapping)):
            if value is not None:
                msg[name] = value
        if intrinsics is not None:
            msg["intrinsics"] = [float(v) for v in np.asarray(intrinsics, dtype=np.float64).reshape(4)]
        return self._add_session(await self.request(msg, timeout=timeout))

    async def render_image(self, prompt: str, *, seed: int = 0, encoding: str = "raw",
                           timeout: float | None = DEFAULT_TIMEOUT) -> Frames:
        """A still from the prompt alone (``World.render_image``): one frame."""
        return await self.request({"type": "image", "prompt": prompt, "seed": seed, "encoding": encoding},
                                  timeout=timeout)

    async def render_path(self, image: Any, prompt: str, c2w: Any, *, seed: int = 0, intrinsics: Any = None,
                          fov_deg: float | None = None, sampler: str | None = None, encoding: str = "raw",
                          timeout: float | None = DEFAULT_TIMEOUT) -> Frames:
        """Render a whole camera path offline (``World.render_path``): frames for ``c2w[1:]``."""
        msg: dict[str, Any] = {"type": "render_path", "image": _image_bytes(image), "prompt": prompt, "seed": seed,
                               "poses": _poses(c2w, "c2w"), "encoding": encoding}
        if intrinsics is not None:
            msg["intrinsics"] = [float(v) for v in np.asarray(intrinsics, dtype=np.float64).reshape(4)]
        if fov_deg is not None:
            msg["fov_deg"] = fov_deg
        if sampler is not None:
            msg["sampler"] = sampler
        return await self.request(msg, timeout=timeout)

    async def drop_snapshot(self, snapshot: int, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        await self.request({"type": "drop_snapshot", "snapshot": snapshot}, timeout=timeout)

    async def ping(self, timeout: float | None = DEFAULT_TIMEOUT) -> float:
        """Round-trip time in seconds."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await self.request({"type": "ping"}, timeout=timeout)
        return loop.time() - t0

    def _add_session(self, info: dict[str, Any]) -> AsyncSession:
        sess = AsyncSession(self, info, self._live_buffer)
        self.sessions[sess.id] = sess
        return sess

    # --------------------------------------------------------------------------------------------- reader
    async def _read(self) -> None:
        try:
            async for data in self._ws:
                if isinstance(data, bytes):
                    self._dispatch(msgpack.unpackb(data, raw=False))
        except Exception:  # connection lost: fail what waits
            pass
        finally:
            for pending in self._pending.values():
                if not pending.future.done():
                    pending.future.set_exception(ConnectionClosed())
            for sess in self.sessions.values():
                sess._mark_closed("connection closed")

    def _dispatch(self, msg: dict[str, Any]) -> None:
        kind, rid = msg.get("type"), msg.get("id")
        pending = self._pending.get(rid) if rid is not None else None
        sess = self.sessions.get(msg.get("session"))
        if kind == "frames":
            if msg.get("chunk") is not None:  # a session chunk: the session's stream decoder
                if sess is None:
                    return
                if sess.assembler is None:
                    sess.assembler = _Assembler(sess.decoder)
                sess.assembler.add(msg)
            elif pending is not None:  # a render: its own stream
                if pending.assembler is None:
                    pending.assembler = _Assembler(FrameDecoder(msg["encoding"]))
                pending.assembler.add(msg)
        elif kind == "stats":
            if msg.get("chunk") is not None and sess is not None:
                result = (sess.assembler or _Assembler(sess.decoder)).result(msg)
                sess.assembler = None
                if pending is not None:
                    self._resolve(pending, result)
                else:
                    sess._push_live(result)
            elif pending is not None:
                self._resolve(pending, (pending.assembler or _Assembler(FrameDecoder(msg["encoding"]))).result(msg))
        elif kind == "error":
            err = ServerError(msg.get("code", "internal"), msg.get("message", ""), rid, msg.get("session"))
            if pending is not None:
                if not pending.future.done():
                    pending.future.set_exception(err)
            elif sess is not None and sess.mode == "live":
                sess._push_live(err)
            else:
                self.errors.append(err)
        else:
            if kind == "closed" and sess is not None:
                sess._mark_closed(msg.get("reason", ""))
                self.sessions.pop(sess.id, None)
            if pending is not None:
                self._resolve(pending, msg)

    @staticmethod
    def _resolve(pending: _Pending, value: Any) -> None:
        if not pending.future.done():
            pending.future.set_result(value)


# ------------------------------------------------------------------------------------------------- sync API

class Session:
    """Synchronous twin of ``AsyncSession`` (made by ``Client.start`` / ``fork``)."""

    def __init__(self, client: Client, inner: AsyncSession):
        self._client = client
        self._inner = inner

    def __getattr__(self, name: str) -> Any:  # id, mode, encoding, height, width, info, closed, ...
        return getattr(self._inner, name)

    def step(self, actions: str | None = None, *, keys: Iterable[Iterable[str]] | None = None, poses: Any = None,
             timeout: float | None = DEFAULT_TIMEOUT) -> Frames:
        return self._client._call(self._inner.step(actions, keys=keys, poses=poses, timeout=timeout))

    def control(self, keys: Iterable[str] = (), mouse: tuple[float, float] | None = None, t: float | None = None,
                *, wait: bool = True, timeout: float | None = DEFAULT_TIMEOUT) -> int | None:
        return self._client._call(self._inner.control(keys, mouse, t, wait=wait, timeout=timeout))

    def next_chunk(self, timeout: float | None = DEFAULT_TIMEOUT) -> Frames:
        return self._client._call(self._inner.next_chunk(timeout))

    def chunks(self, timeout: float | None = DEFAULT_TIMEOUT) -> Iterator[Frames]:
        while True:
            try:
                yield self.next_chunk(timeout)
            except ServerError as e:
                if e.code == "unknown_session":
                    return
                raise

    def snapshot(self, timeout: float | None = DEFAULT_TIMEOUT) -> int:
        return self._client._call(self._inner.snapshot(timeout))

    def restore(self, snapshot: int, timeout: float | None = DEFAULT_TIMEOUT) -> dict[str, Any]:
        return self._client._call(self._inner.restore(snapshot, timeout))

    def fork(self, mode: str | None = None, encoding: str | None = None,
             timeout: float | None = DEFAULT_TIMEOUT) -> Session:
        return Session(self._client, self._client._call(self._inner.fork(mode, encoding, timeout)))

    def still(self, pose: Any = None, encoding: str = "raw", timeout: float | None = DEFAULT_TIMEOUT) -> Frames:
        return self._client._call(self._inner.still(pose, encoding, timeout))

    def close(self, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        self._client._call(self._inner.close(timeout))


class Client:
    """Synchronous client: an ``AsyncClient`` on a private event-loop thread. ``with Client(url) as c: ...``"""

    def __init__(self, url: str, *, token: str | None = None, client_name: str = "sana-wm-python",
                 open_timeout: float = 30.0, max_message_bytes: int | None = 1 << 30, live_buffer: int = 8):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sana-wm-client", daemon=True)
        self._thread.start()
        try:
            self._inner: AsyncClient = self._call(AsyncClient.connect(
                url, token=token, client_name=client_name, open_timeout=open_timeout,
                max_message_bytes=max_message_bytes, live_buffer=live_buffer), timeout=open_timeout + 5)
        except BaseException:
            self._stop_loop()
            raise

    def _call(self, coro: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    @property
    def welcome(self) -> dict[str, Any]:
        return self._inner.welcome

    @property
    def errors(self) -> deque[ServerError]:
        return self._inner.errors

    def start(self, image: Any, prompt: str, **kwargs: Any) -> Session:
        """See ``AsyncClient.start``."""
        return Session(self, self._call(self._inner.start(image, prompt, **kwargs)))

    def render_image(self, prompt: str, **kwargs: Any) -> Frames:
        return self._call(self._inner.render_image(prompt, **kwargs))

    def render_path(self, image: Any, prompt: str, c2w: Any, **kwargs: Any) -> Frames:
        return self._call(self._inner.render_path(image, prompt, c2w, **kwargs))

    def drop_snapshot(self, snapshot: int, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        self._call(self._inner.drop_snapshot(snapshot, timeout))

    def ping(self, timeout: float | None = DEFAULT_TIMEOUT) -> float:
        return self._call(self._inner.ping(timeout))

    def request(self, msg: dict[str, Any], timeout: float | None = DEFAULT_TIMEOUT) -> Any:
        """Send any message with a fresh id and wait for its reply (low level)."""
        return self._call(self._inner.request(msg, timeout))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._call(self._inner.close(), timeout=15)
        finally:
            self._stop_loop()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["ERROR_CODES", "AsyncClient", "AsyncSession", "Client", "ConnectionClosed", "Frames", "ServerError",
           "Session"]
