"""Drawing for the explanations: map overlays on the aligned crop and on the original photo, charts, the report.

All images are RGB ``uint8`` numpy arrays ``(h, w, 3)``; maps are float ``(h, w)``.
Figures are built with matplotlib's object API on the Agg canvas (no pyplot state,
so the app's worker threads can draw concurrently).

Maps go back onto the photo through the alignment's ``inverse_transform`` (crop ->
original, corner-origin pixel coordinates as in :mod:`mdnet.faces`): OpenCV's
``warpAffine`` into the photo's shape, with everything outside the crop masked out.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mdnet.faces import invert_transform

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from mdnet.explain import Analysis, RegionSummary, StreamAblation

__all__ = [
    "REGION_COLORS",
    "colorize",
    "draw_keypoints",
    "draw_regions",
    "figure_to_array",
    "map_to_photo",
    "normalize_map",
    "overlay",
    "overlay_on_photo",
    "plot_ablation",
    "plot_regions",
    "report_figure",
    "save_report",
    "smooth_map",
]

ABS_CMAP = "inferno"
SIGNED_CMAP = "RdBu_r"  # red: raised the score, blue: lowered it
REGION_COLORS = {
    "eyes": (31, 119, 180),
    "brows": (140, 86, 75),
    "nose": (255, 127, 14),
    "mouth": (214, 39, 40),
    "cheeks_skin": (44, 160, 44),
    "jaw_chin": (148, 103, 189),
    "forehead": (188, 189, 34),
    "hair_background": (127, 127, 127),
}
KEYPOINT_COLORS = [(0, 255, 255), (0, 255, 255), (255, 255, 0), (255, 0, 255), (0, 255, 0), (0, 255, 0)]


# =========================================================================== maps -> colours
def normalize_map(
    values: np.ndarray, *, signed: bool = False, stretch: bool = False, percentile: float = 99.5
) -> np.ndarray:
    """Scale a map for display: ``[0, 1]`` (or ``[-1, 1]`` when ``signed``), clipped at a percentile.

    Divides by the ``percentile`` of ``|values|`` so a few extreme pixels do not wash out
    the rest; a map that is zero everywhere stays zero. ``stretch`` (non-negative maps)
    first subtracts the map's minimum, so a map with a high floor (attention, which is
    spread over the whole face) shows its contrast. Returns float32 of the same shape.
    """
    values = np.asarray(values, dtype=np.float32)
    if stretch and not signed and values.size:
        values = values - values.min()
    scale = float(np.percentile(np.abs(values), percentile)) if values.size else 0.0
    if scale <= 0:
        scale = float(np.abs(values).max()) if values.size else 0.0
    if scale <= 0:
        return np.zeros_like(values)
    low = -1.0 if signed else 0.0
    return np.clip(values / scale, low, 1.0)


def smooth_map(values: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian-smoothed copy of a map ``(h, w)`` (``sigma`` in pixels; 0 returns it unchanged), float32.

    For display only: pixel-level IG is speckled (neighbouring pixels' attributions vary a
    lot); a blur of a few pixels shows where the attribution concentrates.
    """
    values = np.asarray(values, dtype=np.float32)
    if sigma <= 0:
        return values
    return cv2.GaussianBlur(values, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT)


def colorize(
    values: np.ndarray, *, signed: bool = False, stretch: bool = False, cmap: str | None = None
) -> np.ndarray:
    """Map ``(h, w)`` -> ``(h, w, 3)`` uint8 through a colour map (after :func:`normalize_map`).

    Default colour maps: ``inferno`` for non-negative maps, ``RdBu_r`` (red positive,
    blue negative, white zero) for signed ones.
    """
    norm = normalize_map(values, signed=signed, stretch=stretch)
    pos = (norm + 1) / 2 if signed else norm
    rgba = colormaps[cmap or (SIGNED_CMAP if signed else ABS_CMAP)](pos, bytes=True)
    return np.ascontiguousarray(rgba[..., :3])


def _blend_weights(values: np.ndarray, signed: bool, stretch: bool, alpha: float) -> np.ndarray:
    # Per-pixel opacity grows with the map's magnitude, so quiet areas keep the photo visible.
    return (alpha * np.sqrt(np.abs(normalize_map(values, signed=signed, stretch=stretch))))[..., None]


