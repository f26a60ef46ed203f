"""Per-connection send side: bounded queues, the slow-client policy, and frame encoding at send time.

Each connection has one ``Outbox`` with one sender task. Replies that belong to no session go to a connection
queue that is served first. Everything of a session (its replies, its chunks) goes to that session's
``Stream`` and leaves in order. Streams are served round-robin, one message each per turn.

Slow clients (docs/protocol.md, "Flow control"):
- live streams keep at most ``live_queue_chunks`` chunks whose sending has not started; adding one more drops
  the oldest such chunk, counts it and names it in the next ``stats`` message; a chunk being sent finishes;
- lockstep streams (and one-off renders) never drop: ``put_chunk`` waits until the stream's previous chunk has
  left, so nothing is generated ahead of a client that does not read;
- replies (non-frame messages) are never dropped; at most ``max_queued_messages`` wait per connection, and a
  request that would exceed that waits, which stops the connection from reading further requests.
Frames are encoded just before they are sent (on a thread pool), so a dropped chunk costs no encoding and the
H.264 stream only ever holds frames the client receives. Memory per connection is bounded by
(streams x (live_queue_chunks + 1) chunks) + (max_queued_messages replies) + the websocket's write buffer.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from server.codecs import make_encoder
from server.protocol import frames_header, pack


@dataclass
class ChunkItem:
    """One chunk (or one-off render) on its way out: parts (engine ``Chunk`` objects) arrive from the
    worker, leave as ``frames`` messages, and a ``stats`` message closes it. ``rid``: the request id echoed."""

    session: int | None
    rid: Any = None
    chunk: int | None = None
    parts: list[Any] = field(default_factory=list)
    controls: list[dict | None] = field(default_factory=list)
    done: bool = False
    started: bool = False
    dropped: bool = False
    sent_parts: int = 0
    created: float = field(default_factory=time.perf_counter)
    encode_s: float = 0.0
    send_s: float = 0.0
    nbytes: int = 0
    frames: int = 0
    engine_timings: dict[str, float] = field(default_factory=dict)
    gpu_memory: dict[str, int] | None = None


@dataclass
class _Message:
    msg: dict[str, Any]
    counted: bool  # holds one of the connection's reply slots until sent


class Stream:
    """The ordered output of one session (or of one one-off render request)."""

    def __init__(self, key: Any, *, live: bool, encoding: str, height: int, width: int,
                 encoder_options: dict[str, Any] | None = None):
        self.key = key
        self.live = live
        self.encoding = encoding
        self.height, self.width = height, width
        self.encoder_options = dict(encoder_options or {})  # make_encoder keywords (jpeg_quality, h264_crf, ...)
        self.items: deque[ChunkItem | _Message] = deque()
        self.encoder = None
        self.dropped_total = 0
        self.dropped_recent: list[int | None] = []
        self.closed = False  # no further output; undelivered output was dropped
        self.retired = False  # no further output; what is queued still goes out

    def chunks(self, *, waiting_only: bool = False) -> list[ChunkItem]:
        return [it for it in self.items if isinstance(it, ChunkItem) and not (waiting_only and it.started)]


class Outbox:
    """Queues and the sender task of one connection (see module docstring).

    ``send``: the websocket's async send of one binary message; ``encode_pool`` runs the frame encoders;
    ``on_progress`` is called after every message handed to the websocket.
    """

    def __init__(self, send: Callable[[bytes], Awaitable[None]], encode_pool: Executor, *,
                 live_queue_chunks: int = 2, max_queued_messages: int = 256,
                 on_progress: Callable[[], None] | None = None):
        self._send = send
        self._pool = encode_pool
        self.live_queue_chunks = live_queue_chunks
        self._conn: deque[_Message] = deque()
        self._streams: dict[Any, Stream] = {}
        self._slots = asyncio.Semaphore(max_queued_messages)
        self._wake = asyncio.Event()
        self._space = asyncio.Condition()
        self._on_progress = on_progress or (lambda: None)
        self._turn = 0

    # ------------------------------------------------------------------------------------------- producers
    async def put(self, msg: dict[str, Any], stream: Stream | None = None) -> None:
        """Queue a reply on the connection queue, or in order on ``stream``. Waits while the connection's reply
        budget is used up (the client is not reading)."""
        await self._slots.acquire()
        item = _Message(msg, counted=True)
        if stream is not None and not stream.closed:
            stream.items.append(item)
        else:
            self._conn.append(item)
        self._wake.set()

    def add_stream(self, stream: Stream) -> Stream:
        self._streams[stream.key] = stream
        return stream

    def retire(self, stream: Stream) -> None:
        """The stream gets no more output; it is removed once everything queued has been sent."""
        stream.retired = True
        self._wake.set()

    def close_stream(self, stream: Stream) -> None:
        """Drop the stream's undelivered output; a chunk already being sent loses its remaining parts but still
        gets its ``stats``. Follow with ``put_final``."""
        keep: deque = deque()
        for it in stream.items:
            if isinstance(it, ChunkItem) and it.started:
                it.parts = it.parts[:it.sent_parts]
                it.controls = it.controls[:it.sent_parts]
                it.done = True
                keep.append(it)
            elif isinstance(it, _Message):
                if it.counted:
                    self._slots.release()
            else:
                it.dropped = True
        stream.items = keep
        stream.closed = True
        self._wake.set()
        self._schedule_space_notice()

    def put_final(self, stream: Stream, msg: dict[str, Any]) -> None:
        """The last message of a closed stream, after anything of it still on the wire; not counted against the
        reply budget (one per session)."""
        item = _Message(msg, counted=False)
        (stream.items if stream.key in self._streams and stream.items else self._conn).append(item)
        self._wake.set()

    async def put_chunk(self, stream: Stream, item: ChunkItem) -> None:
        """Queue a chunk before its parts exist. Live: drop the oldest waiting chunks beyond the limit.
        Otherwise: first wait until the stream's previous chunk has been sent."""
        if not stream.live:
            async with self._space:
                await self._space.wait_for(lambda: stream.closed or not stream.chunks())
        if stream.closed:
            item.dropped = True
            return
        stream.items.append(item)
        if stream.live:
            waiting = stream.chunks(waiting_only=True)
            for oldest in waiting[:max(0, len(waiting) - self.live_queue_chunks)]:
                stream.items.remove(oldest)
                oldest.dropped = True
                oldest.parts.clear()
                stream.dropped_total += 1
                stream.dropped_recent.append(oldest.chunk)
        self._wake.set()

    async def wait_delivered(self, stream: Stream) -> None:
        """Wait until every chunk queued on ``stream`` has been sent (or dropped)."""
        async with self._space:
            await self._space.wait_for(lambda: not stream.chunks())

    def add_part(self, item: ChunkItem, part: Any, control: dict | None = None) -> None:
        """A part of ``item`` was generated (call on the event loop)."""
        if item.dropped or item.done:
            return
        if item.chunk is None:
            item.chunk = getattr(part, "index", None)
        item.parts.append(part)
        item.controls.append(control)
        self._wake.set()

    def finish(self, item: ChunkItem, engine_timings: dict[str, float] | None = None,
               gpu_memory: dict[str, int] | None = None) -> None:
        """No more parts will come for ``item``; ``engine_timings`` (seconds) and ``gpu_memory`` (bytes, None
        off CUDA) go into its ``stats``."""
        item.done = True
        item.gpu_memory = gpu_memory
        if engine_timings:
            item.engine_timings = dict(engine_timings)
        self._wake.set()

    def discard(self, stream: Stream, item: ChunkItem) -> None:
        """Remove ``item`` (its generation failed); parts already sent stay sent."""
        item.dropped = True
        if item in stream.items:
            stream.items.remove(item)
        self._wake.set()
        self._schedule_space_notice()

    def _schedule_space_notice(self) -> None:
        asyncio.get_running_loop().create_task(self._notify_space())

    async def _notify_space(self) -> None:
        async with self._space:
            self._space.notify_all()

    # ---------------------------------------------------------------------------------------------- sender
    async def run(self) -> None:
        """The sender task: runs until cancelled or until the websocket send raises."""
        while True:
            self._wake.clear()
            progressed = False
            while self._conn:
                await self._send_message(self._conn.popleft())
                progressed = True
            streams = list(self._streams.values())
            if streams:
                self._turn = (self._turn + 1) % len(streams)
                streams = streams[self._turn:] + streams[:self._turn]
            for stream in streams:
                progressed |= await self._serve(stream)
            if not progressed:
                await self._wake.wait()

    async def _send_message(self, item: _Message) -> None:
        try:
            await self._send(pack(item.msg))
            self._on_progress()
        finally:
            if item.counted:
                self._slots.release()

    async def _serve(self, stream: Stream) -> bool:
        """Send at most one message of ``stream``; True if something was sent."""
        if not stream.items:
            if stream.closed or stream.retired:
                self._streams.pop(stream.key, None)
            return False
        head = stream.items[0]
        if isinstance(head, _Message):
            stream.items.popleft()
            await self._send_message(head)
            return True
        if head.sent_parts < len(head.parts):
            await self._send_part(stream, head)
            return True
        if head.done:
            stream.items.popleft()
            await self._notify_space()
            await self._send(pack(self._stats(stream, head)))
            self._on_progress()
            return True
        return False

    async def _send_part(self, stream: Stream, item: ChunkItem) -> None:
        i = item.sent_parts
        part, control = item.parts[i], item.controls[i]
        item.parts[i] = None  # pixels are not kept once sent
        item.started = True
        item.sent_parts += 1
        if stream.encoder is None:
            stream.encoder = make_encoder(stream.encoding, stream.height, stream.width, **stream.encoder_options)
        frames = np.asarray(part.frames)
        t0 = time.perf_counter()
        payload, sizes = await asyncio.get_running_loop().run_in_executor(self._pool, stream.encoder.encode, frames)
        t1 = time.perf_counter()
        msg = frames_header(session=item.session, chunk=item.chunk, part=i,
                            frame_indices=np.asarray(part.frame_indices), poses=np.asarray(part.poses),
                            intrinsics=np.asarray(part.intrinsics), height=stream.height, width=stream.width,
                            encoding=stream.encoding, timings=dict(getattr(part, "timings", None) or {}),
                            rid=item.rid, control=control)
        msg["payload"] = payload
        if sizes is not None:
            msg["sizes"] = sizes
        await self._send(pack(msg))
        self._on_progress()
        item.encode_s += t1 - t0
        item.send_s += time.perf_counter() - t1
        item.nbytes += len(payload)
        item.frames += len(frames)
        if not item.engine_timings:
            item.engine_timings = dict(getattr(part, "timings", None) or {})

    def _stats(self, stream: Stream, item: ChunkItem) -> dict[str, Any]:
        timings = {f"engine_{k}": round(float(v) * 1e3, 3) for k, v in item.engine_timings.items()}
        timings.update(encode=round(item.encode_s * 1e3, 3), send=round(item.send_s * 1e3, 3),
                       total=round((time.perf_counter() - item.created) * 1e3, 3))
        msg: dict[str, Any] = {
            "type": "stats", "session": item.session, "chunk": item.chunk, "frames": item.frames,
            "bytes": item.nbytes, "encoding": stream.encoding, "timings_ms": timings,
            "dropped_chunks": stream.dropped_total, "dropped": stream.dropped_recent, "gpu_memory": item.gpu_memory,
        }
        stream.dropped_recent = []
        control = next((c for c in reversed(item.controls) if c is not None), None)
        if control is not None:
            msg["control"] = control
        if item.rid is not None:
            msg["id"] = item.rid
        return msg

    # ------------------------------------------------------------------------------------------ inspection
    def queued(self) -> dict[str, int]:
        """What waits to be sent: replies, chunks, frames held, streams (tests and the status log)."""
        chunks = [it for s in self._streams.values() for it in s.chunks()]
        return {
            "messages": len(self._conn) + sum(isinstance(it, _Message) for s in self._streams.values()
                                              for it in s.items),
            "chunks": len(chunks),
            "frames": sum(len(p.frames) for it in chunks for p in it.parts if p is not None),
            "streams": len(self._streams),
        }
