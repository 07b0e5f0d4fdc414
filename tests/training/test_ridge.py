"""Closed-form ridge with the strength cross-validated over faces (``mdnet distill --head ridge``)."""

import numpy as np
import pytest
import torch

from mdnet.training.ridge import ALPHAS, fit_ridge, fold_of_groups, standardise


def linear_task(n_faces=120, copies=3, d=150, noise=0.0, seed=0):
    """Faces with ``copies`` noisy views each; the target is a fixed linear function of the face (d >> faces)."""
    gen = torch.Generator().manual_seed(seed)
    faces = torch.randn(n_faces, d, generator=gen) * torch.linspace(0.1, 3, d)  # features on different scales
    w = torch.randn(d, generator=gen) / d ** 0.5
    x = faces.repeat_interleave(copies, 0) + 0.05 * torch.randn(n_faces * copies, d, generator=gen)
    y = faces.repeat_interleave(copies, 0) @ w + noise * torch.randn(n_faces * copies, generator=gen)
    return x, y, np.repeat(np.arange(n_faces), copies), faces, w


def test_folds_keep_a_faces_copies_together_and_use_every_fold():
    groups = np.repeat(np.arange(23), 3)
    fold = fold_of_groups(groups, 5, seed=0)
    for g in range(23):
        assert len(set(fold[groups == g])) == 1
    assert set(fold) == set(range(5))
    with pytest.raises(ValueError, match="at least 5 faces"):
        fold_of_groups(np.arange(4), 5, seed=0)


def test_standardise_floors_near_constant_features():
    x = torch.randn(50, 4)
    x[:, 2] = 1.0  # constant
    mean, scale = standardise(x)
    assert torch.allclose(mean, x.mean(0)) and torch.isfinite(scale).all()
    assert scale[2] <= 1 / (1e-2 * x.std(0).median()) + 1e-3
    assert torch.allclose(scale[[0, 1, 3]], 1 / x.std(0)[[0, 1, 3]])


def test_ridge_predicts_new_faces_of_a_linear_task():
    x, y, groups, _, w = linear_task()
    fit = fit_ridge(x, y, groups)
    assert fit.alpha in ALPHAS and set(fit.cv_mse) == set(ALPHAS)
    test = torch.randn(40, x.shape[1], generator=torch.Generator().manual_seed(9)) * torch.linspace(0.1, 3, x.shape[1])
    pred, want = fit.predict(test), test @ w
    assert np.corrcoef(pred.numpy(), want.numpy())[0, 1] > 0.8  # 120 faces, 150 features, no noise
    constant = float(((want - y.mean()) ** 2).mean())
    assert float(((pred - want) ** 2).mean()) < 0.8 * constant


def test_noisier_targets_choose_stronger_regularisation():
    x, y, groups, _, _ = linear_task(noise=0.0)
    xn, yn, gn, _, _ = linear_task(noise=3.0)
    assert fit_ridge(xn, yn, gn).alpha > fit_ridge(x, y, groups).alpha


def test_mismatched_rows_are_refused():
    with pytest.raises(ValueError, match="one row per draw"):
        fit_ridge(torch.zeros(10, 3), torch.zeros(9), np.arange(10))
