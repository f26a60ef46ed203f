"""Streaming benchmark from a source checkout: the same code and options as ``sana-wm bench`` (server/bench.py).

    python bench/bench_streaming.py --json bench.json --png bench.png          # full size, CUDA, bf16
    python bench/bench_streaming.py --demo --device cpu --chunks 3            # tiny model on the CPU
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
