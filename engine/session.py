"""``Session``: one autoregressive world rollout, chunk by chunk, in constant memory.

Frame numbering: pixel frame 0 is the conditioning image (latent frame 0, pose identity). Chunk 0 covers latent
frames 0..3 and emits pixel frames 1..24; chunk ``c >= 1`` covers latent frames ``3c+1 .. 3c+3`` and emits pixel
frames ``24c+1 .. 24c+24`` (latent frame ``L >= 1`` decodes to pixel frames ``8L-7 .. 8L``). Every chunk emits
exactly ``frames_per_chunk = 24`` frames: the decoded conditioning frame is not emitted (NVlabs drops it too);
``session.first_frame`` holds the prepared (resized + cropped) image for viewers that want to show frame 0.

Positions: the transformer gets absolute latent frame indices (``start_frame = 3c+1``); nothing caps them, so a
session can run indefinitely. Noise: chunk ``c`` draws ``sampler.chunk_noise(seed, c, ...)``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

import controllers
from controllers.conventions import check_poses

from .graphs import FramePipe
from .sampler import StreamingSampler, chunk_noise, host_to_device
from .state import SessionState, Snapshot

if TYPE_CHECKING:
    from .world import World

logger = logging.getLogger("engine")

LATENT_STRIDE = 8  # pixel frames per latent frame (LTX-2 VAE)


@dataclass
class Chunk:
    """Frames of one chunk (``Session.step``) or of one latent frame of it (``Session.stream``).

    frames (N,H,W,3) uint8; poses (N,4,4) float64 c2w (OpenCV) relative to frame 0; intrinsics (4,) float64
    ``[fx, fy, cx, cy]`` in pixels of the frame; index: the chunk index; frame_indices (N,) int64 global pixel-frame
    indices; latents: the chunk's clean latents (1,C,F,h,w) fp32 on the device (``step`` only; chunk 0 includes the
    image latent) and latent_start: their first latent frame index.

    timings, seconds, from the chunk's start (its camera conditioning); on CUDA they are device times between events,
    on the CPU wall clock:
    ``camera`` (conditioning to the device), ``denoise`` (the Euler passes), ``cache_write`` (the cache-writing pass; it
    is queued after the decode of the chunk's first part, beside it in ``pipeline``, or after all parts without the
    decode overlap, so a streamed part leaves it out, since the pass may still run; with the overlap it runs while
    parts decode on the side stream, so ``denoise + cache_write + decode`` can exceed ``total``), ``decode`` (decode +
    uint8 conversion + copy to the host of the parts delivered so far, summed), ``first_part`` (start to the first 8
    frames on the host: the key-to-frame latency of the chunk's first frames) and ``total`` (start to the last stage
    delivered so far: the frames of this part, or for a whole chunk its last frames and the cache write; on the CPU
    it includes time a stream's consumer held a part).
    """

    frames: np.ndarray
    poses: np.ndarray
    intrinsics: np.ndarray
    index: int
    frame_indices: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    latents: torch.Tensor | None = None
    latent_start: int = 0


class _Clock:
    """Stage marks of one chunk: CUDA events on the current (main) stream, ``time.perf_counter`` on the CPU. Read
    once the frames are on the host, so reading them adds no synchronisation."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: dict[str, object] = {}
        self.mark("start")

    def mark(self, name: str) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks[name] = event
        else:
            self.marks[name] = time.perf_counter()

    def _span(self, a, b) -> float:
        return a.elapsed_time(b) / 1000 if self.cuda else b - a

    def timings(self, tickets: Sequence, written: bool) -> dict[str, float]:
        """Timings (see ``Chunk``) given the decode tickets delivered so far; ``written``: the cache write is done
        (its event may be read)."""
        m = self.marks
        out = {"camera": self._span(m["start"], m["camera"]), "denoise": self._span(m["camera"], m["denoise"])}
        ends = [self._span(m["start"], m["denoise"])]
        if written:
            out["cache_write"] = self._span(m["write_begin"], m["cache_write"])
            ends.append(self._span(m["start"], m["cache_write"]))
        out["decode"] = sum(t.decode_time_ms() for t in tickets) / 1000
        if tickets:
            out["first_part"] = self._span(m["start"], tickets[0].done)
            ends.append(self._span(m["start"], tickets[-1].done))
        out["total"] = max(ends)
        return out


@dataclass
class _Launched:
    """A chunk whose transformer work is queued (``Session._launch``) and whose frames are still to be collected:
    ``parts`` are its decode calls ``(first latent, end latent, drop_first)``, ``tickets`` those submitted so far,
    ``ready`` the CUDA event after which ``latents`` hold the chunk (None on the CPU)."""

    index: int
    new_poses: np.ndarray
    latents: torch.Tensor
    start_frame: int
    parts: list[tuple[int, int, bool]]
    tickets: list
    clock: _Clock
    ready: object = None


LATENTS_PER_PART = 1
"""Latent frames per decoder call, i.e. per streamed part (8 pixel frames each): the first frames of a chunk leave
as soon as its first latent frame is decoded. A decoder that is faster on several frames per call can raise it."""


def decode_parts(chunk_index: int, n_latents: int, per_part: int = LATENTS_PER_PART) -> list[tuple[int, int, bool]]:
    """The decoder calls of a chunk's ``n_latents`` latent frames: ``(first, end, drop_first)`` slices of its
    latents. Chunk 0's first call also decodes the image latent (one pixel frame, primes the decoder; dropped)."""
    lo = 1 if chunk_index == 0 else 0
    parts = [(lo + i, min(lo + i + per_part, n_latents), False) for i in range(0, n_latents - lo, per_part)]
    if chunk_index == 0:
        parts[0] = (0, parts[0][1], True)
    return parts


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """(1,3,N,H,W) in [-1,1] -> (N,H,W,3) uint8 on the host (converted on the device, one copy)."""
    frames = ((video[0].float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return frames.permute(1, 2, 3, 0).cpu().numpy()


class Session:
    """One streaming rollout of a ``World`` (made by ``World.start``).

    Camera input per chunk (exactly ``frames_per_chunk`` new frames), one of:
    - an action string (``"w-24"``, ``"dw-12,none-12"``; keys of the session's mapping, default ``sana-wm-v2``);
    - ``keys=``: one iterable of held key names per frame;
    - ``poses=``: (24,4,4) c2w relative to frame 0 (the controller then continues from the last one, at rest);
    - nothing: live control, ``session.controller.poses_for_next(24)`` from the key / mouse events given to
      ``session.controller`` (``key_down(key, t)``, ``key_up``, ``mouse``) since the last chunk; the events are
      consumed at the call.
    Keys and actions go through the same ``controllers.LiveController``, so velocity and pitch carry over from
    chunk to chunk whatever the mix of inputs.

    ``on_chunk(chunk)`` is called with every finished chunk (progress / logging hook).
    """

    frames_per_chunk: int = 3 * LATENT_STRIDE

    def __init__(self, world: World, state: SessionState, on_chunk: Callable[[Chunk], None] | None = None) -> None:
        self._world = world
        self._state: SessionState | None = state
        self._sampler = StreamingSampler(world.transformer, state.setup.steps)
        self._busy = False
        self._pipe: FramePipe | None = None
        self._last: _Launched | None = None  # the last launched chunk (its later parts may still be unsubmitted)
        # ((chunk index, shape), noise on the device) drawn while the chunk before it ran (``_chunk_noise``)
        self._noise_ahead: tuple[tuple, torch.Tensor] | None = None
        self.on_chunk = on_chunk

    # ------------------------------------------------------------------ properties
    @property
    def state(self) -> SessionState:
        if self._state is None:
            raise RuntimeError("this session is closed")
        return self._state

    @property
    def height(self) -> int:
        return self.state.setup.height

    @property
    def width(self) -> int:
        return self.state.setup.width

    @property
    def prompt(self) -> str:
        return self.state.setup.prompt

    @property
    def seed(self) -> int:
        return self.state.setup.seed

    @property
    def intrinsics(self) -> np.ndarray:
        """(4,) ``[fx, fy, cx, cy]`` in pixels of the frame."""
        return self.state.setup.intrinsics.copy()

    @property
    def first_frame(self) -> np.ndarray:
        """(H,W,3) uint8: the prepared first image (pixel frame 0, not emitted by ``step``)."""
        return self.state.setup.first_frame

    @property
    def mapping(self) -> str:
        """Key mapping of action strings, keys and live control (``World.start(mapping=...)``)."""
        return self.state.setup.mapping

    @property
    def pose(self) -> np.ndarray:
        """(4,4) c2w of the last generated frame (identity before the first chunk), relative to frame 0."""
        return self.state.pose

    @property
    def controller(self) -> controllers.LiveController:
        """The session's camera controller (live key / mouse events; part of the snapshot state)."""
        return self.state.controller

    @property
    def chunk_index(self) -> int:
        """Index of the next chunk."""
        return self.state.chunk_index

    @property
    def frame_index(self) -> int:
        """Global index of the next pixel frame to be emitted."""
        return self.frames_per_chunk * self.state.chunk_index + 1

    # ------------------------------------------------------------------ camera
    def _next_poses(self, actions, keys, poses) -> tuple[np.ndarray, dict | None]:
        """The next chunk's (24,4,4) poses and the controller state after them (committed when the chunk is made;
        None: live control, already committed)."""
        given = [name for name, v in (("actions", actions), ("keys", keys), ("poses", poses)) if v is not None]
        if len(given) > 1:
            raise ValueError(f"Session.step: give at most one of actions / keys / poses, got {given}")
        n = self.frames_per_chunk
        ctrl = self.state.controller
        if not given:
            return ctrl.poses_for_next(n), None
        if actions is not None:
            count = len(controllers.parse_actions(actions))
            if count != n:
                raise ValueError(f"actions {actions!r} cover {count} frames; a chunk needs exactly {n} (e.g. 'w-{n}')")
        elif keys is not None:
            if isinstance(keys, (str, bytes)) or not isinstance(keys, Sequence):
                raise TypeError(f"keys must be a sequence of {n} held-key sets (one per frame), got "
                                f"{type(keys).__name__}")
            if len(keys) != n:
                raise ValueError(f"keys holds {len(keys)} frames; a chunk needs exactly {n}")
        else:
            poses = check_poses(poses, name="poses")
            if len(poses) != n:
                raise ValueError(f"poses holds {len(poses)} frames; a chunk needs exactly {n} (shape ({n}, 4, 4))")
        before = ctrl.state_dict()
        try:
            if actions is not None:
                new = ctrl.poses_for_actions(actions)
            elif keys is not None:
                new = ctrl.poses_for_keys(keys)
            else:
                new = poses
                ctrl.reset(poses[-1])
            after = ctrl.state_dict()
        finally:
            ctrl.load_state_dict(before)
        return np.asarray(new, dtype=np.float64), after

    def _camera(self, window: np.ndarray, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Raymap (1,F,20) and Plucker (1,48,F,h,w) on the device for latent frames ``[start, end)`` of ``window``,
        a short pose list whose row 0 is frame 0 (identity); see ``_chunk_window``."""
        setup = self.state.setup
        raymap, plucker = controllers.camera_conditioning(window, setup.intrinsics, (setup.height, setup.width),
                                                          start, end)
        dtype = self._sampler.dtype
        device = self._world.device
        return host_to_device(raymap[None], device, dtype), host_to_device(plucker[None], device, dtype)

    def _chunk_window(self, chunk_index: int, new_poses: np.ndarray) -> tuple[np.ndarray, int, int, int]:
        """Pose window and latent range for a chunk: O(chunk) whatever the session's length.

        Chunk ``c >= 1`` needs pixel frames ``24c+1 .. 24c+24`` (its own) plus frame 0 for the relativisation. The
        window ``[identity, new poses...]`` places them so that window latent 1 reads window frames 1..8 = global
        frames ``24c+1 .. 24c+8``: window latents ``[1, 1+n)`` are global latents ``[3c+1, 3c+1+n)``. Chunk 0 is
        the trajectory itself (window latents ``[0, 1+n)``). Returns (window, first window latent, end, start_frame).
        """
        window = np.concatenate([np.eye(4)[None], new_poses])
        n_lat = (len(new_poses) + LATENT_STRIDE - 1) // LATENT_STRIDE
        if chunk_index == 0:
            return window, 0, 1 + n_lat, 0
        return window, 1, 1 + n_lat, 3 * chunk_index + 1

    # ------------------------------------------------------------------ generation
    def _begin(self, actions, keys, poses) -> Iterator[Chunk]:
        """Check the inputs now; the returned generator makes the chunk (``_run``)."""
        new_poses, after = self._next_poses(actions, keys, poses)
        return self._run(self.state.chunk_index, new_poses, after)

    def _run(self, chunk_index: int, new_poses: np.ndarray, controller_after: dict | None) -> Iterator[Chunk]:
        """Generate chunk ``chunk_index``; yields a part per decoder call, returns the whole ``Chunk``."""
        if self._busy:
            raise RuntimeError("this session is already generating a chunk (finish or close the running stream)")
        if self.state.chunk_index != chunk_index:
            raise RuntimeError(f"this stream was made for chunk {chunk_index} but the session is at chunk "
                               f"{self.state.chunk_index}; call stream() again")
        self._busy = True
        try:
            return (yield from self._collect(self._launch(new_poses, controller_after)))
        finally:
            self._busy = False

    def _frame_pipe(self) -> FramePipe:
        """The session's decoder pipe (made at the first chunk): a side stream and pinned buffers for two chunks'
        parts on CUDA when ``World.overlap_decode``; inline otherwise."""
        if self._pipe is None:
            world = self._world
            slots = 2 * len(decode_parts(1, world.config.chunk_size))
            self._pipe = FramePipe(world.vae_decoder_step, world.device, slots, overlap=world.overlap_decode)
        return self._pipe

    def _launch(self, new_poses: np.ndarray, controller_after: dict | None, first_part_first: bool = True
                ) -> _Launched:
        """Queue the next chunk's work and advance the session to the following chunk.

        Denoise passes, the first decode part, then the cache-writing pass, so a chunk's first frames never wait
        for the write; each later part is queued when the one before it reached the host (``_collect``: a whole
        chunk of eager decode launches queued at once fills CUDA's launch queue and blocks the host past the first
        part), or before the next chunk's first part. With the
        decode overlap the parts run on the side stream, reading a copy of the clean latents that the main stream no
        longer touches, and the write pass starts once the first part is decoded (it then runs beside the other
        parts; ``first_part_first=False``: at once, beside the first part too, for throughput where no one waits on
        the first frames); without it everything runs in that order on one stream."""
        state = self.state
        setup = state.setup
        world = self._world
        pipe = self._frame_pipe()
        c = state.chunk_index
        clock = _Clock(world.device)
        window, lat0, lat1, start_frame = self._chunk_window(c, new_poses)
        raymap, plucker = self._camera(window, lat0, lat1)
        n_lat = lat1 - lat0
        h, w = setup.height // world.spatial_stride, setup.width // world.spatial_stride
        noise = self._chunk_noise(c, (1, setup.first_latent.shape[1], n_lat, h, w))
        clock.mark("camera")
        # one CUDA-graph replay each for the denoise passes and the cache write on CUDA worlds (engine.graphs)
        graphs = world.chunk_graphs(setup.steps)
        out = graphs.denoise(noise, pinned=setup.first_latent if c == 0 else None, text=setup.text,
                             text_mask=setup.text_mask, raymap=raymap, plucker=plucker, cache=state.cache,
                             start_frame=start_frame, prompt=setup.text_inputs)
        # the graph's output buffer is rewritten by the next chunk's denoise; the side stream reads a copy
        latents = out.clone() if graphs.enabled or pipe.overlapped else out
        clock.mark("denoise")
        ready = torch.cuda.current_stream(world.device).record_event() if clock.cuda else None
        launched = _Launched(c, new_poses, latents, start_frame, decode_parts(c, n_lat), [], clock, ready)
        if self._last is not None:  # the decoder must see every latent frame in order (pipeline: chunk N's last parts)
            while len(self._last.tickets) < len(self._last.parts):
                self._submit_next(self._last)
        self._last = launched
        self._submit_next(launched)
        if pipe.overlapped and first_part_first:  # the first part decodes alone (frame latency)
            torch.cuda.current_stream(world.device).wait_event(launched.tickets[0].done)
        clock.mark("write_begin")
        graphs.write_cache(out, state.cache)
        clock.mark("cache_write")
        state.chunk_index = c + 1
        if controller_after is not None:
            state.controller.load_state_dict(controller_after)
        # the next chunk's noise, drawn now that the device is busy, not after the next key press
        shape = (1, setup.first_latent.shape[1], world.config.chunk_size, h, w)
        self._noise_ahead = ((c + 1, shape), chunk_noise(setup.seed, c + 1, shape, world.device))
        return launched

    def _chunk_noise(self, c: int, shape: tuple[int, ...]) -> torch.Tensor:
        """``chunk_noise(seed, c, shape)`` on the device: the one drawn ahead during the chunk before, if it is this
        one (a pure function of seed, chunk and shape, so a restore or a fork cannot make it stale)."""
        ahead, self._noise_ahead = self._noise_ahead, None
        if ahead is not None and ahead[0] == (c, shape):
            return ahead[1]
        return chunk_noise(self.state.setup.seed, c, shape, self._world.device)

    def _collect(self, launched: _Launched) -> Iterator[Chunk]:
        """Yield the parts of a launched chunk as their frames reach the host; return the whole ``Chunk``."""
        setup = self.state.setup
        pipe = self._frame_pipe()
        c, start_frame, clock = launched.index, launched.start_frame, launched.clock
        first_px = self.frames_per_chunk * c + 1  # global index of new_poses[0]
        parts: list[np.ndarray] = []
        try:
            for k, (lo, hi, drop) in enumerate(launched.parts):
                frames = pipe.frames(launched.tickets[k])[0].copy()  # the pinned slot is reused later
                if len(launched.tickets) == k + 1 < len(launched.parts):
                    self._submit_next(launched)
                parts.append(frames)
                first = LATENT_STRIDE * (start_frame + lo + drop) - (LATENT_STRIDE - 1)
                idx = np.arange(first, first + len(frames))
                yield Chunk(frames=frames, poses=launched.new_poses[idx - first_px],
                            intrinsics=setup.intrinsics.copy(), index=c, frame_indices=idx,
                            timings=clock.timings(launched.tickets[: k + 1], False),
                            latent_start=start_frame + lo + drop)
        except GeneratorExit:
            self._finish(launched)
            raise
        if clock.cuda:
            clock.marks["cache_write"].synchronize()  # queued behind the first part: usually done by now
        frames = np.concatenate(parts)
        chunk = Chunk(frames=frames, poses=launched.new_poses, intrinsics=setup.intrinsics.copy(), index=c,
                      frame_indices=np.arange(first_px, first_px + len(frames)),
                      timings=clock.timings(launched.tickets, True), latents=launched.latents,
                      latent_start=start_frame)
        logger.debug("session chunk %d: %s", c, {k: round(v, 4) for k, v in chunk.timings.items()})
        if self.on_chunk is not None:
            self.on_chunk(chunk)
        return chunk

    def _finish(self, launched: _Launched) -> None:
        """Run the decode calls of an abandoned chunk that were not submitted (the decoder state must see every
        latent frame in order) and order later main-stream work after the side stream's. Nothing once closed."""
        if self._state is None:
            return
        while len(launched.tickets) < len(launched.parts):
            self._submit_next(launched)
        self._frame_pipe().join()

    def _submit_next(self, launched: _Launched) -> None:
        """Queue the decode of the launched chunk's next part (after its latents are ready, not after later work)."""
        lo, hi, drop = launched.parts[len(launched.tickets)]
        ticket = self._frame_pipe().submit(self.state.decoder, launched.latents[:, :, lo:hi], drop, launched.ready)
        launched.tickets.append(ticket)

    def pipeline(self, inputs: Iterable) -> Iterator[Chunk]:
        """Generate one chunk per item of ``inputs`` (camera inputs known in advance, e.g. a whole path) and yield
        each ``Chunk`` (as ``step`` returns it). With the decode overlap (CUDA), chunk N+1's transformer work is
        queued before chunk N's frames are waited for, so it runs while chunk N decodes on the side stream, and a
        chunk's cache-writing pass does not wait for its first decode part (no one waits on single parts); the next
        item is taken from ``inputs`` before chunk N is yielded. An item is an action string, a (24,4,4) poses
        array, or a dict of ``step``'s keywords (``actions`` / ``keys`` / ``poses``). Frames equal ``step``'s.
        Closing the iterator early finishes the decoding of the chunks already launched."""
        if self._busy:
            raise RuntimeError("this session is already generating a chunk (finish or close the running stream)")
        self._busy = True
        queue: list[_Launched] = []  # launched, not yet yielded
        try:
            for item in inputs:
                if isinstance(item, str):
                    item = {"actions": item}
                elif not isinstance(item, Mapping):
                    item = {"poses": item}
                poses, after = self._next_poses(item.get("actions"), item.get("keys"), item.get("poses"))
                queue.append(self._launch(poses, after, first_part_first=False))
                ahead = 1 if self._frame_pipe().overlapped else 0  # nothing to overlap: collect each chunk at once
                while len(queue) > ahead:
                    chunk = self._drain(queue[0])
                    queue.pop(0)
                    yield chunk
            while queue:
                chunk = self._drain(queue[0])
                queue.pop(0)
                yield chunk
        finally:
            for launched in queue:
                self._finish(launched)
            self._busy = False

    def _drain(self, launched: _Launched) -> Chunk:
        gen = self._collect(launched)
        while True:
            try:
                next(gen)
            except StopIteration as done:
                return done.value

    def step(self, actions: str | None = None, *, keys: Sequence[Sequence[str]] | None = None,
             poses: np.ndarray | None = None) -> Chunk:
        """Generate the next chunk and return its 24 frames (see module docstring for numbering)."""
        gen = self._begin(actions, keys, poses)
        while True:
            try:
                next(gen)
            except StopIteration as done:
                return done.value

    def stream(self, actions: str | None = None, *, keys: Sequence[Sequence[str]] | None = None,
               poses: np.ndarray | None = None) -> Iterator[Chunk]:
        """Like ``step`` but yield each latent frame's 8 pixel frames as soon as they are decoded (3 parts per
        chunk; ``LATENTS_PER_PART``). The chunk's cache-writing pass is queued after its first part's decode, so the
        first 8 frames do not wait for it (with the decode overlap the later parts decode beside it). Inputs are
        checked at the call; the chunk is generated when the first part is requested. Closing the iterator early
        still finishes the chunk's decoding (the state stays consistent)."""
        return self._begin(actions, keys, poses)

    # ------------------------------------------------------------------ stills
    def render_image(self, pose: np.ndarray | None = None) -> np.ndarray:
        """The frame this session would show at ``pose`` ((4,4) c2w relative to frame 0; default: the current
        pose) right after its last chunk: one latent frame (8 pixel frames) is generated after the cache with the
        camera held at ``pose`` (a read-only chunk of that one new frame, with the next chunk's noise for it: a
        third of a chunk's transformer work), decoded with a copy of the decoder state; the last of its 8 frames is
        returned. The session does not advance. Returns (H,W,3) uint8."""
        state = self.state
        setup = state.setup
        world = self._world
        pose = state.pose if pose is None else check_poses(np.asarray(pose)[None], name="pose")[0]
        c = state.chunk_index
        window, lat0, lat1, start_frame = self._chunk_window(c, np.broadcast_to(pose, (LATENT_STRIDE, 4, 4)))
        raymap, plucker = self._camera(window, lat0, lat1)
        h, w = setup.height // world.spatial_stride, setup.width // world.spatial_stride
        shape = (1, setup.first_latent.shape[1], state.cache.expected_chunk_frames(), h, w)
        noise = chunk_noise(setup.seed, c, shape, world.device)[:, :, : lat1 - lat0]
        latents = self._sampler.denoise(noise, pinned=setup.first_latent if c == 0 else None, text=setup.text,
                                        text_mask=setup.text_mask, raymap=raymap, plucker=plucker, cache=state.cache,
                                        start_frame=start_frame, prompt=setup.text_inputs)
        decoder = world.streaming_decoder()
        decoder.load_snapshot(state.decoder.state_dict_snapshot())
        video = world.vae_decoder_step(decoder, latents)
        return to_uint8(video[:, :, -1:])[0]

    # ------------------------------------------------------------------ snapshots
    def snapshot(self) -> Snapshot:
        """An exact copy of the state between chunks (``engine.Snapshot``): the caches' tensors are copied,
        nothing is recomputed. ``restore`` it later (also into a fork) to repeat the following chunks bitwise."""
        if self._busy:
            raise RuntimeError("cannot snapshot while a chunk is being generated")
        return self.state.snapshot()

    def restore(self, snap: Snapshot) -> None:
        """Return to ``snap`` (taken from a session of the same world and frame size)."""
        if not isinstance(snap, Snapshot):
            raise TypeError(f"snap must be an engine.Snapshot (from session.snapshot()), got {type(snap).__name__}")
        if self._busy:
            raise RuntimeError("cannot restore while a chunk is being generated")
        setup = self.state.setup
        other = snap.setup
        if other.world != setup.world or (other.height, other.width) != (setup.height, setup.width):
            raise ValueError(
                f"snapshot is from another world or frame size ({other.height}x{other.width}); this session is "
                f"{setup.height}x{setup.width} on world {setup.world}"
            )
        if other.steps != setup.steps:
            self._sampler = StreamingSampler(self._world.transformer, other.steps)
        self.state.restore(snap)

    def fork(self) -> Session:
        """A new independent session starting from a copy of this one's state (same world, prompt, seed)."""
        snap = self.snapshot()
        state = SessionState(snap.setup, snap.cache, self._world.streaming_decoder(),
                             controllers.LiveController(mapping=snap.setup.mapping))
        state.decoder.load_snapshot(snap.decoder)
        state.controller.load_state_dict(snap.controller)
        state.chunk_index = snap.chunk_index
        return Session(self._world, state, self.on_chunk)

    def close(self) -> None:
        """Release the session's caches; later calls raise RuntimeError."""
        if self._state is not None:
            for graphs in self._world._chunk_graphs.values():
                graphs.release(self._state.cache)
        self._state = None
        self._pipe = None
        self._last = None
        self._noise_ahead = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
