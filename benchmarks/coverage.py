"""Do the intervals hold? Coverage, width and adaptivity of the conformal intervals on held-out faces.

The 330 validation faces of SCUT-FBP5500 (never trained on; ``stratified_split(train, 0.1,
seed=0)`` of the official 60/40 training list) are split at random into two halves, ``--splits``
times: one half calibrates (:func:`mdnet.uncertainty.calibrate.fit_uncertainty`, as ``mdnet
calibrate`` does with all 330), the other measures. Per difficulty option (what scales each face's
width; the conformal guarantee holds for all of them, the widths differ):

- ``constant``: plain split conformal, the same width for every face;
- ``mirror``: the gap between the face's score and its mirror image's (free: every score runs both);
- ``augment``: the spread (std) of the score over ``--augment-views`` CameraAugment views of the crop
  (costs that many extra mirror-averaged passes per face);
- ``distance``: the face's Mahalanobis distance to the training faces' features;
- ``shipped``: what ``mdnet calibrate`` ships: ``mirror``, widened for faces flagged as unusual.

Reported (means over the splits): coverage at 80 / 90 / 95 % overall and per SCUT subgroup
(AF, AM, CF, CM), the 5-95 % range of the overall 90 % coverage across splits, the mean width at
90 %, the correlation of the width with the absolute error, and the share flagged as unusual. The
reference width is 2 x 1.645 x RMSE (a constant Gaussian interval). Per-face statistics are cached
under ``cache/coverage-<weights sha256>.npz``.

Usage::

    python benchmarks/coverage.py [--checkpoint checkpoints/default] [--data-root DATA] [--splits 500]
        [--augment-views 4] [--threads 1] [--output coverage.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mdnet.faces.augment import CameraAugment  # noqa: E402
from mdnet.faces.scut import GROUPS, ScutFBP5500, aligned_faces, stratified_split  # noqa: E402
from mdnet.models.checkpoint import WEIGHTS_NAME, file_sha256, load_checkpoint, resolve_checkpoint  # noqa: E402
from mdnet.models.mdnet import score_aligned  # noqa: E402
from mdnet.uncertainty.calibrate import fit_uncertainty, split_statistics  # noqa: E402
from mdnet.uncertainty.conformal import ConformalCalibration  # noqa: E402
from mdnet.uncertainty.ood import FeatureDistance  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "scut-fbp5500"
LEVELS = (0.8, 0.9, 0.95)
OPTIONS = ("constant", "mirror", "augment", "distance", "shipped")


def augment_spread(model, data_root: Path, views: int, cache: str) -> np.ndarray:
    """``(n_val,)`` std of the mirror-averaged score over ``views`` seeded CameraAugment views of each crop."""
    _, val = stratified_split(ScutFBP5500(data_root).split("60-40/train"), 0.1, seed=0)
    faces, _ = aligned_faces(val, model.cfg.preprocess.image_size, cache)
    crops = faces.permute(0, 2, 3, 1).numpy()
    aug = CameraAugment()
    scores = []
    for v in range(views):
        batch = aug.batch(crops, np.random.default_rng(1000 + v))
        scores.append(score_aligned(model, torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()).numpy())
    return np.std(np.stack(scores), axis=0)


def statistics(args) -> dict[str, np.ndarray]:
    folder = resolve_checkpoint(args.checkpoint)
    path = Path(args.cache) / f"coverage-{file_sha256(folder / WEIGHTS_NAME)[:16]}-v{args.augment_views}.npz"
    if path.is_file():
        return dict(np.load(path))
    model = load_checkpoint(folder).for_inference()
    stats = split_statistics(model, args.data_root, args.cache)
    if args.augment_views > 1:
        stats["val_augment"] = augment_spread(model, args.data_root, args.augment_views, args.cache)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **stats)
    return stats


def intervals(option: str, stats: dict, cal: np.ndarray, test: np.ndarray, level: float) -> tuple[np.ndarray, ...]:
    """``(low, high, flagged)`` on the ``test`` faces, calibrated on the ``cal`` faces."""
    if option == "shipped":
        unc = fit_uncertainty(stats, calibration=cal, gaussian=stats["gaussian"])
        out = unc.describe_batch(stats["val_score"][test], stats["val_gap"][test], stats["val_embedding"][test], level)
        return (np.array([i.low for i in out]), np.array([i.high for i in out]), np.array([i.unusual for i in out]))
    d = {"constant": np.zeros(len(stats["val_score"])), "mirror": stats["val_gap"], "augment": stats.get("val_augment"),
         "distance": stats["val_distance"]}[option]
    conf = ConformalCalibration.fit(stats["val_target"][cal], stats["val_score"][cal], d[cal], name=option)
    low, high = conf.interval(stats["val_score"][test], d[test], level)
    return low, high, np.zeros(len(test), bool)


def measure(stats: dict, options: list[str], splits: int, seed: int) -> dict:
    n = len(stats["val_target"])
    stats = dict(stats, gaussian=FeatureDistance.fit(stats["train_embedding"]))
    stats["val_distance"] = stats["gaussian"].distance(stats["val_embedding"])
    rng = np.random.default_rng(seed)
    halves = [rng.permutation(n) for _ in range(splits)]
    y, groups = stats["val_target"], stats["val_group"]
    out = {}
    for option in options:
        cover = {lv: [] for lv in LEVELS}
        by_group = {g: [] for g in GROUPS}
        widths, corr, flagged = [], [], []
        for order in halves:
            cal, test = np.sort(order[: n // 2]), np.sort(order[n // 2:])
            for level in LEVELS:
                low, high, flags = intervals(option, stats, cal, test, level)
                inside = (y[test] >= low) & (y[test] <= high)
                cover[level].append(inside.mean())
                if level == 0.9:
                    for g in GROUPS:
                        by_group[g].append(inside[groups[test] == g].mean())
                    width = high - low
                    widths.append(width.mean())
                    corr.append(np.corrcoef(width, np.abs(y[test] - stats["val_score"][test]))[0, 1]
                                if width.std() > 0 else float("nan"))
                    flagged.append(flags.mean())
        c90 = np.array(cover[0.9])
        out[option] = {
            "coverage": {str(lv): float(np.mean(v)) for lv, v in cover.items()},
            "coverage_90_range": [float(np.percentile(c90, 5)), float(np.percentile(c90, 95))],
            "coverage_90_by_group": {g: float(np.mean(v)) for g, v in by_group.items()},
            "mean_width_90": float(np.mean(widths)),
            "width_error_correlation": float(np.nanmean(corr)),
            "flagged": float(np.mean(flagged)),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "default"))
    ap.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--splits", type=int, default=500, help="random calibration / measurement halves")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--augment-views", type=int, default=4, help="CameraAugment views for 'augment' (0: skip it)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", default=str(ROOT / "cache"))
    ap.add_argument("--output", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    stats = statistics(args)
    options = [o for o in OPTIONS if o != "augment" or "val_augment" in stats]
    if not np.any(stats["val_gap"]):  # a one-pass model (the student): no mirror gap to scale by
        options.remove("mirror")
        print("(no 'mirror' row: this model scores in one pass, so every mirror gap is 0)")
    report = measure(stats, options, args.splits, args.seed)
    err = stats["val_score"] - stats["val_target"]
    rmse = float(np.sqrt(np.mean(err**2)))
    print(f"{len(err)} validation faces, {args.splits} random halves (calibrate / measure); RMSE {rmse:.4f}; "
          f"constant Gaussian width 2 x 1.645 x RMSE = {2 * 1.645 * rmse:.3f}\n")
    print("| difficulty | cover 80 % | cover 90 % (5-95 % of splits) | cover 95 % | AF / AM / CF / CM at 90 % "
          "| mean width 90 % | corr(width, \\|error\\|) | flagged |")
    print("|---|---:|---:|---:|---|---:|---:|---:|")
    for option, r in report.items():
        c, g = r["coverage"], r["coverage_90_by_group"]
        print(f"| {option} | {c['0.8']:.3f} | {c['0.9']:.3f} ({r['coverage_90_range'][0]:.3f}-"
              f"{r['coverage_90_range'][1]:.3f}) | {c['0.95']:.3f} | "
              f"{' / '.join(f'{g[k]:.3f}' for k in GROUPS)} | {r['mean_width_90']:.3f} | "
              f"{r['width_error_correlation']:.3f} | {r['flagged']:.3f} |")
    if args.output:
        args.output.write_text(json.dumps({"rmse": rmse, "splits": args.splits, "options": report}, indent=2) + "\n")


if __name__ == "__main__":
    main()
