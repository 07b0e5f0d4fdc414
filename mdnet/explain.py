"""Explanations of one MD-Net score: attention maps, Integrated Gradients, stream ablation, regions.

    python -m mdnet.explain PHOTO --output report.png [--json report.json] [--steps N] [--checkpoint PATH]

Four views of why the model gave an aligned face (``s x s`` crop) its score:

- :func:`attention_maps` -- where the fusion looked: the cross-attention weights of
  the Vim tokens (queries) over the U-Net tokens (keys), averaged over heads and
  layers, as a map over the crop. It shows what the Vim stream *read from* the
  generative prior, not what changed the score.
- :func:`integrated_gradients` -- what changed the score: Integrated Gradients
  (Captum) of the full model's score with respect to the normalised input pixels,
  from a blurred copy of the face to the face. Attributions add up to
  ``score(face) - score(blurred face)`` (completeness; the convergence delta says how
  well the numerical integral meets it).
- :func:`stream_ablation` -- how much each stream matters for this face: the score
  with the prior stream, or the Vim stream, replaced by its stored mean over the
  training faces (see :mod:`mdnet.model`).
- :func:`region_summary` -- the share of the attribution and of the attention that
  falls in each facial region (:data:`REGIONS`), from the alignment's keypoints.

:func:`analyze` runs all four for one face and returns an :class:`Analysis`; the app
and the CLI only lay it out (drawing lives in :mod:`mdnet.viz`).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from mdnet.align import TEMPLATE, AlignedFace
from mdnet.fusion import attention_to_maps
from mdnet.model import MDNet

__all__ = [
    "BLUR_SIGMA",
    "DEFAULT_INTERNAL_BATCH",
    "DEFAULT_STEPS",
    "REGIONS",
    "REGION_LABELS",
    "Analysis",
    "AttentionMaps",
    "IntegratedGradientsResult",
    "RegionSummary",
    "StreamAblation",
    "analyze",
    "attention_maps",
    "blurred_baseline",
    "combine_scales",
    "integrated_gradients",
    "region_masks",
    "region_shares",
    "region_summary",
    "stream_ablation",
    "template_keypoints",
]

# Integrated Gradients defaults. IG is ~90 % of the analysis and its cost is linear in the
# steps: 16 keep the whole analysis of one photo with the `tiny` preset within the 5 s CPU
# budget. The completeness error at 16 steps: ~1e-4 of |f(x) - f(baseline)| for a random
# `tiny` model, ~1e-3 score units (0.1 of the small gap) for one trained briefly on a
# synthetic target, whose path is rougher (README.md, "Speed", has the measurements; the delta
# is reported with every result). The steps run in chunks of DEFAULT_INTERNAL_BATCH, which
# costs about the same as one batch on the CPU and lets the progress callback report.
DEFAULT_STEPS = 16
DEFAULT_INTERNAL_BATCH = 4
BLUR_SIGMA = 0.1  # Gaussian blur of the IG baseline, as a fraction of the crop side (22 px at 224)

Progress = Callable[[float], object]


# =========================================================================== attention
@dataclass
class AttentionMaps:
    """Cross-attention of the fusion, averaged over heads and layers.

    Attributes:
        cls: ``(s, s)`` float32, sums to one: where the class token's attention went, over the crop.
        tokens: ``(s, s)`` float32, sums to one: the same for the mean over the ``L`` patch tokens
            (the class token left out, so the two maps are separate views; they are the two
            inputs the regression head reads).
        cls_scales, tokens_scales: the raw per-scale grids ``[(h_i, w_i)]`` before upsampling;
            all scales together sum to one, each scale to the attention mass it received.
        shapes: ``[(h_i, w_i)]`` of the U-Net scales, in key order.
        score: the full model's score of this forward (no mirror averaging).
    """

    cls: np.ndarray
    tokens: np.ndarray
    cls_scales: list[np.ndarray]
    tokens_scales: list[np.ndarray]
    shapes: list[tuple[int, int]]
    score: float

    @property
    def cls_scale_mass(self) -> list[float]:
        """Share of the class token's attention that went to each U-Net scale (sums to one)."""
        return [float(g.sum()) for g in self.cls_scales]

    @property
    def tokens_scale_mass(self) -> list[float]:
        """Share of the patch tokens' attention that went to each U-Net scale (sums to one)."""
        return [float(g.sum()) for g in self.tokens_scales]


