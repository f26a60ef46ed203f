"""``sana-wm explore``: a pygame window onto a live world, in-process or from a server.

The world produces chunks of 24 frames (in parts of 8 as they are decoded) on a worker thread (or a server); a
``FramePacer`` shows them evenly at 16 fps and asks for the next chunk just in time, so held keys reach the
screen after about one buffer plus one chunk time, never after a growing queue.

Keys (physical; mapped to the camera mapping's letters):
    W/S forward/back, A/D strafe, arrows or I/K/J/L look (pitch/yaw), mouse drag look, Shift faster,
    P pause, R reset, F5 snapshot, F9 restore the last snapshot, F12 screenshot (PNG),
    F8 start/stop an mp4 capture, H hide/show the HUD, Esc quit.

Scripted input (tests, demos): events ``t:keydown:KEY``, ``t:keyup:KEY``, ``t:press:KEY`` (down + up),
``t:mouse:DX:DY`` (a drag) and ``t:quit``, with ``t`` in seconds since the window opened and ``KEY`` a pygame
key name (``w``, ``left shift``, ``f5``, ``escape``...). They are posted into pygame's event queue, so they take
the same path as real input.
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from server.export import VideoWriter, save_frames_npz, save_png
from server.pacing import FramePacer

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

CONTROL_KEYS = {  # pygame key name -> canonical control (controllers.actions.CONTROLS)
    "w": "forward",
    "s": "back",
    "a": "strafe_left",
    "d": "strafe_right",
    "left": "yaw_left",
    "right": "yaw_right",
    "up": "pitch_up",
    "down": "pitch_down",
    "j": "yaw_left",
    "l": "yaw_right",
    "i": "pitch_up",
    "k": "pitch_down",
}
SHIFT_KEYS = ("left shift", "right shift")


@dataclass
class ScriptEvent:
    """One scripted input: at ``t`` seconds, ``kind`` in keydown | keyup | mouse | quit."""

    t: float
    kind: str
    key: str = ""
    dx: float = 0.0
    dy: float = 0.0


def parse_events(spec: str, source: str = "--events") -> list[ScriptEvent]:
    """Parse ``"0:keydown:w,1.5:keyup:w,2:press:f5,2:mouse:40:0,4:quit"`` (commas or newlines; ``#`` starts a
    comment; ``press`` = down and up)."""
    import pygame

    pygame.display.init()  # key names need the video subsystem (no window is opened)
    events = []
    items = [s.split("#", 1)[0].strip() for line in spec.splitlines() for s in line.split(",")]
    for item in filter(None, items):
        parts = [p.strip() for p in item.split(":")]
        try:
            t = float(parts[0])
        except ValueError:
            raise ValueError(f"{source}: event {item!r} does not start with a time in seconds") from None
        kind = parts[1].lower() if len(parts) > 1 else ""
        if kind in ("keydown", "keyup", "press") and len(parts) == 3:
            try:
                pygame.key.key_code(parts[2])
            except ValueError:
                raise ValueError(f"{source}: event {item!r} names an unknown key {parts[2]!r}") from None
            events.append(ScriptEvent(t, kind, key=parts[2].lower()))
        elif kind == "mouse" and len(parts) == 4:
            try:
                events.append(ScriptEvent(t, kind, dx=float(parts[2]), dy=float(parts[3])))
            except ValueError:
                raise ValueError(f"{source}: event {item!r}: mouse needs numbers 't:mouse:DX:DY'") from None
        elif kind == "quit" and len(parts) == 2:
            events.append(ScriptEvent(t, kind))
        else:
            raise ValueError(
                f"{source}: event {item!r} is not 't:keydown:KEY', 't:keyup:KEY', 't:press:KEY', "
                f"'t:mouse:DX:DY' or 't:quit'"
            )
    return sorted(events, key=lambda e: e.t)


def load_script(path: str | Path) -> list[ScriptEvent]:
    """A script file: the ``parse_events`` syntax, one or more events per line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"script file not found: {path}")
    return parse_events(path.read_text(), source=str(path))


