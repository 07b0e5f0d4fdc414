"""Split conformal prediction intervals for a score, with widths normalised by a per-face difficulty.

The calibration faces (never trained on) give conformity scores ``r_i = |y_i - f(x_i)| / s(x_i)``,
where ``s`` is a per-face difficulty (``> 0``). For a new face the interval is
``f(x) +- q * s(x)`` with ``q`` the ``ceil((n + 1) * level)``-th smallest ``r_i``: when the
calibration and test faces are exchangeable, the interval covers the true score with probability
at least ``level`` (and below ``level + 1 / (n + 1)`` when the ``r_i`` have no ties), whatever the
model and the difficulty (Vovk et al. 2005; Lei et al. 2018; normalised scores: Papadopoulos et
al. 2008). The difficulty only changes where the width goes, never the guarantee.

Shapes: every array is ``(n,)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


def conformal_rank(n: int, level: float) -> int:
    """The 1-based rank ``ceil((n + 1) * level)`` of the calibration score that is the quantile.

    Larger than ``n`` when ``n`` calibration faces are too few for ``level`` (then the interval is
    the whole scale). A small tolerance keeps ``(n + 1) * level`` that is an integer in floating
    point from rounding up.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be between 0 and 1 (exclusive), got {level}")
    if n < 1:
        raise ValueError("conformal calibration needs at least one face")
    return max(1, math.ceil((n + 1) * level - 1e-9))


def conformal_quantile(conformity: np.ndarray, level: float) -> float:
    """The finite-sample conformal quantile of ``conformity`` ``(n,)`` at ``level``: inf when n is too small."""
    r = np.sort(np.asarray(conformity, dtype=np.float64).ravel())
    if not np.all(np.isfinite(r)) or np.any(r < 0):
        raise ValueError("conformity scores must be finite and non-negative")
    k = conformal_rank(r.size, level)
    return float(r[k - 1]) if k <= r.size else math.inf


@dataclass(frozen=True)
class ConformalCalibration:
    """What a checkpoint needs to put an interval around each score.

    Attributes:
        conformity: ``(n,)`` sorted conformity scores of the calibration faces (any level can be
            asked for later).
        floor: added to every raw difficulty, ``s(x) = floor + d(x)``, so that a face whose
            difficulty happens to be 0 still gets a width (the median of ``d`` on the
            calibration faces by default; 1 when every ``d`` is 0, i.e. plain split conformal).
        difficulty: the name of the per-face difficulty ``d`` (``"distance"``, ``"mirror"``, ``"constant"``).
        score_range: intervals are clipped to it.
        source: which faces calibrated it (for the model card and the JSON).
    """

    conformity: tuple[float, ...]
    floor: float
    difficulty: str
    score_range: tuple[float, float] = (1.0, 5.0)
    source: str = ""

    @classmethod
    def fit(cls, targets: np.ndarray, predictions: np.ndarray, difficulty: np.ndarray, *, name: str,
            floor: float | None = None, score_range: tuple[float, float] = (1.0, 5.0),
            source: str = "") -> ConformalCalibration:
        """Calibrate on faces the model was not trained on: true scores, predictions, raw difficulties ``(n,)``."""
        y, p, d = (np.asarray(a, dtype=np.float64).ravel() for a in (targets, predictions, difficulty))
        if not (y.size == p.size == d.size) or y.size == 0:
            raise ValueError(f"targets, predictions and difficulty must be equally long and non-empty "
                             f"(got {y.size}, {p.size}, {d.size})")
        if np.any(d < 0) or not np.all(np.isfinite(d)):
            raise ValueError("difficulties must be finite and non-negative")
        if floor is None:
            # the median difficulty; a constant difficulty (all 0) gives plain split conformal
            floor = float(np.median(d)) if np.any(d > 0) else 1.0
            if floor == 0.0:
                floor = float(np.min(d[d > 0]))
        if floor < 0 or (floor == 0 and np.any(d == 0)):
            raise ValueError(f"floor must be positive (or 0 when every difficulty is), got {floor}")
        r = np.abs(y - p) / (floor + d)
        return cls(tuple(np.sort(r).tolist()), float(floor), name, (float(score_range[0]), float(score_range[1])),
                   source)

    @property
    def count(self) -> int:
        return len(self.conformity)

    def quantile(self, level: float) -> float:
        return conformal_quantile(np.asarray(self.conformity), level)

    def half_width(self, difficulty: np.ndarray | float, level: float) -> np.ndarray:
        """Half the interval's width before clipping: ``q(level) * (floor + d)``."""
        return self.quantile(level) * (self.floor + np.asarray(difficulty, dtype=np.float64))

    def interval(self, predictions: np.ndarray | float, difficulty: np.ndarray | float,
                 level: float, widening: np.ndarray | float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """``(low, high)``, each shaped like ``predictions``: clipped to the score range, ``low <= high``.

        ``widening`` (>= 1) multiplies the half-width of faces the guarantee may not cover (unusual ones).
        """
        p = np.asarray(predictions, dtype=np.float64)
        h = self.half_width(difficulty, level) * np.asarray(widening, dtype=np.float64)
        lo_s, hi_s = self.score_range
        low = np.clip(p - h, lo_s, hi_s)
        high = np.clip(p + h, lo_s, hi_s)
        return np.minimum(low, high), np.maximum(low, high)

    def to_json(self) -> dict[str, Any]:
        return {"conformity": [round(x, 6) for x in self.conformity], "floor": self.floor,
                "difficulty": self.difficulty, "score_range": list(self.score_range), "source": self.source}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ConformalCalibration:
        r = [float(x) for x in data["conformity"]]
        if not r or any(x < 0 or not math.isfinite(x) for x in r):
            raise ValueError("conformity must be a non-empty list of finite, non-negative numbers")
        floor = float(data["floor"])
        if floor < 0 or not math.isfinite(floor):
            raise ValueError(f"floor must be finite and non-negative, got {floor}")
        low, high = (float(x) for x in data.get("score_range", (1.0, 5.0)))
        return cls(tuple(sorted(r)), floor, str(data["difficulty"]), (low, high), str(data.get("source", "")))