def combine_scales(grids: list[np.ndarray], size: int) -> np.ndarray:
    """Per-scale attention grids ``[(h_i, w_i)]`` -> one ``(size, size)`` map over the crop.

    Every U-Net scale covers the whole crop, so each grid is upsampled (bilinearly, as a
    density) to the crop and rescaled to the attention mass its scale received; the sum
    over scales is therefore the mass-weighted average of the scales' maps, and the result
    sums to the total mass of the grids (one for an attention row).
    """
    out = np.zeros((size, size), dtype=np.float64)
    for grid in grids:
        grid = np.asarray(grid, dtype=np.float64)
        mass = grid.sum()
        if mass <= 0:
            continue
        density = cv2.resize(grid / mass, (size, size), interpolation=cv2.INTER_LINEAR)
        density = np.clip(density, 0.0, None)
        out += mass * density / density.sum()
    return out.astype(np.float32)


@torch.no_grad()
def attention_maps(model: MDNet, x: torch.Tensor) -> AttentionMaps:
    """The fusion's attention over the U-Net locations, for one normalised face x ``(1, 3, s, s)``.

    Each attention row (one query, one head, one layer) is a distribution over the U-Net
    tokens of all scales (rows sum to one). Rows are averaged over heads and layers, then
    taken for the class token (``cls``) and averaged over the patch tokens (``tokens``),
    split into per-scale grids (:func:`mdnet.fusion.attention_to_maps`) and combined over
    the crop (:func:`combine_scales`). It measures what the Vim stream looked up in the
    prior's features, which is not the same as what the score depends on (see
    :func:`integrated_gradients` for that).
    """
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"attention_maps explains one face: expected x of shape (1, 3, s, s), got {tuple(x.shape)}")
    out = model(x, return_attention=True)
    weights = torch.stack(out.attention).float().mean(dim=(0, 2))[0]  # layers, heads -> (L + 1, M)
    cls_row = weights[out.cls_index]
    keep = torch.ones(weights.shape[0], dtype=torch.bool, device=weights.device)
    keep[out.cls_index] = False
    token_row = weights[keep].mean(0)
    size = x.shape[-1]
    cls_scales = [g.cpu().numpy() for g in attention_to_maps(cls_row, out.prior_shapes)]
    token_scales = [g.cpu().numpy() for g in attention_to_maps(token_row, out.prior_shapes)]
    return AttentionMaps(
        cls=combine_scales(cls_scales, size),
        tokens=combine_scales(token_scales, size),
        cls_scales=cls_scales,
        tokens_scales=token_scales,
        shapes=list(out.prior_shapes),
        score=float(out.score[0]),
    )


# =========================================================================== integrated gradients
@dataclass
class IntegratedGradientsResult:
    """Integrated Gradients of the full model's score for one face.

    Attributes:
        signed: ``(s, s)`` float32, the attributions summed over the colour channels; positive
            where the face's detail (vs the blurred baseline) raised the score.
        absolute: ``(s, s)`` float32, ``abs(signed)`` (Captum's convention: sum, then magnitude).
        detail: ``(s, s)`` float32, ``sum_c |x_c - baseline_c|``: where the face differs from its blur
            (in normalised units). IG multiplies the gradient by this difference, so ``absolute``
            is large where the face has detail whatever the model does; this map is that
            model-independent part, the reference to read ``absolute`` against.
        delta: convergence delta, ``sum(attributions) - (f(x) - f(baseline))``, as Captum's
            ``compute_convergence_delta`` defines it; zero for an exact integral.
        score: ``f(x)``, the full model's score of the face (no mirror averaging).
        baseline_score: ``f(baseline)``.
        n_steps, method: the integral's quadrature (Captum's ``n_steps`` and ``method``).
        blur_sigma: the baseline's Gaussian blur, in crop pixels.
    """

    signed: np.ndarray
    absolute: np.ndarray
    detail: np.ndarray
    delta: float
    score: float
    baseline_score: float
    n_steps: int
    method: str
    blur_sigma: float

    @property
    def relative_delta(self) -> float:
        """``|delta| / |f(x) - f(baseline)|``: the completeness error as a fraction of what is explained."""
        gap = abs(self.score - self.baseline_score)
        return abs(self.delta) / gap if gap > 0 else float("inf") if self.delta else 0.0


