import numpy as np
import pytest

from mdnet.uncertainty.ood import FeatureDistance, ledoit_wolf


def test_ledoit_wolf_shrinks_more_when_samples_are_few():
    rng = np.random.default_rng(0)
    few = ledoit_wolf(rng.normal(size=(20, 50)))[2]
    many = ledoit_wolf(rng.normal(size=(5000, 50)) * np.linspace(0.5, 2, 50))[2]
    assert 0.0 <= many < few <= 1.0
    mean, cov, _ = ledoit_wolf(rng.normal(size=(20, 50)))
    assert np.all(np.linalg.eigvalsh(cov) > 0)  # invertible even with fewer faces than dimensions
    with pytest.raises(ValueError, match="two feature vectors"):
        ledoit_wolf(np.zeros((1, 3)))


def test_threshold_flags_about_the_rate_of_faces_like_the_heldout_ones_and_far_ones_always():
    rng = np.random.default_rng(1)
    scale = rng.uniform(0.2, 3.0, 32)
    train, heldout, test = (rng.normal(size=(n, 32)) * scale for n in (3000, 400, 20000))
    ood = FeatureDistance.fit(train).calibrate(heldout, rate=0.05)
    assert 0.035 <= ood.flags(test).mean() <= 0.07
    far = test[:100] + 6 * scale  # shifted by six standard deviations in every direction
    assert ood.flags(far).all()
    assert np.all(ood.widening(far) > 1) and np.all(ood.widening(test[~ood.flags(test)]) == 1)
    with pytest.raises(ValueError, match="dimensions"):
        ood.distance(np.zeros((2, 31)))


def test_uncalibrated_distance_flags_nothing():
    rng = np.random.default_rng(2)
    ood = FeatureDistance.fit(rng.normal(size=(100, 4)))
    assert not ood.flags(rng.normal(size=(10, 4)) * 100).any()
