"""sana-wm command line: --help of every command, and one-line errors (exit 2, no traceback) for bad arguments.

These checks fail before any model is built, so they are fast."""

import json
import subprocess
import sys

import pytest

from server.cli import main

COMMANDS = ("explore", "render", "image", "replay")


def _run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "command, flags",
    [
        (
            "explore",
            ["--demo", "--model", "--connect", "--record", "--script", "--events", "--max-chunks", "--frames-npz"],
        ),
        (
            "render",
            [
                "--demo",
                "--model",
                "--actions",
                "--path",
                "--preset",
                "--poses",
                "--convention",
                "--sampler",
                "--preview",
                "--image",
                "--prompt",
                "--seed",
                "--fps",
                "--output",
                "orbit",
            ],
        ),
        ("image", ["--demo", "--model", "--prompt", "--width", "--height", "--output"]),
        ("replay", ["--output", "--sampler", "--frames-npz", "--strict"]),
    ],
)
def test_help(capsys, command, flags):
    code, out, _ = _run(capsys, [command, "--help"])
    assert code == 0
    assert out.startswith(f"usage: sana-wm {command}")
    for flag in flags:
        assert flag in out, f"{command} --help does not mention {flag}"


def test_preset_names_in_help_are_current():
    from controllers.paths import PRESETS
    from server.cli import PRESET_NAMES

    assert tuple(sorted(PRESETS)) == PRESET_NAMES


def test_demo_size_is_the_engines(capsys):
    import inspect

    from engine import World
    from server.cli import DEMO_SIZE

    params = inspect.signature(World.demo).parameters
    assert DEMO_SIZE == (params["height"].default, params["width"].default)
    out = _run(capsys, ["render", "--help"])[1]
    assert f"demo default {DEMO_SIZE[0]}" in " ".join(out.split())


def test_top_level_help_lists_commands(capsys):
    code, out, _ = _run(capsys, ["--help"])
    assert code == 0
    for command in (*COMMANDS, "serve", "bench"):
        assert command in out


def _one_line_error(capsys, argv, match):
    code, _, err = _run(capsys, argv)
    assert code == 2, (argv, code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in err, err
    assert match in lines[0], lines[0]
    return lines[0]


def test_bad_arguments_give_one_line(capsys, tmp_path):
    out = str(tmp_path / "o.mp4")
    bad_path = tmp_path / "bad_path.json"
    bad_path.write_text(json.dumps({"keyframes": [1, 2]}))
    cases = [
        (
            [
                "render",
                "--model",
                str(tmp_path / "nope"),
                "--actions",
                "w-24",
                "--prompt",
                "x",
                "--image",
                str(bad_path),
                "-o",
                out,
            ],
            "model folder not found",
        ),
        (["render", "--demo", "--preset", "nosuch", "-o", out], "unknown path preset 'nosuch'"),
        (["render", "--demo", "--path", str(bad_path), "-o", out], "bad_path.json"),
        (["render", "--demo", "--path", str(tmp_path / "missing.json"), "-o", out], "path file not found"),
        (["render", "--demo", "--poses", str(tmp_path / "missing.npy"), "-o", out], "poses file not found"),
        (
            ["render", "--demo", "--actions", "w-24", "--image", str(tmp_path / "none.png"), "-o", out],
            "image not found",
        ),
        (["render", "--demo", "--actions", "w-24", "--image", str(bad_path), "-o", out], "not a readable image"),
        (["render", "--demo", "--actions", "q-24", "-o", out], "unknown keys"),
        (["render", "--demo", "--actions", "w-24", "-o", str(tmp_path / "o.avi")], ".mp4"),
        (["render", "--demo", "-o", out], "one of the arguments --actions --path --preset --poses is required"),
        (["render", "--demo", "--model", str(tmp_path), "--actions", "w-24", "-o", out], "not allowed with"),
        (["render", "--demo", "--actions", "w-24", "--width", "100", "-o", out], "multiple of 32"),
        (["render", "--demo", "--actions", "w-24", "--dtype", "int8", "-o", out], "--dtype"),
        (["image", "--demo", "-o", str(tmp_path / "a.png")], "--prompt"),
        (["image", "--demo", "--prompt", "x", "-o", str(tmp_path / "a.jpg")], ".png"),
        (["image", "--prompt", "x", "-o", str(tmp_path / "a.png")], "--demo"),
        (["replay", str(tmp_path / "none.jsonl"), "-o", out], "record file not found"),
        (["replay", str(bad_path), "-o", out], "header"),
        (["explore", "--demo", "--events", "1:jump:w"], "--events"),
        (["explore", "--demo", "--script", str(tmp_path / "none.txt")], "script file not found"),
        (["explore", "--demo", "--max-chunks", "0"], "positive"),
        (["frobnicate"], "invalid choice"),
        (["explore", "--connect", "ws://127.0.0.1:9", "--max-chunks", "1"], "cannot connect to ws://127.0.0.1:9"),
        (["explore", "--connect", "ws://127.0.0.1:9", "--demo"], "without --demo"),
    ]
    for argv, match in cases:
        _one_line_error(capsys, argv, match)


def test_model_needs_image_and_prompt(capsys, tmp_path):
    (tmp_path / "m").mkdir()
    img = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(img)
    base = ["render", "--model", str(tmp_path / "m"), "--actions", "w-24", "-o", str(tmp_path / "o.mp4")]
    _one_line_error(capsys, [*base, "--prompt", "x"], "--image is required with --model")
    _one_line_error(capsys, [*base, "--image", str(img)], "--prompt is required with --model")
    # a folder that is not a SANA-WM release: the loader's message, still one line
    _one_line_error(capsys, [*base, "--image", str(img), "--prompt", "x"], "no transformer weights")


def test_serve_dispatches_to_server_app(capsys):
    code, out, _ = _run(capsys, ["serve", "--help"])
    assert code == 0 and out.startswith("usage: sana-wm serve") and "--record" in out


def test_bench_dispatches_to_server_bench(capsys):
    code, out, _ = _run(capsys, ["bench", "--help"])
    assert code == 0 and out.startswith("usage: sana-wm bench")


def test_console_entry_subprocess(tmp_path):
    """The real entry point in a fresh interpreter: help works, a bad argument is one stderr line and exit 2."""
    ok = subprocess.run([sys.executable, "-m", "server.cli", "render", "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "--actions" in ok.stdout
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "server.cli",
            "image",
            "--demo",
            "--prompt",
            "x",
            "--width",
            "33",
            "-o",
            str(tmp_path / "o.png"),
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip() == ("sana-wm image: error: argument --width: expected a positive multiple of 32, got 33")


def test_fov_conflicts_with_pose_file_intrinsics(capsys, tmp_path):
    import controllers

    controllers.save_poses(tmp_path / "p.json", controllers.preset("pan", 25), intrinsics=[40.0, 40.0, 32.0, 32.0])
    argv = ["render", "--demo", "--poses", str(tmp_path / "p.json"), "--fov", "70", "-o", str(tmp_path / "o.mp4")]
    _one_line_error(capsys, argv, "--fov conflicts with the intrinsics")
    _one_line_error(capsys, ["explore", "--demo", "--mapping", "wasd"], "invalid choice: 'wasd'")
