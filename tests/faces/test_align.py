"""Face alignment (mdnet.faces): shapes, geometry, robustness, several faces, bad input.

Real faces come from the SCUT-FBP5500 images (``$MDNET_SCUT_DIR``, default the shared copy)
when present, otherwise from ``skimage.data.astronaut()`` (public domain). Bad inputs are
made in memory.
"""

from __future__ import annotations

import io
import math
import struct
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import SCUT_ROOT
from PIL import Image

from mdnet import faces as A
from mdnet.faces import detect as D
from mdnet.faces import transform as T

ROOT = Path(__file__).resolve().parent.parent
SCUT_IMAGES = SCUT_ROOT / "Images"

# Thresholds measured with benchmarks/align_quality.py and on these fixtures (AF10.jpg and the
# astronaut: mean abs difference <= 7.0, eye shift <= 1.2 px over rotations of +-30 deg, scales
# 0.5x-2x, padding into a 3x canvas), with a margin.
MAX_MEAN_ABS_DIFF = 12.0
MAX_EYE_SHIFT_PX = 2.5


def _astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="module")
def face_rgb() -> np.ndarray:
    """(H, W, 3) uint8: a real frontal face photo."""
    files = sorted(SCUT_IMAGES.glob("*.jpg")) if SCUT_IMAGES.is_dir() else []
    if files:
        return A.load_rgb(files[0])
    return _astronaut()


@pytest.fixture(scope="module")
def base(face_rgb: np.ndarray) -> A.AlignedFace:
    return A.align(face_rgb)


