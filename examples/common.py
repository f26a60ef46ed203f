"""What the server examples share: where the world comes from (``--url`` of a running ``sana-wm serve``, or
``--demo``: the tiny demo world served in this process) and the first image (``--image``, or random pixels)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from server.client import Client


def add_world_arguments(p: argparse.ArgumentParser) -> None:
    """``--url`` / ``--demo`` (one required), ``--token``, ``--image``, ``--prompt``, ``--seed``."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--url", help="a running server, e.g. ws://127.0.0.1:8765/")
    src.add_argument("--demo", action="store_true", help="serve the tiny demo world in this process")
    p.add_argument("--token", default=None)
    p.add_argument("--image", type=Path, help="first frame (PNG/JPEG); default: random pixels")
    p.add_argument("--prompt", default="a quiet harbour at dusk")
    p.add_argument("--seed", type=int, default=0)


@contextmanager
def connect(args: argparse.Namespace, client_name: str) -> Iterator[tuple[Client, Any]]:
    """A ``Client`` of the world ``args`` name (``--demo``: a server started here and stopped on exit) and the
    first image: the ``--image`` file's bytes, or random (H,W,3) uint8 pixels of the world's size."""
    server = None
    url = args.url
    if args.demo:
        from engine import World
        from server.app import ServerConfig, ServerThread

        server = ServerThread(World.demo(height=64, width=96), ServerConfig(port=0)).start()
        url = server.url
    try:
        with Client(url, token=args.token, client_name=client_name) as client:
            world = client.welcome["world"]
            print(f"connected to {url}: {world['name']} {world['width']}x{world['height']} @ {world['fps']} fps",
                  flush=True)
            image = args.image.read_bytes() if args.image else np.random.default_rng(args.seed).integers(
                0, 256, (world["height"], world["width"], 3), dtype=np.uint8)
            yield client, image
    finally:
        if server is not None:
            server.stop()
