"""CUDA graphs of the streaming chunk step, and decoding on a side stream with pinned copy-out.

``ChunkGraphs.denoise`` + ``ChunkGraphs.write_cache`` do exactly what ``StreamingSampler.denoise`` +
``StreamingSampler.write_cache`` do for one chunk (they run those same methods), but on CUDA, once a chunk's shapes
repeat, as **two graph replays**: the ``len(steps) - 1`` Euler passes that read the cache, then the cache-writing
pass at t = 0 (split so that the caller can queue the decode of the clean latents in between, on a side stream).
What does not depend on the latents or the timestep (RoPE at the chunk's absolute positions, UCPE ray matrices,
Plücker embeddings and projections: the transformer's ``chunk_inputs``) is computed once per chunk at the start of
the denoise graph, from static inputs that the chunk's raymap, Plücker map and frame positions are copied into (a
hundred small kernels that the host would otherwise launch one by one while a key press waits); the prompt's
``TextInputs`` are a static copy too, rewritten only when the prompt changes; the timestep conditioning of every step
(the same for all chunks) is computed once per chunk shape (the transformer's ``conditioning``) and read by the graphs
as a constant; nothing inside a chunk synchronises with the host.

A graph pair binds the tensors of one ``StreamingCache``: captures are keyed by the cache object, the chunk length,
the cache's K/V offset and write range (which differ while the softmax window fills) and the shapes of the per-chunk
inputs (the prompt's length). Chunk 0 (the image chunk: 4 frames, frame 0 pinned) runs eagerly; with the default
``window_chunks=1`` chunk 1 has its own graphs and every later chunk replays a second pair. Capture warms up on a
clone of the cache, so the cache advances exactly once per chunk. All graphs of a ``ChunkGraphs`` share one memory
pool (their outputs are copied to buffers outside it; a pair is always replayed in capture order on one stream), so
extra sessions cost their static inputs, not another set of activations.

``FramePipe`` decodes clean latents on a side stream, converts them to uint8 on the device and copies them into
pinned host buffers, so the transformer work queued after it on the main stream (the chunk's cache-writing pass,
chunk N+1) overlaps the decode of chunk N.

How ``engine.session.Session`` uses them (``_launch`` / ``_collect``)::

    out = graphs.denoise(noise, pinned=..., text=..., text_mask=..., raymap=..., plucker=..., cache=cache,
                         start_frame=start_frame, prompt=setup.text_inputs)
    latents = out.clone()                            # out is rewritten by the next chunk's denoise
    tickets = [pipe.submit(decoder, latents[:, :, lo:hi], drop_first=...) for lo, hi, ... in parts]   # side stream
    graphs.write_cache(out, cache)                   # main stream, concurrently with the decode
    ...                                              # (Session.pipeline: queue chunk N+1 here)
    frames = pipe.frames(tickets[0])                 # (1, 8, H, W, 3) uint8 once its copy is done
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sana_wm.cuda_graph import capture
from sana_wm.transformer import TextInputs

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
        self, latents, timestep, text, text_mask, raymap, plucker, *, cache, start_frame, write_cache=False,
        prompt=None,
    ):
        return self.model.run_blocks(latents, timestep, self.frames, cache, write_cache)


class _GraphSampler(StreamingSampler):
    """``StreamingSampler`` whose passes take the precomputed timestep conditioning of their step (``conds``, keyed
    by (step, batch, frames); computed once per shape by ``ChunkGraphs``, outside every graph) instead of timesteps."""

    def __init__(self, model: _PreparedModel, steps: Sequence[int], conds: dict) -> None:
        super().__init__(model, steps)
        self.conds = conds

    def _timesteps(self, t: int, batch: int, frames: int, pinned: bool, device: torch.device):
        cond = None if pinned else self.conds.get((t, batch, frames))
        return super()._timesteps(t, batch, frames, pinned, device) if cond is None else cond


@dataclass
class _Inputs:
    """What the graphs read of one chunk besides its noise, as static tensors that each chunk's values are copied
    into (``ChunkGraphs._inputs``): raymap (B, T, 20) and Plücker map (B, 48, T, h, w), ``positions`` (T,) int64 the
    chunk's absolute latent frames, ``prompt`` a copy of the ``TextInputs`` (a graph must not read tensors that
    others hold: a session's are shared by its forks and snapshots; ``source`` is the ``TextInputs`` last copied in,
    so a session's prompt is copied once), and the cache's K/V offset and write range (host values baked into the
    graphs, so part of their key)."""

    raymap: torch.Tensor
    plucker: torch.Tensor
    positions: torch.Tensor
    prompt: TextInputs
    kv_offset: int
    write_tokens: tuple[int, int] | None
    source: weakref.ref | None = None

    def update(self, raymap: torch.Tensor, plucker: torch.Tensor, start_frame: int, prompt: TextInputs) -> None:
        """Copy one chunk's values in (on the current stream)."""
        self.raymap.copy_(raymap)
        self.plucker.copy_(plucker)
        torch.arange(start_frame, start_frame + len(self.positions), out=self.positions)
        if self.source is None or self.source() is not prompt:
            for name in ("y", "y_mask", "kv"):
                static = getattr(self.prompt, name)
                if static is not None:
                    static.copy_(getattr(prompt, name))
            self.source = weakref.ref(prompt)


