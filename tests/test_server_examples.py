"""The server examples run end to end against an in-process demo server."""

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_agent_explore_keeps_the_fork_that_changed_most(tmp_path, capsys):
    agent = load("agent_explore")
    assert agent.main(["--demo", "--rounds", "2", "--out", str(tmp_path)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("round")]
    assert len(lines) == 2 and len(list(tmp_path.glob("round*.png"))) == 2


@pytest.mark.parametrize("mode", ["headless", "window"])
def test_remote_viewer(tmp_path, capsys, mode):
    viewer = load("remote_viewer")
    args = ["--demo", "--save", str(tmp_path), "--encoding", "h264", "--mp4", str(tmp_path / "out.mp4")]
    args += ["--chunks", "3"] if mode == "headless" else ["--window", "--seconds", "2"]
    assert viewer.main(args) == 0
    chunks = [line for line in capsys.readouterr().out.splitlines() if line.startswith("chunk")]
    assert chunks and len(list(tmp_path.glob("chunk*.png"))) == len(chunks)
    import av

    with av.open(str(tmp_path / "out.mp4")) as video:
        assert sum(1 for _ in video.decode(video=0)) == 24 * len(chunks)
    if mode == "headless":
        assert "control event 1 (new)" in "\n".join(chunks)
