"""What differs between a lab photo and a snapshot, as image perturbations.

Every function takes and returns a ``(H, W, 3)`` uint8 RGB array (numpy, OpenCV, PIL; no
torch), has explicit parameters, and never changes its input. Three layers:

- **Single perturbations**: :func:`downscale` (resolution), :func:`jpeg`, :func:`gaussian_blur`,
  :func:`sensor_noise`, :func:`rotate`, :func:`rescale`, :func:`pad_canvas`, :func:`jitter_crop`
  (alignment jitter of an aligned crop), :func:`brightness`, :func:`contrast`,
  :func:`colour_temperature`, :func:`occlude`, :func:`mirror`.
- **Random mixtures**, driven by a ``numpy.random.Generator`` (same seed, bit-identical output):
  :class:`CameraAugment` for aligned crops (cheap, per batch); :func:`perturb_photo` for the
  full photo *before* alignment (rotation, size, framing and re-compression change what the
  detector sees, so they belong there when it matters).
- **The robustness benchmark's fixed transforms**, :data:`ROBUSTNESS_TRANSFORMS` (name ->
  photo -> photo), applied to the photo before alignment.

    from mdnet.faces.augment import CameraAugment, ROBUSTNESS_TRANSFORMS
    aug = CameraAugment()
    noisy = aug(crop, np.random.default_rng(0))
    hard = ROBUSTNESS_TRANSFORMS["compound"](photo)
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image

Array = np.ndarray
Rng = np.random.Generator | int | None

# Plausible colours of what covers part of a face in a snapshot: hands (light to dark skin),
# a phone or sunglasses (near black), a white or blue medical mask, hair (brown), a cup (grey).
OCCLUDER_COLOURS: tuple[tuple[int, int, int], ...] = (
    (233, 192, 163),
    (198, 144, 110),
    (141, 94, 66),
    (88, 57, 39),
    (20, 20, 22),
    (236, 238, 240),
    (150, 190, 215),
    (72, 50, 36),
    (128, 128, 128),
)


def _check(image: Array) -> Array:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {got}")
    return image


def _generator(rng: Rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _lut(image: Array, tables: Sequence[Array]) -> Array:
    """Apply one 256-entry float table per channel (rounded, clipped to 0-255)."""
    lut = np.stack([np.clip(np.rint(t), 0, 255) for t in tables], axis=-1).astype(np.uint8)  # (256, 3)
    return cv2.LUT(np.ascontiguousarray(image), lut.reshape(256, 1, 3))


# ---------------------------------------------------------------- single perturbations


def jpeg(image: Array, quality: int, *, subsampling: str = "4:2:0") -> Array:
    """Encode as JPEG at ``quality`` (1-95) and decode again, with phones' usual 4:2:0 chroma subsampling."""
    _check(image)
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1-100, got {quality}")
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=int(quality), subsampling=subsampling)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB")).copy()


def rescale(image: Array, factor: float) -> Array:
    """Resize the photo by ``factor`` (area averaging when shrinking, bilinear when enlarging): its size changes."""
    _check(image)
    if factor <= 0:
        raise ValueError(f"scale factor must be positive, got {factor}")
    h, w = image.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    if size == (w, h):
        return image.copy()
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)