@dataclass
class _Captured:
    denoise: torch.cuda.CUDAGraph  # the per-chunk inputs (the transformer's chunk_inputs) + the Euler passes
    write: torch.cuda.CUDAGraph  # the cache-writing pass on out
    noise: torch.Tensor  # static input (B, C, T, h, w) fp32
    inputs: _Inputs  # static inputs of chunk_inputs
    frames: object  # chunk_inputs' output (the transformer's _Frames) in the graphs' pool, which the write graph
    # reads: held so that no later capture in the pool gets its memory
    out: torch.Tensor  # static output: clean latents (B, C, T, h, w) fp32


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
        self._pending: dict[int, tuple[_Captured | None, dict]] = {}  # cache id -> denoised chunk awaiting its write
        self._conds: dict[tuple[int, int, int], object] = {}  # (step, batch, frames) -> the transformer's Conditioning
        self.captures = 0

    def _inputs(self, raymap, plucker, start_frame: int, prompt: TextInputs, cache) -> _Inputs:
        """Fresh static inputs holding one chunk's values."""
        inputs = _Inputs(
            raymap=torch.empty_like(raymap),
            plucker=torch.empty_like(plucker),
            positions=torch.empty(raymap.shape[1], dtype=torch.int64, device=raymap.device),
            prompt=TextInputs(*(None if t is None else torch.empty_like(t) for t in (prompt.y, prompt.y_mask,
                                                                                    prompt.kv))),
            kv_offset=cache.kv_offset(),
            write_tokens=cache.write_token_range(),
        )
        inputs.update(raymap, plucker, start_frame, prompt)
        return inputs

    def _frames(self, inputs: _Inputs):
        """The transformer's per-chunk inputs (``chunk_inputs``: RoPE, UCPE rays, Plücker projections) from the
        static ones: ~100 small kernels, run inside the denoise graph rather than launched one by one per chunk."""
        frames = self.model.chunk_inputs(None, None, inputs.raymap, inputs.plucker, inputs.positions, "stream", None,
                                         inputs.prompt)
        frames.kv_offset = inputs.kv_offset
        frames.write_tokens = inputs.write_tokens
        return frames

    def _conditionings(self, batch: int, frames: int, device: torch.device) -> None:
        """Every step's timestep conditioning for chunks of this shape, computed once (outside the graphs, which
        read it as a constant; weights changed in place later would reach the graphs but not these)."""
        for t in self.steps:
            if (t, batch, frames) not in self._conds:
                timestep = torch.full((batch, frames), float(t), device=device)
                self._conds[t, batch, frames] = self.model.conditioning(timestep)

    def _denoise_body(self, noise: torch.Tensor, inputs: _Inputs, cache, out: torch.Tensor, start_frame: int):
        """The chunk's per-chunk inputs and its Euler passes into ``out``; returns those inputs (the transformer's
        ``_Frames``) for the write pass."""
        frames = self._frames(inputs)
        sampler = _GraphSampler(_PreparedModel(self.model, frames), self.steps, self._conds)
        cond = {"text": frames.prompt.y, "text_mask": None, "raymap": None, "plucker": None, "cache": cache,
                "start_frame": start_frame}
        out.copy_(sampler.denoise(noise, pinned=None, **cond))
        return frames

    def _write_body(self, latents: torch.Tensor, frames, cache, start_frame: int) -> None:
        sampler = _GraphSampler(_PreparedModel(self.model, frames), self.steps, self._conds)
        sampler.write_cache(latents, text=frames.prompt.y, text_mask=None, raymap=None, plucker=None, cache=cache,
                            start_frame=start_frame)

    def _capture(self, noise: torch.Tensor, inputs: _Inputs, cache, start_frame: int) -> _Captured:
        static_noise = noise.to(torch.float32).clone()
        out = torch.empty_like(static_noise)
        self._conditionings(noise.shape[0], noise.shape[2], noise.device)
        scratch = cache.clone()  # warm-up target: the real cache must advance exactly once
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            frames = self._denoise_body(static_noise, inputs, scratch, out, start_frame)
            self._write_body(out, frames, scratch, start_frame)
        torch.cuda.current_stream().wait_stream(side)
        del scratch, frames
        # Both graphs share the pool: they are always replayed in capture order (denoise, then write) on one stream;
        # the write graph reads the per-chunk inputs that the denoise graph computes (kept alive by the entry).
        denoise, write = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        with capture(denoise, pool=self.pool):  # thread-local capture: other threads may run
            frames = self._denoise_body(static_noise, inputs, cache, out, start_frame)
        with capture(write, pool=self.pool):
            self._write_body(out, frames, cache, start_frame)
        self.captures += 1
        return _Captured(denoise, write, static_noise, inputs, frames, out)

    @torch.no_grad()
    def denoise(
        self,
        noise: torch.Tensor,
        *,
        pinned: torch.Tensor | None,
        text: torch.Tensor,
        text_mask: torch.Tensor | None,
        raymap: torch.Tensor,
        plucker: torch.Tensor,
        cache,
        start_frame: int,
        prompt: TextInputs | None = None,
    ) -> torch.Tensor:
        """The denoise passes of one chunk (``StreamingSampler.denoise``); ``write_cache`` must follow, with the
        same cache, before anything else uses it.

        Arguments as ``StreamingSampler.denoise`` (``prompt``: the transformer's ``text_inputs(text, text_mask)``
        if already computed; a session's are, once). Returns the clean latents (B, C, T, h, w) fp32; on the graph
        path this is the graph's output buffer, which the next ``denoise`` of the same shape overwrites (clone it to
        read it later or on another stream)."""
        B, _, T, h, w = noise.shape
        cache.check_chunk(batch_size=B, height=h, width=w, start_frame=start_frame, num_frames=T)
        if id(cache) in self._pending:
            raise RuntimeError("ChunkGraphs.denoise: the previous chunk of this cache was not written (write_cache)")
        cond = {"text": text, "text_mask": text_mask, "raymap": raymap, "plucker": plucker, "cache": cache,
                "start_frame": start_frame, "prompt": prompt}
        if not self.enabled or pinned is not None:
            latents = self.sampler.denoise(noise, pinned=pinned, **cond)
            self._pending[id(cache)] = (None, cond)
            return latents
        if prompt is None:
            prompt = self.model.text_inputs(text, text_mask)
        key = (id(cache), tuple(noise.shape), cache.kv_offset(), cache.write_token_range(), raymap.shape,
               raymap.dtype, plucker.shape, plucker.dtype, prompt.kv.shape, prompt.y_mask is None)  # (prompt length)
        entry = self._graphs.get(key)
        if entry is None:
            inputs = self._inputs(raymap, plucker, start_frame, prompt, cache)
            entry = self._graphs[key] = self._capture(noise, inputs, cache, start_frame)
            if id(cache) not in self._watched:  # a collected cache drops its graphs before its id can recur
                self._watched.add(id(cache))
                weakref.finalize(cache, self._forget, weakref.ref(self), id(cache))
        else:
            entry.noise.copy_(noise)
            entry.inputs.update(raymap, plucker, start_frame, prompt)
        entry.denoise.replay()
        self._pending[id(cache)] = (entry, cond)
        return entry.out

    @torch.no_grad()
    def write_cache(self, latents: torch.Tensor, cache) -> None:
        """The cache-writing pass of the chunk that ``denoise`` just made for ``cache``
        (``StreamingSampler.write_cache``; one graph replay on the graph path). ``latents``: what ``denoise``
        returned, or a copy of it."""
        pending = self._pending.pop(id(cache), None)
        if pending is None:
            raise RuntimeError("ChunkGraphs.write_cache: no denoised chunk of this cache to write (call denoise)")
        entry, cond = pending
        if entry is None:
            self.sampler.write_cache(latents, **cond)
            return
        if latents is not entry.out:
            entry.out.copy_(latents)
        entry.write.replay()
        cache.commit_chunk(entry.noise.shape[2])

    def step(self, noise: torch.Tensor, **cond) -> torch.Tensor:
        """``denoise`` + ``write_cache`` of one chunk (arguments as ``denoise``); returns ``denoise``'s latents."""
        latents = self.denoise(noise, **cond)
        self.write_cache(latents, cond["cache"])
        return latents

    def release(self, cache) -> None:
        """Drop the graphs bound to ``cache`` (call when its session closes; also done when ``cache`` is collected)."""
        self._drop(id(cache))

    def _drop(self, cache_id: int) -> None:
        for key in [k for k in self._graphs if k[0] == cache_id]:
            del self._graphs[key]
        self._pending.pop(cache_id, None)
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
    """Decode on a side stream into pinned host buffers (``slots`` submits in flight).

    ``decode(decoder, latents) -> (B, 3, N, H, W)`` is the world's decoder step (``World.vae_decoder_step``).
    On a CPU device, or with ``overlap=False``, everything runs inline on the current stream (in order with the
    transformer's work). ``frames(ticket)`` returns a numpy view of the pinned buffer, valid until ``slots``
    further submits.
    """

    def __init__(
        self,
        decode: Callable[[object, torch.Tensor], torch.Tensor],
        device: torch.device | str,
        slots: int = 3,
        *,
        overlap: bool = True,
    ) -> None:
        self.decode = decode
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        # high priority: a part's decode gets SMs ahead of the transformer work queued beside it (frame latency)
        self.side = torch.cuda.Stream(self.device, priority=-1) if self.cuda and overlap else None
        self.slots = slots
        self._buffers: list[torch.Tensor | None] = [None] * slots
        self._next = 0
        self._tickets: list[_Ticket | None] = [None] * slots

    @property
    def overlapped(self) -> bool:
        """True when decodes run on the side stream, concurrently with later work on the current stream."""
        return self.side is not None

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

    def submit(self, decoder, latents: torch.Tensor, drop_first: bool = False, ready=None) -> _Ticket:
        """Queue the decode of ``latents`` (B, C, n, h, w) after the work already queued on the current stream, or
        with ``ready`` (a CUDA event of the current stream marking when ``latents`` were written) after that event
        only. ``drop_first``: drop the first decoded pixel frame (the conditioning image of a session's chunk 0).
        With overlap, ``latents`` must not be written on the current stream until the ticket is done (the memory
        itself stays reserved for the side stream: ``record_stream``)."""
        if not self.cuda:
            start = time.perf_counter()
            video = self.decode(decoder, latents)
            frames = frames_uint8(video[:, :, 1:] if drop_first else video)
            return _Ticket(start, time.perf_counter(), frames, ())
        main = torch.cuda.current_stream(self.device)
        stream = main if self.side is None else self.side
        ready = main.record_event() if ready is None else ready
        with torch.cuda.stream(stream):
            stream.wait_event(ready)
            start = torch.cuda.Event(enable_timing=True)
            start.record()
            video = self.decode(decoder, latents)
            frames = frames_uint8(video[:, :, 1:] if drop_first else video)
            i, host = self._buffer(tuple(frames.shape))
            host.copy_(frames, non_blocking=True)
            done = torch.cuda.Event(enable_timing=True)
            done.record()
        if stream is not main:
            latents.record_stream(stream)
        ticket = self._tickets[i] = _Ticket(start, done, host, (latents, frames))
        return ticket

    def join(self) -> None:
        """Later work on the current stream waits for every decode submitted so far (e.g. before the decoder state
        is read or written on the current stream while decodes may still run)."""
        if self.side is not None:
            torch.cuda.current_stream(self.device).wait_stream(self.side)

    def frames(self, ticket: _Ticket) -> np.ndarray:
        """(B, N, H, W, 3) uint8 of a submitted chunk (waits for its copy)."""
        if not isinstance(ticket.done, float):
            ticket.done.synchronize()
        return ticket.host.numpy()