@pytest.fixture(scope="module")
def face_jpeg(face_rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(face_rgb).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _png(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **kw)
    return buf.getvalue()


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def _eye_shift(base: A.AlignedFace, out: A.AlignedFace, to_perturbed: np.ndarray) -> float:
    """Max distance (crop px) between where the base eyes land in the two crops."""
    composite = T._compose(out.transform, to_perturbed)
    eyes = base.keypoints[:2]
    d = A.apply_transform(composite, eyes) - A.apply_transform(base.transform, eyes)
    return float(np.linalg.norm(d, axis=1).max())


# ----------------------------------------------------------------------------- outputs
def test_output_shapes_and_types(base: A.AlignedFace, face_rgb: np.ndarray):
    assert base.image.shape == (224, 224, 3) and base.image.dtype == np.uint8
    assert base.box.shape == (4,) and base.keypoints.shape == (6, 2)
    assert base.transform.shape == (2, 3) and base.inverse_transform.shape == (2, 3)
    assert 0.5 <= base.score <= 1.0
    assert len(base.faces) >= 1 and base.face_index == 0 and base.face is base.faces[0]
    assert base.source_shape == face_rgb.shape[:2]
    x0, y0, x1, y1 = base.box
    assert 0 <= x0 < x1 <= face_rgb.shape[1] and 0 <= y0 < y1 <= face_rgb.shape[0]
    # the keypoints lie inside the face box
    assert np.all((base.keypoints[:4] >= base.box[:2]) & (base.keypoints[:4] <= base.box[2:]))


def test_other_crop_size(face_rgb: np.ndarray, base: A.AlignedFace):
    small = A.align(face_rgb, size=112)
    assert small.image.shape == (112, 112, 3)
    np.testing.assert_allclose(small.keypoints, base.keypoints, atol=1e-6)
    big = cv2.resize(base.image, (112, 112), interpolation=cv2.INTER_AREA)
    assert _mad(small.image, big) < 6.0


def test_transform_and_inverse_compose_to_identity(base: A.AlignedFace):
    eye3 = np.eye(3)[:2]
    np.testing.assert_allclose(T._compose(base.transform, base.inverse_transform), eye3, atol=1e-9)
    np.testing.assert_allclose(T._compose(base.inverse_transform, base.transform), eye3, atol=1e-9)
    pts = np.array([[0.0, 0.0], [224.0, 224.0], [17.5, 200.25]])
    np.testing.assert_allclose(
        A.apply_transform(base.transform, A.apply_transform(base.inverse_transform, pts)), pts, atol=1e-9
    )
    # a similarity: equal column norms, orthogonal columns, no reflection
    a = base.transform[:, :2]
    assert math.isclose(np.linalg.norm(a[:, 0]), np.linalg.norm(a[:, 1]), rel_tol=1e-9)
    assert abs(float(a[:, 0] @ a[:, 1])) < 1e-9 and np.linalg.det(a) > 0


def test_keypoints_land_on_template(base: A.AlignedFace):
    crop_kps = base.crop_keypoints
    template = A.TEMPLATE * 224
    iod = template[1, 0] - template[0, 0]
    assert np.linalg.norm(crop_kps[:2] - template[:2], axis=1).max() < 0.1 * iod
    assert np.linalg.norm(crop_kps[2:4] - template[2:4], axis=1).max() < 0.25 * iod
    assert crop_kps[0, 0] < crop_kps[1, 0]  # subject's right eye on the image left


def test_crop_pixels_follow_transform(face_rgb: np.ndarray, base: A.AlignedFace):
    """A crop pixel equals the original pixel its centre maps back to (away from strong edges)."""
    q = np.array([[112.5, 112.5], [60.5, 150.5], [170.5, 80.5]])
    src = A.apply_transform(base.inverse_transform, q)
    blurred = cv2.GaussianBlur(face_rgb, (0, 0), 3)
    crop_blurred = cv2.GaussianBlur(base.image, (0, 0), 3 * T._transform_scale(base.transform))
    for (qx, qy), (sx, sy) in zip(q, src, strict=True):
        expected = blurred[int(sy), int(sx)].astype(float)
        got = crop_blurred[int(qy), int(qx)].astype(float)
        assert np.abs(expected - got).max() < 25


@pytest.mark.skipif(not SCUT_IMAGES.is_dir(), reason="SCUT-FBP5500 images not available")
def test_scut_crop_resembles_resized_original():
    """The template was fitted so that aligned SCUT-FBP5500 images look like their originals."""
    files = sorted(SCUT_IMAGES.glob("*.jpg"))[:: max(len(sorted(SCUT_IMAGES.glob("*.jpg"))) // 8, 1)][:8]
    scales = []
    for f in files:
        rgb = A.load_rgb(f)
        r = A.align(rgb)
        scales.append(T._transform_scale(r.transform) * rgb.shape[1] / 224)
        assert abs(r.face.angle) < 20
    # on average the crop covers the same region as the original (scale ratio ~ 1)
    assert 0.85 < float(np.median(scales)) < 1.15


# ----------------------------------------------------------------------------- robustness
def _rotate(rgb: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = rgb.shape[:2]
    side = int(np.ceil(np.hypot(h, w)))
    a = np.deg2rad(degrees)
    rot = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
    m = np.hstack([rot, (np.array([side / 2, side / 2]) - rot @ [w / 2, h / 2])[:, None]])
    return A.warp(rgb, m, side, border="constant", border_value=(127, 127, 127)), m


def _scale(rgb: np.ndarray, s: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = rgb.shape[:2]
    nw, nh = round(w * s), round(h * s)
    out = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)
    return out, np.array([[nw / w, 0, 0], [0, nh / h, 0]], float)


def _pad(rgb: np.ndarray, factor: float, fx: float = 0.8, fy: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    h, w = rgb.shape[:2]
    cw, ch = round(w * factor), round(h * factor)
    x0, y0 = round((cw - w) * fx), round((ch - h) * fy)
    canvas = np.full((ch, cw, 3), 127, np.uint8)
    canvas[y0 : y0 + h, x0 : x0 + w] = rgb
    return canvas, np.array([[1, 0, x0], [0, 1, y0]], float)


@pytest.mark.parametrize(
    "perturb",
    [
        pytest.param(lambda x: _rotate(x, 30), id="rotate+30"),
        pytest.param(lambda x: _rotate(x, -30), id="rotate-30"),
        pytest.param(lambda x: _scale(x, 0.5), id="scale0.5"),
        pytest.param(lambda x: _scale(x, 2.0), id="scale2"),
        pytest.param(lambda x: _pad(x, 3.0), id="pad3x"),
    ],
)
def test_perturbed_face_gives_same_crop(face_rgb, base, perturb):
    img, to_perturbed = perturb(face_rgb)
    out = A.align(img)
    assert _eye_shift(base, out, to_perturbed) < MAX_EYE_SHIFT_PX
    # compare pixels that come from inside the original photo in both crops
    ys, xs = np.mgrid[0:224, 0:224]
    src = A.apply_transform(base.inverse_transform, np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], 1))
    h, w = face_rgb.shape[:2]
    inside = ((src[:, 0] > 2) & (src[:, 0] < w - 2) & (src[:, 1] > 2) & (src[:, 1] < h - 2)).reshape(224, 224)
    diff = np.abs(out.image.astype(np.float32) - base.image.astype(np.float32)).mean(2)
    assert float(diff[inside].mean()) < MAX_MEAN_ABS_DIFF


def test_astronaut_rotated_scaled_padded():
    rgb = _astronaut()
    ref = A.align(rgb)
    img, m1 = _rotate(rgb, 25)
    img, m2 = _scale(img, 1.7)
    img, m3 = _pad(img, 1.8)
    out = A.align(img)
    assert _eye_shift(ref, out, T._compose(m3, T._compose(m2, m1))) < MAX_EYE_SHIFT_PX


def test_large_photo_is_downscaled_for_detection_but_cropped_at_full_resolution(face_rgb, base):
    k = 3000 / max(face_rgb.shape[:2])
    big = cv2.resize(face_rgb, None, fx=k, fy=k, interpolation=cv2.INTER_CUBIC)
    out = A.align(big)
    assert out.source_shape == big.shape[:2]
    np.testing.assert_allclose(out.keypoints[:2], base.keypoints[:2] * k, atol=2.5 * k)
    assert _mad(out.image, base.image) < MAX_MEAN_ABS_DIFF


# ----------------------------------------------------------------------------- several faces
def _portrait(rgb: np.ndarray, face: A.Face, factor: float = 2.0) -> np.ndarray:
    """Square crop of side ``factor`` x the face width around the face (a head-and-shoulders shot)."""
    cx, cy = (face.box[:2] + face.box[2:]) / 2
    half = factor * face.width / 2
    x0, y0 = max(int(cx - half), 0), max(int(cy - half), 0)
    return np.ascontiguousarray(rgb[y0 : int(cy + half), x0 : int(cx + half)])


def test_two_faces_largest_first(face_rgb: np.ndarray, base: A.AlignedFace):
    portrait = _portrait(face_rgb, base.face)
    h, w = portrait.shape[:2]
    small = cv2.resize(portrait, (int(w * 0.6), int(h * 0.6)), interpolation=cv2.INTER_AREA)
    left = np.full_like(portrait, 127)
    left[(h - small.shape[0]) // 2 : (h - small.shape[0]) // 2 + small.shape[0], : small.shape[1]] = small
    pair = np.hstack([left, portrait])  # the smaller face on the left
    r0 = A.align(pair)
    assert len(r0.faces) == 2
    assert r0.faces[0].width > r0.faces[1].width
    assert r0.keypoints[0, 0] > w  # the largest (chosen by default) is the one on the right
    r1 = A.align(pair, face_index=1)
    assert r1.keypoints[0, 0] < w and r1.face_index == 1
    assert abs(r1.face.width / r0.face.width - 0.6) < 0.1
    # align_face reproduces align's crop for a chosen face
    again = A.align_face(pair, r0.faces[1], faces=r0.faces)
    np.testing.assert_array_equal(again.image, r1.image)
    assert again.face_index == 1
    with pytest.raises(A.FaceIndexError, match="only 2 faces"):
        A.align(pair, face_index=2)


def test_tightly_cropped_face(face_rgb: np.ndarray, base: A.AlignedFace):
    """A face that fills the whole frame (cropped at its box) is still found and aligned."""
    x0, y0, x1, y1 = np.round(base.box).astype(int)
    tight = face_rgb[max(y0, 0) : y1, max(x0, 0) : x1]
    out = A.align(tight)
    np.testing.assert_allclose(out.keypoints[:2] + [max(x0, 0), max(y0, 0)], base.keypoints[:2], atol=4.0)


def test_thorough_search_finds_small_second_face(face_rgb: np.ndarray, base: A.AlignedFace):
    """Group photos: search="thorough" also finds faces too small for the whole-image pass."""
    portrait = _portrait(face_rgb, base.face)
    h, w = portrait.shape[:2]
    small = cv2.resize(portrait, (int(w * 0.3), int(h * 0.3)), interpolation=cv2.INTER_AREA)
    scene = np.full((h, 3 * w, 3), 127, np.uint8)
    scene[:, :w] = portrait
    scene[h // 3 : h // 3 + small.shape[0], 2 * w : 2 * w + small.shape[1]] = small
    faces = A.detect_faces(scene, search="thorough")
    assert len(faces) == 2 and faces[0].width > 2 * faces[1].width
    assert faces[1].keypoints[0, 0] > 2 * w


def test_detect_faces_returns_all_without_raising():
    assert A.detect_faces(np.full((256, 256, 3), 127, np.uint8), search="full") == []
    with pytest.raises(ValueError, match="search"):
        A.detect_faces(np.full((256, 256, 3), 127, np.uint8), search="everywhere")  # type: ignore[arg-type]


def test_concurrent_threads_share_one_detector(face_rgb: np.ndarray, base: A.AlignedFace):
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: A.align(face_rgb), range(8)))
    for r in results:
        np.testing.assert_array_equal(r.image, base.image)


# ----------------------------------------------------------------------------- input formats
def test_load_rgb_array_variants(face_rgb: np.ndarray):
    gray = cv2.cvtColor(face_rgb, cv2.COLOR_RGB2GRAY)
    for arr in (gray, gray[..., None]):
        out = A.load_rgb(arr)
        assert out.shape == (*gray.shape, 3) and out.dtype == np.uint8
        np.testing.assert_array_equal(out[..., 1], gray)
    np.testing.assert_array_equal(A.load_rgb(face_rgb.astype(np.uint16) * 257), face_rgb)
    np.testing.assert_array_equal(A.load_rgb(face_rgb.astype(np.float32) / 255), face_rgb)
    assert A.load_rgb(np.ones((8, 8), bool)).max() == 255
    rgba = np.dstack([face_rgb, np.zeros(face_rgb.shape[:2], np.uint8)])
    assert (A.load_rgb(rgba) == 255).all()  # fully transparent -> white
    assert A.load_rgb(face_rgb[:, ::-1]).flags["C_CONTIGUOUS"]


def test_path_bytes_file_object_and_pil_agree(tmp_path: Path, face_rgb: np.ndarray):
    png = _png(Image.fromarray(face_rgb))
    p = tmp_path / "face.png"
    p.write_bytes(png)
    for src in (str(p), p, png, bytearray(png), io.BytesIO(png), Image.fromarray(face_rgb)):
        np.testing.assert_array_equal(A.load_rgb(src), face_rgb)


def test_grayscale_image_aligns(face_rgb: np.ndarray):
    gray = Image.fromarray(face_rgb).convert("L")
    r = A.align(_png(gray))
    assert r.image.shape == (224, 224, 3)
    assert np.array_equal(r.image[..., 0], r.image[..., 1]) and np.array_equal(r.image[..., 1], r.image[..., 2])


def test_rgba_transparency_composited_on_white(face_rgb: np.ndarray):
    h, w = face_rgb.shape[:2]
    alpha = np.zeros((h, w), np.uint8)
    cv2.ellipse(alpha, (w // 2, h // 2), (int(w * 0.45), int(h * 0.48)), 0, 0, 360, 255, -1)
    rgba = Image.fromarray(np.dstack([face_rgb, alpha]), "RGBA")
    rgb = A.load_rgb(_png(rgba))
    assert (rgb[alpha == 0] == 255).all()
    np.testing.assert_array_equal(rgb[alpha == 255], face_rgb[alpha == 255])
    assert A.align(rgba).image.shape == (224, 224, 3)


def test_la_image(face_rgb: np.ndarray):
    gray = Image.fromarray(face_rgb).convert("L")
    alpha = Image.new("L", gray.size, 255)
    alpha.paste(0, (0, 0, 10, 10))
    la = Image.merge("LA", (gray, alpha))
    rgb = A.load_rgb(_png(la))
    assert rgb.shape == (*face_rgb.shape[:2], 3) and (rgb[:10, :10] == 255).all()
    assert A.align(la).score > 0.5


def test_cmyk_jpeg(face_rgb: np.ndarray):
    buf = io.BytesIO()
    Image.fromarray(face_rgb).convert("CMYK").save(buf, "JPEG", quality=95)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        assert im.mode == "CMYK"
    rgb = A.load_rgb(buf.getvalue())
    assert rgb.shape == face_rgb.shape and _mad(rgb, face_rgb) < 6
    assert A.align(buf.getvalue()).score > 0.5


def test_16bit_png(face_rgb: np.ndarray):
    gray = cv2.cvtColor(face_rgb, cv2.COLOR_RGB2GRAY)
    png16 = _png(Image.fromarray(gray.astype(np.uint16) * 257))
    with Image.open(io.BytesIO(png16)) as im:
        assert im.mode.startswith("I")
    np.testing.assert_array_equal(A.load_rgb(png16)[..., 0], gray)
    ok, rgb16 = cv2.imencode(".png", (face_rgb.astype(np.uint16) * 257)[..., ::-1])  # 16-bit RGB (cv2 is BGR)
    assert ok
    assert np.abs(A.load_rgb(rgb16.tobytes()).astype(int) - face_rgb).max() <= 1
    assert A.align(png16).score > 0.5


def test_palette_images(face_rgb: np.ndarray):
    p = Image.fromarray(face_rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    rgb = A.load_rgb(_png(p))
    assert rgb.shape == face_rgb.shape and _mad(rgb, face_rgb) < 8
    assert A.align(_png(p)).score > 0.5
    # a palette image with a transparent index: those pixels become white
    idx = p.getpixel((0, 0))
    rgb_t = A.load_rgb(_png(p, transparency=idx))
    assert (rgb_t[np.asarray(p) == idx] == 255).all()


def test_exif_rotated_jpeg(face_rgb: np.ndarray):
    stored = np.ascontiguousarray(np.rot90(face_rgb, k=1))  # sideways, as a phone stores it
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 deg clockwise to display
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    rgb = A.load_rgb(buf.getvalue())
    assert rgb.shape == face_rgb.shape and _mad(rgb, face_rgb) < 4
    assert abs(A.align(buf.getvalue()).face.angle) < 10


def test_animated_gif_uses_first_frame(face_rgb: np.ndarray):
    first = Image.fromarray(face_rgb)
    second = Image.fromarray(np.zeros_like(face_rgb))
    buf = io.BytesIO()
    first.save(buf, "GIF", save_all=True, append_images=[second], duration=100, loop=0)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        assert im.n_frames == 2
    rgb = A.load_rgb(buf.getvalue())
    assert _mad(rgb, face_rgb) < 12
    assert A.align(buf.getvalue()).score > 0.5


# ----------------------------------------------------------------------------- bad input
def test_error_hierarchy():
    for cls in (
        A.ImageDecodeError,
        A.EmptyImageError,
        A.ImageTooLargeError,
        A.AspectRatioError,
        A.NoFaceError,
        A.FaceTooSmallError,
        A.FaceIndexError,
    ):
        assert issubclass(cls, A.AlignError) and issubclass(cls, ValueError)


@pytest.mark.parametrize(
    "source",
    [
        pytest.param(b"this is not an image, just some text", id="text-bytes"),
        pytest.param(bytes(range(256)) * 8, id="random-bytes"),
        pytest.param(12345, id="wrong-type"),
        pytest.param(None, id="none"),
        pytest.param(np.zeros((4, 4, 7), np.uint8), id="bad-array-shape"),
    ],
)
def test_not_an_image(source):
    with pytest.raises(A.ImageDecodeError):
        A.align(source)


def test_text_file_and_missing_file(tmp_path: Path):
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(A.ImageDecodeError, match="not an image"):
        A.load_rgb(txt)
    with pytest.raises(A.ImageDecodeError, match="could not be found"):
        A.load_rgb(tmp_path / "missing.jpg")
    with pytest.raises(A.ImageDecodeError):
        A.load_rgb(tmp_path)  # a directory


def test_truncated_jpeg(face_jpeg: bytes):
    with pytest.raises(A.ImageDecodeError, match="damaged"):
        A.load_rgb(face_jpeg[: len(face_jpeg) // 2])


def test_empty_inputs(tmp_path: Path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    for src in (b"", empty, io.BytesIO(b""), np.zeros((0, 0, 3), np.uint8), np.zeros((10, 0), np.uint8)):
        with pytest.raises(A.EmptyImageError):
            A.align(src)


def test_no_face():
    rng = np.random.default_rng(0)
    smooth = cv2.resize(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), (320, 320), interpolation=cv2.INTER_CUBIC)
    with pytest.raises(A.NoFaceError, match="No face"):
        A.align(smooth)


def test_no_false_positive_on_a_cat():
    from skimage import data

    with pytest.raises(A.NoFaceError):
        A.align(data.chelsea())  # the detector's raw output has a 0.55 "face" here; verification drops it


def test_face_too_small_states_minimum():
    rgb = _astronaut()
    tiny = cv2.resize(rgb, None, fx=0.3, fy=0.3, interpolation=cv2.INTER_AREA)  # face ~30 px
    with pytest.raises(A.FaceTooSmallError, match=f"at least {A.MIN_FACE_SIZE} pixels"):
        A.align(tiny)
    assert A.align(tiny, min_face_size=20).face.width < A.MIN_FACE_SIZE  # it was found, just small
    with pytest.raises(A.FaceTooSmallError, match="at least 40 pixels"):
        A.align(np.full((24, 24, 3), 200, np.uint8))


def test_extreme_aspect_ratio():
    with pytest.raises(A.AspectRatioError, match="too wide"):
        A.align(np.full((40, 500, 3), 127, np.uint8))
    with pytest.raises(A.AspectRatioError, match="too tall"):
        A.load_rgb(_png(Image.new("RGB", (30, 1000))))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` (the pixel data is never reached)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_too_large_is_refused_before_decoding():
    with pytest.raises(A.ImageTooLargeError, match="100 megapixels"):
        A.load_rgb(_png_header_only(11_000, 10_000))  # 110 MP: our limit
    with pytest.raises(A.ImageTooLargeError):
        A.load_rgb(_png_header_only(30_000, 30_000))  # 900 MP: PIL's decompression-bomb guard
    with pytest.raises(A.ImageTooLargeError):
        A.load_rgb(np.zeros((100, 100, 3), np.uint8), max_pixels=5_000)


# ----------------------------------------------------------------------------- detector model
def test_bundled_model_matches_pinned_hash():
    assert A.DETECTOR_MODEL_PATH.is_file()
    D._read_model(A.DETECTOR_MODEL_PATH, D.DETECTOR_MODEL_SHA256)
    licence = A.DETECTOR_MODEL_PATH.parent / "LICENSE-mediapipe.md"
    assert D.DETECTOR_MODEL_SHA256 in licence.read_text()


def test_missing_or_corrupt_model_gives_clear_error(tmp_path: Path):
    with pytest.raises(A.DetectorModelError, match="missing"):
        A.FaceDetector(tmp_path / "nope.tflite")
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a model")
    with pytest.raises(A.DetectorModelError, match="corrupt"):
        A.FaceDetector(bad, expected_sha256=D.DETECTOR_MODEL_SHA256)


def test_detector_context_manager_and_close(face_rgb: np.ndarray):
    with A.FaceDetector() as det:
        faces = A.detect_faces(face_rgb, detector=det)
        assert len(faces) >= 1
    with pytest.raises(RuntimeError, match="closed"):
        det.detect(face_rgb)
    det.close()  # idempotent


def test_clean_interpreter_exit():
    """The shared detector is closed at exit: no TypeError traceback from MediaPipe's finaliser."""
    code = (
        "import numpy as np\n"
        "from mdnet.faces import align, NoFaceError\n"
        "try:\n"
        "    align(np.full((64, 64, 3), 127, np.uint8))\n"
        "except NoFaceError:\n"
        "    print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0 and "ok" in res.stdout
    assert "Traceback" not in res.stderr and "TypeError" not in res.stderr


# ----------------------------------------------------------------------------- following a face in video
def _shift(rgb: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """The photo moved by (dx, dy) pixels on a grey canvas of the same size: the next frame of a video."""
    return cv2.warpAffine(rgb, np.float32([[1, 0, dx], [0, 1, dy]]), (rgb.shape[1], rgb.shape[0]),
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(127, 127, 127))


def test_a_face_is_followed_into_the_next_frame_as_a_full_search_finds_it(face_rgb, base):
    moved = _shift(face_rgb, 9, -6)
    full = A.align(moved)
    followed = A.track_face(moved, base.face)
    assert followed is not None and followed.size == base.face.size
    assert np.abs(followed.keypoints - full.keypoints).max() < 0.02 * base.face.width  # the same alignment
    assert np.allclose(followed.keypoints[:2].mean(0), base.keypoints[:2].mean(0) + [9, -6], atol=1.5)
    tracked = A.align(moved, track=base.face)
    assert len(tracked.faces) == 1  # the followed face only
    eyes = np.linalg.norm(tracked.crop_keypoints[:2] - full.crop_keypoints[:2], axis=1)
    assert eyes.max() < MAX_EYE_SHIFT_PX  # where the eyes land in the crop


def test_a_face_that_left_the_frame_is_lost_and_align_searches_again(face_rgb, base):
    empty = np.full_like(face_rgb, 127)
    assert A.track_face(empty, base.face) is None
    with pytest.raises(A.NoFaceError):
        A.align(empty, track=base.face)
    h, w = face_rgb.shape[:2]  # a wide frame: the face at its left, then two face-widths to the right
    wide = np.full((h, 4 * w, 3), 127, np.uint8)
    wide[:, :w] = face_rgb
    before = A.align(wide)
    wide[:] = 127
    wide[:, 2 * w : 3 * w] = face_rgb
    assert A.track_face(wide, before.face) is None
    again, full = A.align(wide, track=before.face), A.align(wide)
    assert np.allclose(again.keypoints, full.keypoints) and again.keypoints[0, 0] > 2 * w
