"""Explanations of one MD-Net score: attention maps, Integrated Gradients, stream ablation, regions.

Four views of why the model gave an aligned face (``s x s`` crop) its score, one module each:

- ``attention`` -- :func:`attention_maps`: where the fusion looked: the cross-attention weights
  of the Vim tokens (queries) over the U-Net tokens (keys), averaged over heads and layers, as
  a map over the crop. It shows what the Vim stream *read from* the generative prior, not what
  changed the score.
- ``integrated_gradients`` -- :func:`integrated_gradients`: what changed the score: Integrated
  Gradients (Captum) of the full model's score with respect to the normalised input pixels,
  from a blurred copy of the face to the face. Attributions add up to
  ``score(face) - score(blurred face)`` (completeness; the convergence delta says how well the
  numerical integral meets it).
- ``ablation`` -- :func:`stream_ablation`: how much each stream matters for this face: the
  score with the prior stream, or the Vim stream, replaced by its stored mean over the
  training faces (see :class:`mdnet.models.MDNet`).
- ``regions`` -- :func:`region_summary`: the share of the attribution and of the attention
  that falls in each facial region (:data:`REGIONS`), from the alignment's keypoints.

``analysis`` -- :func:`analyze` runs all four for one face and returns an :class:`Analysis`;
``viz`` draws it (the app and ``mdnet explain``, in ``cli``, only lay it out). ``viz`` needs
matplotlib and is imported on demand: ``from mdnet.explain import viz``.
"""

from mdnet.explain.ablation import StreamAblation, stream_ablation
from mdnet.explain.analysis import Analysis, analyze
from mdnet.explain.attention import AttentionMaps, attention_maps, combine_scales
from mdnet.explain.integrated_gradients import (
    BLUR_SIGMA,
    DEFAULT_INTERNAL_BATCH,
    DEFAULT_STEPS,
    IntegratedGradientsResult,
    blurred_baseline,
    integrated_gradients,
)
from mdnet.explain.regions import (
    REGION_LABELS,
    REGIONS,
    RegionSummary,
    region_masks,
    region_shares,
    region_summary,
    template_keypoints,
)

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
