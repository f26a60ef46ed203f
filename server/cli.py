"""The ``sana-wm`` command line: explore | render | image | replay | serve | bench.

    sana-wm explore --demo                                  # pygame window, WASD + arrows / mouse drag
    sana-wm render --demo --actions "w-24,l-24" --output out.mp4      # + out.json sidecar
    sana-wm image --demo --prompt "a red lighthouse" --output still.png
    sana-wm replay session.jsonl --output take.mp4 [--sampler bidirectional]
    sana-wm serve ...   (server.app)      sana-wm bench ...   (server.bench)

A mistake in the arguments (missing model folder, unknown preset, unreadable path file, missing image)
prints one line ``sana-wm <command>: error: ...`` on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

PROG = "sana-wm"
_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}
DEMO_PROMPT = "a small test world"
DEMO_SIZE = (128, 224)  # (H, W) of the demo world: engine.World.demo's default (not imported: --help stays fast)
PRESET_NAMES = ("dolly", "figure-eight", "orbit", "pan", "walk-forward")  # controllers.paths.PRESETS (no torch import)
_DISPATCH = {
    "serve": ("server.app", "run the websocket server (server.app)"),
    "bench": ("server.bench", "measure speed and latency (server.bench)"),
}


class UsageError(Exception):
    """A bad argument or input file: reported as one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) raised as UsageError."""

    def error(self, message: str):
        raise UsageError(message)


def _multiple_of_32(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value <= 0 or value % 32:
        raise argparse.ArgumentTypeError(f"expected a positive multiple of 32, got {value}")
    return value


def _model_dir(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"model folder not found: {path}")
    return path


def _dtype(text: str) -> str:
    if text.lower() not in _DTYPES:
        raise argparse.ArgumentTypeError(f"expected float32, bfloat16 or float16 (or fp32/bf16/fp16), got {text!r}")
    return _DTYPES[text.lower()]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _add_world_args(
    p: argparse.ArgumentParser, *, image: bool = True, required: bool = True, seed: bool = True
) -> None:
    g = p.add_argument_group("world")
    src = g.add_mutually_exclusive_group(required=required)
    src.add_argument("--demo", action="store_true", help="the tiny random demo world (CPU, no weights needed)")
    src.add_argument("--model", metavar="DIR", type=_model_dir, help="a SANA-WM release folder (World.load)")
    g.add_argument("--device", help="torch device (default: cuda if present, else cpu)")
    g.add_argument(
        "--dtype",
        type=_dtype,
        metavar="{float32,bfloat16,float16}",
        help="weights/compute precision (default: bf16 on cuda, fp32 on cpu)",
    )
    g.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the transformer blocks (CUDA: faster chunks after a first chunk that compiles for ~30 s)",
    )
    g.add_argument(
        "--width",
        type=_multiple_of_32,
        help=f"frame width, a multiple of 32 (demo default {DEMO_SIZE[1]}; model default 1280)",
    )
    g.add_argument(
        "--height",
        type=_multiple_of_32,
        help=f"frame height, a multiple of 32 (demo default {DEMO_SIZE[0]}; model default 704)",
    )
    if seed:
        g.add_argument("--seed", type=int, default=0, help="noise seed of the rollout (default 0)")
    if image:
        g.add_argument(
            "--image", type=Path, help="first frame (PNG/JPEG); required with --model, else a generated test card"
        )
        g.add_argument("--prompt", help=f"text prompt; required with --model, else {DEMO_PROMPT!r}")
        g.add_argument(
            "--fov",
            type=float,
            metavar="DEG",
            help="horizontal field of view of the first image in degrees (default: focal 0.8 x its longer side, "
            "about 64 degrees across that side)",
        )


def _add_offline_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("bidirectional sampler")
    g.add_argument("--num-steps", type=_positive_int, default=60, help="flow-matching steps (default 60)")
    g.add_argument("--guidance-scale", type=float, default=5.0, help="classifier-free guidance (default 5; 1 = off)")
    g.add_argument("--negative-prompt", default="", help="negative prompt for guidance (default empty)")


def _offline_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"num_steps": args.num_steps, "guidance_scale": args.guidance_scale, "negative_prompt": args.negative_prompt}


def _render_offline(
    args: argparse.Namespace,
    world,
    image,
    prompt: str,
    c2w: np.ndarray,
    fps: float,
    *,
    seed: int,
    intrinsics=None,
    fov_deg: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The bidirectional sampler over ``c2w`` (--num-steps, --guidance-scale, --negative-prompt) into the --output
    mp4; returns (frames (F-1,H,W,3) uint8, the frame intrinsics (4,))."""
    from server.export import VideoWriter

    frames = world.render_path(
        image,
        prompt,
        c2w,
        seed=seed,
        intrinsics=intrinsics,
        fov_deg=fov_deg,
        sampler="bidirectional",
        progress=True,
        **_offline_kwargs(args),
    )
    with VideoWriter(args.output, fps=fps) as video:
        video.write(frames)
    return frames, world.frame_intrinsics(image, intrinsics, fov_deg)


