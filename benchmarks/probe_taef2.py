"""Quick probe: how much of the beauty signal do frozen TAEF2 features carry? Ridge regression, closed form.

Faces of the SCUT-FBP5500 60/40 training split are aligned by :func:`mdnet.faces.align` (crops cached
under ``cache/``), encoded by the frozen TAEF2 encoder (:mod:`mdnet.models.taef2`), and three feature
sets are tried:

- ``latent``: the 32-channel latent (1/8 of the side), average-pooled to 4x4 -> 512 values;
- ``mid``: the 64-channel map after the second downsampling stage (1/4 of the side, 56x56 at 224 px),
  average-pooled to 4x4, plus each channel's spatial mean and std -> 1152 values;
- ``both``: the two concatenated.

A ridge regression (features standardised on the training part, alpha chosen by 5-fold CV on it) is
fitted on the training split minus its fixed 10 % validation part (``stratified_split``, seed 0), and
Pearson r is reported on that validation part: the official test split is not touched.

Features are cached as ``.npy`` under ``cache/taef2-probe-*`` (in chunks while they are being
computed, so an interrupted run resumes), so a rerun only refits the ridge. Uses numpy and torch only.

Usage::

    python benchmarks/probe_taef2.py [--data ../shared/data/scut-fbp5500] [--size 224] [--batch 16] [--threads N]
"""

from __future__ import annotations

import argparse
import hashlib
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mdnet.faces.scut import ScutFBP5500, aligned_faces, stratified_split
from mdnet.models.taef2 import DEFAULT_TAEF2_DIR, SHA256, TAEF2
from mdnet.training.metrics import regression_metrics

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "scut-fbp5500"
ALPHAS = 10.0 ** np.arange(-1, 6.01, 0.25)
CHUNK = 256  # images per cached chunk of features


def pooled_features(tae: TAEF2, images: torch.Tensor) -> dict[str, np.ndarray]:
    """``images: (B, 3, H, W)`` uint8 -> ``{"latent": (B, 512), "mid": (B, 1152)}`` float32."""
    x = (images.float() / 255).contiguous(memory_format=torch.channels_last)
    feats = tae.features(x)
    mid, latent = feats[1], feats[-1]                      # (B, 64, H/4, W/4), (B, 32, H/8, W/8)
    latent_pooled = F.adaptive_avg_pool2d(latent, 4).flatten(1)
    mid_pooled = F.adaptive_avg_pool2d(mid, 4).flatten(1)
    mid_stats = torch.cat([mid.mean(dim=(2, 3)), mid.std(dim=(2, 3))], dim=1)
    return {
        "latent": latent_pooled.float().numpy(),
        "mid": torch.cat([mid_pooled, mid_stats], dim=1).float().numpy(),
    }


def extract(tae: TAEF2, images: torch.Tensor, folder: Path, batch: int) -> dict[str, np.ndarray]:
    """Features of every image, computed in cached chunks of ``CHUNK`` images (a rerun resumes)."""
    final = {k: folder / f"{k}.npy" for k in ("latent", "mid")}
    if all(p.is_file() for p in final.values()):
        return {k: np.load(p) for k, p in final.items()}
    folder.mkdir(parents=True, exist_ok=True)
    parts: dict[str, list[np.ndarray]] = {"latent": [], "mid": []}
    with tqdm(total=len(images), desc="TAEF2 features", unit="img") as bar:
        for start in range(0, len(images), CHUNK):
            path = folder / f"chunk-{start:05d}.npz"
            if path.is_file():
                with np.load(path) as z:
                    chunk = {k: z[k] for k in parts}
            else:
                pieces = [pooled_features(tae, images[i : i + batch])
                          for i in range(start, min(start + CHUNK, len(images)), batch)]
                chunk = {k: np.concatenate([p[k] for p in pieces]) for k in parts}
                tmp = path.with_name(f".{path.stem}.tmp.npz")
                np.savez(tmp, **chunk)
                tmp.replace(path)
            for k in parts:
                parts[k].append(chunk[k])
            bar.update(len(chunk["latent"]))
    out = {k: np.concatenate(v) for k, v in parts.items()}
    for k, p in final.items():
        np.save(p, out[k])
    for path in folder.glob("chunk-*.npz"):
        path.unlink()
    return out


def _standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean, std = train.mean(0), train.std(0)
    std[std == 0] = 1
    return [(a - mean) / std for a in (train, *others)]


