"""What changed the score: Integrated Gradients (Captum) from a blurred copy of the face to the face."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mdnet.models.mdnet import MDNet

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
