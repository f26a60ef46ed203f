"""Protocol schemas, frame codecs and live-control bookkeeping of the websocket server (no network)."""

import math

import msgpack
import numpy as np
import pytest

from server.app import ControlInbox, decode_image
from server.codecs import FrameDecoder, H264Encoder, make_encoder, psnr
from server.protocol import ERROR_CODES, Limits, ProtocolError, build_schemas, frames_header, parse_request

SCHEMAS = build_schemas(Limits(max_image_bytes=1000, max_path_frames=48))


def req(msg: dict) -> dict:
    return parse_request(msgpack.packb(msg, use_bin_type=True), SCHEMAS)


def test_defaults_and_normalisation():
    r = req({"type": "start", "image": b"png", "prompt": "a harbour", "id": "a1"})
    assert (r["id"], r["seed"], r["mode"], r["encoding"], r["jpeg_quality"], r["h264_crf"]) == \
        ("a1", 0, "lockstep", "raw", 95, 18)
    assert r["intrinsics"] is None and r["fov_deg"] is None and r["mapping"] is None
    flat = req({"type": "step", "session": 1, "poses": [np.eye(4).reshape(16).tolist()] * 2})
    rows = req({"type": "step", "session": 1, "poses": [np.eye(4).tolist()] * 2})
    np.testing.assert_array_equal(flat["poses"], rows["poses"])
    assert flat["poses"].shape == (2, 4, 4) and flat["poses"].dtype == np.float64
    keys = req({"type": "step", "session": 1, "keys": [["w", "d"], [], ["shift", "w"]]})["keys"]
    assert keys == [frozenset("wd"), frozenset(), frozenset({"shift", "w"})]
    assert req({"type": "ping"})["id"] is None


@pytest.mark.parametrize("msg, code, needle", [
    ("text", "bad_frame", "text frame"),
    (b"\xc1", "bad_frame", "msgpack"),
    (b"\x01\x02", "bad_frame", "msgpack"),
    (msgpack.packb({1: 2}), "bad_frame", "map key"),
    (b"\xd4\x05\x00", "bad_frame", "extension"),
    ([1, 2], "bad_message", "map"),
    ({"id": 1}, "bad_message", "type"),
    ({"type": 5}, "bad_message", "type"),
    ({"type": "warp"}, "unknown_type", "warp"),
    ({"type": "ping", "id": 1.5}, "invalid_field", "'id'"),
    ({"type": "ping", "extra": 1}, "invalid_field", "extra"),
    ({"type": "hello"}, "invalid_field", "version"),
    ({"type": "close", "session": True}, "invalid_field", "integer"),
    ({"type": "close", "session": 0}, "invalid_field", "session"),
    ({"type": "start", "image": "/etc/passwd", "prompt": "x"}, "invalid_field", "bin"),
    ({"type": "start", "image": b"x" * 1001, "prompt": "x"}, "invalid_field", "1000"),
    ({"type": "start", "image": b"x", "prompt": "  "}, "invalid_field", "empty"),
    ({"type": "start", "image": b"x", "prompt": "x", "mode": "turbo"}, "invalid_field", "mode"),
    ({"type": "start", "image": b"x", "prompt": "x", "fov_deg": 60, "intrinsics": [1, 1, 0, 0]}, "invalid_field",
     "not both"),
    ({"type": "start", "image": b"x", "prompt": "x", "intrinsics": [0, 1, 0, 0]}, "invalid_field", "focal"),
    ({"type": "start", "image": b"x", "prompt": "x", "fov_deg": math.inf}, "invalid_field", "finite"),
    ({"type": "start", "image": b"x", "prompt": "x", "mapping": "qwerty"}, "invalid_field", "mapping"),
    ({"type": "step", "session": 1}, "invalid_field", "exactly one"),
    ({"type": "step", "session": 1, "keys": [["w"]] * 25}, "invalid_field", "1..24"),
    ({"type": "step", "session": 1, "keys": [["W"]]}, "invalid_field", "keys"),
    ({"type": "step", "session": 1, "poses": [[0.0] * 16]}, "invalid_field", "last row"),
    ({"type": "step", "session": 1, "poses": [[1.0] * 15]}, "invalid_field", "16"),
    ({"type": "control", "session": 1, "keys": ["w"], "mouse": [1]}, "invalid_field", "mouse"),
    ({"type": "control", "session": 1, "keys": "w"}, "invalid_field", "keys"),
    ({"type": "render_path", "image": b"x", "prompt": "x", "poses": [np.eye(4).tolist()] * 50}, "invalid_field",
     "2..49"),
])
def test_malformed_requests_get_typed_errors(msg, code, needle):
    data = msg if isinstance(msg, (bytes, str)) else msgpack.packb(msg, use_bin_type=True)
    with pytest.raises(ProtocolError) as err:
        parse_request(data, SCHEMAS)
    assert err.value.code == code and code in ERROR_CODES and needle in err.value.message


