"""Camera control: what a person or an agent wants the camera to do -> poses -> the model's camera tensors.

Depends on numpy and torch only. Conventions: OpenCV camera axes (+X right, +Y down, +Z forward), 4x4
camera-to-world poses (float64 here), intrinsics ``[fx, fy, cx, cy]`` in pixels of the frame, 16 fps.

Public names (imported lazily)::

    import controllers
    c2w = controllers.actions_to_poses("w-80,jw-40,none-8", mapping="sana-wm-v1")   # (N+1,4,4), identity first
    raymap, plucker = controllers.camera_conditioning(c2w, [fx, fy, cx, cy], (704, 1280), start, end)
    #   raymap (end-start, 20), plucker (48, end-start, 22, 40) float32; O(end-start) work
    cam = controllers.LiveController(mapping="sana-wm-v2")      # live keys + mouse, NVlabs velocity smoothing
    cam.key_down("w", t); cam.key_up("w", t); cam.mouse(dx, dy, t); poses = cam.poses_for_next(24)
    poses = cam.poses_for_actions("w-24"); poses = cam.poses_for_keys([{"w"}] * 24); cam.reset(pose)
    c2w = controllers.preset("orbit", 97); c2w = controllers.load_path("path.json")
    c2w, fov = controllers.keyframe_path({"keyframes": [...]})
    c2w, intrinsics = controllers.load_poses("poses.npz", convention="opengl"); controllers.save_poses(...)
    controllers.preview_png(c2w, "path.png")                   # top-down picture of a path

- ``actions_to_poses``, ``parse_actions``, ``MAPPINGS``: action strings; key mappings ``sana-wm-v1`` (a/d strafe,
  j/l yaw; diffusers) and ``sana-wm-v2`` (a/d yaw, j/l strafe, velocity smoothing; NVlabs streaming).
- ``LiveController``: the camera of a session: key-down/up and mouse events (or per-frame key sets, or action
  strings) -> per-frame poses continuing from the current pose; ``state_dict()`` / ``load_state_dict()``.
- ``camera_conditioning``: raymap + Plucker for latent frames ``[start, end)`` (matches diffusers ``prepare_camera``).
- ``keyframe_path``, ``load_path``, ``preset``, ``PRESETS``: scripted paths (``controllers.paths``).
- ``load_poses``, ``save_poses``: (F,4,4) pose files (.npy/.npz/.json) in OpenCV/OpenGL/Blender conventions.
- ``convert_poses``, ``check_poses``, ``as_intrinsics``, ``fov_to_intrinsics``, ``CONVENTIONS``: conventions.
- ``preview_png``: a path seen from above, drawn with numpy and written as PNG.
"""

from importlib import import_module

_EXPORTS = {
    "actions_to_poses": "controllers.actions",
    "parse_actions": "controllers.actions",
    "MAPPINGS": "controllers.actions",
    "LiveController": "controllers.live",
    "camera_conditioning": "controllers.conditioning",
    "keyframe_path": "controllers.paths",
    "load_path": "controllers.paths",
    "preset": "controllers.paths",
    "PRESETS": "controllers.paths",
    "load_poses": "controllers.paths",
    "save_poses": "controllers.paths",
    "convert_poses": "controllers.conventions",
    "check_poses": "controllers.conventions",
    "as_intrinsics": "controllers.conventions",
    "fov_to_intrinsics": "controllers.conventions",
    "CONVENTIONS": "controllers.conventions",
    "preview_png": "controllers.preview",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'controllers' has no attribute {name!r}")
