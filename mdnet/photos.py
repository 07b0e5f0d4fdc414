"""Photos in memory: decode within limits (uploads, webcam frames, data URLs), downscale, draw the faces found.

Nothing here writes a photo to disk or logs it. :mod:`mdnet.service` builds on these and re-exports
the public names.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from mdnet.errors import MAX_UPLOAD_BYTES, UploadTooLargeError
from mdnet.faces.io import MAX_PIXELS

DISPLAY_MAX_SIDE = 1024  # photos are shown (and drawn on) at most this many pixels on their longest side
LIVE_MAX_SIDE = 640
# Webcam frames: what a camera can send. A 4K frame is 8.8 megapixels; its PNG is a few MB.
MAX_FRAME_BYTES = 8 * 1024 * 1024
MAX_FRAME_PIXELS = 12_000_000


def read_photo(image: Any, max_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int | None = None) -> np.ndarray:
    """Decode any photo input to ``(H, W, 3)`` uint8 RGB, in memory, refusing uploads over ``max_bytes``.

    ``image``: what :func:`mdnet.faces.load_rgb` takes, or a ``data:image/...;base64,`` URL (how browsers
    send webcam frames), whose size is checked before it is decoded. ``max_pixels``: a lower pixel limit
    than the general one (webcam frames). Raises ``UploadTooLargeError`` or an
    :class:`mdnet.faces.AlignError` (not an image, empty, too large, ...).
    """
    from mdnet.faces import load_rgb

    size = None
    if isinstance(image, str) and image.startswith("data:"):
        image = _decode_data_url(image, max_bytes)
    if isinstance(image, (str, os.PathLike)) and Path(image).is_file():
        size = Path(image).stat().st_size
        if size <= max_bytes:
            image = Path(image).read_bytes()  # one read into memory; decoding happens from there
    elif isinstance(image, (bytes, bytearray, memoryview)):
        size = len(image)
    if size is not None and size > max_bytes:
        raise UploadTooLargeError(
            f"This file is {size / 1024 / 1024:.1f} MB; the limit is {max_bytes // (1024 * 1024)} MB. "
            "Please upload a smaller photo."
        )
    return load_rgb(image, max_pixels=min(MAX_PIXELS, max_pixels or MAX_PIXELS))


def read_frame(frame: Any) -> np.ndarray:
    """A webcam frame (a data URL, bytes, a file or an array) within what a camera can send.

    Frames over :data:`MAX_FRAME_BYTES` or :data:`MAX_FRAME_PIXELS` are refused before decoding.
    """
    from mdnet.faces import ImageTooLargeError

    try:
        return read_photo(frame, max_bytes=MAX_FRAME_BYTES, max_pixels=MAX_FRAME_PIXELS)
    except UploadTooLargeError as err:
        raise UploadTooLargeError(
            f"This camera frame is larger than a webcam sends (the limit is {MAX_FRAME_BYTES // 2**20} MB)."
        ) from err
    except ImageTooLargeError as err:
        raise ImageTooLargeError(
            f"This camera frame is larger than a webcam sends (the limit is {MAX_FRAME_PIXELS / 1e6:.0f} megapixels)."
        ) from err


def _decode_data_url(url: str, max_bytes: int) -> bytes:
    """The bytes of a base64 ``data:`` URL, refusing one whose decoded size would exceed ``max_bytes``."""
    import base64
    import binascii

    from mdnet.faces import ImageDecodeError

    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise ImageDecodeError("This image data is not a base64 data URL, so it cannot be read.")
    if len(payload) * 3 // 4 > max_bytes:
        raise UploadTooLargeError(
            f"This image is about {len(payload) * 3 / 4 / 2**20:.1f} MB; the limit is {max_bytes // 2**20} MB."
        )
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ImageDecodeError("This image data is damaged (not valid base64), so it cannot be read.") from err


def _downscale(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    import cv2

    h, w = rgb.shape[:2]
    f = min(1.0, max_side / max(h, w))
    if f >= 1.0:
        return rgb, 1.0
    small = cv2.resize(rgb, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    return small, f


def thumbnail(image: np.ndarray, max_side: int = LIVE_MAX_SIDE) -> np.ndarray | None:
    """An RGB uint8 array downscaled to ``max_side`` (None when it is not such an array)."""
    arr = np.asarray(image) if isinstance(image, np.ndarray) else None
    if arr is None or arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or arr.size == 0:
        return None
    return _downscale(arr, max_side)[0]


def _enlarge(image: np.ndarray, side: int) -> np.ndarray:
    import cv2

    if image.shape[0] >= side:
        return image
    return cv2.resize(image, (side, side), interpolation=cv2.INTER_CUBIC)


def draw_faces(
    photo: np.ndarray,
    aligned: Any,
    max_side: int = DISPLAY_MAX_SIDE,
    label: str | None = None,
    mirror: bool = False,
    scale: float = 1.0,
) -> np.ndarray:
    """``photo`` downscaled to ``max_side`` with the faces' boxes (numbered) and the chosen face's keypoints.

    ``mirror``: draw on the horizontally flipped photo (boxes and points flipped with it). ``scale``: ``photo``
    pixels per pixel of the photo the faces were found in (a display copy's scale).
    """
    import cv2

    from mdnet.explain import viz

    small, f = _downscale(photo, max_side)
    f *= scale
    width = small.shape[1]
    out = cv2.flip(small, 1) if mirror else small.copy()  # cv2.flip: ~10x faster than a strided numpy copy
    thick = max(1, round(max(out.shape[:2]) / 300))

    def flip_x(points: np.ndarray) -> np.ndarray:
        points = np.array(points, dtype=np.float64) * f
        if mirror:
            points[..., 0] = width - points[..., 0]
        return points

    for i, face in enumerate(aligned.faces):
        (bx0, by0), (bx1, by1) = flip_x(np.reshape(face.box, (2, 2)))
        x0, x1 = sorted((round(bx0), round(bx1)))
        y0, y1 = round(by0), round(by1)
        chosen = i == aligned.face_index
        color = (255, 215, 0) if chosen else (200, 200, 200)
        cv2.rectangle(out, (x0, y0), (x1, y1), color, thick + (1 if chosen else 0), cv2.LINE_AA)
        text = label if (label is not None and chosen) else (str(i + 1) if len(aligned.faces) > 1 else None)
        if text:
            scale = max(0.5, (x1 - x0) / 160)
            (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick + 1)
            ty = max(th + 4, y0 - 4)
            cv2.rectangle(out, (x0, ty - th - 4), (x0 + tw + 6, ty + base - 2), color, -1)
            cv2.putText(out, text, (x0 + 3, ty - 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 1,
                        cv2.LINE_AA)
    return viz.draw_keypoints(out, flip_x(aligned.keypoints), radius=max(2, thick + 1))


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an RGB array, in memory (for callers that want bytes rather than arrays)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


