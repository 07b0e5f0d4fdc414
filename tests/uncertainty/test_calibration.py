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


def test_calibrated_intervals_cover_and_flag_as_promised():
    stats = synthetic_stats()
    unc = fit_uncertainty(stats, level=0.9, ood_rate=0.05)
    fresh = synthetic_stats(seed=1)
    out = unc.describe_batch(fresh["val_score"], fresh["val_gap"], fresh["val_embedding"])
    inside = [i.low <= y <= i.high for i, y in zip(out, fresh["val_target"], strict=True)]
    assert 0.84 <= np.mean(inside) <= 0.97
    assert np.mean([i.unusual for i in out]) < 0.15
    assert all(1.0 <= i.low <= i.high <= 5.0 for i in out)
    # a face whose mirror image scores differently gets a wider interval
    easy, hard = unc.describe(3.0, 0.0, fresh["val_embedding"][0]), unc.describe(3.0, 0.3, fresh["val_embedding"][0])
    assert hard.high - hard.low > easy.high - easy.low
    # features far from the training faces: flagged, widened
    far = unc.describe(3.0, 0.0, fresh["val_embedding"][0] + 50)
    assert far.unusual and far.widening > 1 and far.high - far.low > easy.high - easy.low
    assert "likely between" in easy.text(3.0) and "90 %" in easy.text(3.0)


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


def test_unknown_difficulty_is_refused():
    with pytest.raises(ValueError, match="difficulty"):
        fit_uncertainty(synthetic_stats(), difficulty="vibes")
