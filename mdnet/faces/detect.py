"""Face detection: MediaPipe Tasks ``FaceDetector`` (short-range BlazeFace, 6 keypoints) and the search.

Keypoint order (MediaPipe): 0 right eye, 1 left eye, 2 nose tip, 3 mouth centre, 4 right ear
tragion, 5 left ear tragion -- "right" is the subject's right, which is on the *left* of the
picture.

The detector model file ``assets/models/face_detection_short_range.tflite`` comes from the
``mediapipe==0.10.21`` wheel (Apache-2.0); its sha256 is checked when the detector is created.
One detector is shared per process (:func:`get_detector`), guarded by a lock so threads (e.g.
Gradio workers) can detect concurrently, and closed at interpreter exit.

:func:`detect_faces` searches the whole image first, then (``search="auto"``, only when that
finds nothing) the image zoomed out and finer and finer tiles; each candidate is refined and
verified in its own upright, template-framed window and that window's mirror image.
"""

from __future__ import annotations

import atexit
import hashlib
import math
import os
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from mdnet.faces.errors import DetectorModelError
from mdnet.faces.io import ImageInput, load_rgb
from mdnet.faces.transform import (
    DEFAULT_SIZE,
    TEMPLATE,
    _reduce,
    _transform_scale,
    apply_transform,
    estimate_transform,
    invert_transform,
    warp,
)

SearchMode = Literal["auto", "full", "thorough"]

# --------------------------------------------------------------------------- model
DETECTOR_MODEL_PATH = Path(__file__).resolve().parents[2] / "assets" / "models" / "face_detection_short_range.tflite"
DETECTOR_MODEL_SHA256 = "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8"
KEYPOINT_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear", "left_ear")
_FLIP_ORDER = (1, 0, 2, 3, 5, 4)  # keypoint permutation under a horizontal flip

# --------------------------------------------------------------------------- search
_DETECT_SIDE = 192  # longest side of an image/window handed to the detector (its input is 128x128)
_REFINE_SIZE = 160  # side of the template-framed window used to refine keypoints
_REFINE_STEPS = 2  # refinement iterations (the second starts from an almost canonical window)
_CANDIDATE_THRESHOLD = 0.3  # detector threshold; candidates are re-scored after refinement
_SURE_SCORE = 0.75  # refined faces scoring this much are accepted without the mirror check
_MAX_FLIP_GAP = 0.1  # otherwise the mirrored window's keypoints must agree within 0.1 eye distance
_MIN_WINDOW = 64  # smallest search window side (original pixels)
_MAX_LEVEL = 3  # finest search windows: a quarter of the short side (see _windows)


def _resize_for_detection(rgb: np.ndarray, side: float) -> tuple[np.ndarray, float]:
    """Reduce by the smallest integer factor ``k`` so that a ``side``-pixel extent becomes
    ``<= _DETECT_SIDE``; returns (image, 1 / k). Integer factors keep it fast on 12 MP photos."""
    k = max(int(math.ceil(side / _DETECT_SIDE)), 1)
    return _reduce(rgb, k), 1.0 / k


# =========================================================================== detector
@dataclass(frozen=True)
class _Detection:
    box: np.ndarray  # (4,) x0, y0, x1, y1 in the pixels of the image that was searched
    keypoints: np.ndarray  # (6, 2)
    score: float
    flip_gap: float = math.inf  # set by _refine: disagreement of the mirrored detection


def _read_model(path: Path, expected_sha256: str | None) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DetectorModelError(
            f"The face-detector model file is missing: {path}. It ships with the project in assets/models/ "
            "(see assets/models/LICENSE-mediapipe.md for how to get it again)."
        ) from exc
    if expected_sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != expected_sha256:
            raise DetectorModelError(
                f"The face-detector model file {path} is corrupt or not the expected version "
                f"(sha256 {digest}, expected {expected_sha256}). Restore it from the repository or see "
                "assets/models/LICENSE-mediapipe.md."
            )
    return data