def downscale(image: Array, factor: float) -> Array:
    """Lose resolution: shrink to ``factor`` of the size (area averaging), then bilinear back up to the same shape."""
    _check(image)
    if not 0 < factor <= 1:
        raise ValueError(f"downscale factor must be in (0, 1], got {factor}")
    h, w = image.shape[:2]
    small = rescale(image, factor)
    if small.shape[:2] == (h, w):
        return small
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def gaussian_blur(image: Array, sigma: float) -> Array:
    """Defocus or motion-free camera shake: Gaussian blur of standard deviation ``sigma`` pixels (0: unchanged)."""
    _check(image)
    if sigma < 0:
        raise ValueError(f"blur sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return image.copy()
    return cv2.GaussianBlur(image, (0, 0), sigmaX=float(sigma), sigmaY=float(sigma), borderType=cv2.BORDER_REFLECT_101)


def sensor_noise(image: Array, sigma: float, rng: Rng = None, *, colour: float = 0.5) -> Array:
    """Add Gaussian sensor noise of ``sigma`` grey levels (0-255): ``colour`` of its variance differs per channel.

    ``colour=0`` gives grey (luminance) noise only, ``1`` independent noise per channel.
    """
    _check(image)
    if sigma < 0 or not 0 <= colour <= 1:
        raise ValueError(f"need sigma >= 0 and colour in [0, 1], got {sigma}, {colour}")
    if sigma == 0:
        return image.copy()
    g = _generator(rng)
    h, w = image.shape[:2]
    grey = g.standard_normal((h, w, 1), dtype=np.float32) * np.float32(sigma * math.sqrt(1 - colour))
    chroma = g.standard_normal((h, w, 3), dtype=np.float32) * np.float32(sigma * math.sqrt(colour))
    return np.clip(np.rint(image.astype(np.float32) + grey + chroma), 0, 255).astype(np.uint8)


def rotate(image: Array, degrees: float, *, expand: bool = True) -> Array:
    """Rotate counter-clockwise about the centre; ``expand`` grows the canvas to keep every pixel (edges repeated)."""
    _check(image)
    h, w = image.shape[:2]
    if degrees % 360 == 0:
        return image.copy()
    m = cv2.getRotationMatrix2D((w / 2, h / 2), float(degrees), 1.0)
    out_w, out_h = w, h
    if expand:
        c, s = abs(m[0, 0]), abs(m[0, 1])
        out_w, out_h = math.ceil(w * c + h * s - 1e-6), math.ceil(w * s + h * c - 1e-6)
        m[0, 2] += (out_w - w) / 2
        m[1, 2] += (out_h - h) / 2
    return cv2.warpAffine(image, m, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def border_colour(image: Array) -> tuple[int, int, int]:
    """The mean colour of the outermost row and column of pixels (a neutral fill for a larger canvas)."""
    _check(image)
    frame = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).astype(np.float64)
    return tuple(int(v) for v in np.rint(frame.mean(axis=0)))


def pad_canvas(
    image: Array,
    factor: float = 3.0,
    *,
    position: tuple[float, float] = (0.5, 0.5),
    fill: tuple[int, int, int] | None = None,
) -> Array:
    """Place the photo in a canvas ``factor`` times as wide and as tall: the face becomes small in a larger frame.

    ``position`` is where it sits, as ``(x, y)`` fractions of the free room (``(0.5, 0.5)`` centred);
    ``fill`` is the canvas colour, by default :func:`border_colour` of the photo.
    """
    _check(image)
    if factor < 1:
        raise ValueError(f"canvas factor must be >= 1, got {factor}")
    h, w = image.shape[:2]
    out_h, out_w = round(h * factor), round(w * factor)
    canvas = np.empty((out_h, out_w, 3), dtype=np.uint8)
    canvas[:] = fill if fill is not None else border_colour(image)
    x0, y0 = round((out_w - w) * position[0]), round((out_h - h) * position[1])
    canvas[y0 : y0 + h, x0 : x0 + w] = image
    return canvas


def jitter_crop(
    image: Array, *, degrees: float = 0.0, scale: float = 1.0, shift: tuple[float, float] = (0.0, 0.0)
) -> Array:
    """Alignment jitter of an aligned crop: rotate (degrees), zoom (``scale`` > 1 zooms in) about the centre and
    shift by ``(dx, dy)`` fractions of the side; same shape, edges repeated (as the aligner's border)."""
    _check(image)
    h, w = image.shape[:2]
    if degrees == 0 and scale == 1 and shift == (0.0, 0.0):
        return image.copy()
    m = cv2.getRotationMatrix2D((w / 2, h / 2), float(degrees), float(scale))
    m[0, 2] += shift[0] * w
    m[1, 2] += shift[1] * h
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def brightness(image: Array, factor: float) -> Array:
    """Exposure: multiply every value by ``factor`` (0.7 darker, 1.3 brighter; clipped)."""
    _check(image)
    ramp = np.arange(256, dtype=np.float64)
    return _lut(image, [ramp * factor] * 3)


def contrast(image: Array, factor: float) -> Array:
    """Contrast about the photo's mean grey level, as PIL's ``ImageEnhance.Contrast`` (1.3 stronger, 0.7 flatter)."""
    _check(image)
    mean = float(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).mean())
    ramp = np.arange(256, dtype=np.float64)
    return _lut(image, [mean + (ramp - mean) * factor] * 3)


def colour_temperature(image: Array, shift: float) -> Array:
    """White balance: red gain ``1 + shift``, blue gain ``1 - shift`` (0.1 warmer, like indoor light; -0.1 cooler)."""
    _check(image)
    if not -1 < shift < 1:
        raise ValueError(f"colour temperature shift must be in (-1, 1), got {shift}")
    ramp = np.arange(256, dtype=np.float64)
    return _lut(image, [ramp * (1 + shift), ramp, ramp * (1 - shift)])


