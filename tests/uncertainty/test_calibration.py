import dataclasses

import numpy as np
import pytest

from mdnet.models.files import CheckpointError
from mdnet.uncertainty.calibrate import fit_uncertainty
from mdnet.uncertainty.calibration import UNCERTAINTY_NAME, load_uncertainty


def synthetic_stats(seed=0, n_train=600, n_val=200, dim=8):
    """Scores with errors that grow with the mirror gap, features from one Gaussian."""
    rng = np.random.default_rng(seed)
    gap = rng.exponential(0.05, n_val)
    target = rng.uniform(1.5, 4.5, n_val)
    return {
        "train_embedding": rng.normal(size=(n_train, dim)),
        "val_embedding": rng.normal(size=(n_val, dim)),
        "val_target": target,
        "val_score": target + rng.normal(0, 0.1 + 2 * gap),
        "val_gap": gap,
        "val_group": np.array(["AF", "AM", "CF", "CM"] * (n_val // 4)),
    }


@pytest.mark.parametrize("difficulty", ["distance", "mirror", "constant"])
def test_calibrated_intervals_cover_and_flag_as_promised(difficulty):
    stats = synthetic_stats()
    unc = fit_uncertainty(stats, difficulty=difficulty, level=0.9, ood_rate=0.05)
    fresh = synthetic_stats(seed=1)
    out = unc.describe_batch(fresh["val_score"], fresh["val_gap"], fresh["val_embedding"])
    inside = [i.low <= y <= i.high for i, y in zip(out, fresh["val_target"], strict=True)]
    assert 0.84 <= np.mean(inside) <= 0.97
    assert np.mean([i.unusual for i in out]) < 0.15
    assert all(1.0 <= i.low <= i.high <= 5.0 for i in out)
    assert "likely between" in out[0].text(3.0) and "90 %" in out[0].text(3.0)
    # features far from the training faces: flagged, and a wider interval than a typical face's
    typical = unc.describe(3.0, 0.0, np.zeros(8))
    far = unc.describe(3.0, 0.0, fresh["val_embedding"][0] + 50)
    assert far.unusual and not typical.unusual and far.distance > far.threshold
    assert far.high - far.low > typical.high - typical.low


def test_each_difficulty_widens_where_it_should():
    stats, face = synthetic_stats(), synthetic_stats(seed=1)["val_embedding"][0]
    mirror = fit_uncertainty(stats, difficulty="mirror")
    easy, hard = mirror.describe(3.0, 0.0, face), mirror.describe(3.0, 0.3, face)
    assert hard.high - hard.low > easy.high - easy.low
    assert mirror.describe(3.0, 0.0, face + 50).widening > 1  # past the threshold: widened by distance/threshold
    distance = fit_uncertainty(stats, difficulty="distance")
    near, farther = distance.describe(3.0, 0.0, face * 0.1), distance.describe(3.0, 0.0, face * 3)
    assert farther.distance > near.distance and farther.high - farther.low > near.high - near.low
    assert distance.describe(3.0, 0.3, face).high == pytest.approx(distance.describe(3.0, 0.0, face).high)
    far = distance.describe(3.0, 0.0, face + 50)
    assert far.unusual and far.widening == 1.0  # the width already grew with the distance: no second widening
    constant = fit_uncertainty(stats, difficulty="constant")
    a, b = constant.describe(3.0, 0.0, face), constant.describe(3.0, 0.3, face)
    assert b.high - b.low == pytest.approx(a.high - a.low)


def test_save_load_round_trip_and_damaged_files(tmp_path):
    assert load_uncertainty(tmp_path) is None
    stats = synthetic_stats()
    unc = fit_uncertainty(stats, difficulty="constant", level=0.8, source="synthetic")
    path = unc.save(tmp_path)
    assert path.name == UNCERTAINTY_NAME and not list(tmp_path.glob(".*"))  # no temporary file left behind
    again = load_uncertainty(tmp_path)
    assert again.level == 0.8 and again.source == "synthetic" and again.conformal.difficulty == "constant"
    a = unc.describe(3.2, 0.1, stats["val_embedding"][3])
    b = again.describe(3.2, 0.1, stats["val_embedding"][3])
    assert b.low == pytest.approx(a.low, abs=1e-5) and b.high == pytest.approx(a.high, abs=1e-5)
    assert b.distance == pytest.approx(a.distance, rel=1e-4)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="mdnet calibrate"):
        load_uncertainty(tmp_path)


def test_unknown_difficulty_is_refused(tmp_path):
    with pytest.raises(ValueError, match="difficulty"):
        fit_uncertainty(synthetic_stats(), difficulty="vibes")
    unc = fit_uncertainty(synthetic_stats())
    unc = dataclasses.replace(unc, conformal=dataclasses.replace(unc.conformal, difficulty="vibes"))
    unc.save(tmp_path)
    with pytest.raises(CheckpointError, match="vibes"):
        load_uncertainty(tmp_path)


def test_the_model_card_section_is_added_then_replaced(tmp_path):
    from mdnet.uncertainty.calibrate import CARD_END, CARD_START, card_section, write_card_section

    unc = fit_uncertainty(synthetic_stats(), source="synthetic faces")
    assert not write_card_section(tmp_path / "README.md", card_section(unc, 0.9))  # no card: nothing written
    card = tmp_path / "README.md"
    card.write_text("# Model card\n\n## Results\n\nPC 0.9\n")
    assert write_card_section(card, card_section(unc, 0.9))
    first = card.read_text()
    assert first.startswith("# Model card\n\n## Results\n\nPC 0.9\n") and "synthetic faces" in first
    assert write_card_section(card, card_section(unc, 0.7))
    again = card.read_text()
    assert again.count(CARD_START) == again.count(CARD_END) == 1 and "0.70" in again and "0.90" not in again
