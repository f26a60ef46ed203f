"""A running world: ``World`` (networks loaded once) and ``Session`` (one streaming rollout).

Public surface::

    from engine import World
    world = World.demo()                                   # tiny random networks, CPU fp32 (smoke runs, tests)
    world = World.load("SANA-WM_streaming/", device="cuda", dtype=torch.bfloat16)
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

Names:

- ``World``: transformer + VAE + prompt encoder loaded once; starts sessions, renders paths and stills.
- ``Session``: one autoregressive rollout (streaming self-forcing sampler) in constant memory.
- ``Chunk``: what ``Session.step`` returns (and ``Session.stream`` yields per latent frame).
- ``Snapshot``: an exact, cheap copy of a session's state (``Session.snapshot`` / ``Session.restore``).
- ``SessionState``: everything a session carries between chunks (caches, camera, counters).
- ``DEFAULT_STEPS``: the streaming step list ``(1000, 960, 889, 727, 0)``.
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
    "flow_match_sigmas": "engine.sampler",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
