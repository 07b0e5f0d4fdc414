"""The one entry point the app, the CLI and the tests talk to: photo -> aligned face -> score -> explanations.

    status = load_model()                                  # never raises: status.message says what is wrong
    result = score_photo(photo, face_index=0)              # fast: align + mirror-averaged score (+ percentile)
    report = analyze_photo(photo, face_index=0)            # slow: + attention, IG, stream ablation, regions
    report = explain_result(result)                        # the same, for a face score_photo already found
    report.views("crop" | "photo")                         # the overlays, ready to show
    friendly_error(exc)                                    # any error a user can cause -> one plain sentence

``photo`` is anything :func:`mdnet.faces.load_rgb` accepts (a path, bytes, a file object, a
PIL image, an RGB array). Photos are processed in memory only: nothing here writes them to
disk or logs them. Uploads above :data:`MAX_UPLOAD_MB` are refused before decoding.

Which model scores (loading, the shared MD-Net and fast student) lives in :mod:`mdnet.model_status`,
where a score falls among the training faces in :mod:`mdnet.percentiles`; every error a user can
cause becomes one plain sentence in :mod:`mdnet.errors` (all re-exported here).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mdnet.errors import (  # re-exported: the app and API clients of the service use these names
    MAX_UPLOAD_BYTES,
    MAX_UPLOAD_MB,
    ModelUnavailableError,
    ServiceError,
    UploadTooLargeError,
    describe_error,
    friendly_error,
    is_user_error,
)
from mdnet.faces.io import MAX_PIXELS
from mdnet.interval_figure import interval_img
from mdnet.model_status import (  # re-exported, as above
    ModelStatus,
    _require_model,
    get_fast_status,
    get_status,
    load_fast_model,
    load_model,
    score_reference,
    set_fast_status,
    set_status,
)
from mdnet.models.checkpoint import default_device  # re-exported: the page names the device
from mdnet.models.mdnet import FaceScores, MDNet, score_faces
from mdnet.percentiles import (  # re-exported, as above
    SCORE_DISTRIBUTION_NAME,
    ScoreReference,
    write_score_distribution,
)
from mdnet.photos import (  # re-exported, as above
    DISPLAY_MAX_SIDE,
    LIVE_MAX_SIDE,
    MAX_FRAME_BYTES,
    MAX_FRAME_PIXELS,
    _downscale,
    _enlarge,
    draw_faces,
    encode_png,
    read_frame,
    read_photo,
    thumbnail,
)
from mdnet.uncertainty.calibration import UNUSUAL_SENTENCE, ScoreInterval

__all__ = [
    "DISPLAY_MAX_SIDE",
    "LIVE_MAX_SIDE",
    "MAX_FRAME_BYTES",
    "MAX_FRAME_PIXELS",
    "draw_faces",
    "encode_png",
    "MAX_UPLOAD_BYTES",
    "MAX_PIXELS",
    "MAX_UPLOAD_MB",
    "SCORE_DISTRIBUTION_NAME",
    "UNUSUAL_SENTENCE",
    "VIEWS",
    "ModelStatus",
    "ModelUnavailableError",
    "PhotoAnalysis",
    "PhotoScore",
    "ScoreInterval",
    "ScoreReference",
    "ServiceError",
    "UploadTooLargeError",
    "analyze_photo",
    "default_device",
    "describe_error",
    "explain_result",
    "face_label",
    "friendly_error",
    "get_status",
    "is_user_error",
    "get_fast_status",
    "load_fast_model",
    "load_model",
    "read_frame",
    "read_photo",
    "score_face",
    "score_frame",
    "score_photo",
    "score_reference",
    "set_fast_status",
    "set_status",
    "thumbnail",
    "write_score_distribution",
]

# A result keeps only a DISPLAY_MAX_SIDE copy of its photo (plus the aligned crops of its faces), never the
# full-resolution decode.
CROP_DISPLAY = 384  # aligned crops are shown enlarged to this side
MAX_FACES_KEPT = 24  # a result keeps the aligned crops of at most this many faces (largest first)

Progress = Callable[[float], object]


# =========================================================================== which model (mdnet.model_status)
def face_label(i: int, n: int) -> str:
    """How the app names face ``i`` of ``n`` (largest first)."""
    return f"Face {i + 1}" + (" (largest)" if i == 0 and n > 1 else "")


@dataclass
class PhotoScore:
    """The fast result: the chosen face's aligned crop and its score.

    Attributes:
        score: mirror-averaged score on the model's scale (1-5).
        percentile: percent of the training faces scored lower, or None when unknown.
        face_index, n_faces: which face (largest first) of how many found.
        aligned: the :class:`mdnet.faces.AlignedFace` (crop, keypoints, transforms, every face).
        photo: a copy of the photo for drawing, at most :data:`DISPLAY_MAX_SIDE` on its longest side
            (the full-resolution decode is dropped once the faces are cropped).
        photo_scale: ``photo`` pixels per original pixel (1.0 when the photo was small enough).
        crops: the aligned crop of each face kept (largest first, at most :data:`MAX_FACES_KEPT`; None for
            faces not cropped), so that another face can be scored without the original photo.
        model_name, score_range, seconds.
        interval: how sure the score is (:class:`mdnet.uncertainty.ScoreInterval`: a calibrated
            prediction interval and the unusual-photo flag), None for an uncalibrated checkpoint.
        reference: the training faces' score distribution (for :meth:`interval_figure`), or None.
    """

    score: float
    percentile: float | None
    face_index: int
    n_faces: int
    aligned: Any
    photo: np.ndarray = field(repr=False)
    photo_scale: float = 1.0
    crops: tuple[np.ndarray | None, ...] = field(default=(), repr=False)
    model_name: str = ""
    score_range: tuple[float, float] = (1.0, 5.0)
    seconds: float = 0.0
    interval: ScoreInterval | None = None
    reference: ScoreReference | None = field(default=None, repr=False)

    @property
    def reference_source(self) -> str | None:
        """Where the training faces' score distribution came from (None without one)."""
        return None if self.reference is None else self.reference.source

    def interval_figure(self) -> str:
        """An ``<img>`` of the interval among the training faces' scores ("" without an interval)."""
        if self.interval is None:
            return ""
        i = self.interval
        alt = (f"The {i.level * 100:.0f} % range {i.low:.1f}-{i.high:.1f} (band) and the score {self.score:.1f} "
               "(line) over the training faces' scores (grey)")
        return interval_img(self.score, i.low, i.high, self.reference, self.score_range, alt)

    @property
    def faces_note(self) -> str:
        """An informational sentence when several faces were found ("" for one)."""
        if self.n_faces <= 1:
            return ""
        return (f"{self.n_faces} faces were found in this photo; showing {face_label(self.face_index, self.n_faces)}. "
                "Pick another face in the list to score it instead.")

    @property
    def face_choices(self) -> list[str]:
        """Labels of the faces that can be picked (those whose crop was kept)."""
        kept = sum(c is not None for c in self.crops) if self.crops else 1
        return [face_label(i, self.n_faces) for i in range(min(self.n_faces, max(kept, 1)))]

    @property
    def nbytes(self) -> int:
        """Memory held by the images of this result (the photo copy and the crops)."""
        return int(self.photo.nbytes + sum(c.nbytes for c in self.crops if c is not None))

    def summary(self) -> str:
        """One line: the score and where it falls."""
        low, high = self.score_range
        text = f"{self.score:.2f} on the {low:g}-{high:g} scale"
        if self.interval is not None:
            i = self.interval
            text += f", likely between {i.low:.2f} and {i.high:.2f} ({i.level * 100:.0f} % range)"
        if self.percentile is not None:
            text += f", higher than {self.percentile:.0f}% of the training faces"
        return text

    def to_json(self) -> dict[str, Any]:
        a = self.aligned
        return {
            "score": round(self.score, 4),
            "score_range": list(self.score_range),
            "percentile": None if self.percentile is None else round(self.percentile, 1),
            "percentile_reference": self.reference_source,
            "face_index": self.face_index,
            "faces_found": self.n_faces,
            "faces": [
                {"box": np.round(f.box, 1).tolist(), "detector_score": round(float(f.score), 4)} for f in a.faces
            ],
            "keypoints_crop": np.round(a.crop_keypoints, 2).tolist(),
            "photo_shape": list(a.source_shape),
            "model": self.model_name,
            "seconds": round(self.seconds, 3),
            "note": self.faces_note,
            "interval": None if self.interval is None else self.interval.to_json(),
            "unusual_photo_note": self.unusual_note,
        }

    @property
    def unusual_note(self) -> str:
        """The plain sentence for a photo unlike the training faces ("" otherwise)."""
        return UNUSUAL_SENTENCE if self.interval is not None and self.interval.unusual else ""

    # ------------------------------------------------------------- drawing
    def face_view(self, side: int = CROP_DISPLAY) -> np.ndarray:
        """The aligned crop, enlarged to ``side``, with the detected keypoints."""
        from mdnet.explain import viz

        crop = self.aligned.image
        return viz.draw_keypoints(_enlarge(crop, side), self.aligned.crop_keypoints * (side / crop.shape[0]))

    def photo_view(self, max_side: int = DISPLAY_MAX_SIDE) -> np.ndarray:
        """The photo (downscaled) with every face's box numbered, the chosen one highlighted with its keypoints."""
        return draw_faces(self.photo, self.aligned, max_side=max_side, scale=self.photo_scale)

    def live_view(self, max_side: int = LIVE_MAX_SIDE, mirror: bool = True) -> np.ndarray:
        """A light overlay for the webcam: the chosen face's box and keypoints and the score, on a small frame.

        ``mirror`` flips the frame (text stays readable), like the browser's own camera preview.
        """
        return draw_faces(self.photo, self.aligned, max_side=max_side, label=f"{self.score:.2f}", mirror=mirror,
                          scale=self.photo_scale)


