"""PC, MAE and RMSE as the SCUT-FBP5500 papers define them, per subgroup too."""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import pearsonr

from mdnet.training.metrics import format_table, regression_metrics, report


def test_matches_the_textbook_definitions():
    rng = np.random.default_rng(0)
    t = rng.uniform(1, 5, 200)
    p = t + rng.normal(0, 0.3, 200)
    m = regression_metrics(p, t)
    assert math.isclose(m["pc"], pearsonr(p, t)[0], rel_tol=1e-9)
    assert math.isclose(m["mae"], np.mean(np.abs(p - t)), rel_tol=1e-12)
    assert math.isclose(m["rmse"], np.sqrt(np.mean((p - t) ** 2)), rel_tol=1e-12)
    assert m["n"] == 200


def test_degenerate_inputs_give_nan_not_errors():
    assert math.isnan(regression_metrics([3.0, 3.0], [1.0, 2.0])["pc"])
    assert regression_metrics([], [])["n"] == 0


def test_report_splits_by_subgroup():
    pred = [1.0, 2.0, 3.0, 4.0, 2.0, 2.5]
    target = [1.5, 2.0, 3.0, 3.0, 2.0, 3.5]
    groups = ["AF", "AF", "AM", "AM", "CF", "CF"]
    r = report(pred, target, groups)
    assert r["groups"]["AF"]["n"] == 2 and r["groups"]["CM"]["n"] == 0
    assert math.isclose(r["groups"]["AM"]["mae"], 0.5)
    table = format_table(r)
    assert "| AF | 2 |" in table and "| CM |" not in table
