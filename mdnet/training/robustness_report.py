"""Summaries of a robustness report, the JSON that ``python benchmarks/robustness.py --output FILE`` writes.

The report holds, per checkpoint label and per transform, ``mean_abs`` (mean |score change| on the 1-5
scale), ``bias`` (mean signed change) and ``unaligned`` (faces the aligner lost after the transform).
One summary serves the benchmark's own table, the ablation table and the model card::

    summary(report_results(report)["checkpoints/default"])
    # {"mean": ..., "bias": ..., "unaligned": ..., "compound": ..., "mean_single": ..., "worst_single": ...}
"""

from __future__ import annotations

COMPOUND = "compound"


def report_results(report: dict) -> dict[str, dict[str, dict]]:
    """``report["results"]``, or a ValueError that says which file to write."""
    results = report.get("results") if isinstance(report, dict) else None
    if not isinstance(results, dict) or not results:
        raise ValueError("the robustness file has no 'results': write it with benchmarks/robustness.py --output")
    return results


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summary(rows: dict[str, dict]) -> dict[str, float | int | None]:
    """One checkpoint's transforms -> the mean of the rows (and of their bias), the faces lost, the compound
    transform, the mean and the worst of the single transforms (``None`` where nothing was scored)."""
    scored = {t: r for t, r in rows.items() if r.get("mean_abs") is not None}
    single = [r["mean_abs"] for t, r in scored.items() if t != COMPOUND]
    biases = [r["bias"] for r in scored.values() if r.get("bias") is not None]
    return {
        "mean": _mean([r["mean_abs"] for r in scored.values()]),
        "bias": _mean(biases),
        "unaligned": sum(int(r.get("unaligned") or 0) for r in rows.values()),
        "compound": scored[COMPOUND]["mean_abs"] if COMPOUND in scored else None,
        "mean_single": _mean(single),
        "worst_single": max(single) if single else None,
    }
