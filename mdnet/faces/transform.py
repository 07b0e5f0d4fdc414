"""The alignment template and the geometry that maps a face onto it.

Coordinates: all pixel coordinates are continuous, ``(x, y)``, with ``(0, 0)`` at the top-left
*corner* of the top-left pixel (pixel ``(i, j)`` covers ``[i, i+1) x [j, j+1)``). Transforms are
``(2, 3)`` float64 matrices ``M`` with ``[x', y'] = M @ [x, y, 1]``.
"""

from __future__ import annotations

import math
from typing import Literal

import cv2
import numpy as np

BorderMode = Literal["replicate", "constant"]
DEFAULT_SIZE = 224  # side of the aligned crop

# Target positions of keypoints 0-3 (right eye, left eye, nose tip, mouth centre) in
# the output crop, as fractions of its side. Derived from data: the detector (this
# module's full pipeline) was run on the 3300 SCUT-FBP5500 training images
# (350x350) and its keypoints, divided by 350, were averaged over all detected
# faces, then made mirror-symmetric about x = 0.5 (eyes at the mean eye height and
# half the mean eye distance either side; nose and mouth on the midline, at their mean
# heights; the mean eye midpoint was at x = 0.504, i.e. 0.8 px off in a 224 crop). So
# an aligned SCUT-FBP5500 image is, on average, the original image resized to `size`.
# Re-derive / check with `python benchmarks/align_quality.py --derive-template`.
TEMPLATE = np.array(
    [
        [0.3731, 0.4584],  # right eye (image left)
        [0.6269, 0.4584],  # left eye (image right)
        [0.5000, 0.6111],  # nose tip
        [0.5000, 0.7320],  # mouth centre
    ],
    dtype=np.float64,
)
# Least-squares weights of those points: the eyes dominate (rotation and most of the
# scale); nose and mouth stabilise the scale when the head is turned (eye distance
# shrinks with yaw) and the vertical position.
TEMPLATE_WEIGHTS = np.array([1.0, 1.0, 0.25, 0.5], dtype=np.float64)


def estimate_transform(
    keypoints: np.ndarray,
    size: int = DEFAULT_SIZE,
    *,
    template: np.ndarray = TEMPLATE,
    weights: np.ndarray = TEMPLATE_WEIGHTS,
) -> np.ndarray:
    """Weighted least-squares similarity transform from keypoints to the template.

    Args:
        keypoints: ``(K, 2)`` points in the source image, ``K >= len(template)``;
            the first ``len(template)`` are used (MediaPipe order).
        size: side of the output crop; the template is scaled by it.
        template: ``(N, 2)`` target positions as fractions of ``size``.
        weights: ``(N,)`` non-negative weights.

    Returns:
        ``(2, 3)`` float64 matrix mapping source pixels to crop pixels
        (rotation + uniform scale + translation; no reflection, no shear).
    """
    src = np.asarray(keypoints, dtype=np.float64)[: len(template)]
    dst = np.asarray(template, dtype=np.float64) * float(size)
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    ms = w @ src
    md = w @ dst
    zs = (src[:, 0] - ms[0]) + 1j * (src[:, 1] - ms[1])
    zd = (dst[:, 0] - md[0]) + 1j * (dst[:, 1] - md[1])
    denom = float(np.sum(w * np.abs(zs) ** 2))
    if denom <= 1e-12:
        raise ValueError("Degenerate keypoints: all points coincide.")
    a = complex(np.sum(w * np.conj(zs) * zd)) / denom  # scale * exp(i * angle)
    rot = np.array([[a.real, -a.imag], [a.imag, a.real]])
    t = md - rot @ ms
    return np.hstack([rot, t[:, None]])


