"""Decoding and input limits: any image input to one ``(H, W, 3)`` ``uint8`` RGB array.

:func:`load_rgb` decodes a path, bytes, a binary file object, a PIL image or a numpy array,
applying EXIF orientation, flattening transparency onto white and converting grey / palette /
CMYK / 16-bit images. Images over :data:`MAX_PIXELS` or longer than :data:`MAX_ASPECT_RATIO`
are refused from the header, before decoding. Bad input raises a subclass of
:class:`~mdnet.faces.errors.AlignError` whose message a non-technical user can read.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path
from typing import IO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mdnet.faces.errors import AlignError, AspectRatioError, EmptyImageError, ImageDecodeError, ImageTooLargeError

ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, IO[bytes], Image.Image, np.ndarray]  # noqa: UP007

MAX_PIXELS = 100_000_000  # refuse images above 100 megapixels (bounds memory: 300 MB as RGB)
MAX_ASPECT_RATIO = 10.0  # refuse panoramas / strips longer than 10:1
BACKGROUND = (255, 255, 255)  # transparent pixels are composited onto white
# The formats we decode, on purpose (Pillow's names): anything else is refused before a decoder runs, so that,
# for example, an EPS upload is never handed to Ghostscript. (Pillow's JPEG opener also reads the multi-picture
# JPEGs of many phones, as "MPO".)
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
FORMATS_TEXT = "JPEG, PNG, WebP, BMP or GIF"


def load_rgb(
    source: ImageInput,
    *,
    max_pixels: int = MAX_PIXELS,
    max_aspect_ratio: float = MAX_ASPECT_RATIO,
    background: tuple[int, int, int] = BACKGROUND,
) -> np.ndarray:
    """Decode and normalise any image input to an RGB ``uint8`` array.

    Args:
        source: a file path (``str`` / ``Path``), encoded bytes, a binary file object,
            a ``PIL.Image.Image`` or a numpy array. Arrays are taken as RGB(A):
            ``(H, W)`` grey, ``(H, W, 1)``, ``(H, W, 2)`` grey+alpha, ``(H, W, 3)``
            RGB or ``(H, W, 4)`` RGBA; ``uint8``, ``uint16`` (scaled by 1/257),
            ``bool``, or float (``[0, 1]`` if its maximum is <= 1, else ``[0, 255]``).
        max_pixels: refuse images with more pixels (checked from the header, before
            decoding).
        max_aspect_ratio: refuse images whose long side exceeds this many times the
            short side.
        background: RGB colour that transparent pixels are composited onto.

    Returns:
        ``(H, W, 3)`` ``uint8`` C-contiguous RGB array. EXIF orientation is applied,
        animated images give their first frame, CMYK / palette / 16-bit / grey /
        alpha images are converted.

    Raises:
        ImageDecodeError, EmptyImageError, ImageTooLargeError, AspectRatioError.
    """
    if isinstance(source, np.ndarray):
        rgb = _array_to_rgb(source, background, max_pixels, max_aspect_ratio)
    elif isinstance(source, Image.Image):
        _check_dimensions(source.width, source.height, max_pixels, max_aspect_ratio)
        rgb = _pil_to_rgb(source, background)
    else:
        with _open_image(source) as im:
            _check_dimensions(im.width, im.height, max_pixels, max_aspect_ratio)
            rgb = _pil_to_rgb(im, background)
    return np.ascontiguousarray(rgb)


def _open_image(source: object) -> Image.Image:
    """Open ``source`` lazily with PIL (header only), mapping failures to AlignErrors."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(os.fspath(source))
        if not path.is_file():
            raise ImageDecodeError(f"The file '{path.name}' could not be found, or is not a file.")
        if path.stat().st_size == 0:
            raise EmptyImageError(f"The file '{path.name}' is empty (0 bytes).")
        fp: object = path
    elif isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise EmptyImageError("The uploaded file is empty (0 bytes).")
        fp = io.BytesIO(bytes(source))
    elif hasattr(source, "read"):
        data = source.read()  # type: ignore[union-attr]
        if not isinstance(data, (bytes, bytearray)):
            raise ImageDecodeError("The file object did not return bytes; open it in binary mode ('rb').")
        if len(data) == 0:
            raise EmptyImageError("The uploaded file is empty (0 bytes).")
        fp = io.BytesIO(data)
    elif source is None:
        raise ImageDecodeError("No image was given.")
    else:
        raise ImageDecodeError(
            f"Cannot read an image from a {type(source).__name__}; give a file path, bytes, a PIL image "
            "or a numpy array."
        )
    try:
        with warnings.catch_warnings():
            # our own max_pixels check replaces PIL's decompression-bomb warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(fp, formats=FORMATS)  # type: ignore[arg-type]
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(
            f"This image is far too large to process (the limit is {MAX_PIXELS // 1_000_000} megapixels). "
            "Please use a smaller photo."
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(
            "This file is not an image we can read (it may be damaged, or another kind of file). "
            f"Please upload a {FORMATS_TEXT} photo."
        ) from exc


def _check_dimensions(width: int, height: int, max_pixels: int, max_aspect_ratio: float) -> None:
    if width <= 0 or height <= 0:
        raise EmptyImageError(f"The image is empty ({width}x{height} pixels).")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"This image is too large ({width}x{height} = {width * height / 1e6:.0f} megapixels; "
            f"the limit is {max_pixels / 1e6:.0f} megapixels). Please use a smaller photo."
        )
    ratio = max(width, height) / min(width, height)
    if ratio > max_aspect_ratio:
        raise AspectRatioError(
            f"This image is too {'wide' if width > height else 'tall'} ({width}x{height} pixels, "
            f"{ratio:.0f}:1). Please use a photo no longer than {max_aspect_ratio:g}:1, cropped around the face."
        )