def build_parser() -> argparse.ArgumentParser:
    from controllers.actions import MAPPINGS  # numpy only: --help stays fast

    parser = _Parser(prog=PROG, description="Interactive world-model engine for NVIDIA SANA-WM.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "explore",
        help="explore the world live in a pygame window",
        description="Stream the world live into a pygame window (in-process, or from a server with "
        "--connect). Keys: WASD move, arrows / IJKL / mouse drag look, Shift faster, "
        "P pause, R reset, F5 snapshot, F9 restore, F12 screenshot, F8 start/stop mp4, "
        "H hide HUD, Esc quit.",
    )
    _add_world_args(p, required=False)
    p.add_argument(
        "--connect", metavar="URL", help="stream from a sana-wm server (ws://host:port) instead of in-process"
    )
    p.add_argument(
        "--encoding",
        choices=("raw", "jpeg", "h264"),
        default="raw",
        help="frame encoding from the server with --connect (default raw: exact frames)",
    )
    p.add_argument(
        "--mapping",
        choices=sorted(MAPPINGS),
        default="sana-wm-v2",
        help="camera motion model of the keys (default sana-wm-v2: NVlabs streaming, smoothed)",
    )
    p.add_argument(
        "--fps",
        type=float,
        default=16.0,
        help="presentation rate (default 16, the model's; camera motion is unchanged)",
    )
    p.add_argument("--scale", type=float, default=None, help="window scale factor (default: fit ~1280 px wide)")
    p.add_argument("--record", metavar="FILE", type=Path, help="record the session (inputs, seed, image...) to FILE")
    p.add_argument("--frames-npz", metavar="FILE", type=Path, help="also save every generated raw frame to FILE (.npz)")
    p.add_argument(
        "--output-dir", metavar="DIR", type=Path, default=Path("."), help="where screenshots and mp4 captures go"
    )
    p.add_argument(
        "--script",
        metavar="FILE",
        type=Path,
        help="scripted input: a file of events, --events syntax (one or more per line, # comments)",
    )
    p.add_argument(
        "--events",
        metavar="LIST",
        help="scripted input inline: 'T:keydown:KEY,T:keyup:KEY,T:press:KEY,T:mouse:DX:DY,T:quit' with T "
        "seconds from the start and KEY a pygame key name (w, left, left shift, f5, ...)",
    )
    p.add_argument("--max-chunks", type=_positive_int, help="quit after this many chunks were generated and shown")
    p.set_defaults(func=cmd_explore)

    p = sub.add_parser(
        "render",
        help="render a camera path to an mp4 with a sidecar JSON",
        description="Render a camera path to an H.264 mp4 and a sidecar JSON (same stem, .json) with "
        "per-frame poses, intrinsics, seed, model and timings. The video holds one frame per "
        "pose after the first (the first pose is the given image).",
    )
    _add_world_args(p)
    path = p.add_argument_group("camera path (exactly one)").add_mutually_exclusive_group(required=True)
    path.add_argument("--actions", metavar="STRING", help="action string, e.g. 'w-24,l-24' (see --mapping)")
    path.add_argument("--path", metavar="FILE", type=Path, help="keyframe path JSON (controllers.paths.load_path)")
    path.add_argument("--preset", metavar="NAME", help=f"a named path ({', '.join(PRESET_NAMES)}) of --frames frames")
    path.add_argument(
        "--poses", metavar="FILE", type=Path, help="camera poses file (.npy/.npz/.json; see --convention)"
    )
    p.add_argument(
        "--mapping",
        choices=sorted(MAPPINGS),
        default="sana-wm-v1",
        help="key mapping of --actions (default sana-wm-v1: a/d strafe, j/l yaw; sana-wm-v2: a/d yaw, j/l strafe)",
    )
    p.add_argument("--frames", type=_positive_int, default=48, help="frames after the first for --preset (default 48)")
    p.add_argument(
        "--convention",
        choices=("opencv", "opengl", "blender"),
        default="opencv",
        help="axes of --poses (default opencv)",
    )
    p.add_argument(
        "--sampler",
        choices=("streaming", "bidirectional"),
        help="streaming (chunked, constant memory) or bidirectional (whole clip); needs a checkpoint of that kind "
        "(default: the --model folder's kind; the demo builds either, default streaming)",
    )
    _add_offline_args(p)
    p.add_argument("--fps", type=float, default=16.0, help="frame rate of the mp4 (default 16)")
    p.add_argument("--output", "-o", type=Path, required=True, help="the mp4 to write (sidecar: same stem, .json)")
    p.add_argument("--preview", action="store_true", help="first write the path's top-down PNG (<stem>.path.png)")
    p.add_argument("--dry-run", action="store_true", help="write the preview PNG and stop before generating")
    p.add_argument("--frames-npz", metavar="FILE", type=Path, help="also save the raw frames to FILE (.npz)")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser(
        "image",
        help="render a still image (one-frame rollout) to PNG",
        description="Render a still image from a prompt (a one-latent-frame rollout) to PNG, at --width x --height.",
    )
    _add_world_args(p, image=False)
    p.add_argument("--prompt", required=True, help="text prompt")
    p.add_argument("--output", "-o", type=Path, required=True, help="the PNG to write")
    p.set_defaults(func=cmd_image)

    p = sub.add_parser(
        "replay",
        help="re-render a recorded session to an mp4",
        description="Re-render a session record (from 'explore --record' or 'serve --record'). With the "
        "streaming sampler on the recorded device and precision the frames are bitwise "
        "those of the session; --sampler bidirectional re-renders the final timeline's "
        "camera path with the bidirectional model for a higher-quality take.",
    )
    p.add_argument("record", type=Path, help="the record file (.jsonl)")
    _add_world_args(p, image=False, required=False, seed=False)
    p.add_argument(
        "--sampler",
        choices=("streaming", "bidirectional"),
        default="streaming",
        help="streaming: exact replay of every chunk; bidirectional: offline take of the final timeline",
    )
    _add_offline_args(p)
    p.add_argument("--output", "-o", type=Path, required=True, help="the mp4 to write (sidecar: same stem, .json)")
    p.add_argument("--frames-npz", metavar="FILE", type=Path, help="also save the raw frames to FILE (.npz)")
    p.add_argument("--strict", action="store_true", help="fail (exit 1) if a chunk differs from the recorded digest")
    p.set_defaults(func=cmd_replay)

    for name, (_, text) in _DISPATCH.items():
        sub.add_parser(name, help=text, add_help=False)
    return parser


