"""Pearson correlation, MAE and RMSE, overall and per SCUT-FBP5500 subgroup."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from mdnet.faces.scut import GROUPS


def regression_metrics(pred: Sequence[float], target: Sequence[float]) -> dict[str, float]:
    """``{"pc", "mae", "rmse", "n"}`` as the SCUT-FBP5500 papers define them.

    PC is Pearson's correlation between predictions and mean ratings (NaN when
    either side is constant or fewer than two samples); MAE and RMSE are in
    score points.
    """
    p, t = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if p.shape != t.shape:
        raise ValueError(f"{p.shape[0]} predictions for {t.shape[0]} targets")
    n = int(p.size)
    if n == 0:
        return {"pc": math.nan, "mae": math.nan, "rmse": math.nan, "n": 0}
    err = p - t
    pc = math.nan
    if n > 1 and p.std() > 0 and t.std() > 0:
        pc = float(np.corrcoef(p, t)[0, 1])
    return {"pc": pc, "mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err**2).mean())), "n": n}


def report(pred: Sequence[float], target: Sequence[float], groups: Sequence[str]) -> dict:
    """Overall metrics plus the same under ``groups`` for AF, AM, CF and CM."""
    out = regression_metrics(pred, target)
    out["groups"] = {}
    for g in GROUPS:
        idx = [i for i, x in enumerate(groups) if x == g]
        out["groups"][g] = regression_metrics([pred[i] for i in idx], [target[i] for i in idx])
    return out


def format_table(result: dict) -> str:
    """A markdown table of a :func:`report`."""
    rows = ["| subset | n | PC | MAE | RMSE |", "|---|---|---|---|---|"]

    def row(name, m):
        rows.append(f"| {name} | {m['n']} | {m['pc']:.4f} | {m['mae']:.4f} | {m['rmse']:.4f} |")

    row("all", result)
    for g, m in result.get("groups", {}).items():
        if m["n"]:
            row(g, m)
    return "\n".join(rows)