def overlay(
    image: np.ndarray,
    values: np.ndarray,
    *,
    signed: bool = False,
    stretch: bool = False,
    alpha: float = 0.7,
    cmap: str | None = None,
) -> np.ndarray:
    """A map drawn over an image of the same size: ``(h, w, 3)`` uint8.

    ``image``: ``(h, w, 3)`` uint8; ``values``: ``(h, w)``. The colour is blended in with an
    opacity of ``alpha * sqrt(|normalised value|)`` per pixel (see :func:`normalize_map` for
    ``signed`` and ``stretch``).
    """
    image = np.asarray(image)
    if image.shape[:2] != np.shape(values):
        raise ValueError(f"map {np.shape(values)} and image {image.shape[:2]} differ in size")
    color = colorize(values, signed=signed, stretch=stretch, cmap=cmap).astype(np.float32)
    w = _blend_weights(values, signed, stretch, alpha)
    return np.clip(image.astype(np.float32) * (1 - w) + color * w + 0.5, 0, 255).astype(np.uint8)


# =========================================================================== crop -> photo
def _cv_matrix(matrix: np.ndarray) -> np.ndarray:
    """Corner-origin (2, 3) matrix -> OpenCV's pixel-centre convention (as in ``mdnet.faces.warp``)."""
    m = np.asarray(matrix, dtype=np.float64)
    out = m.copy()
    out[:, 2] += m[:, :2] @ np.array([0.5, 0.5]) - 0.5
    return out