def _pil_to_rgb(im: Image.Image, background: tuple[int, int, int]) -> np.ndarray:
    """Decode a PIL image (first frame, EXIF orientation applied) into ``(H, W, 3)`` uint8."""
    try:
        if getattr(im, "is_animated", False):  # GIF / WebP / APNG / MPO: the first frame
            im.seek(0)
        im.load()
        with contextlib.suppress(Exception):  # a broken EXIF block: keep the pixels as stored
            im = ImageOps.exif_transpose(im) or im
        mode = im.mode
        if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
            arr = np.asarray(im)
            return _array_to_rgb(arr, background, None, None, int_is_16bit=mode != "F")
        if mode == "1":
            im = im.convert("L")
            mode = "L"
        has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
        if has_alpha:
            rgba = np.asarray(im.convert("RGBA"))
            return _composite(rgba[..., :3], rgba[..., 3], background)
        if mode == "RGB":
            return np.asarray(im)
        return np.asarray(im.convert("RGB"))
    except AlignError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageDecodeError(
            "This image file is damaged or incomplete and could not be read. Please upload it again or use "
            "another photo."
        ) from exc


def _composite(rgb: np.ndarray, alpha: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    a = alpha.astype(np.uint32)[..., None]
    bg = np.asarray(background, dtype=np.uint32)
    out = (rgb.astype(np.uint32) * a + bg * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def _array_to_rgb(
    arr: np.ndarray,
    background: tuple[int, int, int],
    max_pixels: int | None,
    max_aspect_ratio: float | None,
    *,
    int_is_16bit: bool = False,
) -> np.ndarray:
    if arr.size == 0:
        raise EmptyImageError(f"The image is empty (array of shape {tuple(arr.shape)}).")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (2, 3, 4)):
        raise ImageDecodeError(f"Expected an image array of shape (H, W) or (H, W, 3/4), got {tuple(arr.shape)}.")
    if max_pixels is not None and max_aspect_ratio is not None:
        _check_dimensions(arr.shape[1], arr.shape[0], max_pixels, max_aspect_ratio)
    arr = _to_uint8(arr, int_is_16bit)
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=2)
    channels = arr.shape[2]
    if channels == 2:
        return _composite(np.repeat(arr[..., :1], 3, axis=2), arr[..., 1], background)
    if channels == 4:
        return _composite(arr[..., :3], arr[..., 3], background)
    return arr


def _to_uint8(arr: np.ndarray, int_is_16bit: bool) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        f = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        if f.max(initial=0.0) <= 1.0:
            f = f * 255.0
        return np.clip(np.rint(f), 0, 255).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):
        if arr.dtype == np.uint16 or (int_is_16bit and arr.max(initial=0) > 255):
            return np.clip(np.rint(arr.astype(np.float32) / 257.0), 0, 255).astype(np.uint8)
        return np.clip(arr, 0, 255).astype(np.uint8)
    raise ImageDecodeError(f"Unsupported image array type {arr.dtype}.")
