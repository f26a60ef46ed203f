"""An agent that explores a world over the websocket protocol by forking it.

Each round it forks the current session twice, tries a different action sequence in each fork, and keeps the
fork whose last frame changed most from where it stood (a crude curiosity signal). The other fork and the old
session are closed, so the world never branches by more than two.

    python examples/agent_explore.py --demo                         # starts a demo server in-process
    python examples/agent_explore.py --url ws://127.0.0.1:8765/ --image first.png --prompt "a harbour at dusk"
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from examples.common import add_world_arguments, connect  # noqa: E402
from server.client import Client, Session  # noqa: E402

CANDIDATES = ("w-24", "dw-24", "aw-24", "jw-24", "lw-24", "iw-24", "kw-24", "s-24")
"""Action strings tried in pairs (sana-wm-v2 mapping: w/s move, a/d yaw, j/l strafe, i/k pitch)."""


def change(before: np.ndarray, after: np.ndarray) -> float:
    """Mean absolute pixel change between two (H,W,3) uint8 frames."""
    return float(np.abs(after.astype(np.float32) - before.astype(np.float32)).mean())


def explore(client: Client, image, prompt: str, *, rounds: int, seed: int = 0,
            out: Path | None = None) -> list[dict]:
    """Run the agent; returns one record per round (the two tries and the one kept)."""
    session: Session = client.start(image, prompt, seed=seed, mode="lockstep", encoding="raw")
    current = session.still().frames[0]  # what the agent sees before moving
    pairs = itertools.cycle(zip(CANDIDATES[0::2], CANDIDATES[1::2]))
    log = []
    try:
        for r in range(rounds):
            tries = []
            for actions in next(pairs):
                fork = session.fork()
                last = fork.step(actions).frames[-1]
                tries.append((change(current, last), actions, fork, last))
            tries.sort(key=lambda t: t[0], reverse=True)
            (best_score, best_actions, best, last), (other_score, other_actions, other, _) = tries
            other.close()
            session.close()
            session, current = best, last
            log.append({"round": r, "kept": best_actions, "change": best_score, "rejected": other_actions,
                        "rejected_change": other_score})
            print(f"round {r}: kept {best_actions!r} (change {best_score:.1f}) over {other_actions!r} "
                  f"(change {other_score:.1f})", flush=True)
            if out is not None:
                from server.export import save_png

                save_png(out / f"round{r:03d}-{best_actions}.png", last)
    finally:
        session.close()
    return log


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_world_arguments(p)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--out", type=Path, help="save the kept last frame of each round as PNG here")
    args = p.parse_args(argv)
    with connect(args, "agent_explore") as (client, image):
        explore(client, image, args.prompt, rounds=args.rounds, seed=args.seed, out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