def _gaussian_kernel(sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def blurred_baseline(x: torch.Tensor, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """A strongly Gaussian-blurred copy of the faces x ``(b, 3, s, s)`` (same space as x).

    ``sigma`` is a fraction of the crop side (0.1: 22 px at 224, about the size of an eye).
    Why this baseline: IG explains ``f(x) - f(baseline)``. A blurred face keeps the face's
    colours, brightness and rough layout (skin, hair, background) but removes its structure
    (eyes, brows, mouth, contours), so the attributions explain what the facial *detail*
    adds to the score; a black image would also credit the pixels for being bright and
    skin-coloured, and is far from any training face (its score is out of distribution).
    Blurring the normalised input equals blurring the pixels (normalisation is per-channel
    affine). Borders are reflected.
    """
    sigma_px = sigma * x.shape[-1]
    k = _gaussian_kernel(sigma_px, x.device, x.dtype)
    radius = (k.numel() - 1) // 2
    if radius >= min(x.shape[-2:]):
        raise ValueError(f"blur sigma {sigma} is too large for a {x.shape[-1]} px crop")
    channels = x.shape[1]
    out = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    out = F.pad(out, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(out, k.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def integrated_gradients(
    model: MDNet,
    x: torch.Tensor,
    *,
    n_steps: int = DEFAULT_STEPS,
    internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH,
    baseline: torch.Tensor | None = None,
    blur_sigma: float = BLUR_SIGMA,
    method: str = "gausslegendre",
    progress: Progress | None = None,
) -> IntegratedGradientsResult:
    """Integrated Gradients (``captum.attr.IntegratedGradients``) of the full score for x ``(1, 3, s, s)``.

    Measures how much each input pixel's difference from the baseline (default
    :func:`blurred_baseline`) contributed to ``f(x) - f(baseline)``, where ``f`` is the
    full model's score (both streams: the frozen prior is differentiable with respect to
    its input). The path integral uses ``n_steps`` points of ``method`` (Captum's), run in
    forward/backward chunks of ``internal_batch_size`` points (``None``: all at once).
    ``progress(fraction)`` is called as the chunks complete, ending with 1.0.
    """
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"integrated_gradients explains one face: expected (1, 3, s, s), got {tuple(x.shape)}")
    if n_steps < 1:
        raise ValueError(f"n_steps must be at least 1, got {n_steps}")
    from captum.attr import IntegratedGradients

    model.eval()
    x = x.detach()
    if baseline is None:
        baseline = blurred_baseline(x, blur_sigma)
    done = 0

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        nonlocal done
        if progress is not None:
            progress(min(done / n_steps, 1.0))  # the previous chunk's backward has finished
        done += inputs.shape[0]
        return model(inputs).score

    ig = IntegratedGradients(forward)
    attributions = ig.attribute(
        x, baselines=baseline, n_steps=n_steps, method=method, internal_batch_size=internal_batch_size
    )
    with torch.no_grad():
        ends = model(torch.cat([x, baseline])).score.double()
    total = attributions.double().sum()
    delta = float(total - (ends[0] - ends[1]))
    if progress is not None:
        progress(1.0)
    signed = attributions[0].sum(0).float().cpu().numpy()
    return IntegratedGradientsResult(
        signed=signed,
        absolute=np.abs(signed),
        detail=(x - baseline).abs().sum(1)[0].float().cpu().numpy(),
        delta=delta,
        score=float(ends[0]),
        baseline_score=float(ends[1]),
        n_steps=n_steps,
        method=method,
        blur_sigma=blur_sigma * x.shape[-1],
    )


# =========================================================================== ablation
@dataclass
class StreamAblation:
    """Scores of one face with each stream switched off (no mirror averaging).

    Attributes:
        full: both streams.
        prior_only: the Vim tokens replaced by their stored mean over the training faces.
        vim_only: the U-Net feature maps replaced by their stored mean.
    """

    full: float
    prior_only: float
    vim_only: float

    @property
    def full_minus_prior_only(self) -> float:
        """What this face's Vim tokens add to the score (vs the average Vim tokens)."""
        return self.full - self.prior_only

    @property
    def full_minus_vim_only(self) -> float:
        """What this face's U-Net features add to the score (vs the average features)."""
        return self.full - self.vim_only

    def to_json(self) -> dict[str, float]:
        return {
            "full": self.full,
            "prior_only": self.prior_only,
            "vim_only": self.vim_only,
            "full_minus_prior_only": self.full_minus_prior_only,
            "full_minus_vim_only": self.full_minus_vim_only,
        }


@torch.no_grad()
def stream_ablation(model: MDNet, x: torch.Tensor) -> StreamAblation:
    """Score x ``(1, 3, s, s)`` in the three modes of :meth:`MDNet.forward`; deterministic.

    Measures how much the score depends on each stream for this face: the switched-off
    stream is replaced by its stored reference (the mean over the training faces), so a
    difference ``full - prior_only`` is what this face's Vim tokens add relative to an
    average face's, and ``full - vim_only`` the same for the prior's features. Needs
    ``model.references_ready`` (raises ``RuntimeError`` otherwise).
    """
    model.eval()
    features = model.prior_features(x)
    scores = {
        mode: float(model(x, mode=mode, prior_features=None if mode == "vim_only" else features).score[0])
        for mode in ("full", "prior_only", "vim_only")
    }
    return StreamAblation(**scores)


# =========================================================================== regions
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

    ``keypoints``: ``(k >= 4, 2)`` crop coordinates (corner origin, as in :mod:`mdnet.align`)
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


# =========================================================================== analysis
@dataclass
class Analysis:
    """Everything :func:`analyze` found for one face.

    Attributes:
        face: ``(s, s, 3)`` uint8, the aligned crop that was explained.
        keypoints: ``(k, 2)`` crop keypoints (6 from the alignment, or the 4 template points).
        aligned: the :class:`AlignedFace` when one was given (for drawing onto the photo).
        score: the model's prediction as the app shows it (mirror-averaged, ``score_aligned``).
        attention, ig, ablation, regions: the four explanations (``ablation`` is None when the
            model has no stream references; ``ablation_note`` then says why).
        timings: seconds spent in each stage.
    """

    face: np.ndarray
    keypoints: np.ndarray
    aligned: AlignedFace | None
    score: float
    attention: AttentionMaps
    ig: IntegratedGradientsResult
    ablation: StreamAblation | None
    regions: RegionSummary
    model_name: str
    score_range: tuple[float, float]
    ablation_note: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self, map_size: int = 16) -> dict[str, Any]:
        """A JSON-serialisable summary (numbers only, plus ``map_size``-square maps; 0 leaves them out).

        The maps are area-summed shares (each cell holds its share of the map's total), so
        they sum to one like the full-resolution maps.
        """
        ig = self.ig
        out: dict[str, Any] = {
            "model": self.model_name,
            "score": round(self.score, 4),
            "score_range": list(self.score_range),
            "score_without_mirror": round(ig.score, 4),
            "integrated_gradients": {
                "n_steps": ig.n_steps,
                "method": ig.method,
                "baseline": f"Gaussian blur of the face, sigma {ig.blur_sigma:.1f} px",
                "score_input": ig.score,
                "score_baseline": ig.baseline_score,
                "sum_of_attributions": float(ig.signed.astype(np.float64).sum()),
                "convergence_delta": ig.delta,
                "relative_delta": ig.relative_delta,
            },
            "attention": {
                "scale_shapes": [list(s) for s in self.attention.shapes],
                "cls_scale_mass": [round(m, 6) for m in self.attention.cls_scale_mass],
                "tokens_scale_mass": [round(m, 6) for m in self.attention.tokens_scale_mass],
            },
            "ablation": self.ablation.to_json() if self.ablation is not None else None,
            "regions": self.regions.to_json(),
            "keypoints_crop": np.round(self.keypoints, 2).tolist(),
            "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
        }
        if self.ablation_note:
            out["ablation_note"] = self.ablation_note
        if self.aligned is not None:
            out["photo"] = {
                "shape": list(self.aligned.source_shape),
                "face_box": np.round(self.aligned.box, 1).tolist(),
                "faces_found": len(self.aligned.faces),
                "detector_score": round(float(self.aligned.score), 4),
            }
        if map_size:
            out["maps"] = {
                "size": map_size,
                "ig_abs": _share_grid(ig.absolute, map_size),
                "attention_cls": _share_grid(self.attention.cls, map_size),
                "attention_tokens": _share_grid(self.attention.tokens, map_size),
            }
        return out


def _share_grid(values: np.ndarray, size: int) -> list[list[float]]:
    total = float(np.asarray(values, dtype=np.float64).sum())
    small = cv2.resize(values.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA).astype(np.float64)
    small = small / small.sum() if total > 0 and small.sum() > 0 else small
    return np.round(small, 6).tolist()


def analyze(
    model: MDNet,
    aligned: AlignedFace | np.ndarray,
    *,
    steps: int = DEFAULT_STEPS,
    internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH,
    progress: Progress | None = None,
) -> Analysis:
    """Score one aligned face and explain the score: attention, IG, stream ablation and regions.

    ``aligned``: an :class:`AlignedFace` (its crop keypoints place the regions, and its
    transform lets :mod:`mdnet.viz` draw on the original photo) or an ``(s, s, 3)`` uint8
    crop (regions from the template). ``s`` must be the model's input size. ``steps`` and
    ``internal_batch_size`` go to :func:`integrated_gradients`; ``progress(fraction)``
    reports its progress (the slow part, about 90 % of the time).
    """
    from mdnet.model import score_aligned

    if isinstance(aligned, AlignedFace):
        face, keypoints, record = aligned.image, aligned.crop_keypoints, aligned
    else:
        face, record = np.asarray(aligned), None
        keypoints = template_keypoints(face.shape[0]) if face.ndim == 3 else None
    size = model.cfg.preprocess.image_size
    if face.dtype != np.uint8 or face.shape != (size, size, 3):
        raise ValueError(
            f"expected an aligned ({size}, {size}, 3) uint8 crop for this model, got {face.shape} {face.dtype}; "
            f"align the photo with mdnet.align.align(photo, size={size})"
        )
    model.eval()
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = now - clock
        clock = now

    faces = torch.from_numpy(np.ascontiguousarray(face)).permute(2, 0, 1).unsqueeze(0)
    score = float(score_aligned(model, faces, tta=True)[0])
    x = model.preprocess(faces)
    lap("score")
    attention = attention_maps(model, x)
    lap("attention")
    ablation, note = None, ""
    if bool(model.references_ready):
        ablation = stream_ablation(model, x)
    else:
        note = "stream ablation needs the stream references, which this model does not have (not calibrated)"
    lap("ablation")
    ig = integrated_gradients(model, x, n_steps=steps, internal_batch_size=internal_batch_size, progress=progress)
    lap("integrated_gradients")
    regions = region_summary(keypoints, ig, attention)
    lap("regions")
    return Analysis(
        face=face,
        keypoints=np.asarray(keypoints, dtype=np.float64),
        aligned=record,
        score=score,
        attention=attention,
        ig=ig,
        ablation=ablation,
        regions=regions,
        model_name=model.cfg.name,
        score_range=tuple(model.cfg.score_range),
        ablation_note=note,
        timings=timings,
    )


# =========================================================================== CLI
def main(argv: list[str] | None = None) -> Analysis:
    """``python -m mdnet.explain PHOTO --output report.png [--json report.json] [--steps N] [--checkpoint PATH]``."""
    import json

    from tqdm import tqdm

    from mdnet.align import AlignError, align, load_rgb
    from mdnet.checkpoint import DEFAULT_CHECKPOINT, CheckpointError, default_device, load_checkpoint

    parser = argparse.ArgumentParser(
        prog="python -m mdnet.explain",
        description="Explain the score of the (largest) face in a photo: one figure, and the numbers as JSON.",
    )
    parser.add_argument("photo", help="image file")
    parser.add_argument("--output", required=True, help="the figure (.png, .jpg, .pdf or .svg)")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help=f"Integrated Gradients steps ({DEFAULT_STEPS})")
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="checkpoint folder or hub id")
    parser.add_argument("--face", type=int, default=0, help="which face, largest first (0)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    suffix = Path(args.output).suffix.lower().lstrip(".")
    if suffix not in ("png", "jpg", "jpeg", "pdf", "svg"):
        parser.error(f"--output must end in .png, .jpg, .pdf or .svg, not {Path(args.output).name!r}")
    try:
        model = load_checkpoint(args.checkpoint, device=default_device())
    except CheckpointError as err:
        parser.exit(2, f"error: {err}\n")
    try:
        photo = load_rgb(args.photo)
        aligned = align(photo, size=model.cfg.preprocess.image_size, face_index=args.face)
    except AlignError as err:
        parser.exit(2, f"error: {err}\n")
    with tqdm(total=100, desc="integrated gradients", unit="%", file=sys.stderr, leave=False) as bar:

        def progress(fraction: float) -> None:
            bar.update(round(100 * fraction) - bar.n)

        analysis = analyze(model, aligned, steps=args.steps, progress=progress)
    from mdnet import viz

    viz.save_report(analysis, args.output, photo=photo)
    if args.json:
        Path(args.json).write_text(json.dumps(analysis.to_json(), indent=2) + "\n")
    written = f"{args.output}" + (f" and {args.json}" if args.json else "")
    print(f"score {analysis.score:.2f} (model {analysis.model_name}); wrote {written}")
    return analysis


if __name__ == "__main__":
    main()