def occlude(image: Array, box: tuple[int, int, int, int], colour: tuple[int, int, int]) -> Array:
    """Cover the rectangle ``box`` = ``(x0, y0, x1, y1)`` (pixels, end exclusive) with a solid ``colour``."""
    _check(image)
    x0, y0, x1, y1 = box
    out = image.copy()
    out[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = colour
    return out


def random_occlusion_box(
    shape: tuple[int, ...], rng: Rng, area: tuple[float, float] = (0.03, 0.15)
) -> tuple[int, int, int, int]:
    """A random rectangle covering an ``area`` fraction of an image of ``shape`` (aspect 1:2 to 2:1), inside it."""
    g = _generator(rng)
    h, w = shape[:2]
    a = g.uniform(*area) * h * w
    aspect = math.exp(g.uniform(math.log(0.5), math.log(2.0)))
    bw = int(np.clip(round(math.sqrt(a * aspect)), 1, w))
    bh = int(np.clip(round(math.sqrt(a / aspect)), 1, h))
    x0 = int(g.integers(0, w - bw + 1))
    y0 = int(g.integers(0, h - bh + 1))
    return x0, y0, x0 + bw, y0 + bh


def mirror(image: Array) -> Array:
    """Flip left-right (a selfie camera's preview)."""
    _check(image)
    return np.ascontiguousarray(image[:, ::-1])


# ---------------------------------------------------------------- random mixtures


@dataclass(frozen=True)
class CameraAugment:
    """A random subset of snapshot perturbations for aligned crops, each with a random strength.

    Each perturbation is applied with probability ``p``, in a fixed, physical order: alignment
    jitter, blur (optics), brightness, contrast, colour temperature (light and white balance),
    occlusion (the scene), sensor noise, resolution loss, JPEG (the camera's processing). Ranges
    are ``(low, high)``, sampled uniformly (JPEG quality as an integer). The same ``rng`` seed
    gives bit-identical output.

        aug = CameraAugment(p=0.5)
        out = aug(crop, np.random.default_rng(seed))          # (H, W, 3) uint8
        plan = aug.sample(np.random.default_rng(seed), crop.shape)  # what it would do
        batch = aug.batch(crops, rng)                          # (n, H, W, 3) uint8
    """

    p: float = 0.5
    jitter_degrees: float = 8.0                              # +- rotation of the crop
    jitter_scale: tuple[float, float] = (0.92, 1.08)         # zoom of the crop
    jitter_shift: float = 0.04                               # +- shift, fraction of the side
    blur_sigma: tuple[float, float] = (0.3, 1.8)             # pixels, at the crop's size
    brightness: tuple[float, float] = (0.65, 1.35)
    contrast: tuple[float, float] = (0.7, 1.35)
    temperature: tuple[float, float] = (-0.15, 0.15)
    occlusion_area: tuple[float, float] = (0.02, 0.12)       # fraction of the crop
    noise_sigma: tuple[float, float] = (1.0, 8.0)            # grey levels
    downscale: tuple[float, float] = (0.25, 0.8)             # resolution, fraction of the side
    jpeg_quality: tuple[int, int] = (25, 90)

    def sample(self, rng: Rng, shape: tuple[int, ...]) -> list[tuple[str, dict[str, Any]]]:
        """Draw the perturbations (name and parameters, in order of application) for an image of ``shape``.

        Every perturbation's numbers are drawn whether it is chosen or not, so the draws of one
        never depend on the others' probabilities.
        """
        g = _generator(rng)
        u = g.random(9)
        a = self.jitter_degrees
        steps: list[tuple[str, dict[str, Any]]] = [
            ("jitter", {"degrees": float(g.uniform(-a, a)), "scale": float(g.uniform(*self.jitter_scale)),
                        "shift": (float(g.uniform(-self.jitter_shift, self.jitter_shift)),
                                  float(g.uniform(-self.jitter_shift, self.jitter_shift)))}),
            ("blur", {"sigma": float(g.uniform(*self.blur_sigma))}),
            ("brightness", {"factor": float(g.uniform(*self.brightness))}),
            ("contrast", {"factor": float(g.uniform(*self.contrast))}),
            ("temperature", {"shift": float(g.uniform(*self.temperature))}),
            ("occlusion", {"box": random_occlusion_box(shape, g, self.occlusion_area),
                           "colour": OCCLUDER_COLOURS[int(g.integers(len(OCCLUDER_COLOURS)))]}),
            ("noise", {"sigma": float(g.uniform(*self.noise_sigma)), "seed": int(g.integers(2**63))}),
            ("downscale", {"factor": float(g.uniform(*self.downscale))}),
            ("jpeg", {"quality": int(g.integers(self.jpeg_quality[0], self.jpeg_quality[1] + 1))}),
        ]
        return [step for step, chosen in zip(steps, u < self.p, strict=True) if chosen]

    @staticmethod
    def apply(image: Array, plan: Sequence[tuple[str, dict[str, Any]]]) -> Array:
        """Apply a plan from :meth:`sample`."""
        out = _check(image).copy()
        for name, kw in plan:
            if name == "noise":
                out = sensor_noise(out, kw["sigma"], np.random.default_rng(kw["seed"]))
            elif name == "occlusion":
                out = occlude(out, kw["box"], kw["colour"])
            else:
                out = _CROP_STEPS[name](out, **kw)
        return out

    def __call__(self, image: Array, rng: Rng = None) -> Array:
        """One random perturbation of ``image`` ``(H, W, 3)`` uint8; the same shape and dtype."""
        _check(image)
        return self.apply(image, self.sample(rng, image.shape))

    def batch(self, images: Array, rng: Rng = None) -> Array:
        """``(n, H, W, 3)`` uint8 -> the same, each image with its own draw from ``rng``."""
        g = _generator(rng)
        return np.stack([self(img, g) for img in images]) if len(images) else np.asarray(images).copy()


_CROP_STEPS: dict[str, Callable[..., Array]] = {
    "jitter": jitter_crop,
    "blur": gaussian_blur,
    "brightness": brightness,
    "contrast": contrast,
    "temperature": colour_temperature,
    "downscale": downscale,
    "jpeg": jpeg,
}


def perturb_photo(
    photo: Array,
    rng: Rng = None,
    *,
    max_degrees: float = 20.0,
    scale: tuple[float, float] = (0.4, 1.0),
    canvas: tuple[float, float] = (1.0, 3.0),
    quality: tuple[int, int] = (40, 95),
) -> Array:
    """A snapshot-like version of a whole photo, for use BEFORE alignment.

    Rotate by a uniform angle in ``+-max_degrees`` (canvas expanded), resize by a log-uniform
    factor in ``scale``, place it at a random position in a canvas ``canvas`` times larger
    (uniform; filled with its border colour), and re-save as JPEG at a quality in ``quality``.
    Shrinking a small photo can take its face under the aligner's 40 px minimum: the aligner
    then rejects it.
    """
    _check(photo)
    g = _generator(rng)
    degrees = float(g.uniform(-max_degrees, max_degrees))
    factor = math.exp(float(g.uniform(math.log(scale[0]), math.log(scale[1]))))
    grow = float(g.uniform(*canvas))
    position = (float(g.random()), float(g.random()))
    q = int(g.integers(quality[0], quality[1] + 1))
    out = rescale(rotate(photo, degrees), factor)
    return jpeg(pad_canvas(out, grow, position=position), q)


# ---------------------------------------------------------------- the robustness benchmark


@dataclass(frozen=True)
class PhotoTransform:
    """A fixed, named photo -> photo transform of the robustness benchmark (applied before alignment)."""

    name: str
    description: str
    fn: Callable[[Array], Array]

    def __call__(self, photo: Array) -> Array:
        return self.fn(_check(photo))


COMPOUND_JPEG_QUALITY = 75  # PIL's default and a typical re-save by messaging apps and social sites


def _compound(photo: Array) -> Array:
    return jpeg(pad_canvas(rescale(rotate(photo, 20), 0.4), 3.0), COMPOUND_JPEG_QUALITY)


ROBUSTNESS_TRANSFORMS: dict[str, PhotoTransform] = {
    t.name: t
    for t in (
        PhotoTransform("jpeg_q25", "JPEG re-save at quality 25 (4:2:0)", lambda x: jpeg(x, 25)),
        PhotoTransform("downscale_25", "a smaller photo: 25 % of the side (area averaging)",
                       lambda x: rescale(x, 0.25)),
        PhotoTransform("contrast_1.3", "contrast x1.3 about the mean grey level", lambda x: contrast(x, 1.3)),
        PhotoTransform("blur_1.5", "Gaussian blur, sigma 1.5 px", lambda x: gaussian_blur(x, 1.5)),
        PhotoTransform("rotate_20", "rotated 20 degrees counter-clockwise, canvas expanded", lambda x: rotate(x, 20)),
        PhotoTransform("brightness_0.7", "brightness x0.7 (under-exposed)", lambda x: brightness(x, 0.7)),
        PhotoTransform("downscale_40", "a smaller photo: 40 % of the side (area averaging)", lambda x: rescale(x, 0.4)),
        PhotoTransform("pad_3x", "centred in a canvas 3x as wide and tall, filled with its border colour",
                       lambda x: pad_canvas(x, 3.0)),
        PhotoTransform("mirror", "flipped left-right", mirror),
        PhotoTransform("compound", f"rotate 20 degrees, shrink to 40 %, pad into a 3x canvas, JPEG quality "
                       f"{COMPOUND_JPEG_QUALITY}", _compound),
    )
}
