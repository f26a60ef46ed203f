"""CUDA graphs of the streaming chunk step, and decoding on a side stream with pinned copy-out.

``ChunkGraphs.step`` does exactly what ``StreamingSampler.denoise`` + ``StreamingSampler.write_cache`` do for one
chunk (it runs those same methods), but on CUDA, once a chunk's shapes repeat, as **one graph replay**: the
``len(steps) - 1`` Euler passes that read the cache and the cache-writing pass at t = 0. What does not depend on
the latents or the timestep (RoPE at the chunk's absolute positions, UCPE ray matrices, text and Plücker
embeddings, the cache's key mask) is computed once per chunk, eagerly, by the transformer's ``chunk_inputs`` and
copied into the graph's static inputs; nothing inside a chunk synchronises with the host.

A graph binds the tensors of one ``StreamingCache``: captures are keyed by the cache object, the chunk length
the cache's write range and whether the cache is full (softmax blocks attend unmasked then). Chunk 0 (the image
chunk: 4 frames, frame 0 pinned) runs eagerly; with the default ``window_chunks=1`` chunk 1 has its own graph and
every later chunk replays a second one. Capture warms up on a clone of the cache, so the
cache advances exactly once per chunk. All graphs of a ``ChunkGraphs`` share one memory pool (their outputs are
copied to buffers outside it), so extra sessions cost their static inputs, not another set of activations.

``FramePipe`` decodes a chunk's clean latents on a side stream, converts them to uint8 on the device and copies
them into pinned host buffers, so the transformer work of chunk N+1 (main stream) overlaps the decode of chunk N.

How ``engine.session.Session._run`` uses them (CUDA worlds; CPU stays as it is)::

    graphs = world.chunk_graphs                      # one ChunkGraphs(world.transformer, steps) per world
    latents = graphs.step(noise, pinned=pinned, text=setup.text, text_mask=setup.text_mask, raymap=raymap,
                          plucker=plucker, cache=state.cache, start_frame=start_frame)   # replaces denoise+write
    latents = latents.clone()                        # the returned buffer is reused by the next step
    ticket = pipe.submit(state.decoder, latents, drop_first=(c == 0))   # decode on the side stream
    ...                                              # return to the caller / start the next chunk
    frames = pipe.frames(ticket)                     # (N, H, W, 3) uint8 once the side stream is done
"""

from __future__ import annotations

import dataclasses
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .sampler import DEFAULT_STEPS, StreamingSampler

__all__ = ["ChunkGraphs", "FramePipe"]


class _PreparedModel:
    """Stands in for the transformer inside ``StreamingSampler`` during a graphed chunk: ``forward_chunk`` runs the
    blocks on static, precomputed per-chunk inputs (``frames``) and leaves the cache's host bookkeeping alone."""

    def __init__(self, model: torch.nn.Module, frames) -> None:
        self.model = model
        self.frames = frames

    def parameters(self):
        return self.model.parameters()

    def forward_chunk(
        self, latents, timestep, text, text_mask, raymap, plucker, *, cache, start_frame, write_cache=False
    ):
        return self.model.run_blocks(latents, timestep, self.frames, cache, write_cache)


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    noise: torch.Tensor  # static input (B, C, T, h, w) fp32
    frames: object  # static per-chunk inputs (the transformer's _Frames)
    out: torch.Tensor  # static output: clean latents (B, C, T, h, w) fp32


def _copy_frames(dst, src) -> None:
    """Copy the tensors of one ``_Frames`` into another of the same geometry (non-tensor fields must agree)."""
    for f in dataclasses.fields(dst):
        a, b = getattr(dst, f.name), getattr(src, f.name)
        if isinstance(a, torch.Tensor):
            a.copy_(b)
        elif a != b:
            raise ValueError(f"chunk graph: field {f.name!r} differs from the captured chunk ({b!r} != {a!r}).")