class WorldSource:
    """Drives a session on a worker thread; commands in, frames out (both through queues).

    Commands (``submit``): ``("step", poses (24,4,4), meta)``, ``("snapshot", name)``, ``("restore", name)``,
    ``("reset",)``. Outputs (``poll``): ``("part", frames (n,H,W,3), meta, is_first_part)`` as frames arrive,
    ``("done", seconds, meta)`` per chunk, ``("error", exception)``. ``meta["epoch"]`` lets the viewer drop frames
    of a branch it left. Every chunk is logged to ``recorder`` (if any) and its frames kept in ``frames`` (if
    ``keep``), in the order they were generated. Subclasses say how a chunk is generated (``_generate``) and how
    snapshots, restores and resets are done.
    """

    frames_per_chunk: int
    first_frame: np.ndarray

    def __init__(self, recorder=None, keep: bool = False):
        self.recorder = recorder
        self.frames: list[np.ndarray] | None = [] if keep else None
        self._cmds: queue.Queue = queue.Queue()
        self._out: queue.Queue = queue.Queue()
        self._busy = 0
        self._next_chunk = 0
        self._thread = threading.Thread(target=self._run, name="sana-wm-world", daemon=True)
        self._thread.start()

    @property
    def in_flight(self) -> bool:
        """A step was submitted and its chunk is not finished."""
        return self._busy > 0

    def submit(self, *cmd) -> None:
        if cmd[0] == "step":
            self._busy += 1
        self._cmds.put(cmd)

    def poll(self) -> list[tuple]:
        out = []
        while True:
            try:
                item = self._out.get_nowait()
            except queue.Empty:
                return out
            self._busy -= item[0] == "done"
            out.append(item)

    def gpu_memory(self) -> str | None:
        """GPU memory in use, for the HUD (None: not known / not on a GPU)."""
        return None

    def close(self) -> None:
        self._cmds.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (cmd := self._cmds.get()) is not None:
            try:
                self._do(cmd)
            except Exception as e:  # handed to the viewer thread, which re-raises it
                self._out.put(("error", e))
                return

    def _do(self, cmd: tuple) -> None:
        kind = cmd[0]
        if kind == "step":
            poses, meta = cmd[1], cmd[2]
            t0 = time.perf_counter()
            parts, part_poses, indices = [], [], []
            for index, frames, frame_poses in self._generate(poses):
                self._out.put(("part", frames, meta, not parts))
                parts.append(frames)
                part_poses.append(frame_poses)
                indices.append(index)
            seconds = time.perf_counter() - t0
            frames = np.concatenate(parts)
            index = indices[0]
            self._next_chunk = index + 1
            if self.recorder is not None:
                self.recorder.step(
                    index, poses=poses, frames=frames if self.exact else None, frame_poses=np.concatenate(part_poses)
                )
            if self.frames is not None:
                self.frames.append(frames)
            self._out.put(("done", seconds, dict(meta, chunk=index)))
        elif kind == "snapshot":
            self._snapshot(cmd[1])
            if self.recorder is not None:
                self.recorder.snapshot(cmd[1], self._next_chunk)
        elif kind == "restore":
            if self.recorder is not None:
                self.recorder.restore(cmd[1], self._next_chunk)
            self._next_chunk = self._restore(cmd[1])
        else:  # reset
            if self.recorder is not None:
                self.recorder.reset(self._next_chunk)
            self._reset()
            self._next_chunk = 0

    exact = True
    """Frames arrive exactly as generated (their digests go into the record)."""

    def _generate(self, poses: np.ndarray):
        """Yield ``(chunk index, frames (n,H,W,3), poses (n,4,4))`` for one chunk, part by part."""
        raise NotImplementedError

    def _snapshot(self, name: str) -> None:
        raise NotImplementedError

    def _restore(self, name: str) -> int:
        """Restore snapshot ``name``; returns the index of the next chunk."""
        raise NotImplementedError

    def _reset(self) -> None:
        raise NotImplementedError