class FaceDetector:
    """Thread-safe wrapper around MediaPipe Tasks ``FaceDetector`` (short-range BlazeFace).

    Use as a context manager or call :meth:`close`; the process-wide shared
    instance (:func:`get_detector`) is closed automatically at exit.

    Args:
        model_path: ``.tflite`` file; default: the bundled short-range model
            (``assets/models/``, or the ``MDNET_FACE_DETECTOR_MODEL`` environment variable).
        expected_sha256: checked before loading; defaults to the pinned hash for the
            bundled model and to no check for a custom ``model_path``.
        min_confidence: the detector's own threshold for candidate faces.
    """

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        *,
        expected_sha256: str | None = "default",
        min_confidence: float = _CANDIDATE_THRESHOLD,
    ) -> None:
        if model_path is None:
            # the bundled file; MDNET_FACE_DETECTOR_MODEL may point at a copy elsewhere (same sha256)
            path = Path(os.environ.get("MDNET_FACE_DETECTOR_MODEL") or DETECTOR_MODEL_PATH)
        else:
            path = Path(model_path)
        if expected_sha256 == "default":
            expected_sha256 = DETECTOR_MODEL_SHA256 if model_path is None else None
        data = _read_model(path, expected_sha256)
        import mediapipe as mp  # imported lazily: load_rgb alone must not need it
        from mediapipe.tasks.python.core import base_options
        from mediapipe.tasks.python.vision import FaceDetector as _MpFaceDetector
        from mediapipe.tasks.python.vision import FaceDetectorOptions

        options = FaceDetectorOptions(
            base_options=base_options.BaseOptions(model_asset_buffer=data),
            min_detection_confidence=float(min_confidence),
        )
        self._mp = mp
        self._lock = threading.Lock()
        self._detector = _MpFaceDetector.create_from_options(options)
        self.model_path = path
        _INSTANCES.add(self)  # closed at exit if the caller did not

    def detect(self, rgb: np.ndarray) -> list[_Detection]:
        """Run the detector once on ``(H, W, 3)`` uint8 RGB; returns raw detections in its pixels."""
        h, w = rgb.shape[:2]
        image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))
        with self._lock:
            if self._detector is None:
                raise RuntimeError("This FaceDetector has been closed.")
            result = self._detector.detect(image)
        out = []
        for d in result.detections:
            bb = d.bounding_box
            kps = np.array([[k.x * w, k.y * h] for k in d.keypoints], dtype=np.float64)
            if kps.shape != (6, 2):
                continue
            box = np.array([bb.origin_x, bb.origin_y, bb.origin_x + bb.width, bb.origin_y + bb.height], float)
            out.append(_Detection(box, kps, float(d.categories[0].score) if d.categories else 0.0))
        return out

    def close(self) -> None:
        """Release the native detector (idempotent)."""
        with self._lock:
            if self._detector is not None:
                self._detector.close()
                self._detector = None

    def __enter__(self) -> FaceDetector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_SHARED: FaceDetector | None = None
_SHARED_LOCK = threading.Lock()
_INSTANCES: weakref.WeakSet[FaceDetector] = weakref.WeakSet()


def get_detector() -> FaceDetector:
    """The process-wide detector (created on first use, closed at exit)."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None or _SHARED._detector is None:
            _SHARED = FaceDetector()
        return _SHARED


def close_detector() -> None:
    """Close the shared detector (the next :func:`get_detector` creates a new one)."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is not None:
            _SHARED.close()
            _SHARED = None


@atexit.register
def _close_all_detectors() -> None:
    # MediaPipe's own finaliser prints a TypeError traceback when it runs during
    # interpreter shutdown, so every detector is closed while the interpreter is intact
    close_detector()
    for det in list(_INSTANCES):
        det.close()


