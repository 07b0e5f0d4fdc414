"""Ridge regression in closed form, its strength chosen by cross-validation grouped by face.

What ``mdnet distill --head ridge`` fits on the frozen SFace map of every draw (a face after the
camera augmentations): with ``d`` (50,176) far above the number of draws ``n``, the dual form is
the cheap one. Features are standardised (mean and scale per feature, from all draws), the targets
centred; for each fold the training draws' kernel ``K = Z Z^T`` is diagonalised once
(``K = V diag(l) V^T``), which gives the held-out predictions for every strength ``a`` at the cost of
a matrix product: ``K_heldout,train V diag(1 / (l + a)) V^T y``. Folds are drawn by *face*
(``groups``): the augmented copies of one face never sit on both sides, or the held-out error would
flatter weak regularisation. The strength with the lowest held-out mean squared error is refitted
on all draws: ``w = Z^T V diag(1 / (l + a)) V^T y``.

Memory: the features (``n x d`` float32) and the kernel (``n x n`` float64); about 2.3 GB and 1 GB
for 11,000 draws of the whole 7 x 7 map. Time: one eigendecomposition per fold and one at the end
(``O(n^3)``; minutes on a 2-core CPU for 11,000 draws).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

ALPHAS = (10.0, 100.0, 1e3, 3e3, 1e4, 3e4, 1e5, 1e6)


@dataclass
class RidgeFit:
    weight: torch.Tensor      # (d,) on standardised features
    bias: float               # the targets' mean
    mean: torch.Tensor        # (d,) feature means
    scale: torch.Tensor       # (d,) 1 / feature standard deviations
    alpha: float              # the strength chosen
    cv_mse: dict[float, float]  # held-out mean squared error per strength

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return self.bias + ((features - self.mean) * self.scale) @ self.weight


def standardise(features: torch.Tensor, floor: float = 1e-2) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and ``1 / std``; a standard deviation below ``floor`` x the median one is raised to it
    (nearly constant features would otherwise get huge weights)."""
    mean = features.mean(0)
    std = features.std(0)
    std = std.clamp_min(floor * float(std.median().clamp_min(1e-12)))
    return mean, 1 / std


def _kernel(z: torch.Tensor, rows: np.ndarray | slice, cols: np.ndarray | slice, chunk: int = 2048) -> np.ndarray:
    a, b = z[rows], z[cols]
    out = np.empty((len(a), len(b)))
    for i in range(0, len(a), chunk):
        out[i : i + chunk] = (a[i : i + chunk] @ b.T).double().numpy()
    return out


def fold_of_groups(groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each draw's fold, all draws of a group (face) in the same one, groups shuffled by ``seed``."""
    unique = np.unique(groups)
    if len(unique) < folds:
        raise ValueError(f"cross-validation needs at least {folds} faces, got {len(unique)}")
    order = np.random.default_rng(seed).permutation(len(unique))
    fold = dict(zip(unique[order].tolist(), (np.arange(len(unique)) % folds).tolist(), strict=True))
    return np.array([fold[g] for g in groups.tolist()])


def fit_ridge(features: torch.Tensor, targets: torch.Tensor, groups: np.ndarray, alphas=ALPHAS, folds: int = 5,
              seed: int = 0, log=None) -> RidgeFit:
    """Ridge regression of ``targets (n,)`` on ``features (n, d)``; the strength among ``alphas`` by
    ``folds``-fold cross-validation grouped by ``groups (n,)``. ``log``: called with a line per step."""
    if len(features) != len(targets) or len(targets) != len(groups):
        raise ValueError("features, targets and groups need one row per draw")
    log = log or (lambda _msg: None)
    features = features.float()
    mean, scale = standardise(features)
    z = (features - mean) * scale
    y = targets.double().numpy()
    fold = fold_of_groups(np.asarray(groups), folds, seed)
    sq_err = {a: 0.0 for a in alphas}
    for f in range(folds):
        tr, te = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        lam, vec = np.linalg.eigh(_kernel(z, tr, tr))
        proj = vec.T @ (y[tr] - y[tr].mean())
        cross = _kernel(z, te, tr) @ vec
        for a in alphas:
            pred = y[tr].mean() + cross @ (proj / (lam + a))
            sq_err[a] += float(((pred - y[te]) ** 2).sum())
        log(f"fold {f + 1}/{folds}: {len(tr)} draws fitted, {len(te)} held out")
    cv_mse = {a: e / len(y) for a, e in sq_err.items()}
    alpha = min(cv_mse, key=cv_mse.get)
    lam, vec = np.linalg.eigh(_kernel(z, slice(None), slice(None)))
    dual = vec @ ((vec.T @ (y - y.mean())) / (lam + alpha))
    weight = z.T.double() @ torch.from_numpy(dual)
    return RidgeFit(weight.float(), float(y.mean()), mean, scale, alpha, cv_mse)