class LocalSource(WorldSource):
    """A ``Session`` of an in-process ``World``, streamed per latent frame (8 frames at a time)."""

    def __init__(
        self, world, image, *, prompt: str, seed: int, fov_deg: float | None = None, recorder=None, keep: bool = False
    ):
        self.world = world
        self._start = {"image": image, "prompt": prompt, "seed": seed, "fov_deg": fov_deg}
        self.session = world.start(**self._start)
        self.frames_per_chunk = self.session.frames_per_chunk
        self.first_frame = self.session.first_frame
        self._snaps: dict[str, Any] = {}
        super().__init__(recorder, keep)

    def gpu_memory(self) -> str | None:
        import torch

        dev = torch.device(self.world.device)
        if dev.type != "cuda":
            return None
        return f"{torch.cuda.memory_allocated(dev) / 2**30:.1f}/{torch.cuda.memory_reserved(dev) / 2**30:.1f} GiB"

    def close(self) -> None:
        super().close()
        self.session.close()

    def _generate(self, poses):
        for part in self.session.stream(poses=poses):
            yield part.index, part.frames, part.poses

    def _snapshot(self, name):
        self._snaps[name] = self.session.snapshot()

    def _restore(self, name):
        self.session.restore(self._snaps[name])
        return self._snaps[name].chunk_index

    def _reset(self):
        self.session.close()
        self._snaps.clear()
        self.session = self.world.start(**self._start)


class RemoteSource(WorldSource):
    """A lockstep session on a ``sana-wm serve`` server (``server.client.Client``), one chunk per request; the
    camera is computed here and sent as poses, exactly as in-process."""

    def __init__(
        self,
        url: str,
        image,
        *,
        prompt: str,
        seed: int,
        fov_deg: float | None = None,
        encoding: str = "raw",
        recorder_factory=None,
        keep: bool = False,
    ):
        from server.client import Client

        try:
            self.client = Client(url, client_name="sana-wm explore")
        except OSError as e:
            raise ConnectionError(f"cannot connect to {url}: {e}") from None
        self._start = {
            "image": image,
            "prompt": prompt,
            "seed": seed,
            "fov_deg": fov_deg,
            "mode": "lockstep",
            "encoding": encoding,
        }
        try:
            self.session = self.client.start(**self._start)
        except BaseException:
            self.client.close()
            raise
        self.exact = encoding == "raw"
        self.frames_per_chunk = self.session.frames_per_chunk
        self.first_frame = _prepared(image, self.session.height, self.session.width, fov_deg)
        self._snaps: dict[str, int] = {}
        world = self.client.welcome.get("world", {})
        recorder = (
            None
            if recorder_factory is None
            else recorder_factory(
                model={
                    "kind": "server",
                    "url": url,
                    "name": world.get("name"),
                    "variant": world.get("variant"),
                    "height": self.session.height,
                    "width": self.session.width,
                },
                height=self.session.height,
                width=self.session.width,
            )
        )
        super().__init__(recorder, keep)

    def close(self) -> None:
        super().close()
        self.client.close()

    def _generate(self, poses):
        out = self.session.step(poses=poses)
        yield out.chunk, out.frames, out.c2w

    def _snapshot(self, name):
        self._snaps[name] = self.session.snapshot()

    def _restore(self, name):
        return int(self.session.restore(self._snaps[name])["chunk"])

    def _reset(self):
        self.session.close()
        self._snaps.clear()
        self.session = self.client.start(**self._start)


def _prepared(image, height: int, width: int, fov_deg: float | None) -> np.ndarray:
    """The first image as the world shows it (resized + centre-cropped), (H,W,3) uint8 (``Session.first_frame``)."""
    from engine.session import to_uint8
    from sana_wm.image import prepare_image

    pixels = prepare_image(image, size=(height, width), fov_deg=fov_deg)[0]
    return to_uint8(pixels[None, :, None])[0]