# =========================================================================== faces
@dataclass(frozen=True)
class Face:
    """One detected face, in original-image pixels.

    Attributes:
        box: ``(4,)`` float64 ``[x0, y0, x1, y1]``, an upright box centred on the face
            whose side is the detector's face size (rotation removed).
        keypoints: ``(6, 2)`` float64 (see :data:`KEYPOINT_NAMES`).
        score: detector confidence in ``[0, 1]``.
        transform: ``(2, 3)`` original -> crop of side ``size``.
        inverse_transform: ``(2, 3)`` crop -> original.
        size: crop side the transforms refer to.
    """

    box: np.ndarray
    keypoints: np.ndarray
    score: float
    transform: np.ndarray
    inverse_transform: np.ndarray
    size: int

    @property
    def width(self) -> float:
        """Face size in original pixels (box side)."""
        return float(self.box[2] - self.box[0])

    @property
    def angle(self) -> float:
        """In-plane rotation of the face in degrees (positive: counter-clockwise in the picture)."""
        d = self.keypoints[1] - self.keypoints[0]
        return float(-math.degrees(math.atan2(d[1], d[0])))

    def for_size(self, size: int) -> Face:
        """The same face with transforms for a crop of side ``size``."""
        if size == self.size:
            return self
        m = estimate_transform(self.keypoints, size)
        return Face(self.box, self.keypoints, self.score, m, invert_transform(m), size)


def _make_face(box: np.ndarray, keypoints: np.ndarray, score: float, size: int) -> Face:
    m = estimate_transform(keypoints, size)
    return Face(np.asarray(box, float), np.asarray(keypoints, float), float(score), m, invert_transform(m), size)


def _windows(h: int, w: int, level: int) -> list[tuple[int, int, int, int]]:
    """Search windows ``(x0, y0, x1, y1)`` of one pyramid level (original pixels).

    Level 0 is the whole image. Level 1 tiles it with squares of the short side (only
    for non-square images). Level k >= 2 uses squares of ``short / 2**(k-1)`` with a
    half-window stride, so any face up to half a window wide lies wholly inside one.
    """
    if level == 0:
        return [(0, 0, w, h)]
    short = min(h, w)
    side = short if level == 1 else int(round(short / 2 ** (level - 1)))
    if level == 1 and max(h, w) <= 1.2 * short:
        return []
    if side < _MIN_WINDOW:
        return []
    stride = side / 2

    def starts(extent: int) -> list[int]:
        n = max(int(math.ceil((extent - side) / stride)) + 1, 1)
        if n == 1:
            return [0]
        return [int(round(i * (extent - side) / (n - 1))) for i in range(n)]

    return [(x, y, x + side, y + side) for y in starts(h) for x in starts(w)]


def _search_level(detector: FaceDetector, rgb: np.ndarray, level: int) -> list[_Detection]:
    """Detections of one level, mapped to original pixels."""
    h, w = rgb.shape[:2]
    wins = _windows(h, w, level)
    if not wins:
        return []
    side = max(wins[0][2] - wins[0][0], wins[0][3] - wins[0][1])
    scaled, fx = _resize_for_detection(rgb, side)
    fy = fx
    out = []
    for x0, y0, x1, y1 in wins:
        sx0, sy0 = int(round(x0 * fx)), int(round(y0 * fy))
        sx1, sy1 = max(int(round(x1 * fx)), sx0 + 1), max(int(round(y1 * fy)), sy0 + 1)
        for d in detector.detect(scaled[sy0:sy1, sx0:sx1]):
            kps = (d.keypoints + [sx0, sy0]) / [fx, fy]
            box = (d.box + [sx0, sy0, sx0, sy0]) / [fx, fy, fx, fy]
            out.append(_Detection(box, kps, d.score))
    return out


def _search_padded(detector: FaceDetector, rgb: np.ndarray, pad_frac: float = 0.3) -> list[_Detection]:
    """Detect on the image zoomed out inside a grey margin (faces that fill the frame)."""
    h, w = rgb.shape[:2]
    scaled, fx = _resize_for_detection(rgb, max(h, w))
    fy = fx
    sh, sw = scaled.shape[:2]
    p = int(round(pad_frac * max(sh, sw)))
    padded = cv2.copyMakeBorder(scaled, p, p, p, p, cv2.BORDER_CONSTANT, value=(127, 127, 127))
    out = []
    for d in detector.detect(padded):
        kps = (d.keypoints - p) / [fx, fy]
        box = (d.box - p) / [fx, fy, fx, fy]
        out.append(_Detection(box, kps, d.score))
    return out


