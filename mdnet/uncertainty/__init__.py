"""How sure a score is: conformal prediction intervals and a warning for faces unlike the training faces."""

from mdnet.uncertainty.conformal import ConformalCalibration, conformal_quantile, conformal_rank

__all__ = ["ConformalCalibration", "conformal_quantile", "conformal_rank"]
