"""Frame payload codecs of the websocket protocol: raw RGB, JPEG (Pillow), H.264 (PyAV / libx264).

An encoder turns uint8 frames (N,H,W,3) into ``(payload, sizes)``: the bytes of one ``frames`` message and,
for JPEG and H.264, the byte length of each frame's part of the payload (``None`` for raw, where every frame is
H*W*3 bytes). The H.264 encoder is a stream: one per session, frames in order, each frame one Annex-B access
unit (zero latency: no B-frames, no lookahead; SPS/PPS repeated in every keyframe). Decoders invert them.
"""

from __future__ import annotations

import io
from fractions import Fraction

import numpy as np

from server.protocol import ENCODINGS, H264_PIX_FMTS

FPS = 16


def _check_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (height, width, 3):
        raise ValueError(f"frames: expected (N,{height},{width},3) uint8, got {frames.dtype} {frames.shape}")
    return np.ascontiguousarray(frames)


class RawEncoder:
    """Frames as their raw bytes, row-major (N,H,W,3) RGB24."""

    encoding = "raw"

    def __init__(self, height: int, width: int):
        self.height, self.width = height, width

    def encode(self, frames: np.ndarray) -> tuple[bytes, list[int] | None]:
        return _check_frames(frames, self.height, self.width).tobytes(), None


class JpegEncoder:
    """Each frame a baseline JPEG (Pillow, 4:4:4 chroma, ``quality`` 1..100)."""

    encoding = "jpeg"

    def __init__(self, height: int, width: int, quality: int = 95):
        self.height, self.width, self.quality = height, width, quality

    def encode(self, frames: np.ndarray) -> tuple[bytes, list[int]]:
        from PIL import Image

        parts = []
        for f in _check_frames(frames, self.height, self.width):
            buf = io.BytesIO()
            Image.fromarray(f).save(buf, format="JPEG", quality=self.quality, subsampling=0)
            parts.append(buf.getvalue())
        return b"".join(parts), [len(p) for p in parts]


class H264Encoder:
    """One H.264 stream (libx264, constant rate factor ``crf``): one access unit per frame.

    ``pix_fmt``: "yuv420p" (High profile, plays everywhere) or "yuv444p" (High 4:4:4, full-resolution colour:
    needed for noise-like content such as the random demo world, where 4:2:0 caps fidelity near 17 dB PSNR).
    """

    encoding = "h264"

    def __init__(self, height: int, width: int, crf: int = 18, pix_fmt: str = "yuv420p"):
        import av

        if pix_fmt not in H264_PIX_FMTS:
            raise ValueError(f"pix_fmt must be one of {list(H264_PIX_FMTS)}, got {pix_fmt!r}")
        if pix_fmt == "yuv420p" and (height % 2 or width % 2):
            raise ValueError(f"H.264 yuv420p needs an even frame size, got {width}x{height}")
        self.height, self.width = height, width
        ctx = av.CodecContext.create("libx264", "w")
        ctx.width, ctx.height, ctx.pix_fmt = width, height, pix_fmt
        ctx.time_base = Fraction(1, FPS)
        ctx.framerate = Fraction(FPS, 1)
        ctx.options = {"crf": str(crf), "preset": "veryfast", "tune": "zerolatency", "threads": "0"}
        self._ctx = ctx
        self._pts = 0

    def encode(self, frames: np.ndarray) -> tuple[bytes, list[int]]:
        import av

        parts = []
        for f in _check_frames(frames, self.height, self.width):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            frame.pts = self._pts
            self._pts += 1
            packets = self._ctx.encode(frame)
            if len(packets) != 1:
                raise RuntimeError(f"libx264 returned {len(packets)} packets for one frame; expected exactly 1 "
                                   "(zero-latency settings not in effect)")
            parts.append(bytes(packets[0]))
        return b"".join(parts), [len(p) for p in parts]


def make_encoder(encoding: str, height: int, width: int, *, jpeg_quality: int = 95, h264_crf: int = 18,
                 h264_pix_fmt: str = "yuv420p"):
    """An encoder for ``encoding`` ("raw" | "jpeg" | "h264") at a fixed frame size."""
    if encoding == "raw":
        return RawEncoder(height, width)
    if encoding == "jpeg":
        return JpegEncoder(height, width, jpeg_quality)
    if encoding == "h264":
        return H264Encoder(height, width, h264_crf, h264_pix_fmt)
    raise ValueError(f"encoding must be one of {list(ENCODINGS)}, got {encoding!r}")


def _split(payload: bytes, sizes: list[int] | None, count: int) -> list[bytes]:
    if sizes is None or len(sizes) != count or sum(sizes) != len(payload) or min(sizes, default=1) <= 0:
        raise ValueError(f"frames message: 'sizes' must list {count} positive byte lengths summing to the payload's "
                         f"{len(payload)} bytes, got {sizes!r:.200}")
    out, pos = [], 0
    for n in sizes:
        out.append(payload[pos:pos + n])
        pos += n
    return out


class FrameDecoder:
    """Decodes the payloads of one stream of ``frames`` messages (one per session; H.264 keeps state)."""

    def __init__(self, encoding: str):
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {list(ENCODINGS)}, got {encoding!r}")
        self.encoding = encoding
        self._h264 = None

    def decode(self, payload: bytes, sizes: list[int] | None, count: int, height: int, width: int) -> np.ndarray:
        """-> (count,height,width,3) uint8."""
        if self.encoding == "raw":
            if len(payload) != count * height * width * 3:
                raise ValueError(f"raw frames message: payload has {len(payload)} bytes, expected "
                                 f"{count}x{height}x{width}x3 = {count * height * width * 3}")
            return np.frombuffer(payload, dtype=np.uint8).reshape(count, height, width, 3)
        parts = _split(payload, sizes, count)
        if self.encoding == "jpeg":
            from PIL import Image

            frames = [np.asarray(Image.open(io.BytesIO(p)).convert("RGB")) for p in parts]
        else:
            frames = self._decode_h264(parts)
        out = np.stack(frames) if frames else np.zeros((0, height, width, 3), np.uint8)
        if out.shape != (count, height, width, 3):
            raise ValueError(f"{self.encoding} frames message decoded to {out.shape}, expected "
                             f"({count},{height},{width},3)")
        return out

    def _decode_h264(self, parts: list[bytes]) -> list[np.ndarray]:
        import av

        if self._h264 is None:
            self._h264 = av.CodecContext.create("h264", "r")
            self._h264.thread_count = 1
            self._h264.options = {"flags": "low_delay"}
        frames = []
        for p in parts:
            for f in self._h264.decode(av.Packet(p)):
                frames.append(f.to_ndarray(format="rgb24"))
        return frames


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 arrays of one shape (inf when equal)."""
    if a.shape != b.shape:
        raise ValueError(f"psnr: shapes differ, {a.shape} vs {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)
