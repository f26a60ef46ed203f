"""First-frame image preparation: exact size, diffusers parity, intrinsics that follow the crop, clear errors."""

import io
import math
import re

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.pipelines.sana_wm.image_processor import SanaWMImageProcessor
from hypothesis import given, settings
from hypothesis import strategies as st

from sana_wm.image import DEFAULT_FOV_DEG, default_intrinsics, load_image, prepare_image


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def encode(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    PIL.Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("src", [(480, 640), (1000, 300), (704, 1280), (50, 70), (720, 1280)])
def test_matches_diffusers_sana_wm_image_processor(src):
    h, w = src
    img = PIL.Image.fromarray(random_image(h, w))
    k = np.array([0.9 * w, 0.8 * w, w / 2 + 3, h / 2 - 2])
    pixels, k_out = prepare_image(img, (704, 1280), k)
    ref_pixels, ref_k = SanaWMImageProcessor().preprocess_with_intrinsics(img, k[None].astype(np.float32), 704, 1280)
    assert pixels.shape == (3, 704, 1280) and pixels.dtype == torch.float32
    assert torch.equal(pixels, ref_pixels[0])
    np.testing.assert_allclose(k_out, ref_k[0], rtol=1e-6, atol=1e-3)  # diffusers computes in float32


@settings(max_examples=25, deadline=None)
@given(
    src_h=st.integers(1, 300), src_w=st.integers(1, 300), dst_h=st.integers(1, 200), dst_w=st.integers(1, 200)
)
def test_any_size_and_aspect_gives_exact_target(src_h, src_w, dst_h, dst_w):
    pixels, k = prepare_image(random_image(src_h, src_w), size=(dst_h, dst_w))
    assert pixels.shape == (3, dst_h, dst_w)
    assert pixels.min() >= -1 and pixels.max() <= 1
    assert k.shape == (4,) and np.all(np.isfinite(k))


def test_intrinsics_follow_resize_and_crop():
    # A bright marker seen through the source camera must lie on the same ray through the output camera.
    h, w, (mv, mu) = 600, 500, (150, 380)
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[mv - 3 : mv + 4, mu - 3 : mu + 4] = 255
    k_src = np.array([420.0, 410.0, 260.0, 290.0])
    pixels, k = prepare_image(arr, size=(200, 320), intrinsics=k_src)
    weight = (pixels.mean(0) + 1).clamp(min=0).numpy()
    ys, xs = np.mgrid[: weight.shape[0], : weight.shape[1]]
    v_out, u_out = (ys * weight).sum() / weight.sum(), (xs * weight).sum() / weight.sum()
    ray_src = ((mu + 0.5 - k_src[2]) / k_src[0], (mv + 0.5 - k_src[3]) / k_src[1])
    ray_out = ((u_out + 0.5 - k[2]) / k[0], (v_out + 0.5 - k[3]) / k[1])
    np.testing.assert_allclose(ray_out, ray_src, atol=1.0 / k[0])
    # Cover-resize of a tall 600x500 image to 200x320: scale 0.64 -> 320x384, 92 rows cropped at the top.
    np.testing.assert_allclose(k, [420 * 0.64, 410 * 0.64, 260 * 0.64, 290 * 0.64 - 92])


def test_default_intrinsics_and_fov():
    assert DEFAULT_FOV_DEG == pytest.approx(64.01, abs=0.01)
    _, k = prepare_image(random_image(704, 1280), size=(704, 1280))
    np.testing.assert_allclose(k, [1024, 1024, 640, 352])  # 0.8 * max(W, H), centred
    _, k = prepare_image(random_image(352, 640), size=(704, 1280), fov_deg=90)
    np.testing.assert_allclose(k, [640, 640, 640, 352])
    np.testing.assert_allclose(default_intrinsics(100, 50, 60.0)[0], 50 / math.tan(math.radians(30)))
    _, k = prepare_image(random_image(10, 10), size=(10, 10), intrinsics=np.array([[5, 0, 4], [0, 6, 3], [0, 0, 1]]))
    np.testing.assert_allclose(k, [5, 6, 4, 3])


def test_input_kinds_agree(tmp_path):
    arr = random_image(90, 120, seed=3)
    path = tmp_path / "frame.png"
    path.write_bytes(encode(arr))
    expected, _ = prepare_image(arr, size=(64, 64))
    for source in (PIL.Image.fromarray(arr), encode(arr), bytearray(encode(arr)), str(path), path):
        got, _ = prepare_image(source, size=(64, 64))
        assert torch.equal(got, expected), type(source)
    jpeg, _ = prepare_image(encode(arr, "JPEG"), size=(64, 64))
    assert jpeg.shape == (3, 64, 64)
    rgba = PIL.Image.fromarray(np.dstack([arr, np.full(arr.shape[:2], 7, np.uint8)]))
    assert torch.equal(prepare_image(rgba, size=(64, 64))[0], expected)


def test_exif_orientation_is_applied():
    arr = random_image(40, 60)
    buf = io.BytesIO()
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    PIL.Image.fromarray(arr).save(buf, format="PNG", exif=exif)
    assert load_image(buf.getvalue()).size == (40, 60)


def test_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="image bytes are empty"):
        prepare_image(b"")
    with pytest.raises(ValueError, match=r"image bytes \(11 bytes\) is not a readable image"):
        prepare_image(b"hello world")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=re.escape(f"image file {empty} is empty")):
        prepare_image(empty)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ValueError, match=re.escape(f"image file {text} is not a readable image")):
        prepare_image(str(text))
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(encode(random_image(64, 64))[:200])
    with pytest.raises(ValueError, match=re.escape(f"image file {truncated} is not a readable image")):
        prepare_image(truncated)
    with pytest.raises(FileNotFoundError, match=r"missing\.jpg does not exist"):
        prepare_image(tmp_path / "missing.jpg")
    with pytest.raises(ValueError, match=r"\(H,W,3\) uint8"):
        prepare_image(np.zeros((8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(H,W,3\) uint8"):
        prepare_image(np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(TypeError, match="got int"):
        prepare_image(3)
    with pytest.raises(ValueError, match="size must be"):
        prepare_image(random_image(8, 8), size=(0, 8))
    with pytest.raises(ValueError, match="either intrinsics or fov_deg"):
        prepare_image(random_image(8, 8), intrinsics=[1, 1, 1, 1], fov_deg=60)
    with pytest.raises(ValueError, match=r"\[fx, fy, cx, cy\]"):
        prepare_image(random_image(8, 8), intrinsics=[1, 1, 1])
    with pytest.raises(ValueError, match="fov_deg must be in"):
        prepare_image(random_image(8, 8), fov_deg=180)