def _refine(detector: FaceDetector, rgb: np.ndarray, cand: _Detection) -> _Detection | None:
    """Re-detect inside a template-framed, de-rotated window around a candidate.

    The window is the candidate's own alignment at ``_REFINE_SIZE``: the face is
    upright, centred and at the scale where the detector is most accurate. The
    mirrored window is detected too and the two keypoint sets averaged; how much they
    disagree (``flip_gap``, mean keypoint distance over the template eye distance) is
    kept for verification. Returns the refined detection in original pixels, or
    ``None`` if no face is found near the window centre.
    """
    r = _REFINE_SIZE
    m = estimate_transform(cand.keypoints, r)
    window = warp(rgb, m, r, border="replicate")
    expected = TEMPLATE * r
    t_iod = float(np.linalg.norm(expected[1] - expected[0]))

    def best(dets: list[_Detection]) -> _Detection | None:
        near = [d for d in dets if np.linalg.norm(d.keypoints[:2].mean(0) - expected[:2].mean(0)) < 0.5 * t_iod]
        return max(near, key=lambda d: d.score) if near else None

    d = best(detector.detect(window))
    mirrored = []
    for fd in detector.detect(np.ascontiguousarray(window[:, ::-1])):
        kps = fd.keypoints[list(_FLIP_ORDER)].copy()
        kps[:, 0] = r - kps[:, 0]
        mirrored.append(_Detection(np.array([r - fd.box[2], fd.box[1], r - fd.box[0], fd.box[3]]), kps, fd.score))
    dm = best(mirrored)
    if d is None or dm is None:
        d = d or dm
        if d is None:
            return None
        gap = math.inf
    else:
        gap = float(np.linalg.norm(d.keypoints[:4] - dm.keypoints[:4], axis=1).mean() / t_iod)
        d = _Detection((d.box + dm.box) / 2, (d.keypoints + dm.keypoints) / 2, (d.score + dm.score) / 2)
    inv = invert_transform(m)
    kps = apply_transform(inv, d.keypoints)
    centre = apply_transform(inv, ((d.box[:2] + d.box[2:]) / 2)[None])[0]
    half = np.array([d.box[2] - d.box[0], d.box[3] - d.box[1]]) / _transform_scale(m) / 2
    return _Detection(np.concatenate([centre - half, centre + half]), kps, d.score, gap)


def _verified(d: _Detection, min_confidence: float, many_windows: bool) -> bool:
    """Accept a refined detection: confident, or fairly confident and mirror-consistent.

    Measured on this detector: real frontal faces (200 SCUT-FBP5500 images) score
    >= 0.89 with flip gap <= 0.09; false positives in tiles of non-face pictures
    (skimage cat, coins, rocket, Hubble field, moon) score <= 0.69, most with flip gap
    >= 0.12. Faces from the fine tile levels (``many_windows``: dozens to hundreds of
    windows, so many more chances of a false positive) must be confident.
    """
    if many_windows:
        return d.score >= max(min_confidence, _SURE_SCORE)
    return d.score >= min_confidence and (d.score >= _SURE_SCORE or d.flip_gap <= _MAX_FLIP_GAP)


def _dedupe(dets: list[_Detection]) -> list[_Detection]:
    """Keep the best-scoring detection of each face (eye midpoints closer than half the eye distance)."""
    kept: list[_Detection] = []
    for d in sorted(dets, key=lambda d: -d.score):
        mid = d.keypoints[:2].mean(0)
        iod = float(np.linalg.norm(d.keypoints[1] - d.keypoints[0]))
        if all(
            np.linalg.norm(mid - k.keypoints[:2].mean(0))
            > 0.5 * max(iod, float(np.linalg.norm(k.keypoints[1] - k.keypoints[0])))
            for k in kept
        ):
            kept.append(d)
    return kept


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _nms_boxes(dets: list[_Detection], iou: float = 0.4) -> list[_Detection]:
    kept: list[_Detection] = []
    for d in sorted(dets, key=lambda d: -d.score):
        if all(_box_iou(d.box, k.box) < iou for k in kept):
            kept.append(d)
    return kept


