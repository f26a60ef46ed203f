"""Quick start: explore a world chunk by chunk, fork it, and render a still.

    python examples/quickstart.py                        # tiny random world on the CPU (no weights needed)
    python examples/quickstart.py --folder SANA-WM_streaming --image harbour.jpg --prompt "a harbour at dusk"

Writes ``quickstart.gif`` (the explored frames) and ``quickstart_still.png``. Needs the package installed
(``pip install -e .``) or ``PYTHONPATH=.`` from the repository root.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from engine import World


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", help="downloaded SANA-WM release folder (default: the tiny demo world)")
    parser.add_argument("--image", help="first image (default: a synthetic gradient)")
    parser.add_argument("--prompt", default="a quiet harbour at dusk, boats, warm lights on the water")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=".", help="output folder")
    args = parser.parse_args(argv)

    world = World.load(args.folder) if args.folder else World.demo()
    if args.image:
        image = args.image
    else:
        ys, xs = np.mgrid[0 : world.height, 0 : world.width]
        image = np.stack([xs * 255 // world.width, ys * 255 // world.height, 128 + 0 * xs], -1).astype(np.uint8)

    session = world.start(image, prompt=args.prompt, seed=args.seed)
    frames = []
    for actions in ("w-24", "dw-24", "w-12,none-12"):  # sana-wm-v2 keys: w/s move, a/d turn, j/l strafe, i/k look
        chunk = session.step(actions)
        frames.append(chunk.frames)
        timings = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in chunk.timings.items())
        print(f"chunk {chunk.index}: frames {chunk.frame_indices[0]}..{chunk.frame_indices[-1]}  ({timings})")

    other = session.fork()  # an exact copy: both continue from here independently
    left, right = session.step("a-24"), other.step("d-24")
    print("fork: turning left and right give different frames:", not np.array_equal(left.frames, right.frames))
    frames.append(left.frames)

    for part in session.stream("w-24"):  # 8 frames at a time, as soon as they are decoded
        frames.append(part.frames)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    video = [Image.fromarray(f) for f in np.concatenate(frames)]
    video[0].save(out / "quickstart.gif", save_all=True, append_images=video[1:], duration=62, loop=0)
    Image.fromarray(session.render_image()).save(out / "quickstart_still.png")
    print(f"wrote {out / 'quickstart.gif'} ({len(video)} frames) and {out / 'quickstart_still.png'}")


if __name__ == "__main__":
    main()
