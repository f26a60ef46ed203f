"""Frame pacing (FramePacer) on a simulated clock, scripted-event parsing, and the explorer's key handling."""

import numpy as np
import pytest

from server.pacing import FramePacer
from server.viewer import parse_events

FPS = 16.0
P = 1.0 / FPS


def _frames(n, start=0):
    f = np.zeros((n, 4, 4, 3), np.uint8)
    f[:, 0, 0, 0] = np.arange(start, start + n) % 256
    return f


def _run(pacer, arrivals, until, dt=0.001):
    """Tick ``pacer`` every ``dt`` s; ``arrivals`` = [(t, frames)]. Returns [(t_shown, frame_id)]."""
    shown, arrivals, t = [], sorted(arrivals, key=lambda a: a[0]), 0.0
    pacer.chunk_started()
    while t < until:
        while arrivals and arrivals[0][0] <= t:
            pacer.push(arrivals.pop(0)[1])
            if not arrivals:
                pacer.chunk_done(0.5)
        f = pacer.tick(t)
        if f is not None:
            shown.append((t, int(f.pixels[0, 0, 0])))
        t += dt
    return shown


def test_bursts_of_8_are_shown_evenly():
    pacer = FramePacer(fps=FPS, prebuffer=4)
    arrivals = [(0.1 + 0.5 * i, _frames(8, 8 * i)) for i in range(6)]  # real-time source, bursts of 8
    shown = _run(pacer, arrivals, until=3.5)
    assert [s[1] for s in shown] == list(range(48))
    gaps = np.diff([s[0] for s in shown])
    assert gaps.min() >= P - 2e-3 and gaps.max() <= P + 2e-3
    assert pacer.underruns == 0


def test_chunk_of_24_at_once_plays_over_1_5_s():
    pacer = FramePacer(fps=FPS)
    shown = _run(pacer, [(0.2, _frames(24))], until=2.5)
    assert len(shown) == 24
    assert shown[-1][0] - shown[0][0] == pytest.approx(23 * P, abs=2e-3)


def test_stall_does_not_burst():
    pacer = FramePacer(fps=FPS)
    pacer.push(_frames(10))
    pacer.chunk_done(1.0)
    assert pacer.tick(0.0) is not None
    assert pacer.tick(1.0) is not None  # the window stalled for a second
    assert pacer.tick(1.0 + P / 2) is None  # no catch-up burst
    assert pacer.tick(1.0 + P) is not None


def test_underrun_waits_for_prebuffer_while_generating():
    pacer = FramePacer(fps=FPS, prebuffer=4)
    pacer.chunk_started()
    pacer.push(_frames(1))
    assert pacer.tick(0.0) is None  # 1 < prebuffer and the chunk is still coming
    pacer.push(_frames(3, 1))
    assert pacer.tick(0.01) is not None
    pacer.chunk_done(1.0)
    pacer.push(_frames(1, 4))  # idle source: whatever is buffered plays


def test_requests_are_just_in_time_and_never_stack():
    """A source at 1.25x real time: requested when the buffer runs low, no underruns once warm, bounded lag."""
    pacer = FramePacer(fps=FPS, prebuffer=4, margin_s=0.25)
    gen_s, t, dt = 1.2, 0.0, 0.001
    in_flight_until, requests, max_buffer, lags, shown = None, [], 0, [], 0
    t_req = 0.0
    while t < 20.0:
        if in_flight_until is not None and t >= in_flight_until:
            pacer.push(_frames(24), {"req": t_req})
            pacer.chunk_done(gen_s)
            in_flight_until = None
        if pacer.should_request(in_flight_until is not None):
            t_req = t
            requests.append(t)
            in_flight_until = t + gen_s
            pacer.chunk_started()
            assert not pacer.should_request(True)
        max_buffer = max(max_buffer, len(pacer))
        f = pacer.tick(t)
        if f is not None:
            shown += 1
            if "req" in f.meta:
                lags.append(t - f.meta["req"])
        t += dt
    warm = pacer.underruns
    assert len(requests) >= 10
    assert warm <= 1  # only the start-up gap before the first chunk
    # the buffer never holds much more than one chunk plus what covers one chunk time
    assert max_buffer <= 24 + int((gen_s + 0.25) * FPS) + 1
    # input -> first frame of its chunk: about one chunk time plus the buffer ahead of it, not growing
    assert max(lags[3:]) <= gen_s + (gen_s + 0.25) + 2 * P
    assert max(lags[3:]) - min(lags[3:]) < 0.2


def test_slow_source_requests_back_to_back():
    pacer = FramePacer(fps=FPS)
    pacer.push(_frames(24))
    pacer.chunk_done(5.0)  # 0.3x real time: always low
    assert pacer.should_request(False)
    assert not pacer.should_request(True)
    pacer.set_paused(True)
    assert not pacer.should_request(False)


def test_pacer_rejects_bad_frames():
    with pytest.raises(ValueError, match="uint8"):
        FramePacer().push(np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="fps"):
        FramePacer(fps=0)


def test_parse_events():
    evs = parse_events("0.5:keyup:w, 0:keydown:w\n1:mouse:30:-5  # look\n2:keydown:left shift,3:quit,2.5:press:f5")
    assert [(e.t, e.kind, e.key) for e in evs] == [
        (0.0, "keydown", "w"),
        (0.5, "keyup", "w"),
        (1.0, "mouse", ""),
        (2.0, "keydown", "left shift"),
        (2.5, "press", "f5"),
        (3.0, "quit", ""),
    ]
    assert (evs[2].dx, evs[2].dy) == (30.0, -5.0)
    for bad in ("x:keydown:w", "1:keydown:nosuchkey", "1:jump:w", "1:mouse:a:b"):
        with pytest.raises(ValueError, match="--events"):
            parse_events(bad)
