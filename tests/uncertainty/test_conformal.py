import math

import numpy as np
import pytest

from mdnet.uncertainty import ConformalCalibration, conformal_quantile, conformal_rank


def test_quantile_is_the_finite_sample_rank_of_known_residuals():
    r = np.array([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6])  # n = 9, sorted 0.1 .. 0.9
    assert conformal_rank(9, 0.9) == 9  # ceil(10 * 0.9), no rounding up of 9.000000000000002
    assert conformal_quantile(r, 0.9) == pytest.approx(0.9)
    assert conformal_quantile(r, 0.8) == pytest.approx(0.8)
    assert conformal_quantile(r, 0.75) == pytest.approx(0.8)  # ceil(7.5) = 8, not the plain 75 % quantile
    assert conformal_quantile(r[:8], 0.9) == math.inf  # ceil(9 * 0.9) = 9 > 8 faces: the whole scale


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5])
def test_level_must_be_a_probability(bad):
    with pytest.raises(ValueError, match="level"):
        conformal_rank(10, bad)


def _synthetic(rng, n):
    """A heteroscedastic task: the error's spread is 0.1 + |x|, which the difficulty knows only roughly."""
    x = rng.uniform(-1, 1, n)
    sigma = 0.1 + np.abs(x)
    y = 3 + x + rng.normal(0, sigma)
    return y, 3 + x, sigma * rng.uniform(0.7, 1.3, n)


@pytest.mark.parametrize("use_difficulty", [False, True])
def test_coverage_on_a_synthetic_task_lands_at_the_nominal_level(use_difficulty):
    rng = np.random.default_rng(0)
    covered = []
    widths = []
    for _ in range(200):
        y, p, d = _synthetic(rng, 300)
        cal = ConformalCalibration.fit(y, p, d if use_difficulty else np.zeros_like(d), name="test",
                                       score_range=(-10, 20))
        yt, pt, dt = _synthetic(rng, 1000)
        low, high = cal.interval(pt, dt if use_difficulty else np.zeros_like(dt), 0.9)
        covered.append(np.mean((yt >= low) & (yt <= high)))
        widths.append(np.mean(high - low))
    assert 0.895 <= np.mean(covered) <= 0.91  # >= 0.9 and < 0.9 + 1 / 301 in expectation
    if use_difficulty:  # an informative difficulty narrows the intervals on average
        y, p, d = _synthetic(rng, 300)
        plain = ConformalCalibration.fit(y, p, np.zeros_like(d), name="constant", score_range=(-10, 20))
        assert np.mean(widths) < 2 * plain.quantile(0.9) * plain.floor


def test_intervals_are_clipped_to_the_scale_and_never_inverted():
    rng = np.random.default_rng(1)
    y = rng.uniform(1, 5, 100)
    cal = ConformalCalibration.fit(y, y + rng.normal(0, 0.3, 100), rng.uniform(0, 0.2, 100), name="mirror")
    preds = np.array([0.2, 1.0, 3.0, 5.0, 6.3])  # even predictions outside the scale
    low, high = cal.interval(preds, np.array([0.0, 0.1, 0.05, 0.3, 0.0]), 0.9)
    assert np.all(low >= 1) and np.all(high <= 5) and np.all(low <= high)
    assert low[2] < 3.0 < high[2]
    wide_low, wide_high = cal.interval(preds, 0.05, 0.95)
    narrow_low, narrow_high = cal.interval(preds, 0.05, 0.8)
    assert np.all(wide_high - wide_low >= narrow_high - narrow_low)


def test_json_round_trip_and_bad_calibration_data():
    cal = ConformalCalibration.fit([3.0, 2.0, 4.0], [3.1, 2.5, 3.6], [0.1, 0.0, 0.2], name="mirror",
                                   source="3 faces")
    again = ConformalCalibration.from_json(cal.to_json())
    assert again.quantile(0.5) == pytest.approx(cal.quantile(0.5), abs=1e-6)
    assert again.floor == cal.floor == pytest.approx(0.1)
    with pytest.raises(ValueError, match="equally long"):
        ConformalCalibration.fit([3.0], [3.0, 2.0], [0.1], name="x")
    with pytest.raises(ValueError, match="non-negative"):
        ConformalCalibration.fit([3.0], [3.0], [-0.1], name="x")
    with pytest.raises(ValueError, match="conformity"):
        ConformalCalibration.from_json({"conformity": [], "floor": 0.1, "difficulty": "x"})
