"""Facial regions from the alignment keypoints, and the share of each map that falls in each region."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mdnet.explain.attention import AttentionMaps
from mdnet.explain.integrated_gradients import IntegratedGradientsResult
from mdnet.faces import TEMPLATE

REGIONS = ("eyes", "brows", "nose", "mouth", "cheeks_skin", "jaw_chin", "forehead", "hair_background")
REGION_LABELS = {
    "eyes": "eyes",
    "brows": "brows",
    "nose": "nose",
    "mouth": "mouth",
    "cheeks_skin": "cheeks / skin",
    "jaw_chin": "jaw / chin",
    "forehead": "forehead",
    "hair_background": "hair / background",
}


def template_keypoints(size: int) -> np.ndarray:
    """``(4, 2)`` eye, eye, nose-tip and mouth positions of a perfectly aligned ``size`` crop."""
    return TEMPLATE * size


def region_masks(keypoints: np.ndarray, size: int) -> dict[str, np.ndarray]:
    """Facial regions of a ``(size, size)`` crop as boolean masks that partition it.

    ``keypoints``: ``(k >= 4, 2)`` crop coordinates (corner origin, as in :mod:`mdnet.faces`)
    of the right eye (image left), left eye, nose tip and mouth centre -- e.g.
    ``AlignedFace.crop_keypoints`` or :func:`template_keypoints`.

    Construction: a face frame with its origin at the eye midpoint, ``u`` along the eye
    line, ``v`` perpendicular (towards the mouth), and the inter-ocular distance ``d`` as
    unit; a pixel (its centre) gets coordinates ``(a, b)`` in that frame. Then, in this
    priority order (a pixel goes to the first region that claims it):

    - eyes: an ellipse around each eye, semi-axes 0.30 (along ``u``) x 0.16 (along ``v``);
    - brows: an ellipse above each eye, centred 0.30 above it and 0.05 outwards, 0.34 x 0.12;
    - mouth: an ellipse around the mouth point, 0.45 x 0.20;
    - nose: an ellipse from the bridge (0.12 below the eye midpoint) to 0.10 below the nose
      tip, 0.24 wide;
    - the face oval, an ellipse centred on the eye midline, 1.10 wide, from the hairline
      (``b = -1.25``) to the chin (0.65 below the mouth), is split into forehead (above the
      brows, ``b < -0.42``), jaw / chin (below the mouth region, or below the nose level
      and more than 0.75 to the side), and cheeks / skin (the rest);
    - hair / background: every pixel left (outside the oval and the features).

    The numbers come from average facial proportions relative to the inter-ocular distance
    and were checked by drawing them on aligned SCUT-FBP5500 faces (``viz.draw_regions``);
    they are coarse by design: the regions are for summaries, not segmentation.
    """
    kp = np.asarray(keypoints, dtype=np.float64)
    if kp.ndim != 2 or kp.shape[0] < 4 or kp.shape[1] != 2:
        raise ValueError(f"expected (k >= 4, 2) keypoints (eyes, nose, mouth first), got {kp.shape}")
    eye_r, eye_l, nose, mouth = kp[:4]
    centre = (eye_r + eye_l) / 2
    d = float(np.linalg.norm(eye_l - eye_r))
    if d < 1e-6:
        raise ValueError("the two eye keypoints coincide")
    u = (eye_l - eye_r) / d
    v = np.array([-u[1], u[0]])
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5

    def coords(origin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rx, ry = xs - origin[0], ys - origin[1]
        return (rx * u[0] + ry * u[1]) / d, (rx * v[0] + ry * v[1]) / d

    def ellipse(origin: np.ndarray, ra: float, rb: float) -> np.ndarray:
        a, b = coords(origin)
        return (a / ra) ** 2 + (b / rb) ** 2 <= 1.0

    a, b = coords(centre)
    nose_b = float((nose - centre) @ v) / d
    mouth_b = float((mouth - centre) @ v) / d
    eyes = ellipse(eye_r, 0.30, 0.16) | ellipse(eye_l, 0.30, 0.16)
    brows = ellipse(eye_r + d * (-0.30 * v - 0.05 * u), 0.34, 0.12) | ellipse(
        eye_l + d * (-0.30 * v + 0.05 * u), 0.34, 0.12
    )
    mouth_mask = ellipse(mouth, 0.45, 0.20)
    bridge, nose_end = centre + 0.12 * d * v, nose + 0.10 * d * v
    nose_mask = ellipse((bridge + nose_end) / 2, 0.24, max(float(np.linalg.norm(nose_end - bridge)) / (2 * d), 0.1))
    top, chin = -1.25, mouth_b + 0.65
    oval = (a / 1.10) ** 2 + ((b - (top + chin) / 2) / ((chin - top) / 2)) ** 2 <= 1.0
    forehead = oval & (b < -0.42)
    jaw = oval & ((b > mouth_b + 0.20) | ((b > nose_b) & (np.abs(a) > 0.75)))
    claims = [
        ("eyes", eyes),
        ("brows", brows),
        ("mouth", mouth_mask),
        ("nose", nose_mask),
        ("jaw_chin", jaw),
        ("forehead", forehead),
        ("cheeks_skin", oval),
        ("hair_background", np.ones_like(oval)),
    ]
    taken = np.zeros((size, size), dtype=bool)
    masks: dict[str, np.ndarray] = {}
    for name, mask in claims:
        masks[name] = mask & ~taken
        taken |= mask
    return {name: masks[name] for name in REGIONS}


def region_shares(values: np.ndarray, masks: dict[str, np.ndarray]) -> dict[str, float]:
    """Share of a non-negative map ``(s, s)`` in each region of ``masks`` (a partition); sums to one.

    A map that is zero everywhere gives the regions' area shares.
    """
    values = np.asarray(values, dtype=np.float64)
    if (values < 0).any():
        raise ValueError("region shares need a non-negative map (use the absolute attributions)")
    total = values.sum()
    if total <= 0:
        values, total = np.ones_like(values), float(values.size)
    return {name: float(values[mask].sum() / total) for name, mask in masks.items()}


@dataclass
class RegionSummary:
    """Where the attribution and the attention fall, per facial region (each dict sums to one).

    Attributes:
        masks: region name -> ``(s, s)`` bool, a partition of the crop (:func:`region_masks`).
        area: share of the crop's pixels in each region (what a uniform map would give).
        ig: share of the absolute Integrated Gradients attribution.
        detail: share of the face's detail ``IntegratedGradientsResult.detail``: what ``ig`` would be
            if the model's gradient were the same everywhere; ``ig`` above ``detail`` means the
            model weighs that region's detail more than its amount alone explains.
        attention_cls: share of the class token's attention map.
        attention_tokens: share of the patch tokens' mean attention map.
    """

    masks: dict[str, np.ndarray]
    area: dict[str, float]
    ig: dict[str, float]
    detail: dict[str, float]
    attention_cls: dict[str, float]
    attention_tokens: dict[str, float]

    def to_json(self) -> dict[str, dict[str, float]]:
        return {
            key: {name: round(share, 6) for name, share in getattr(self, key).items()}
            for key in ("area", "ig", "detail", "attention_cls", "attention_tokens")
        }


def region_summary(
    keypoints: np.ndarray, ig: IntegratedGradientsResult, attention: AttentionMaps
) -> RegionSummary:
    """Shares of ``ig.absolute``, ``ig.detail`` and both attention maps per facial region (:func:`region_masks`)."""
    size = ig.absolute.shape[0]
    masks = region_masks(keypoints, size)
    return RegionSummary(
        masks=masks,
        area=region_shares(np.zeros((size, size)), masks),
        ig=region_shares(ig.absolute, masks),
        detail=region_shares(ig.detail, masks),
        attention_cls=region_shares(attention.cls, masks),
        attention_tokens=region_shares(attention.tokens, masks),
    )