@dataclass(frozen=True)
class _Kept:
    """What a result keeps of its photo: a display copy, its scale, and the faces' aligned crops."""

    photo: np.ndarray
    scale: float
    crops: tuple[np.ndarray | None, ...]


def _align_photo(image: Any, face_index: int, model: MDNet, search: str = "auto",
                 keep_faces: bool = True, frame: bool = False, track: Any = None) -> tuple[_Kept, Any]:
    """Decode, find the faces, crop the chosen one (and, with ``keep_faces``, the others); keep a display copy.

    The full-resolution decode lives only inside this call.
    """
    from mdnet.faces import align, align_face

    photo = read_frame(image) if frame else read_photo(image)
    size = model.cfg.preprocess.image_size
    aligned = align(photo, size=size, face_index=int(face_index), search=search, track=track)
    n = min(len(aligned.faces), MAX_FACES_KEPT) if keep_faces else 0
    crops: list[np.ndarray | None] = [None] * max(n, aligned.face_index + 1)
    for i in range(n):
        if i != aligned.face_index:
            crops[i] = align_face(photo, aligned.faces[i], size=size).image
    crops[aligned.face_index] = aligned.image
    small, f = _downscale(photo, DISPLAY_MAX_SIDE)
    return _Kept(np.ascontiguousarray(small), f, tuple(crops)), aligned


