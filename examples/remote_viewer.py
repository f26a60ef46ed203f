"""Watch a world served by ``sana-wm serve``: print each chunk's stats, save frames, or steer it in a pygame window.

    python examples/remote_viewer.py --demo --chunks 4 --save frames/            # headless, scripted controls
    python examples/remote_viewer.py --url ws://127.0.0.1:8765/ --image first.png --prompt "a harbour" --window

Headless, it holds ``w`` and turns with the mouse for a few chunks, printing per chunk the frames, the
control receipt (which control event the chunk reflects), drops and timings. With ``--window`` (needs pygame),
the keys held in the window (WASD, IJKL, Shift) and mouse drags steer the live session, and frames are shown
evenly at 16 fps (``server.pacing.FramePacer``). Esc quits.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from examples.common import add_world_arguments, connect  # noqa: E402
from server.client import Frames, Session  # noqa: E402

WINDOW_KEYS = {"w": "w", "a": "a", "s": "s", "d": "d", "i": "i", "j": "j", "k": "k", "l": "l",
               "up": "i", "down": "k", "left": "j", "right": "l", "left shift": "shift", "right shift": "shift"}


def describe(out: Frames) -> str:
    t = out.stats["timings_ms"]
    receipt = "-" if out.control is None else f"event {out.control['event']}{' (new)' if out.control['new'] else ''}"
    size = f"{out.stats['bytes'] / 1024:.0f} KiB {out.stats['encoding']}"
    mem = out.stats.get("gpu_memory")
    gpu = "n/a" if mem is None else (f"{mem['allocated_bytes'] / 2**30:.1f} GiB "
                                     f"(peak {mem['max_allocated_bytes'] / 2**30:.1f})")
    return (f"chunk {out.chunk}: {len(out.frames)} frames, {size}, "
            f"control {receipt}, dropped {out.stats['dropped_chunks']}, engine {t.get('engine_total', 0):.0f} ms, "
            f"encode {t['encode']:.0f} ms, GPU {gpu}, camera z {out.c2w[-1, 2, 3]:+.3f}")


def save(out: Frames, folder: Path | None, writer) -> None:
    if folder is not None:
        from server.export import save_png

        save_png(folder / f"chunk{out.chunk:04d}.png", out.frames[-1])
    if writer is not None:
        writer.write(out.frames)


def headless(session: Session, chunks: int, folder: Path | None, writer) -> None:
    """Scripted controls: forward, then forward while turning right, then rest."""
    script = [({"w"}, None), ({"w"}, (40.0, 0.0)), (set(), None)]
    t = 0.0
    for i in range(chunks):
        keys, mouse = script[min(i, len(script) - 1)]
        t += 1500.0
        event = session.control(keys=keys, mouse=mouse, t=t)
        out = session.next_chunk()
        print(describe(out), f"(sent event {event})", flush=True)
        save(out, folder, writer)


def window(session: Session, folder: Path | None, writer, scale: int, seconds: float) -> None:
    import pygame

    from server.pacing import FramePacer

    pygame.init()
    screen = pygame.display.set_mode((session.width * scale, session.height * scale))
    pygame.display.set_caption("sana-wm remote viewer")
    pacer = FramePacer(fps=16.0)
    held: set[str] = set()
    sent: set[str] | None = None
    t0 = time.monotonic()
    running = True
    while running and not (seconds and time.monotonic() - t0 > seconds):
        mouse = [0.0, 0.0]
        for e in pygame.event.get():
            if e.type == pygame.QUIT or (e.type == pygame.KEYDOWN and e.key == pygame.K_ESCAPE):
                running = False
            elif e.type in (pygame.KEYDOWN, pygame.KEYUP):
                key = WINDOW_KEYS.get(pygame.key.name(e.key))
                if key is not None:
                    (held.add if e.type == pygame.KEYDOWN else held.discard)(key)
            elif e.type == pygame.MOUSEMOTION and e.buttons[0]:
                mouse[0] += e.rel[0]
                mouse[1] += e.rel[1]
        if held != sent or mouse != [0.0, 0.0]:
            session.control(keys=held, mouse=tuple(mouse), t=(time.monotonic() - t0) * 1e3, wait=False)
            sent = set(held)
        try:
            out = session.next_chunk(timeout=0.005)
        except TimeoutError:
            out = None
        if out is not None:
            print(describe(out), flush=True)
            pacer.push(out.frames, {"chunk": out.chunk})
            save(out, folder, writer)
        shown = pacer.tick(time.monotonic())
        if shown is not None:
            surface = pygame.surfarray.make_surface(np.ascontiguousarray(shown.pixels.swapaxes(0, 1)))
            screen.blit(pygame.transform.scale(surface, screen.get_size()), (0, 0))
            pygame.display.flip()
        time.sleep(0.002)
    pygame.quit()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_world_arguments(p)
    p.add_argument("--encoding", default="jpeg", choices=["raw", "jpeg", "h264"])
    p.add_argument("--chunks", type=int, default=4, help="headless: chunks to watch")
    p.add_argument("--save", type=Path, help="save the last frame of every chunk as PNG here")
    p.add_argument("--mp4", type=Path, help="also write every frame to this H.264 mp4")
    p.add_argument("--window", action="store_true", help="show and steer in a pygame window")
    p.add_argument("--scale", type=int, default=4, help="window pixels per frame pixel")
    p.add_argument("--seconds", type=float, default=0.0, help="window: close after this long (0: on Esc)")
    args = p.parse_args(argv)

    writer = None
    with connect(args, "remote_viewer") as (client, image):
        try:
            session = client.start(image, args.prompt, seed=args.seed, mode="live", encoding=args.encoding)
            if args.mp4 is not None:
                from server.export import VideoWriter

                writer = VideoWriter(args.mp4, fps=client.welcome["world"]["fps"])
            if args.window:
                window(session, args.save, writer, args.scale, args.seconds)
            else:
                headless(session, args.chunks, args.save, writer)
            session.close()
        finally:
            if writer is not None:
                writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
