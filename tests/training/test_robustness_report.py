"""The one summary of a robustness report that the benchmark, the ablation table and the model card share."""

import pytest

from mdnet.training.robustness_report import report_results, summary


def row(mean_abs, bias=0.0, unaligned=0):
    return {"mean_abs": mean_abs, "bias": bias, "unaligned": unaligned}


def test_summary_separates_the_compound_from_the_single_transforms():
    rows = {"jpeg_q25": row(0.10, -0.08, 1), "blur": row(0.02, 0.02), "gone": row(None, None, 3),
            "compound": row(0.30, -0.12, 2)}
    s = summary(rows)
    assert s["mean"] == pytest.approx((0.10 + 0.02 + 0.30) / 3)   # rows with nothing scored are left out
    assert s["bias"] == pytest.approx((-0.08 + 0.02 - 0.12) / 3)
    assert s["unaligned"] == 6                                     # lost faces count even where none was scored
    assert s["compound"] == 0.30
    assert s["mean_single"] == pytest.approx(0.06)
    assert s["worst_single"] == 0.10


def test_summary_of_nothing_scored_is_none_not_zero():
    s = summary({"blur": row(None, None, 5)})
    assert s["mean"] is None and s["compound"] is None and s["worst_single"] is None and s["unaligned"] == 5


@pytest.mark.parametrize("report", [{}, {"results": {}}, {"results": [1]}, []])
def test_a_file_without_results_says_how_to_write_one(report):
    with pytest.raises(ValueError, match="benchmarks/robustness.py --output"):
        report_results(report)
