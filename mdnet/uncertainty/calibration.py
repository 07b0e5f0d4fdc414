"""The interval and the warning a checkpoint carries: ``uncertainty.safetensors`` beside its weights.

``mdnet calibrate`` (:mod:`mdnet.uncertainty.calibrate`) writes it; :func:`load_uncertainty`
reads it; :meth:`Uncertainty.describe` turns one face's score, its mirror gap and the features
its head read into a :class:`ScoreInterval`. A checkpoint without the file gives no interval
(the app then shows the score alone, as before).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from mdnet.models.files import CheckpointError
from mdnet.uncertainty.conformal import ConformalCalibration
from mdnet.uncertainty.ood import FeatureDistance

UNCERTAINTY_NAME = "uncertainty.safetensors"
DEFAULT_LEVEL = 0.9
# What scales each face's interval (the conformal guarantee holds for every one; widths differ):
# the Mahalanobis distance of its features to the training faces', the face-mirror score gap, nothing.
DIFFICULTIES = ("distance", "mirror", "constant")
UNUSUAL_SENTENCE = ("This photo is unlike the faces the model learned from, so this score is less reliable: "
                    "the range is wider, and even that is a rough guide.")


@dataclass(frozen=True)
class ScoreInterval:
    """How sure one score is.

    Attributes:
        low, high: the prediction interval on the score scale (clipped to it, ``low <= high``).
        level: its nominal coverage (0.9: nine faces in ten like the calibration faces have their
            true score inside).
        unusual: the face's features are farther from the training faces' than
            ``1 - rate`` of the held-out faces' (``rate`` ~5 %); the interval is then widened.
        distance: that Mahalanobis distance; threshold: where ``unusual`` starts.
        widening: the factor the interval's half-width got (1 when not unusual).
    """

    low: float
    high: float
    level: float
    unusual: bool
    distance: float
    threshold: float
    widening: float

    def text(self, score: float) -> str:
        """E.g. ``"3.4, likely between 3.0 and 3.8 (90 % range)"``."""
        return f"{score:.1f}, likely between {self.low:.1f} and {self.high:.1f} ({self.level * 100:.0f} % range)"

    def to_json(self) -> dict[str, Any]:
        return {"low": round(self.low, 4), "high": round(self.high, 4), "level": self.level,
                "unusual": self.unusual, "distance": round(self.distance, 3),
                "threshold": round(self.threshold, 3), "widening": round(self.widening, 3)}


@dataclass(frozen=True)
class Uncertainty:
    """A checkpoint's conformal calibration and its out-of-distribution detector."""

    conformal: ConformalCalibration
    ood: FeatureDistance
    level: float = DEFAULT_LEVEL
    source: str = ""

    def describe_batch(self, scores: np.ndarray, mirror_gaps: np.ndarray, embeddings: np.ndarray,
                       level: float | None = None) -> list[ScoreInterval]:
        """One :class:`ScoreInterval` per face: scores, mirror gaps ``(n,)``, embeddings ``(n, d)``."""
        level = self.level if level is None else level
        scores = np.atleast_1d(np.asarray(scores, dtype=np.float64))
        gaps = np.atleast_1d(np.asarray(mirror_gaps, dtype=np.float64))
        distance = self.ood.distance(embeddings)
        # A distance-scaled width already grows with the distance; the others widen past the threshold.
        widening = np.ones_like(distance) if self.conformal.difficulty == "distance" else self.ood.widening_at(distance)
        low, high = self.conformal.interval(scores, self.difficulty(gaps, distance), level, widening)
        return [ScoreInterval(float(lo), float(hi), level, bool(d > self.ood.threshold), float(d), self.ood.threshold,
                              float(w))
                for lo, hi, w, d in zip(low, high, widening, distance, strict=True)]

    def describe(self, score: float, mirror_gap: float, embedding: np.ndarray,
                 level: float | None = None) -> ScoreInterval:
        """The :class:`ScoreInterval` of one face (``embedding`` ``(d,)``)."""
        return self.describe_batch(np.array([score]), np.array([mirror_gap]), np.atleast_2d(embedding), level)[0]

    def describe_scores(self, scored: Any, index: int = 0, level: float | None = None) -> ScoreInterval:
        """The :class:`ScoreInterval` of face ``index`` of a :class:`mdnet.models.mdnet.FaceScores`."""
        return self.describe(float(scored.score[index]), float(scored.mirror_gap[index]),
                             scored.embedding[index].numpy(), level)

    def difficulty(self, mirror_gaps: np.ndarray, distances: np.ndarray) -> np.ndarray:
        """The raw per-face difficulty the conformal scores were normalised by."""
        return raw_difficulty(self.conformal.difficulty, mirror_gaps, distances)

    # ------------------------------------------------------------------ storage
    def save(self, directory: str | Path) -> Path:
        """Write ``directory/uncertainty.safetensors`` atomically (a temporary file renamed into place)."""
        directory = Path(directory)
        meta = {"conformal": self.conformal.to_json(), "level": self.level, "source": self.source,
                "ood": {"threshold": self.ood.threshold, "rate": self.ood.rate, "shrinkage": self.ood.shrinkage}}
        tensors = {"ood.mean": torch.from_numpy(np.ascontiguousarray(self.ood.mean, dtype=np.float32)),
                   "ood.precision": torch.from_numpy(np.ascontiguousarray(self.ood.precision, dtype=np.float32))}
        fd, tmp = tempfile.mkstemp(prefix=f".{UNCERTAINTY_NAME}.", dir=directory)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata={"uncertainty": json.dumps(meta)})
            os.chmod(tmp, 0o644)
            os.replace(tmp, directory / UNCERTAINTY_NAME)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return directory / UNCERTAINTY_NAME


