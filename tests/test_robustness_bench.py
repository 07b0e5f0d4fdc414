"""benchmarks/robustness.py: its photo transforms and its core measurement, on the astronaut with a micro model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from conftest import build_model
from fake_scut import astronaut_face

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "robustness.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("robustness_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def photos():
    face = np.asarray(astronaut_face())
    darker = (face * 0.85).astype(np.uint8)
    blank = np.full((350, 350, 3), 128, np.uint8)  # no face: the original does not align
    return [("astronaut", face), ("astronaut-darker", darker), ("blank", blank)]


def test_transforms_keep_uint8_rgb_and_are_deterministic(bench, photos):
    rgb = photos[0][1]
    for name, fn in bench.TRANSFORMS.items():
        out = fn(rgb)
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3, name
        assert np.array_equal(out, fn(rgb)), name
    assert bench.TRANSFORMS["downscale_25"](rgb).shape == (88, 88, 3)  # a smaller photo, not a blurred one
    assert bench.TRANSFORMS["pad_3x"](rgb).shape == (1050, 1050, 3)
    assert np.array_equal(bench.TRANSFORMS["mirror"](rgb), rgb[:, ::-1])
    # Rotation grows the canvas so nothing is cut: 350 * (cos 20 + sin 20) = 449 px.
    assert bench.TRANSFORMS["rotate_20"](rgb).shape == (449, 449, 3)


def test_measure_counts_failures_and_reports_changes(bench, photos):
    model = build_model("micro")
    transforms = {
        "identity": lambda x: x,
        "mirror": bench.TRANSFORMS["mirror"],
        "rotate_20": bench.TRANSFORMS["rotate_20"],
        "erase": lambda x: np.full_like(x, 128),  # the face is gone: the aligner must fail, and be counted
    }
    report = bench.measure_robustness({"a": model, "b": build_model("micro", seed=1)}, photos, transforms,
                                      progress=False)
    assert report["faces"] == 3
    assert report["unaligned_original"] == {"a": ["blank (NoFaceError)"], "b": ["blank (NoFaceError)"]}
    for label in ("a", "b"):
        rows = report["results"][label]
        assert rows["identity"]["mean_abs"] == pytest.approx(0, abs=1e-5)
        assert rows["identity"]["scored"] == 2 and rows["identity"]["unaligned"] == 0
        assert rows["erase"]["scored"] == 0 and rows["erase"]["unaligned"] == 2 and rows["erase"]["mean_abs"] is None
        for t in ("mirror", "rotate_20"):
            assert rows[t]["scored"] + rows[t]["unaligned"] == 2
            assert 0 <= rows[t]["mean_abs"] < 1 and abs(rows[t]["bias"]) <= rows[t]["mean_abs"] + 1e-9
        scores = report["scores"][label]["astronaut"]
        assert 1 <= scores["original"] <= 5 and scores["erase"] is None
    # Two models with different weights give two different columns.
    assert report["scores"]["a"]["astronaut"]["original"] != report["scores"]["b"]["astronaut"]["original"]
    table = bench.markdown_table(report)
    assert "| a: mean abs change | bias | not aligned | b: mean abs change |" in table
    assert "| erase | n/a | n/a | 2 | n/a | n/a | 2 |" in table
