"""Is this face unlike the training faces? A Mahalanobis distance in the model's own feature space.

The features are what MD-Net's head reads (:attr:`mdnet.models.mdnet.MDNetOutput.embedding`). A
Gaussian fitted to the training faces' features (mean + Ledoit-Wolf shrunk covariance: 384
dimensions from ~3000 faces need shrinkage) gives each face a distance (Lee et al. 2018, "A
simple unified framework for detecting out-of-distribution samples"). The threshold is the
conformal quantile of the distances of held-out faces (never trained on) at ``1 - rate``: a face
like them is flagged with probability at most ``rate`` (about 5 %).

Shapes: ``features`` ``(n, d)``; distances ``(n,)``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from mdnet.uncertainty.conformal import conformal_quantile


def ledoit_wolf(features: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Mean ``(d,)``, Ledoit-Wolf covariance ``(d, d)`` (shrunk towards a scaled identity) and the shrinkage."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need at least two feature vectors (n, d), got shape {x.shape}")
    n, d = x.shape
    mean = x.mean(0)
    xc = x - mean
    cov = xc.T @ xc / n
    mu = np.trace(cov) / d
    target_gap = np.sum((cov - mu * np.eye(d)) ** 2)
    # sum_k ||x_k x_k^T - S||_F^2 = sum_k ||x_k||^4 - n ||S||_F^2
    spread = (np.sum(np.sum(xc**2, 1) ** 2) - n * np.sum(cov**2)) / n**2
    shrinkage = 1.0 if target_gap <= 0 else float(np.clip(spread / target_gap, 0.0, 1.0))
    return mean, shrinkage * mu * np.eye(d) + (1 - shrinkage) * cov, shrinkage


@dataclass(frozen=True)
class FeatureDistance:
    """A fitted Gaussian of the training faces' features and the threshold that flags a face.

    Attributes:
        mean: ``(d,)``. precision: ``(d, d)``, the inverse of the shrunk covariance.
        threshold: distances above it are flagged (inf until :meth:`calibrate`).
        rate: the share of held-out faces it was calibrated to flag.
        shrinkage: the Ledoit-Wolf shrinkage used (0: the sample covariance, 1: a scaled identity).
    """

    mean: np.ndarray
    precision: np.ndarray
    threshold: float = float("inf")
    rate: float = 0.05
    shrinkage: float = 0.0

    @classmethod
    def fit(cls, features: np.ndarray) -> FeatureDistance:
        """Fit on the training faces' features ``(n, d)``."""
        mean, cov, shrinkage = ledoit_wolf(features)
        return cls(mean.astype(np.float32), np.linalg.inv(cov).astype(np.float32), shrinkage=shrinkage)

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance ``(n,)`` of features ``(n, d)`` (or one ``(d,)``: shape ``(1,)``)."""
        x = np.atleast_2d(np.asarray(features, dtype=np.float64))
        if x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"features have {x.shape[1]} dimensions, the fitted Gaussian {self.mean.shape[0]}")
        x = x - self.mean
        return np.sqrt(np.maximum(np.einsum("nd,de,ne->n", x, self.precision.astype(np.float64), x), 0.0))

    def calibrate(self, heldout_features: np.ndarray, rate: float = 0.05) -> FeatureDistance:
        """The same Gaussian with the threshold that flags at most ``rate`` of faces like ``heldout_features``."""
        threshold = conformal_quantile(self.distance(heldout_features), 1.0 - rate)
        return replace(self, threshold=threshold, rate=rate)

    def flags(self, features: np.ndarray) -> np.ndarray:
        """``(n,)`` bool: the faces farther than the threshold."""
        return self.distance(features) > self.threshold

    def widening(self, features: np.ndarray) -> np.ndarray:
        """``(n,)`` factor >= 1 for the interval's width: distance / threshold beyond it, 1 within it."""
        return self.widening_at(self.distance(features))

    def widening_at(self, distance: np.ndarray) -> np.ndarray:
        """:meth:`widening` from distances already computed (``(n,)``)."""
        distance = np.asarray(distance, dtype=np.float64)
        return np.maximum(distance / self.threshold, 1.0) if np.isfinite(self.threshold) else np.ones_like(distance)
