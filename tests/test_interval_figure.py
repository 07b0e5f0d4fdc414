import base64
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from mdnet.interval_figure import BINS, HEIGHT, WIDTH, interval_img, interval_svg
from mdnet.percentiles import ScoreReference

SVG = "{http://www.w3.org/2000/svg}"


def bars_and_band(svg: str):
    root = ET.fromstring(svg)
    rects = root.findall(f"{SVG}rect")
    band, bars = [r for r in rects if r.get("id") == "band"], [r for r in rects if r.get("id") != "band"]
    assert len(band) == 1 and rects.index(band[0]) == len(bars)  # drawn over the bars
    band = band[0]
    return root, band, bars


def test_shares_follow_the_scores_and_sum_to_one():
    scores = np.concatenate([np.full(90, 2.5), np.full(10, 4.5)])
    ref = ScoreReference.from_scores(scores + np.random.default_rng(0).normal(0, 0.05, 100), "test")
    shares = ref.shares(np.linspace(1, 5, 9))
    assert shares.sum() == pytest.approx(1.0, abs=1e-6)
    assert shares[2] + shares[3] > 0.85 and shares[6] + shares[7] > 0.05 and shares[0] == 0  # bins of 0.5 from 1


def test_the_figure_draws_the_distribution_the_band_and_the_score():
    rng = np.random.default_rng(1)
    ref = ScoreReference.from_scores(rng.normal(3.0, 0.5, 2000).clip(1, 5), "test")
    root, band, bars = bars_and_band(interval_svg(3.4, 3.0, 3.8, ref))
    assert root.get("width") == str(WIDTH) and root.get("height") == str(HEIGHT)
    x0, w = float(band.get("x")), float(band.get("width"))
    inner = WIDTH - 16
    assert x0 == pytest.approx(8 + 2.0 / 4 * inner, abs=0.2) and w == pytest.approx(0.8 / 4 * inner, abs=0.2)
    assert 10 <= len(bars) <= BINS
    tallest = max(bars, key=lambda r: float(r.get("height")))
    assert 8 + 1.75 / 4 * inner <= float(tallest.get("x")) <= 8 + 2.25 / 4 * inner  # the mode, near 3.0
    score_line = root.findall(f"{SVG}line")[-1]
    assert float(score_line.get("x1")) == pytest.approx(8 + 2.4 / 4 * inner, abs=0.2)
    assert [t.text for t in root.findall(f"{SVG}text")] == ["1", "2", "3", "4", "5"]


def test_without_a_reference_and_out_of_range_values_it_still_draws():
    root, band, bars = bars_and_band(interval_svg(5.3, 4.6, 5.6, None))
    assert bars == [] and float(band.get("x")) + float(band.get("width")) <= WIDTH - 8 + 1e-6
    html = interval_img(3.0, 2.5, 3.5, None, alt="a range")
    data = re.search(r'base64,([A-Za-z0-9+/=]+)"', html).group(1)
    ET.fromstring(base64.b64decode(data))  # a well-formed SVG
    assert 'alt="a range"' in html