# The model card's section about the intervals, written by `mdnet calibrate` and kept by `mdnet model-card`.
CARD_START, CARD_END = "<!-- mdnet calibrate -->", "<!-- /mdnet calibrate -->"


def card_section_of(text: str) -> str | None:
    """The calibrate section of a model card's text (markers included), or None."""
    if CARD_START not in text or CARD_END not in text:
        return None
    return CARD_START + text.split(CARD_START, 1)[1].split(CARD_END, 1)[0] + CARD_END


def write_card_section(card: Path, section: str) -> bool:
    """Put ``section`` into the model card ``card`` (replacing an earlier one), atomically; False without a card."""
    if not card.is_file():
        return False
    text = card.read_text()
    old = card_section_of(text)
    text = text.replace(old, section) if old else text.rstrip("\n") + "\n\n" + section + "\n"
    tmp = card.with_name(f".{card.name}.tmp")
    tmp.write_text(text)
    tmp.replace(card)
    return True


def raw_difficulty(name: str, mirror_gaps: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """Per-face difficulty ``(n,)`` by name (:data:`DIFFICULTIES`), the one definition calibration and scoring share."""
    gaps = np.asarray(mirror_gaps, dtype=np.float64)
    if name == "distance":
        return np.asarray(distances, dtype=np.float64)
    if name == "mirror":
        return gaps
    if name == "constant":
        return np.zeros_like(gaps)
    raise ValueError(f"unknown interval difficulty {name!r}; choose one of {DIFFICULTIES}")


def load_uncertainty(directory: str | Path) -> Uncertainty | None:
    """The checkpoint folder's :class:`Uncertainty`, None when it has no ``uncertainty.safetensors``.

    Raises :class:`~mdnet.models.files.CheckpointError` for a file that exists but cannot be used.
    """
    path = Path(directory) / UNCERTAINTY_NAME
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {})["uncertainty"])
        tensors = load_file(str(path))
        mean, precision = tensors["ood.mean"].numpy(), tensors["ood.precision"].numpy()
        if precision.shape != (mean.shape[0], mean.shape[0]):
            raise ValueError(f"precision {tuple(precision.shape)} does not match mean {tuple(mean.shape)}")
        ood = FeatureDistance(mean, precision, float(meta["ood"]["threshold"]), float(meta["ood"]["rate"]),
                              float(meta["ood"]["shrinkage"]))
        level = float(meta["level"])
        if not 0 < level < 1:
            raise ValueError(f"level {level} is not between 0 and 1")
        conformal = ConformalCalibration.from_json(meta["conformal"])
        if conformal.difficulty not in DIFFICULTIES:
            raise ValueError(f"unknown interval difficulty {conformal.difficulty!r}")
        return Uncertainty(conformal, ood, level, str(meta.get("source", "")))
    except Exception as err:  # a truncated file, a foreign one, missing fields: all mean "rebuild it"
        raise CheckpointError(f"{path} cannot be used: {err} (rerun `mdnet calibrate` to rebuild it)") from err