class ChunkGraphs:
    """One streaming chunk (denoise passes + cache write) per CUDA-graph replay, for any number of caches.

    ``enabled=False`` (or a CPU model) runs every chunk eagerly through the same sampler code.
    """

    def __init__(self, model: torch.nn.Module, steps: Sequence[int] = DEFAULT_STEPS, *, enabled: bool = True) -> None:
        self.model = model
        self.steps = tuple(steps)
        self.sampler = StreamingSampler(model, self.steps)
        device = next(model.parameters()).device
        self.enabled = enabled and device.type == "cuda"
        self.pool = torch.cuda.graph_pool_handle() if self.enabled else None
        self._graphs: dict[tuple, _Captured] = {}
        self._watched: set[int] = set()
        self.captures = 0

    def _prepare(self, text, text_mask, raymap, plucker, cache, start_frame: int):
        frames = self.model.chunk_inputs(text, text_mask, raymap, plucker, start_frame, "stream", None)
        frames.cache_key_bias = cache.attention_bias()
        frames.write_tokens = cache.write_token_range()
        return frames

    def _body(self, noise: torch.Tensor, frames, cache, out: torch.Tensor, start_frame: int) -> None:
        sampler = StreamingSampler(_PreparedModel(self.model, frames), self.steps)
        cond = dict(text=frames.y, text_mask=None, raymap=None, plucker=None, cache=cache, start_frame=start_frame)
        latents = sampler.denoise(noise, pinned=None, **cond)
        sampler.write_cache(latents, **cond)
        out.copy_(latents)

    def _capture(self, noise: torch.Tensor, frames, cache, start_frame: int) -> _Captured:
        static_noise = noise.to(torch.float32).clone()
        out = torch.empty_like(static_noise)
        scratch = cache.clone()  # warm-up target: the real cache must advance exactly once
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._body(static_noise, frames, scratch, out, start_frame)
        torch.cuda.current_stream().wait_stream(side)
        del scratch
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):  # other threads may run
            self._body(static_noise, frames, cache, out, start_frame)
        self.captures += 1
        return _Captured(graph, static_noise, frames, out)

    @torch.no_grad()
    def step(
        self,
        noise: torch.Tensor,
        *,
        pinned: torch.Tensor | None,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        raymap: torch.Tensor,
        plucker: torch.Tensor,
        cache,
        start_frame: int,
    ) -> torch.Tensor:
        """Denoise one chunk and write it into ``cache`` (``StreamingSampler.denoise`` + ``write_cache``).

        Arguments as ``StreamingSampler.denoise``. Returns the clean latents (B, C, T, h, w) fp32; on the graph path
        this is a buffer that the next ``step`` of the same shape overwrites (clone it to keep it)."""
        B, _, T, h, w = noise.shape
        cache.check_chunk(batch_size=B, height=h, width=w, start_frame=start_frame, num_frames=T)
        if not self.enabled or pinned is not None:
            cond = dict(
                text=text, text_mask=text_mask, raymap=raymap, plucker=plucker, cache=cache, start_frame=start_frame
            )
            latents = self.sampler.denoise(noise, pinned=pinned, **cond)
            self.sampler.write_cache(latents, **cond)
            return latents
        frames = self._prepare(text, text_mask, raymap, plucker, cache, start_frame)
        key = (id(cache), tuple(noise.shape), frames.write_tokens, frames.cache_key_bias is None)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._graphs[key] = self._capture(noise, frames, cache, start_frame)
            if id(cache) not in self._watched:  # a collected cache drops its graphs before its id can recur
                self._watched.add(id(cache))
                weakref.finalize(cache, self._forget, weakref.ref(self), id(cache))
        else:
            entry.noise.copy_(noise)
            _copy_frames(entry.frames, frames)
        entry.graph.replay()
        cache.commit_chunk(T)
        return entry.out

    def release(self, cache) -> None:
        """Drop the graphs bound to ``cache`` (call when its session closes; also done when ``cache`` is collected)."""
        self._drop(id(cache))

    def _drop(self, cache_id: int) -> None:
        for key in [k for k in self._graphs if k[0] == cache_id]:
            del self._graphs[key]
        if self.enabled and not self._graphs:
            # The allocator frees a private pool with its last graph; capturing into that handle again trips
            # its internal assert, so the next capture gets a new pool.
            self.pool = torch.cuda.graph_pool_handle()

    @staticmethod
    def _forget(owner: weakref.ref, cache_id: int) -> None:
        graphs = owner()
        if graphs is not None:
            graphs._watched.discard(cache_id)
            graphs._drop(cache_id)