def ridge_path(x: np.ndarray, y: np.ndarray, alphas: np.ndarray) -> tuple[np.ndarray, float]:
    """Ridge weights for every alpha at once. ``x: (N, D)`` standardised, ``y: (N,)`` -> ``(W: (A, D), intercept)``."""
    y_mean = float(y.mean())
    # x^T x = V diag(lam) V^T, so w = V diag(1 / (lam + a)) V^T x^T y: one (D, D) eigendecomposition for all alphas.
    lam, v = np.linalg.eigh(x.T @ x)
    vtxy = v.T @ (x.T @ (y - y_mean))
    return (vtxy[None, :] / (np.clip(lam, 0, None)[None, :] + alphas[:, None])) @ v.T, y_mean


def choose_alpha(
    x: np.ndarray, y: np.ndarray, alphas: np.ndarray, folds: int = 5, seed: int = 0
) -> tuple[float, float]:
    """Alpha with the lowest 5-fold CV mean squared error on ``(x, y)``; returns ``(alpha, CV Pearson r)``."""
    order = np.random.default_rng(seed).permutation(len(y))
    pred = np.zeros((len(alphas), len(y)))
    for held in np.array_split(order, folds):
        fit = np.setdiff1d(order, held)
        x_fit, x_held = _standardise(x[fit], x[held])
        w, b = ridge_path(x_fit, y[fit], alphas)
        pred[:, held] = w @ x_held.T + b
    best = int(((pred - y[None, :]) ** 2).mean(1).argmin())
    return float(alphas[best]), float(np.corrcoef(pred[best], y)[0, 1])


def probe(x_train, y_train, x_val, y_val) -> dict:
    alpha, cv_r = choose_alpha(x_train, y_train, ALPHAS)
    x_fit, x_val = _standardise(x_train, x_val)
    w, b = ridge_path(x_fit, y_train, np.array([alpha]))
    m = regression_metrics(x_val @ w[0] + b, y_val)
    edge = " (grid edge)" if alpha in (ALPHAS[0], ALPHAS[-1]) else ""
    return {"dims": x_train.shape[1], "alpha": f"{alpha:.3g}{edge}", "cv_r": cv_r, **m}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="SCUT-FBP5500 root (official layout)")
    ap.add_argument("--weights", type=Path, default=DEFAULT_TAEF2_DIR, help="folder with the two TAEF2 files")
    ap.add_argument("--size", type=int, default=224, help="aligned crop side (a multiple of 8)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--cache", type=Path, default=ROOT / "cache", help="aligned crops and features are cached here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()

    samples = ScutFBP5500(args.data).split("60-40/train")
    train, val = stratified_split(samples, 0.1, seed=0)
    images, unaligned = aligned_faces(samples, args.size, args.cache)
    t_align = time.perf_counter() - t0

    names = "\n".join(s.name for s in samples)
    key = hashlib.sha1(f"{names}|{args.size}|{SHA256['taef2_encoder.pth']}".encode()).hexdigest()[:10]
    tae = TAEF2.from_files(args.weights).to(memory_format=torch.channels_last)
    t1 = time.perf_counter()
    with torch.inference_mode():
        feats = extract(tae, images, args.cache / f"taef2-probe-{args.size}-{key}", args.batch)
    t_feat = time.perf_counter() - t1
    feats["both"] = np.concatenate([feats["latent"], feats["mid"]], axis=1)

    index = {s.name: i for i, s in enumerate(samples)}
    tr = np.array([index[s.name] for s in train])
    va = np.array([index[s.name] for s in val])
    y = np.array([s.score for s in samples])
    t2 = time.perf_counter()
    rows = {name: probe(f[tr].astype(np.float64), y[tr], f[va].astype(np.float64), y[va]) for name, f in feats.items()}
    t_fit = time.perf_counter() - t2

    print(f"\nSCUT-FBP5500 60/40 train split: fit on {len(tr)}, Pearson r on its 10 % validation part "
          f"({len(va)}; stratified_split seed 0). Aligned at {args.size} px ({len(unaligned)} without a "
          "detected face, resized whole). Ridge, alpha by 5-fold CV on the fitting part.\n")
    print("| TAEF2 features | dims | alpha | 5-fold CV r | val PC | val MAE | val RMSE |")
    print("|---|---|---|---|---|---|---|")
    labels = {"latent": "latent 32ch, 4x4 avg pool", "mid": "mid 64ch (1/4), 4x4 pool + ch mean/std",
              "both": "both"}
    for name, r in rows.items():
        print(f"| {labels[name]} | {r['dims']} | {r['alpha']} | {r['cv_r']:.4f} | {r['pc']:.4f} | "
              f"{r['mae']:.4f} | {r['rmse']:.4f} |")
    total = time.perf_counter() - t0
    print(f"\ncommand: python {shlex.join(sys.argv)}")
    print(f"wall time {total:.0f} s (alignment/cache {t_align:.0f} s, features {t_feat:.0f} s, ridge {t_fit:.0f} s); "
          f"torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
