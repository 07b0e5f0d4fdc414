"""All four explanations of one face's score, run together: :func:`analyze` -> :class:`Analysis`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch

from mdnet.explain.ablation import StreamAblation, stream_ablation
from mdnet.explain.attention import AttentionMaps, attention_maps
from mdnet.explain.integrated_gradients import (
    DEFAULT_INTERNAL_BATCH,
    DEFAULT_STEPS,
    IntegratedGradientsResult,
    Progress,
    integrated_gradients,
)
from mdnet.explain.regions import RegionSummary, region_summary, template_keypoints
from mdnet.faces import AlignedFace
from mdnet.models.mdnet import MDNet


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
        scored: the :class:`mdnet.models.mdnet.FaceScores` behind ``score`` (mirror gap and the
            features the head read, for the score's interval).
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
    scored: Any = None

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
    transform lets :mod:`mdnet.explain.viz` draw on the original photo) or an ``(s, s, 3)`` uint8
    crop (regions from the template). ``s`` must be the model's input size. ``steps`` and
    ``internal_batch_size`` go to :func:`integrated_gradients`; ``progress(fraction)``
    reports its progress (the slow part, about 90 % of the time).
    """
    from mdnet.models.mdnet import score_faces

    if isinstance(aligned, AlignedFace):
        face, keypoints, record = aligned.image, aligned.crop_keypoints, aligned
    else:
        face, record = np.asarray(aligned), None
        keypoints = template_keypoints(face.shape[0]) if face.ndim == 3 else None
    size = model.cfg.preprocess.image_size
    if face.dtype != np.uint8 or face.shape != (size, size, 3):
        raise ValueError(
            f"expected an aligned ({size}, {size}, 3) uint8 crop for this model, got {face.shape} {face.dtype}; "
            f"align the photo with mdnet.faces.align(photo, size={size})"
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
    scored = score_faces(model, faces, tta=True)
    score = float(scored.score[0])
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
        scored=scored,
    )