def _result(status: ModelStatus, kept: _Kept, aligned: Any, scored: FaceScores, start: float) -> PhotoScore:
    model = status.model
    ref = score_reference(status)
    score = float(scored.score[0])
    interval = None if status.uncertainty is None else status.uncertainty.describe_scores(scored)
    return PhotoScore(
        score=score,
        percentile=None if ref is None else ref.percentile(score),
        face_index=int(aligned.face_index),
        n_faces=len(aligned.faces),
        aligned=aligned,
        photo=kept.photo,
        photo_scale=kept.scale,
        crops=kept.crops,
        model_name=model.cfg.name,
        score_range=tuple(model.cfg.score_range),
        seconds=time.perf_counter() - start,
        interval=interval,
        reference=ref,
    )


def _score_crop(model: MDNet, crop: np.ndarray) -> FaceScores:
    faces = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).unsqueeze(0)
    return score_faces(model, faces)


def score_photo(
    image: Any, face_index: int = 0, *, status: ModelStatus | None = None, search: str = "auto",
    keep_faces: bool = True,
) -> PhotoScore:
    """Align face ``face_index`` (largest first) of a photo and score it.

    ``search``: how hard :func:`mdnet.faces.align` looks for faces (``"auto"``: fast, stops at the
    first faces found; ``"thorough"``: every face of a group photo). ``keep_faces``: also keep the
    aligned crops of the other faces, so :func:`score_face` can score them later without the photo.

    Raises ``ModelUnavailableError``, ``UploadTooLargeError`` or an ``AlignError``: turn any of
    them into words with :func:`friendly_error`.
    """
    status = status or get_status()
    model = _require_model(status)
    start = time.perf_counter()
    kept, aligned = _align_photo(image, face_index, model, search, keep_faces)
    return _result(status, kept, aligned, _score_crop(model, aligned.image), start)