def invert_transform(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a ``(2, 3)`` affine matrix, as ``(2, 3)``."""
    m = np.asarray(matrix, dtype=np.float64)
    a_inv = np.linalg.inv(m[:, :2])
    return np.hstack([a_inv, (-a_inv @ m[:, 2])[:, None]])


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map ``(N, 2)`` points through a ``(2, 3)`` affine matrix; returns ``(N, 2)`` float64."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    m = np.asarray(matrix, dtype=np.float64)
    return p @ m[:, :2].T + m[:, 2]


def _transform_scale(matrix: np.ndarray) -> float:
    return float(math.sqrt(abs(np.linalg.det(np.asarray(matrix, dtype=np.float64)[:, :2]))))


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """``outer ∘ inner`` for (2, 3) matrices."""
    o = np.vstack([outer, [0.0, 0.0, 1.0]])
    i = np.vstack([inner, [0.0, 0.0, 1.0]])
    return (o @ i)[:2]


def warp(
    rgb: np.ndarray,
    matrix: np.ndarray,
    size: int | tuple[int, int],
    *,
    border: BorderMode = "replicate",
    border_value: tuple[int, int, int] = (0, 0, 0),
) -> np.ndarray:
    """Warp ``rgb`` by ``matrix`` (source -> output, corner-origin pixel coordinates).

    Strong down-scaling is anti-aliased: the needed source region is first reduced
    with area interpolation, then warped bilinearly at a scale near 1. Only the
    region that lands in the output is touched, so a 12-megapixel photo costs about
    as much as a small one.

    Args:
        rgb: ``(H, W, 3)`` uint8.
        matrix: ``(2, 3)`` source -> output.
        size: output side, or ``(width, height)``.
        border: ``"replicate"`` (repeat edge pixels) or ``"constant"`` (``border_value``).

    Returns:
        ``(height, width, 3)`` uint8.
    """
    out_w, out_h = (size, size) if isinstance(size, int) else size
    m = np.asarray(matrix, dtype=np.float64)
    src = rgb
    scale = _transform_scale(m)
    if scale < 0.75:
        inv = invert_transform(m)
        corners = apply_transform(inv, np.array([[0, 0], [out_w, 0], [0, out_h], [out_w, out_h]], float))
        pad = 2.0 / scale
        x0 = max(int(math.floor(corners[:, 0].min() - pad)), 0)
        y0 = max(int(math.floor(corners[:, 1].min() - pad)), 0)
        x1 = min(int(math.ceil(corners[:, 0].max() + pad)), rgb.shape[1])
        y1 = min(int(math.ceil(corners[:, 1].max() + pad)), rgb.shape[0])
        k = int(1.0 / scale)
        if x1 - x0 >= 2 * k and y1 - y0 >= 2 * k:
            # 1) integer k x k box reduction (OpenCV's fast path), 2) exact area resize of
            # what is left if still < 0.75, 3) bilinear warp at a scale in [0.75, 1]
            src = _reduce(rgb[y0:y1, x0:x1], k)
            to_src = np.array([[float(k), 0.0, x0], [0.0, float(k), y0]])  # reduced pixel -> source (corners)
            rest = scale * k
            if rest < 0.75:
                h, w = src.shape[:2]
                rw, rh = max(int(round(w * rest)), 1), max(int(round(h * rest)), 1)
                src = cv2.resize(src, (rw, rh), interpolation=cv2.INTER_AREA)
                to_src = _compose(to_src, np.array([[w / rw, 0.0, 0.0], [0.0, h / rh, 0.0]]))
            m = _compose(m, to_src)
    # corner convention -> OpenCV's pixel-centre convention: q_c = A (p_c + 0.5) + t - 0.5
    m_cv = m.copy()
    m_cv[:, 2] += m[:, :2] @ np.array([0.5, 0.5]) - 0.5
    mode = cv2.BORDER_REPLICATE if border == "replicate" else cv2.BORDER_CONSTANT
    return cv2.warpAffine(
        np.ascontiguousarray(src),
        m_cv,
        (out_w, out_h),
        flags=cv2.INTER_LINEAR,
        borderMode=mode,
        borderValue=tuple(int(v) for v in border_value),
    )


def _reduce(img: np.ndarray, k: int) -> np.ndarray:
    """Average ``k x k`` blocks (the last ``< k`` rows / columns are dropped): ``(H // k, W // k, C)``."""
    if k <= 1:
        return img
    h, w = (img.shape[0] // k) * k, (img.shape[1] // k) * k
    return cv2.resize(img[:h, :w], (w // k, h // k), interpolation=cv2.INTER_AREA)