class Explorer:
    """The window and its loop: input -> controller -> source -> pacer -> screen (+ HUD, captures, records)."""

    def __init__(
        self,
        source,
        *,
        mapping: str = "sana-wm-v2",
        fps: float = 16.0,
        scale: float | None = None,
        output_dir: Path = Path("."),
        script: list[ScriptEvent] | None = None,
        max_chunks: int | None = None,
        height: int,
        width: int,
    ):
        import pygame

        import controllers
        from controllers.actions import get_mapping

        self.pg = pygame
        self.source = source
        self.fps = fps
        letters = {control: letter for letter, control in get_mapping(mapping).keys.items()}
        self.key_letters = {name: letters[c] for name, c in CONTROL_KEYS.items()}
        self.controller = controllers.LiveController(mapping=mapping)  # camera motion at the model's 16 fps
        self.pacer = FramePacer(fps=fps)
        self.output_dir = Path(output_dir)
        self.script = list(script or [])
        self.max_chunks = max_chunks
        self.height, self.width = height, width
        self.scale = scale if scale else max(1.0, min(1280 / width, 720 / height))
        self.size = (round(width * self.scale), round(height * self.scale))
        self.requested = self.finished = 0
        self.epoch = 0
        self.snaps: list[tuple[str, dict]] = []
        self.pending_input_t: float | None = None
        self.latencies: list[float] = []
        self.last_chunk_s: float | None = None
        self.capture: VideoWriter | None = None
        self.show_hud = True
        self.frame: np.ndarray = source.first_frame  # frame 0 (the first image) until the world's frames arrive
        self.held: set[str] = set()  # controller keys physically held now
        self.running = True
        self.t0 = 0.0

    # ---------------------------------------------------------------------------------------------- input
    def now(self) -> float:
        return time.perf_counter() - self.t0

    def _input(self, t: float) -> None:
        if self.pending_input_t is None:
            self.pending_input_t = t

    def on_key(self, key: int, down: bool, t: float) -> None:
        pg = self.pg
        name = pg.key.name(key).lower()
        if name in self.key_letters or name in SHIFT_KEYS:
            letter = "shift" if name in SHIFT_KEYS else self.key_letters[name]
            (self.held.add if down else self.held.discard)(letter)
            (self.controller.key_down if down else self.controller.key_up)(letter, t)
            self._input(t)
            return
        if not down:
            return
        if key == pg.K_ESCAPE:
            self.running = False
        elif key == pg.K_p:
            self.pacer.set_paused(not self.pacer.paused)
        elif key == pg.K_r:
            self.controller.reset()
            self._new_branch(t)
            self.source.submit("reset")
        elif key == pg.K_F5:
            name = f"s{len(self.snaps)}"
            self.snaps.append((name, self.controller.state_dict()))
            self.source.submit("snapshot", name)
        elif key == pg.K_F9 and self.snaps:
            name, state = self.snaps[-1]
            self.controller.load_state_dict(state)
            self._new_branch(t)
            self.source.submit("restore", name)
        elif key == pg.K_F12:
            path = save_png(
                self.output_dir / f"sana-wm-{time.strftime('%Y%m%d-%H%M%S')}-{self.pacer.shown}.png", self.frame
            )
            print(f"screenshot: {path}", file=sys.stderr)
        elif key == pg.K_F8:
            self.toggle_capture()
        elif key == pg.K_h:
            self.show_hud = not self.show_hud

    def _new_branch(self, t: float) -> None:
        """After reset / restore: drop buffered frames of the old branch and any still in flight, and bring the
        controller's held keys in line with the keys held now (the restored state may remember others)."""
        self.epoch += 1
        self.pacer.clear()
        self.pending_input_t = t
        for letter in {*self.key_letters.values(), "shift"}:
            (self.controller.key_down if letter in self.held else self.controller.key_up)(letter, t)

    def toggle_capture(self) -> None:
        if self.capture is None:
            self.capture = VideoWriter(self.output_dir / f"sana-wm-{time.strftime('%Y%m%d-%H%M%S')}.mp4", fps=self.fps)
            print(f"capturing to {self.capture.path}", file=sys.stderr)
        else:
            self.capture.close()
            print(f"saved {self.capture.path} ({self.capture.frame_count} frames)", file=sys.stderr)
            self.capture = None

    def handle_events(self) -> None:
        pg = self.pg
        t = self.now()
        while self.script and self.script[0].t <= t:
            ev = self.script.pop(0)
            if ev.kind == "quit":
                pg.event.post(pg.event.Event(pg.QUIT))
            elif ev.kind == "mouse":
                pg.event.post(pg.event.Event(pg.MOUSEMOTION, pos=(0, 0), rel=(ev.dx, ev.dy), buttons=(1, 0, 0)))
            else:
                code = pg.key.key_code(ev.key)
                for etype in {"keydown": [pg.KEYDOWN], "keyup": [pg.KEYUP], "press": [pg.KEYDOWN, pg.KEYUP]}[ev.kind]:
                    pg.event.post(pg.event.Event(etype, key=code, mod=0))
        for e in pg.event.get():
            if e.type == pg.QUIT:
                self.running = False
            elif e.type in (pg.KEYDOWN, pg.KEYUP):
                self.on_key(e.key, e.type == pg.KEYDOWN, t)
            elif e.type == pg.MOUSEMOTION and e.buttons[0]:
                self.controller.mouse(float(e.rel[0]), float(e.rel[1]), t)
                self._input(t)

    # ---------------------------------------------------------------------------------------------- world
    def pump_source(self) -> None:
        for item in self.source.poll():
            if item[0] == "error":
                raise item[1]
            meta = item[2]
            if meta["epoch"] != self.epoch:
                if item[0] == "done":
                    self.finished += 1
                continue
            if item[0] == "part":
                self.pacer.push(item[1], meta if item[3] else None)
                self.pacer.chunk_started()
            else:
                self.finished += 1
                self.last_chunk_s = item[1]
                self.pacer.chunk_done(item[1])
        more = self.max_chunks is None or self.requested < self.max_chunks
        if more and self.running and self.pacer.should_request(self.source.in_flight):
            n = self.source.frames_per_chunk
            poses = self.controller.poses_for_next(n)
            meta = {"epoch": self.epoch, "t_input": self.pending_input_t}
            self.pending_input_t = None
            self.source.submit("step", poses, meta)
            self.requested += 1
            self.pacer.chunk_started()

    # ---------------------------------------------------------------------------------------------- screen
    def hud_lines(self, now: float) -> list[str]:
        p = self.pacer
        chunk = self.last_chunk_s
        xrt = (self.source.frames_per_chunk / self.fps) / chunk if chunk else None
        lat = f"{self.latencies[-1] * 1000:.0f} ms" if self.latencies else "-"
        lines = [
            f"{p.displayed_fps(now):4.1f} fps  buffer {len(p):2d}  underruns {p.underruns}",
            f"gen {xrt:.2f}x real time  chunk {chunk:.2f} s" if chunk else "gen -  chunk -",
            f"key->frame {lat}  GPU {self.source.gpu_memory() or 'n/a'}",
        ]
        flags = [s for s, on in (("PAUSED", p.paused), ("REC mp4", self.capture is not None)) if on]
        if flags:
            lines.append("  ".join(flags))
        return lines

    def draw(self, screen, font, now: float) -> None:
        pg = self.pg
        surf = pg.surfarray.make_surface(self.frame.swapaxes(0, 1))
        screen.blit(pg.transform.scale(surf, self.size), (0, 0))
        if self.show_hud:
            for i, line in enumerate(self.hud_lines(now)):
                screen.blit(font.render(line, True, (255, 255, 0), (0, 0, 0)), (6, 6 + 18 * i))
        pg.display.flip()

    def show(self, frame, now: float) -> None:
        self.frame = frame.pixels
        t_input = frame.meta.get("t_input")
        if t_input is not None:
            self.latencies.append(now - t_input)
        if self.capture is not None:
            self.capture.write(frame.pixels)

    def run(self) -> int:
        pg = self.pg
        pg.display.init()  # video and fonts only: no audio device is opened
        pg.font.init()
        try:
            screen = pg.display.set_mode(self.size)
            pg.display.set_caption("sana-wm explore")
            font = pg.font.Font(None, 20)
            self.t0 = time.perf_counter()
            self.draw(screen, font, 0.0)
            while self.running:
                self.handle_events()
                self.pump_source()
                now = self.now()
                frame = self.pacer.tick(now)
                if frame is not None:
                    self.show(frame, now)
                    self.draw(screen, font, now)
                if (
                    self.max_chunks is not None
                    and self.finished >= self.max_chunks
                    and not self.source.in_flight
                    and not len(self.pacer)
                ):
                    break
                time.sleep(self.pacer.next_wait(self.now()))
            if self.capture is not None:
                self.toggle_capture()
        finally:
            pg.quit()
        print(self.summary(), file=sys.stderr)
        return 0

    def summary(self) -> str:
        """One line for the end of a session (the HUD's numbers, for headless runs)."""
        lat = f"{1000 * float(np.median(self.latencies)):.0f} ms median" if self.latencies else "n/a"
        chunk = f"{self.last_chunk_s:.2f} s" if self.last_chunk_s else "n/a"
        return (
            f"explore: {self.finished} chunks, {self.pacer.shown} frames shown, {self.pacer.underruns} underruns, "
            f"last chunk {chunk}, key->frame {lat}"
        )


