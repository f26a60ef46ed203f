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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

import controllers
from controllers.conventions import check_poses

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
    indices; timings: seconds (``camera``, ``denoise``, ``cache_write``, ``decode``, ``total``; the denoise passes
    and the cache write run as one step (one graph replay on CUDA), so ``denoise`` holds both and ``cache_write`` is
    ~0; a streamed part carries ``decode`` so far); latents: the chunk's clean latents (1,C,F,h,w) fp32 on the device (``step`` only;
    chunk 0 includes the image latent) and latent_start: their first latent frame index.
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
    """Marks between the stages of a chunk: CUDA events on a GPU (read once the frames reached the host, so no
    extra synchronisation), ``time.perf_counter`` on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[str, object]] = []
        self.mark("start")

    def mark(self, name: str) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append((name, event))
        else:
            self.marks.append((name, time.perf_counter()))

    def timings(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for (_, a), (name, b) in zip(self.marks, self.marks[1:]):
            dt = a.elapsed_time(b) / 1000 if self.cuda else b - a
            out[name] = out.get(name, 0.0) + dt
        out["total"] = sum(out.values())
        return out


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
        """Generate chunk ``chunk_index``; yields a part per decoded latent frame, returns the whole ``Chunk``."""
        if self._busy:
            raise RuntimeError("this session is already generating a chunk (finish or close the running stream)")
        state = self.state
        if state.chunk_index != chunk_index:
            raise RuntimeError(f"this stream was made for chunk {chunk_index} but the session is at chunk "
                               f"{state.chunk_index}; call stream() again")
        self._busy = True
        try:
            return (yield from self._generate(state, new_poses, controller_after))
        finally:
            self._busy = False

    def _generate(self, state: SessionState, new_poses: np.ndarray, controller_after: dict | None) -> Iterator[Chunk]:
        setup = state.setup
        world = self._world
        c = state.chunk_index
        clock = _Clock(world.device)
        window, lat0, lat1, start_frame = self._chunk_window(c, new_poses)
        raymap, plucker = self._camera(window, lat0, lat1)
        n_lat = lat1 - lat0
        h, w = setup.height // world.spatial_stride, setup.width // world.spatial_stride
        noise = chunk_noise(setup.seed, c, (1, setup.first_latent.shape[1], n_lat, h, w), world.device)
        clock.mark("camera")
        cond = {"text": setup.text, "text_mask": setup.text_mask, "raymap": raymap, "plucker": plucker,
                "cache": state.cache, "start_frame": start_frame}
        # denoise + cache write: one CUDA-graph replay per chunk on CUDA worlds (engine.graphs), eager otherwise
        graphs = world.chunk_graphs(setup.steps)
        latents = graphs.step(noise, pinned=setup.first_latent if c == 0 else None, **cond)
        if graphs.enabled:
            latents = latents.clone()  # the graph's output buffer is reused by the next chunk
        clock.mark("denoise")
        clock.mark("cache_write")
        state.chunk_index = c + 1
        if controller_after is not None:
            state.controller.load_state_dict(controller_after)

        first_px = self.frames_per_chunk * c + 1  # global index of new_poses[0]
        parts: list[np.ndarray] = []
        i = 0
        try:
            while i < n_lat:
                video = world.vae_decoder_step(state.decoder, latents[:, :, i : i + 1])
                i += 1
                latent = start_frame + i - 1
                if latent == 0:
                    continue  # the conditioning frame: decoded (primes the decoder cache), not emitted
                frames = to_uint8(video)
                clock.mark("decode")
                parts.append(frames)
                idx = np.arange(LATENT_STRIDE * latent - (LATENT_STRIDE - 1), LATENT_STRIDE * latent + 1)
                yield Chunk(frames=frames, poses=new_poses[idx - first_px], intrinsics=setup.intrinsics.copy(),
                            index=c, frame_indices=idx, timings=clock.timings(), latent_start=latent)
        except GeneratorExit:
            for j in range(i, n_lat):  # keep the decoder cache consistent when a stream is abandoned
                world.vae_decoder_step(state.decoder, latents[:, :, j : j + 1])
            raise
        frames = np.concatenate(parts)
        chunk = Chunk(frames=frames, poses=new_poses, intrinsics=setup.intrinsics.copy(), index=c,
                      frame_indices=np.arange(first_px, first_px + len(frames)), timings=clock.timings(),
                      latents=latents, latent_start=start_frame)
        logger.debug("session chunk %d: %s", c, {k: round(v, 4) for k, v in chunk.timings.items()})
        if self.on_chunk is not None:
            self.on_chunk(chunk)
        return chunk

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
        chunk). Inputs are checked at the call; the chunk is generated when the first part is requested. Closing
        the iterator early still finishes the chunk's decoding (the state stays consistent)."""
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
                                        start_frame=start_frame)
        decoder = world.vae.streaming_decoder()
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
        state = SessionState(snap.setup, snap.cache, self._world.vae.streaming_decoder(),
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

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