# ----------------------------------------------------------------------------------------------- world set-up


def model_id(args: argparse.Namespace, variant: str = "streaming") -> dict[str, Any]:
    """How to rebuild the world: stored in records and sidecars."""
    if args.demo:
        h, w = args.height or DEMO_SIZE[0], args.width or DEMO_SIZE[1]
        return {"kind": "demo", "height": h, "width": w, "seed": 0, "variant": variant}
    size = {k: getattr(args, k) for k in ("height", "width") if getattr(args, k)}
    return {"kind": "folder", "path": str(args.model.resolve()), **size}


def load_world(model: dict[str, Any], device: str | None, dtype: str | None, compile: bool = False):
    """A World from a model id (``model_id``): the demo world or ``World.load(folder)``; ``compile``: torch.compile
    the transformer blocks."""
    import torch

    from engine import World

    torch_dtype = None if dtype is None else getattr(torch, _DTYPES[dtype])
    if model["kind"] == "demo":
        kw = {"device": device} if device else {}
        if torch_dtype is not None:
            kw["dtype"] = torch_dtype
        return World.demo(
            height=model["height"],
            width=model["width"],
            seed=model["seed"],
            variant=model.get("variant", "streaming"),
            compile=compile,
            **kw,
        )
    folder = Path(model["path"])
    if not folder.is_dir():
        raise UsageError(f"model folder not found: {folder} (recorded in the model id)")
    kw = {k: v for k, v in (("height", model.get("height")), ("width", model.get("width"))) if v}
    return World.load(folder, device=device, dtype=torch_dtype, compile=compile, **kw)