def frames_uint8(video: torch.Tensor) -> torch.Tensor:
    """(B, 3, N, H, W) in [-1, 1] -> (B, N, H, W, 3) uint8 on the same device (contiguous)."""
    return ((video.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 4, 1).contiguous()


@dataclass
class _Ticket:
    start: torch.cuda.Event | float
    done: torch.cuda.Event | float
    host: torch.Tensor
    keep: tuple  # device tensors that must live until ``done``

    def decode_time_ms(self) -> float:
        """Milliseconds from the decode's start to the end of its copy-out (side-stream events on CUDA)."""
        if isinstance(self.done, float):
            return (self.done - self.start) * 1000
        self.done.synchronize()
        return self.start.elapsed_time(self.done)


class FramePipe:
    """Decode on a side stream into pinned host buffers (``slots`` chunks in flight).

    ``decode(decoder, latents) -> (B, 3, N, H, W)`` is the world's decoder step (e.g. ``World.vae_decoder_step``).
    On a CPU device everything runs inline. ``frames(ticket)`` returns a numpy view of the pinned buffer, valid
    until ``slots`` further submits.
    """

    def __init__(
        self, decode: Callable[[object, torch.Tensor], torch.Tensor], device: torch.device | str, slots: int = 3
    ) -> None:
        self.decode = decode
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.side = torch.cuda.Stream(self.device) if self.cuda else None
        self.slots = slots
        self._buffers: list[torch.Tensor | None] = [None] * slots
        self._next = 0
        self._tickets: list[_Ticket | None] = [None] * slots

    def _buffer(self, shape: tuple[int, ...]) -> tuple[int, torch.Tensor]:
        i = self._next
        self._next = (i + 1) % self.slots
        pending = self._tickets[i]
        if pending is not None:
            pending.done.synchronize()  # the slot's previous frames have left the device
        buf = self._buffers[i]
        if buf is None or buf.numel() < int(np.prod(shape)):
            buf = self._buffers[i] = torch.empty(int(np.prod(shape)), dtype=torch.uint8, pin_memory=self.cuda)
        return i, buf[: int(np.prod(shape))].view(shape)

    def submit(self, decoder, latents: torch.Tensor, drop_first: bool = False) -> _Ticket:
        """Queue the decode of ``latents`` (B, C, n, h, w) after the work already queued on the current stream.
        ``drop_first``: drop the first decoded pixel frame (the conditioning image of a session's chunk 0)."""
        if not self.cuda:
            start = time.perf_counter()
            video = self.decode(decoder, latents)
            frames = frames_uint8(video[:, :, 1:] if drop_first else video)
            return _Ticket(start, time.perf_counter(), frames, ())
        main = torch.cuda.current_stream(self.device)
        ready = main.record_event()
        with torch.cuda.stream(self.side):
            self.side.wait_event(ready)
            start = torch.cuda.Event(enable_timing=True)
            start.record()
            video = self.decode(decoder, latents)
            frames = frames_uint8(video[:, :, 1:] if drop_first else video)
            i, host = self._buffer(tuple(frames.shape))
            host.copy_(frames, non_blocking=True)
            done = torch.cuda.Event(enable_timing=True)
            done.record()
        latents.record_stream(self.side)
        ticket = self._tickets[i] = _Ticket(start, done, host, (latents, frames))
        return ticket

    def frames(self, ticket: _Ticket) -> np.ndarray:
        """(B, N, H, W, 3) uint8 of a submitted chunk (waits for its copy)."""
        if not isinstance(ticket.done, float):
            ticket.done.synchronize()
        return ticket.host.numpy()