def score_frame(frame: Any, *, status: ModelStatus | None = None, track: Any = None) -> PhotoScore:
    """The webcam's fast path: a frame within camera limits (:func:`read_frame`), the largest face, scored.

    ``track``: the face scored in the previous frame (``result.aligned.face``, a
    :class:`mdnet.faces.Face`), followed into this one (:func:`mdnet.faces.track_face`: two detector
    runs instead of five) instead of searching the frame; where it is lost, the frame is searched.
    """
    status = status or get_status()
    model = _require_model(status)
    start = time.perf_counter()
    kept, aligned = _align_photo(frame, 0, model, "auto", keep_faces=False, frame=True, track=track)
    return _result(status, kept, aligned, _score_crop(model, aligned.image), start)


def score_face(result: PhotoScore, face_index: int, *, status: ModelStatus | None = None) -> PhotoScore:
    """Score another face of a photo already scored, from the crop kept in ``result`` (no file, no detection).

    Raises :class:`mdnet.faces.FaceIndexError` for a face that was not found (or not kept).
    """
    from mdnet.faces import FaceIndexError

    status = status or get_status()
    model = _require_model(status)
    start = time.perf_counter()
    i = int(face_index)
    crop = result.crops[i] if 0 <= i < len(result.crops) else None
    if crop is None:
        raise FaceIndexError(
            f"Face number {i + 1} was asked for, but only {len(result.face_choices)} "
            f"face{'s' if len(result.face_choices) > 1 else ''} can be chosen in this photo."
        )
    face = result.aligned.faces[i]
    aligned = dataclasses.replace(
        result.aligned, image=crop, box=face.box, keypoints=face.keypoints, transform=face.transform,
        inverse_transform=face.inverse_transform, score=face.score, face_index=i,
    )
    kept = _Kept(result.photo, result.photo_scale, result.crops)
    return _result(status, kept, aligned, _score_crop(model, crop), start)


# =========================================================================== the full analysis
VIEWS = ("crop", "photo")
MAX_STEPS = 64  # Integrated Gradients steps: the most the page offers, and the most the API accepts