def world_from_args(args: argparse.Namespace, variant: str = "streaming"):
    """(model id, World) for --demo / --model with --device, --dtype, --width, --height."""
    model = model_id(args, variant)
    return model, load_world(model, args.device, args.dtype, getattr(args, "compile", False))


def make_test_card(height: int, width: int) -> np.ndarray:
    """A deterministic test card (H,W,3) uint8: colour bars over a grey ramp, with a grid (the demo's first image)."""
    bars = np.array(
        [
            [235, 235, 235],
            [235, 235, 16],
            [16, 235, 235],
            [16, 235, 16],
            [235, 16, 235],
            [235, 16, 16],
            [16, 16, 235],
            [16, 16, 16],
        ],
        np.uint8,
    )
    x = np.arange(width)
    y = np.arange(height)
    img = np.empty((height, width, 3), np.uint8)
    img[:] = bars[(x * len(bars)) // width][None]
    ramp_from = (2 * height) // 3
    img[ramp_from:] = (x * 255 // max(width - 1, 1)).astype(np.uint8)[None, :, None]
    step = max(min(height, width) // 8, 4)
    img[y % step == 0] = 128
    img[:, x % step == 0] = 128
    return img


def _defaults_allowed(args: argparse.Namespace) -> bool:
    """The demo world and a server (explore --connect) may start from the test card and the demo prompt."""
    return args.demo or bool(getattr(args, "connect", None))


def read_image(args: argparse.Namespace) -> np.ndarray | None:
    """--image as (H,W,3) uint8 (checked before any model is loaded), or None when not given."""
    if args.image is None:
        if not _defaults_allowed(args):
            raise UsageError("--image is required with --model (the first frame of the world)")
        return None
    if not args.image.is_file():
        raise UsageError(f"image not found: {args.image}")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(args.image) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise UsageError(f"{args.image}: not a readable image ({e})") from None


def prompt_of(args: argparse.Namespace) -> str:
    """--prompt; the demo world has a default, real weights need one."""
    if args.prompt is not None:
        return args.prompt
    if not _defaults_allowed(args):
        raise UsageError("--prompt is required with --model (a text description of the scene)")
    return DEMO_PROMPT


# ----------------------------------------------------------------------------------------------- camera paths


def camera_path(args: argparse.Namespace, image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    """The requested camera path, (F,4,4) c2w relative to its first pose, and intrinsics from a poses file
    ((4,) in pixels of the first image of size ``image_size`` (H, W), or None)."""
    import controllers
    from controllers import paths
    from controllers.conventions import check_poses

    intrinsics = None
    if args.actions is not None:
        c2w = controllers.actions_to_poses(args.actions, mapping=args.mapping)
    elif args.path is not None:
        if not args.path.is_file():
            raise UsageError(f"path file not found: {args.path}")
        c2w = paths.load_path(args.path)
    elif args.preset is not None:
        c2w = paths.preset(args.preset, args.frames + 1)
    else:
        if not args.poses.is_file():
            raise UsageError(f"poses file not found: {args.poses}")
        c2w, intrinsics = paths.load_poses(args.poses, convention=args.convention, image_size=image_size)
    c2w = check_poses(c2w, name="camera path")
    if len(c2w) < 2:
        raise UsageError(f"camera path: needs at least 2 poses (the first image's and one more), got {len(c2w)}")
    c2w = np.linalg.inv(c2w[0]) @ c2w
    if intrinsics is not None:
        intrinsics = np.asarray(intrinsics, dtype=np.float64)
        if intrinsics.ndim == 2:
            if not np.allclose(intrinsics, intrinsics[0]):
                raise UsageError(f"{args.poses}: per-frame intrinsics must be constant over the path")
            intrinsics = intrinsics[0]
    return c2w, intrinsics


# ----------------------------------------------------------------------------------------------- commands


def cmd_render(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from server.export import VideoWriter, save_frames_npz, write_sidecar

    if args.fps <= 0:
        raise UsageError(f"--fps must be > 0, got {args.fps}")
    if args.output.suffix.lower() != ".mp4":
        raise UsageError(f"--output must be an .mp4 file, got {args.output}")
    image = read_image(args)
    prompt = prompt_of(args)
    image_size = image.shape[:2] if image is not None else (args.height or DEMO_SIZE[0], args.width or DEMO_SIZE[1])
    c2w, intrinsics = camera_path(args, image_size)
    if intrinsics is not None and args.fov is not None:
        raise UsageError(f"--fov conflicts with the intrinsics in {args.poses}; give one of them")
    fov = args.fov
    if args.preview or args.dry_run:
        from controllers import preview_png

        png = args.output.with_suffix(".path.png")
        png.parent.mkdir(parents=True, exist_ok=True)
        preview_png(c2w, png)
        print(f"path preview: {png} ({len(c2w) - 1} frames)", file=sys.stderr)
        if args.dry_run:
            return 0
    model, world = world_from_args(args, variant=args.sampler or "streaming")
    sampler = args.sampler or world.variant
    if image is None:
        image = make_test_card(world.height, world.width)
    n = len(c2w) - 1
    t0 = time.perf_counter()
    chunk_times: list[dict[str, float]] = []
    extra: dict[str, Any] = {}
    if sampler == "streaming":
        session = world.start(image, prompt=prompt, seed=args.seed, intrinsics=intrinsics, fov_deg=fov)
        fpc = session.frames_per_chunk
        pad = (-n) % fpc
        poses_in = np.concatenate([c2w[1:], np.repeat(c2w[-1:], pad, axis=0)])
        frames_out, poses_out = [], []
        with VideoWriter(args.output, fps=args.fps) as video, tqdm(total=n, unit="frame", desc="render") as bar:
            # the whole path is known: chunk c + 1 is denoised while chunk c decodes (Session.pipeline)
            windows = (poses_in[c * fpc : (c + 1) * fpc] for c in range(len(poses_in) // fpc))
            for c, chunk in enumerate(session.pipeline(windows)):
                keep = min(fpc, n - c * fpc)
                video.write(chunk.frames[:keep])
                poses_out.append(chunk.poses[:keep])
                if args.frames_npz:
                    frames_out.append(chunk.frames[:keep])
                chunk_times.append(chunk.timings)
                bar.update(keep)
        k = session.intrinsics
        session.close()
        poses = np.concatenate(poses_out)
        frames = np.concatenate(frames_out) if frames_out else None
    else:
        frames, k = _render_offline(
            args, world, image, prompt, c2w, args.fps, seed=args.seed, intrinsics=intrinsics, fov_deg=fov
        )
        poses, pad = c2w[1:], (-n) % 8
        extra["bidirectional"] = _offline_kwargs(args)
    total = time.perf_counter() - t0
    timings = {"total_s": total, "frames": n, "x_real_time": (n / args.fps) / total}
    if chunk_times:
        timings["chunk_s"] = [t["total"] for t in chunk_times]
        timings["stage_s"] = {k: sum(t.get(k, 0.0) for t in chunk_times) for k in chunk_times[0]}
    side = write_sidecar(
        args.output,
        poses=poses,
        intrinsics=k,
        fps=args.fps,
        width=world.width,
        height=world.height,
        seed=args.seed,
        model=model,
        prompt=prompt,
        sampler=sampler,
        timings=timings,
        extra={"padded_frames": pad, **extra},
    )
    if args.frames_npz:
        save_frames_npz(args.frames_npz, frames, poses=poses)
    print(
        f"wrote {args.output} ({n} frames, {world.width}x{world.height} @ {args.fps:g} fps) and {side} "
        f"in {total:.1f} s ({timings['x_real_time']:.2f}x real time)",
        file=sys.stderr,
    )
    return 0


def cmd_image(args: argparse.Namespace) -> int:
    from server.export import save_png

    if args.output.suffix.lower() != ".png":
        raise UsageError(f"--output must be a .png file, got {args.output}")
    _, world = world_from_args(args)
    kw = {k: getattr(args, k) for k in ("height", "width") if getattr(args, k)}
    still = world.render_image(args.prompt, seed=args.seed, **kw)
    save_png(args.output, still)
    print(f"wrote {args.output} ({still.shape[1]}x{still.shape[0]})", file=sys.stderr)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from server import record as rec_mod
    from server.export import VideoWriter, save_frames_npz, write_sidecar

    if args.output.suffix.lower() != ".mp4":
        raise UsageError(f"--output must be an .mp4 file, got {args.output}")
    if not args.record.is_file():
        raise UsageError(f"record file not found: {args.record}")
    record = rec_mod.load_record(args.record)
    head = record.header
    if not record.steps():
        raise UsageError(f"{args.record}: the record has no steps to render")
    if args.demo or args.model:
        model = model_id(args, args.sampler)
        if args.demo:
            model.update(height=args.height or head["height"], width=args.width or head["width"])
    else:
        model = dict(head["model"])
        if model.get("kind") not in ("demo", "folder"):
            raise UsageError(
                f"{args.record}: recorded against {model.get('kind')} {model.get('name')!r}; "
                "give the world to replay it on (--demo or --model DIR)"
            )
        if model["kind"] == "demo":
            model["variant"] = args.sampler
    recorded_device = head.get("device") if head.get("device") != "unknown" else None
    device = args.device or (recorded_device if model["kind"] == "demo" else None)
    dtype = args.dtype or (head.get("dtype") if head.get("dtype") in _DTYPES else None)
    world = load_world(model, device, dtype, getattr(args, "compile", False))
    fps = head.get("fps", 16)
    t0 = time.perf_counter()
    if args.sampler == "streaming":
        steps = record.steps()
        frames_out, poses_out, same = [], [], 0
        with VideoWriter(args.output, fps=fps) as video, tqdm(total=len(steps), unit="chunk", desc="replay") as bar:
            for ev, chunk in zip(steps, rec_mod.replay_chunks(record, world), strict=True):
                video.write(chunk.frames)
                poses_out.append(chunk.poses)
                if args.frames_npz:
                    frames_out.append(chunk.frames)
                if ev.get("digest") == rec_mod.frames_digest(chunk.frames):
                    same += 1
                elif args.strict and "digest" in ev:
                    print(f"sana-wm replay: chunk {ev['chunk']} differs from the record", file=sys.stderr)
                    return 1
                k = chunk.intrinsics
                bar.update(1)
        digests = sum("digest" in ev for ev in steps)
        print(f"replay: {same}/{digests} recorded chunks bitwise identical", file=sys.stderr)
        poses = np.concatenate(poses_out)
        frames = np.concatenate(frames_out) if frames_out else None
    else:
        poses = rec_mod.timeline_poses(record)
        c2w = np.concatenate([np.eye(4)[None], poses])
        start = record.start_kwargs()
        start.pop("mapping", None)  # the timeline is already poses
        frames, k = _render_offline(args, world, record.image, start.pop("prompt"), c2w, fps, **start)
    total = time.perf_counter() - t0
    write_sidecar(
        args.output,
        poses=poses,
        intrinsics=k,
        fps=fps,
        width=world.width,
        height=world.height,
        seed=head["seed"],
        model=model,
        prompt=head["prompt"],
        sampler=args.sampler,
        timings={"total_s": total},
        extra={"record": str(args.record)},
    )
    if args.frames_npz and frames is not None:
        save_frames_npz(args.frames_npz, frames, poses=poses)
    print(f"wrote {args.output} ({len(poses)} frames) in {total:.1f} s", file=sys.stderr)
    return 0


def cmd_explore(args: argparse.Namespace) -> int:
    from server import viewer

    return viewer.explore(args)


# ----------------------------------------------------------------------------------------------- entry point


def _dispatch(name: str, argv: list[str]) -> int:
    return int(importlib.import_module(_DISPATCH[name][0]).main(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    """Run the ``sana-wm`` command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and not argv[0].startswith("-") else None
    try:
        if command in _DISPATCH:
            return _dispatch(command, argv[1:])
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except (UsageError, OSError, ValueError) as e:  # bad input, unreadable / unwritable files, refused connections
        _one_line_error(command, str(e))
        return 2
    except SystemExit as e:  # --help, or a dispatched command's own exit
        return e.code if isinstance(e.code, int) else int(e.code is not None)


def _one_line_error(command: str | None, message: str) -> None:
    where = f"{PROG} {command}" if command else PROG
    print(f"{where}: error: {' '.join(message.split())}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