def _crop_bounds(inverse_transform: np.ndarray, size: int, shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """Pixel box ``(x0, y0, x1, y1)`` of the photo that the crop covers, or None when it is off the photo."""
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], dtype=np.float64)
    m = np.asarray(inverse_transform, dtype=np.float64)
    pts = corners @ m[:, :2].T + m[:, 2]
    x0, y0 = np.floor(pts.min(0)).astype(int) - 1
    x1, y1 = np.ceil(pts.max(0)).astype(int) + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, shape[1]), min(y1, shape[0])
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _warp_roi(
    crop_array: np.ndarray, inverse_transform: np.ndarray, box: tuple[int, int, int, int]
) -> np.ndarray:
    """Bilinear warp of a crop-sized array into the photo box (edges replicated; mask with :func:`_roi_mask`)."""
    x0, y0, x1, y1 = box
    m = np.asarray(inverse_transform, dtype=np.float64).copy()
    m[:, 2] -= (x0, y0)  # into the box's frame
    return cv2.warpAffine(
        np.ascontiguousarray(crop_array), _cv_matrix(m), (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )


def _roi_mask(inverse_transform: np.ndarray, size: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """``(y1 - y0, x1 - x0)`` bool: photo pixels of the box whose centre falls inside the ``size`` crop."""
    x0, y0, x1, y1 = box
    forward = invert_transform(inverse_transform)  # original -> crop
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64) + 0.5
    cx = forward[0, 0] * xs + forward[0, 1] * ys + forward[0, 2]
    cy = forward[1, 0] * xs + forward[1, 1] * ys + forward[1, 2]
    return (cx >= 0) & (cx < size) & (cy >= 0) & (cy < size)


def map_to_photo(
    values: np.ndarray, inverse_transform: np.ndarray, photo_shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """A crop map ``(s, s)`` carried into the original photo's frame.

    ``inverse_transform``: ``(2, 3)`` crop -> original (``AlignedFace.inverse_transform``);
    ``photo_shape``: ``(H, W, ...)`` (``AlignedFace.source_shape`` or ``photo.shape``).
    Returns ``(values (H, W) float32, inside (H, W) bool)``: the map bilinearly warped into
    the photo and zeroed outside the crop, and the mask of the photo pixels whose centre
    lies inside the crop.
    """
    values = np.asarray(values, dtype=np.float32)
    height, width = int(photo_shape[0]), int(photo_shape[1])
    out = np.zeros((height, width), dtype=np.float32)
    inside = np.zeros((height, width), dtype=bool)
    box = _crop_bounds(inverse_transform, values.shape[0], (height, width))
    if box is None:
        return out, inside
    x0, y0, x1, y1 = box
    mask = _roi_mask(inverse_transform, values.shape[0], box)
    out[y0:y1, x0:x1] = np.where(mask, _warp_roi(values, inverse_transform, box), 0.0)
    inside[y0:y1, x0:x1] = mask
    return out, inside


def overlay_on_photo(
    photo: np.ndarray,
    values: np.ndarray,
    inverse_transform: np.ndarray,
    *,
    signed: bool = False,
    stretch: bool = False,
    alpha: float = 0.7,
    cmap: str | None = None,
    outline: bool = True,
) -> np.ndarray:
    """A crop map drawn onto the original photo ``(H, W, 3)`` uint8 -> ``(H, W, 3)`` uint8.

    The map is coloured at crop resolution (as in :func:`overlay`), then the colour and the
    opacity are warped through ``inverse_transform`` (crop -> original) into the part of
    the photo that the crop covers (only that box is warped, so a 12-megapixel photo costs
    little); pixels outside the crop are left untouched. With
    ``outline``, the crop's border is drawn as a thin white line.
    """
    photo = np.asarray(photo)
    out = photo.copy()
    box = _crop_bounds(inverse_transform, np.shape(values)[0], photo.shape[:2])
    if box is None:
        return out
    x0, y0, x1, y1 = box
    size = np.shape(values)[0]
    color = _warp_roi(colorize(values, signed=signed, stretch=stretch, cmap=cmap), inverse_transform, box)
    w = _warp_roi(_blend_weights(values, signed, stretch, alpha)[..., 0], inverse_transform, box)
    w = np.where(_roi_mask(inverse_transform, size, box), w, 0.0).astype(np.float32)[..., None]
    region = out[y0:y1, x0:x1].astype(np.float32)
    out[y0:y1, x0:x1] = np.clip(region * (1 - w) + color.astype(np.float32) * w + 0.5, 0, 255).astype(np.uint8)
    if outline:
        m = np.asarray(inverse_transform, dtype=np.float64)
        corners = np.array([[0, 0], [size, 0], [size, size], [0, size]], dtype=np.float64) @ m[:, :2].T + m[:, 2]
        thickness = max(1, round(max(photo.shape[:2]) / 400))
        cv2.polylines(out, [np.round(corners - 0.5).astype(np.int32)], True, (255, 255, 255), thickness, cv2.LINE_AA)
    return out


# =========================================================================== annotations
def draw_keypoints(image: np.ndarray, keypoints: np.ndarray, radius: int | None = None) -> np.ndarray:
    """The image ``(h, w, 3)`` uint8 with keypoints ``(k, 2)`` (corner-origin) drawn as dots; a copy."""
    out = np.ascontiguousarray(np.asarray(image).copy())
    r = radius or max(2, round(out.shape[0] / 90))
    for i, (x, y) in enumerate(np.asarray(keypoints, dtype=np.float64)):
        center = (round(x - 0.5), round(y - 0.5))
        cv2.circle(out, center, r + 1, (0, 0, 0), -1, cv2.LINE_AA)
        cv2.circle(out, center, r, KEYPOINT_COLORS[i % len(KEYPOINT_COLORS)], -1, cv2.LINE_AA)
    return out


def draw_regions(image: np.ndarray, masks: dict[str, np.ndarray], alpha: float = 0.35) -> np.ndarray:
    """The image ``(s, s, 3)`` uint8 tinted by facial region (:data:`REGION_COLORS`), with outlines."""
    out = np.asarray(image).astype(np.float32)
    for name, mask in masks.items():
        if name == "hair_background":
            continue
        color = np.array(REGION_COLORS.get(name, (255, 255, 255)), dtype=np.float32)
        out[mask] = out[mask] * (1 - alpha) + color * alpha
    out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    for name, mask in masks.items():
        if name == "hair_background":
            continue
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, REGION_COLORS.get(name, (255, 255, 255)), 1, cv2.LINE_AA)
    return out


# =========================================================================== charts
def plot_ablation(ax: Axes, ablation: StreamAblation | None, score_range: tuple[float, float] = (1.0, 5.0)) -> None:
    """Horizontal bars: the score with both streams, the prior stream only, the Vim stream only."""
    ax.set_title("stream ablation")
    if ablation is None:
        ax.text(0.5, 0.5, "not available\n(model not calibrated)", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    labels = ["full", "prior only\n(Vim = mean)", "Vim only\n(prior = mean)"]
    values = [ablation.full, ablation.prior_only, ablation.vim_only]
    colors = ["#444444", "#1f77b4", "#ff7f0e"]
    y = np.arange(len(values))[::-1]
    ax.barh(y, values, color=colors, height=0.6)
    for yi, v in zip(y, values, strict=True):
        delta = "" if v is values[0] else f"  ({v - values[0]:+.2f})"
        ax.text(v, yi, f" {v:.2f}{delta}", va="center", fontsize=8)
    ax.set_yticks(y, labels, fontsize=8)
    low, high = score_range
    ax.set_xlim(low, high + 0.35 * (high - low))
    ax.set_xticks(np.arange(np.ceil(low), np.floor(high) + 1))
    ax.set_xlabel("score")


def plot_regions(ax: Axes, regions: RegionSummary) -> None:
    """Grouped horizontal bars per region: share of |IG|, of the class-token attention, of the face's detail
    (``|face - blurred face|``, the model-independent part of |IG|) and of the area."""
    from mdnet.explain import REGION_LABELS, REGIONS

    names = list(REGIONS)
    y = np.arange(len(names))[::-1].astype(float)
    faces_only = [n for n in names if n != "hair_background"]
    series = [
        ("|IG| attribution", regions.ig, "#d62728"),
        ("attention (class token)", regions.attention_cls, "#1f77b4"),
        ("detail |face - blur|", regions.detail, "#8c8c8c"),
        ("area", regions.area, "#d9d9d9"),
    ]
    height = 0.8 / len(series)
    # hair / background usually holds most of everything: cut the axis at the face regions' scale
    limit = 1.3 * max(100 * shares[n] for _, shares, _ in series for n in faces_only)
    for i, (label, shares, color) in enumerate(series):
        offset = ((len(series) - 1) / 2 - i) * height
        values = [100 * shares[n] for n in names]
        ax.barh(y + offset, values, height=height, color=color, label=label)
        for yi, v in zip(y, values, strict=True):
            if v > limit:
                ax.text(limit, yi + offset, f"{v:.0f}% ", ha="right", va="center", fontsize=6, color="white")
    ax.set_xlim(0, limit)
    ax.set_yticks(y, [REGION_LABELS[n] for n in names], fontsize=8)
    ax.set_xlabel("share (%)")
    ax.set_title("facial regions: where |IG| and attention fall")
    ax.legend(fontsize=7, loc="upper right")


# =========================================================================== report
def report_figure(analysis: Analysis, photo: np.ndarray | None = None) -> Figure:
    """One figure for an :class:`~mdnet.explain.Analysis`, two rows of three panels.

    Top: the aligned face with its keypoints and the facial regions (score in the title),
    the class token's attention over the face, the |IG| attribution over the face.
    Bottom: the signed IG map drawn back onto the original ``photo`` (``(H, W, 3)`` uint8;
    on the crop when no photo or no alignment is given), the stream ablation bars and the
    region shares.
    """
    fig = Figure(figsize=(15, 9.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3)
    face = analysis.face
    low, high = analysis.score_range
    ig = analysis.ig

    ax = axes[0, 0]
    ax.imshow(draw_keypoints(draw_regions(face, analysis.regions.masks), analysis.keypoints))
    ax.set_title(f"score {analysis.score:.2f} on {low:g}-{high:g} ({analysis.model_name})")
    ax = axes[0, 1]
    ax.imshow(overlay(face, analysis.attention.cls, stretch=True))
    ax.set_title("cross-attention of the class token, min to max\n(U-Net locations the Vim stream read)", fontsize=10)
    sigma = face.shape[0] / 112  # 2 px at 224
    ax = axes[0, 2]
    ax.imshow(overlay(face, smooth_map(ig.absolute, sigma)))
    ax.set_title(
        f"|Integrated Gradients|, {ig.n_steps} steps, blurred baseline (smoothed)\n"
        f"f(face) - f(blur) = {ig.score - ig.baseline_score:+.3f}, delta {ig.delta:+.1e}",
        fontsize=10,
    )
    ax = axes[1, 0]
    signed = smooth_map(ig.signed, sigma)
    if photo is not None and analysis.aligned is not None:
        inverse = analysis.aligned.inverse_transform
        drawn = overlay_on_photo(photo, signed, inverse, signed=True)
        box = _crop_bounds(inverse, face.shape[0], photo.shape[:2])
        if box is not None:  # zoom on the face: the crop's box with a margin of half its size
            x0, y0, x1, y1 = box
            mx, my = (x1 - x0) // 2, (y1 - y0) // 2
            drawn = drawn[max(y0 - my, 0) : y1 + my, max(x0 - mx, 0) : x1 + mx]
        ax.imshow(drawn)
        ax.set_title("signed IG on the photo (red raises the score, blue lowers it)", fontsize=10)
    else:
        ax.imshow(overlay(face, signed, signed=True))
        ax.set_title("signed IG (red raises the score, blue lowers it)", fontsize=10)
    for a in (axes[0, 0], axes[0, 1], axes[0, 2], axes[1, 0]):
        a.set_axis_off()
    plot_ablation(axes[1, 1], analysis.ablation, analysis.score_range)
    plot_regions(axes[1, 2], analysis.regions)
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render a matplotlib figure to an ``(h, w, 3)`` uint8 RGB array."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[..., :3])


def save_report(analysis: Analysis, path: str | Path, photo: np.ndarray | None = None) -> Path:
    """Write :func:`report_figure` to ``path`` (format from the suffix: png, jpg, pdf, svg)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    report_figure(analysis, photo).savefig(path)
    return path