@dataclass
class PhotoAnalysis:
    """The fast result plus the explanations (:class:`mdnet.explain.Analysis`), ready to lay out."""

    result: PhotoScore
    analysis: Any
    seconds: float = 0.0

    @property
    def score(self) -> float:
        return self.result.score

    def views(self, on: str = "crop") -> dict[str, np.ndarray]:
        """Images ``(h, w, 3)`` uint8: ``face`` (keypoints), ``attention`` and ``ig`` overlays.

        ``on="crop"``: drawn on the aligned face (enlarged to :data:`CROP_DISPLAY`); ``on="photo"``: on
        the original photo (downscaled to :data:`DISPLAY_MAX_SIDE`), through the alignment's inverse transform.
        The IG map is signed: red where the face's detail raised the score, blue where it lowered it.
        """
        from mdnet.explain import viz

        if on not in VIEWS:
            raise ValueError(f"on must be one of {VIEWS}, not {on!r}")
        a = self.analysis
        if on == "crop":
            return {
                "face": self.result.face_view(),
                "attention": _enlarge(viz.overlay(a.face, a.attention.cls), CROP_DISPLAY),
                "ig": _enlarge(viz.overlay(a.face, a.ig.signed, signed=True), CROP_DISPLAY),
            }
        small, f = _downscale(self.result.photo, DISPLAY_MAX_SIDE)
        inverse = np.asarray(self.result.aligned.inverse_transform, dtype=np.float64) * (f * self.result.photo_scale)
        return {
            "face": self.result.photo_view(),
            "attention": viz.overlay_on_photo(small, a.attention.cls, inverse),
            "ig": viz.overlay_on_photo(small, a.ig.signed, inverse, signed=True),
        }

    def ablation_figure(self):
        """A matplotlib Figure: the score with both streams, the prior stream alone, the Vim stream alone."""
        from mdnet.explain import viz

        fig = _figure(5.0, 2.6)
        viz.plot_ablation(fig.subplots(), self.analysis.ablation, self.analysis.score_range)
        return fig

    def regions_figure(self):
        """A matplotlib Figure: share of |IG|, of the class token's attention and of the area per facial region."""
        from mdnet.explain import viz

        fig = _figure(5.0, 3.6)
        viz.plot_regions(fig.subplots(), self.analysis.regions)
        return fig

    def regions_text(self, top: int = 3) -> str:
        """A sentence naming the regions whose share of |IG| most exceeds their share of the area."""
        from mdnet.explain import REGION_LABELS

        r = self.analysis.regions
        ratio = {n: r.ig[n] / r.area[n] for n in r.ig if r.area[n] > 0}
        best = sorted(ratio, key=ratio.get, reverse=True)[:top]
        parts = [f"{REGION_LABELS[n]} ({100 * r.ig[n]:.0f}% of |IG| on {100 * r.area[n]:.0f}% of the area)"
                 for n in best]
        return "Integrated Gradients weigh most, for their size: " + "; ".join(parts) + "."

    def ablation_text(self) -> str:
        ab = self.analysis.ablation
        if ab is None:
            return self.analysis.ablation_note or "Stream ablation is not available for this model."
        return (f"Stream ablation (one pass, no mirror averaging): both streams {ab.full:.2f}; the generative-prior "
                f"stream alone (Vim tokens set to their training mean) {ab.prior_only:.2f}; the Vision-Mamba stream "
                f"alone (prior features set to their mean) {ab.vim_only:.2f}.")

    def to_json(self, map_size: int = 16) -> dict[str, Any]:
        out = self.analysis.to_json(map_size=map_size)
        out.update({k: v for k, v in self.result.to_json().items() if k not in ("seconds",)})
        out["score"] = round(self.result.score, 4)
        out["seconds"] = round(self.seconds, 3)
        return out


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def analyze_photo(
    image: Any,
    face_index: int = 0,
    steps: int | None = None,
    progress: Progress | None = None,
    *,
    status: ModelStatus | None = None,
    search: str = "auto",
    frame: bool = False,
) -> PhotoAnalysis:
    """Score face ``face_index`` of a photo and explain the score (:func:`mdnet.explain.analyze`).

    ``steps``: Integrated Gradients steps (1 to :data:`MAX_STEPS`; default
    :data:`mdnet.explain.DEFAULT_STEPS`); ``progress(fraction)`` is called as the analysis advances (0 to 1);
    ``search`` goes to :func:`mdnet.faces.align` (``"thorough"`` finds every face of a group photo);
    ``frame``: the input is a webcam frame (camera limits apply). Raises like :func:`score_photo`.
    """
    status = status or get_status()
    model = _require_model(status)
    steps = _check_steps(steps)
    start = time.perf_counter()
    kept, aligned = _align_photo(image, face_index, model, search, keep_faces=False, frame=frame)
    return _explain(status, kept, aligned, steps, progress, start)


def explain_result(
    result: PhotoScore, steps: int | None = None, progress: Progress | None = None, *, status: ModelStatus | None = None
) -> PhotoAnalysis:
    """The analysis of a face already found by :func:`score_photo` (no second decoding or detection)."""
    status = status or get_status()
    _require_model(status)
    kept = _Kept(result.photo, result.photo_scale, result.crops)
    return _explain(status, kept, result.aligned, _check_steps(steps), progress, time.perf_counter())


def _check_steps(steps: int | None) -> int:
    from mdnet.explain import DEFAULT_STEPS

    steps = DEFAULT_STEPS if steps is None else int(steps)
    if not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be between 1 and {MAX_STEPS}, got {steps}")
    return steps


def _explain(
    status: ModelStatus, kept: _Kept, aligned: Any, steps: int, progress: Progress | None, start: float
) -> PhotoAnalysis:
    from mdnet import explain

    if progress is not None:
        progress(0.05)

    def ig_progress(fraction: float) -> None:
        if progress is not None:
            progress(0.1 + 0.85 * fraction)

    analysis = explain.analyze(status.model, aligned, steps=steps, progress=ig_progress)
    result = _result(status, kept, aligned, analysis.scored, start)  # the same mirror-averaged score_faces
    if progress is not None:
        progress(1.0)
    return PhotoAnalysis(result=result, analysis=analysis, seconds=time.perf_counter() - start)