def test_error_carries_the_request_id():
    with pytest.raises(ProtocolError) as err:
        parse_request(msgpack.packb({"type": "close", "id": 42}), SCHEMAS)
    assert err.value.to_message() == {"type": "error", "code": "invalid_field", "id": 42,
                                      "message": "'close' needs the field 'session'"}


def test_frames_header_fields():
    poses = np.stack([np.eye(4)] * 2)
    poses[1, 0, 3] = 0.5
    msg = frames_header(session=3, chunk=1, part=0, frame_indices=np.array([25, 26]), poses=poses,
                        intrinsics=np.array([50.0, 50.0, 32.0, 32.0]), height=64, width=64, encoding="raw",
                        timings={"denoise": 0.25}, rid=7, control={"event": 2})
    assert msg["c2w"][1][3] == 0.5 and len(msg["c2w"][0]) == 16 and msg["intrinsics"] == [[50.0, 50.0, 32.0, 32.0]] * 2
    assert msg["timings_ms"] == {"denoise": 250.0} and msg["id"] == 7 and msg["count"] == 2
    assert msgpack.unpackb(msgpack.packb(msg), raw=False) == msg


def smooth_clip(n: int = 24, h: int = 64, w: int = 96) -> np.ndarray:
    """Natural-image-like frames: soft gradients drifting over time."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    frames = [np.stack([128 + 100 * np.sin((x + 2 * t) / 17), 128 + 90 * np.cos((y - t) / 13),
                        128 + 80 * np.sin((x + y + 3 * t) / 23)], axis=-1) for t in range(n)]
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("encoding, options, floor", [
    ("raw", {}, math.inf),
    ("jpeg", {"jpeg_quality": 95}, 45.0),  # measured 50.2 dB
    ("h264", {"h264_crf": 18}, 37.0),  # yuv420p, measured 39.0 dB
    ("h264", {"h264_crf": 18, "h264_pix_fmt": "yuv444p"}, 40.0),
])
def test_codec_round_trip_on_smooth_content(encoding, options, floor):
    clip = smooth_clip()
    enc, dec = make_encoder(encoding, 64, 96, **options), FrameDecoder(encoding)
    out = []
    for part in np.split(clip, 3):  # a stream of three messages, as a chunk is sent
        payload, sizes = enc.encode(part)
        assert (sizes is None) == (encoding == "raw")
        out.append(dec.decode(payload, sizes, len(part), 64, 96))
    out = np.concatenate(out)
    assert psnr(out, clip) >= floor
    if encoding == "raw":
        np.testing.assert_array_equal(out, clip)


def test_h264_payload_splits_per_frame_and_first_is_a_keyframe():
    import av

    payload, sizes = H264Encoder(64, 96).encode(smooth_clip(4))
    assert len(sizes) == 4 and sum(sizes) == len(payload)
    first = av.CodecContext.create("h264", "r").decode(av.Packet(payload[:sizes[0]]))
    assert len(first) == 1 and first[0].key_frame


def test_decoder_rejects_inconsistent_payloads():
    with pytest.raises(ValueError, match="raw frames message"):
        FrameDecoder("raw").decode(b"\x00" * 10, None, 1, 2, 2)
    with pytest.raises(ValueError, match="sizes"):
        FrameDecoder("jpeg").decode(b"\x00" * 10, [4, 4], 2, 2, 2)
    with pytest.raises(ValueError, match="encoding"):
        FrameDecoder("webp")
    with pytest.raises(ValueError, match=r"\(N,64,96,3\) uint8"):
        make_encoder("raw", 64, 96).encode(np.zeros((1, 64, 96, 3), np.float32))


def test_image_limits():
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 20, 30)).save(buf, format="PNG")
    assert decode_image(buf.getvalue(), 1200).shape == (30, 40, 3)
    with pytest.raises(ProtocolError) as err:
        decode_image(buf.getvalue(), 1199)
    assert err.value.code == "limit_exceeded" and "40x30" in err.value.message
    with pytest.raises(ProtocolError) as err:
        decode_image(buf.getvalue()[:60], 10**6)
    assert err.value.code == "bad_image"


def test_control_inbox_turns_states_into_events():
    inbox = ControlInbox()
    assert inbox.push(frozenset("w"), None, 1000.0, "a") == 1
    assert inbox.push(frozenset("wd"), [3.0, -1.0], 1100.0, None) == 2
    assert inbox.push(frozenset("d"), [0.0, 0.0], 1200.0, None) == 3
    events, receipt = inbox.drain()
    assert events == [("down", "w", 1.0), ("down", "d", 1.1), ("mouse", (3.0, -1.0), 1.1), ("up", "w", 1.2)]
    assert receipt["event"] == 3 and receipt["t"] == 1200.0
    assert inbox.drain() == ([], None)
    with pytest.raises(ValueError, match="must not decrease"):
        inbox.push(frozenset(), None, 900.0, None)