def detect_faces(
    image: ImageInput,
    *,
    size: int = DEFAULT_SIZE,
    search: SearchMode = "auto",
    min_confidence: float = 0.5,
    refine: bool = True,
    detector: FaceDetector | None = None,
) -> list[Face]:
    """Find all faces, largest first (no size filtering, no exception when none).

    Args:
        image: anything :func:`load_rgb` accepts.
        size: crop side the returned transforms refer to.
        search: ``"full"`` runs the detector once on the whole (downscaled) image;
            ``"auto"`` (default) also tries, only when that finds nothing, the image
            zoomed out (faces filling the frame) and then finer and finer tiles (small
            faces in large photos / wide images); ``"thorough"`` always runs every
            level and merges the results (group photos).
        min_confidence: faces scoring below this are dropped.
        refine: re-detect each face in an upright, template-framed window (and its
            mirror image), twice, for precise keypoints and to reject false positives;
            about 10 ms per face.
        detector: a :class:`FaceDetector`; default the shared one.

    Returns:
        list of :class:`Face`, sorted by box width, largest first.
    """
    if search not in ("auto", "full", "thorough"):
        raise ValueError(f"search must be 'auto', 'full' or 'thorough', not {search!r}")
    rgb = image if _is_rgb_array(image) else load_rgb(image)
    det = detector or get_detector()
    faces: list[_Detection] = []
    levels: list[object] = [0] if search == "full" else [0, "pad"] + list(range(1, _MAX_LEVEL + 1))
    for level in levels:
        found = _search_padded(det, rgb) if level == "pad" else _search_level(det, rgb, int(level))  # type: ignore
        for cand in _nms_boxes(found):
            if any(_box_iou(cand.box, f.box) > 0.3 for f in faces):
                continue  # already found (and refined) at an earlier level
            if not refine:
                if cand.score >= min_confidence:
                    faces.append(cand)
                continue
            face: _Detection | None = cand
            for _ in range(_REFINE_STEPS):
                face = _refine(det, rgb, face) if face is not None else None
            # refinement doubles as verification: a candidate that is not found again in
            # its own upright, well-framed window, or only weakly and not mirror-consistently,
            # is dropped (this removes the detector's false positives on textures)
            if face is not None and _verified(face, min_confidence, many_windows=level not in (0, 1, "pad")):
                faces.append(face)
        faces = _dedupe(faces)
        if search == "auto" and faces:
            break
    faces.sort(key=lambda f: -(f.box[2] - f.box[0]))
    return [_make_face(f.box, f.keypoints, f.score, size) for f in faces]


def track_face(
    image: ImageInput,
    previous: Face,
    *,
    size: int | None = None,
    min_confidence: float = 0.5,
    detector: FaceDetector | None = None,
) -> Face | None:
    """Find ``previous`` again in the next video frame ``image``: one refinement from where it was.

    :func:`detect_faces` refines a first guess from the detector twice (the second step starts from
    an almost canonical window); a face found in the previous frame is already such a guess, so one
    refinement step (the upright window and its mirror: two detector runs instead of five) gives the
    same keypoints while the face moves little between frames, and it is verified like any refined
    face. Returns None when the face is not found there any more (it moved far, turned away or
    left): search the whole frame then. ``size``: crop side of the returned transforms (default
    ``previous.size``).
    """
    rgb = image if _is_rgb_array(image) else load_rgb(image)
    det = detector or get_detector()
    found = _refine(det, rgb, _Detection(previous.box, previous.keypoints, previous.score))
    if found is None or not _verified(found, min_confidence, many_windows=False):
        return None
    return _make_face(found.box, found.keypoints, found.score, int(size or previous.size))


def _is_rgb_array(x: object) -> bool:
    return isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 3 and x.shape[2] == 3 and x.size > 0