def explore(args: argparse.Namespace) -> int:
    """``sana-wm explore`` (arguments from ``server.cli``)."""
    from server import cli

    script = []
    if args.script is not None:
        script += load_script(args.script)
    if args.events:
        script += parse_events(args.events)
    script.sort(key=lambda e: e.t)
    if args.fps <= 0:
        raise cli.UsageError(f"--fps must be > 0, got {args.fps}")
    if args.connect and (args.demo or args.model is not None):
        raise cli.UsageError("--connect streams from a server: give it without --demo / --model")
    if not args.connect and not args.demo and args.model is None:
        raise cli.UsageError("give --demo, --model DIR or --connect URL")
    image = cli.read_image(args)
    prompt = cli.prompt_of(args)
    keep = args.frames_npz is not None

    def recorder(model, height, width, device="unknown", dtype="unknown"):
        if args.record is None:
            return None
        from server.record import Recorder

        return Recorder(
            args.record,
            image=image,
            prompt=prompt,
            seed=args.seed,
            model=model,
            height=height,
            width=width,
            fov_deg=args.fov,
            device=device,
            dtype=dtype,
            mapping=args.mapping,
            meta={"client": "sana-wm explore", "connect": args.connect},
        )

    remote_errors: tuple[type[Exception], ...] = ()
    try:
        if args.connect:
            from server.client import ServerError

            remote_errors = (ServerError,)
            if image is None:
                image = cli.make_test_card(704, 1280)
            source = RemoteSource(
                args.connect,
                image,
                prompt=prompt,
                seed=args.seed,
                fov_deg=args.fov,
                encoding=args.encoding,
                recorder_factory=recorder,
                keep=keep,
            )
        else:
            model, world = cli.world_from_args(args)
            if image is None:
                image = cli.make_test_card(world.height, world.width)
            device, dtype = str(world.device), str(world.dtype)
            source = LocalSource(
                world,
                image,
                prompt=prompt,
                seed=args.seed,
                fov_deg=args.fov,
                keep=keep,
                recorder=recorder(model, world.height, world.width, device, dtype),
            )
        height, width = source.first_frame.shape[:2]
        explorer = Explorer(
            source,
            mapping=args.mapping,
            fps=args.fps,
            scale=args.scale,
            output_dir=args.output_dir,
            script=script,
            max_chunks=args.max_chunks,
            height=height,
            width=width,
        )
        try:
            status = explorer.run()
        finally:
            source.close()
            if source.recorder is not None:
                source.recorder.close()
    except remote_errors as e:
        raise cli.UsageError(f"server {args.connect}: {e}") from None
    if args.frames_npz is not None and source.frames:
        save_frames_npz(args.frames_npz, np.concatenate(source.frames))
    return status
