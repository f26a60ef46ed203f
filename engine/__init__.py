"""A running world: ``World`` (networks loaded once) and ``Session`` (one streaming rollout).

Public surface::

    from engine import World
    world = World.demo()                                   # tiny random networks, CPU fp32, H x W 128 x 224 (smoke)
    world = World.load("SANA-WM_streaming/", device="cuda", dtype=torch.bfloat16)   # default: bf16 on CUDA
    session = world.start(image, prompt="a harbour at dusk", seed=0)   # PIL | (H,W,3) uint8 | bytes | path
    chunk = session.step("w-24")           # or step(keys=[{"w"}] * 24) or step(poses=(24,4,4))
    chunk.frames       # (24,H,W,3) uint8: pixel frames 24c+1 .. 24c+24 (the conditioning frame 0 is not emitted)
    chunk.poses        # (24,4,4) float64 camera-to-world (OpenCV), relative to frame 0
    chunk.intrinsics   # (4,) [fx, fy, cx, cy] in pixels of the frame
    chunk.index, chunk.frame_indices, chunk.timings, chunk.latents
    for part in session.stream("w-24"): ...      # one part per latent frame (8 pixel frames) as soon as decoded
    snap = session.snapshot(); session.restore(snap); other = session.fork()
    still = session.render_image(pose)           # the frame the session would show at ``pose``; no advance
    still = world.render_image("a red lighthouse", seed=0)                      # (H,W,3) uint8
    frames = world.render_path(image, prompt, c2w, seed=0)                      # offline, whole camera path
    k = world.frame_intrinsics(image, fov_deg=70)   # (4,) the intrinsics a session from this image would use

What a chunk is: chunk 0 denoises latent frames 0..3 (frame 0 = the VAE-encoded first image, pinned at t = 0),
chunk ``c >= 1`` latent frames ``3c+1 .. 3c+3``; each is 4 Euler steps over ``DEFAULT_STEPS`` reading the
transformer cache, then one pass at t = 0 that writes it, then the VAE streaming decoder (8 pixel frames per latent
frame). Every chunk emits 24 frames at 16 fps; ``session.first_frame`` is the prepared first image (frame 0).
Noise of chunk ``c`` is ``chunk_noise(seed, c, ...)``: frames never depend on how far ahead anything ran.

Long sessions: the transformer is given absolute latent frame indices (``3c+1``) and computes RoPE positions from
them; nothing is capped at 1024 frames, and the cache (sink chunk + last chunk for the softmax blocks, recurrent
states for the GDN blocks) and the decoder cache have a fixed size: memory is constant however long it runs.

Snapshots: ``session.snapshot()`` copies the cache and decoder tensors and the camera/controller state and chunk
counter (no recomputation; about 1.4 GiB at 720p for the 2.6B model); ``restore`` copies them back in place, so
the next chunks repeat bitwise for the same inputs; ``fork()`` is a new session from a snapshot.

Names:

- ``World``: transformer + VAE + prompt encoder loaded once; starts sessions, renders paths and stills.
- ``Session``: one autoregressive rollout (streaming self-forcing sampler) in constant memory.
- ``Chunk``: what ``Session.step`` returns (and ``Session.stream`` yields per latent frame).
- ``Snapshot``: an exact, cheap copy of a session's state (``Session.snapshot`` / ``Session.restore``).
- ``SessionState``: everything a session carries between chunks (caches, camera, counters).
- ``DEFAULT_STEPS``: the streaming step list ``(1000, 960, 889, 727, 0)``.
- ``chunk_noise``: the per-chunk noise, a pure function of ``(seed, chunk index)``.
- ``flow_match_sigmas``: the shifted flow-matching schedule of the offline bidirectional sampler.
"""

from importlib import import_module

_EXPORTS = {
    "World": "engine.world",
    "Session": "engine.session",
    "Chunk": "engine.session",
    "Snapshot": "engine.state",
    "SessionState": "engine.state",
    "DEFAULT_STEPS": "engine.sampler",
    "chunk_noise": "engine.sampler",
    "flow_match_sigmas": "engine.sampler",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
