"""``mdnet calibrate``: give a checkpoint its 90 % intervals and its "unlike the training faces" warning.

Split conformal prediction on the validation faces of SCUT-FBP5500 (the 10 % of the official 60/40
training list that ``stratified_split(train, 0.1, seed=0)`` holds out, as ``mdnet train`` does):
the checkpoint never trained on them, so their errors are honest. Why split conformal and not
CV+ over training folds: CV+ needs one model per fold (hours of CPU each here); the validation
faces only chose between a handful of finished runs, a mild selection that the measured coverage
on held-out halves (``benchmarks/coverage.py``) keeps in view.

Per face (:func:`mdnet.models.mdnet.score_faces`, the scoring path of the app): the mirror-averaged
score, the gap between the face's and its mirror image's score, and the features the head read.
The training faces' features give the Gaussian of the out-of-distribution distance
(:mod:`mdnet.uncertainty.ood`); the validation faces' distances its threshold (``--ood-rate`` of
them flagged) and their residuals, divided by each face's difficulty, the conformal scores. The
difficulty (``--difficulty``) is by default that same distance: of the options measured by
``benchmarks/coverage.py`` (constant, mirror gap, augmentation spread, distance) it gave the
narrowest intervals and kept every SCUT subgroup at >= 85 % coverage; the mirror gap failed that
for Caucasian men. Writes ``uncertainty.safetensors`` into the checkpoint folder (atomically).

Usage::

    mdnet calibrate --data-root DATA [--checkpoint checkpoints/default] [--level 0.9] [--ood-rate 0.05]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from mdnet.faces.scut import ScutFBP5500, aligned_faces, stratified_split
from mdnet.models.checkpoint import DEFAULT_CHECKPOINT, default_device, load_checkpoint, resolve_checkpoint
from mdnet.models.mdnet import MDNet, score_faces
from mdnet.uncertainty.calibration import (
    CARD_END,
    CARD_START,
    DEFAULT_LEVEL,
    DIFFICULTIES,
    Uncertainty,
    raw_difficulty,
    write_card_section,
)
from mdnet.uncertainty.conformal import ConformalCalibration
from mdnet.uncertainty.ood import FeatureDistance


def split_statistics(model: MDNet, data_root: str | Path, cache: str | None = "cache", val_fraction: float = 0.1,
                     seed: int = 0) -> dict[str, np.ndarray]:
    """Scores, mirror gaps and features of the training and validation faces (arrays keyed ``train_*``, ``val_*``).

    ``*_target`` / ``*_group`` are the labels; ``*_score``, ``*_gap`` ``(n,)`` and ``*_embedding``
    ``(n, d)`` come from one mirror-averaged pass.
    """
    train, val = stratified_split(ScutFBP5500(data_root).split("60-40/train"), val_fraction, seed)
    out: dict[str, np.ndarray] = {}
    for part, samples in (("train", train), ("val", val)):
        faces, _ = aligned_faces(samples, model.cfg.preprocess.image_size, cache)
        scored = score_faces(model, faces, progress=f"scoring the {part} faces")
        out[f"{part}_target"] = np.array([s.score for s in samples])
        out[f"{part}_group"] = np.array([s.group for s in samples])
        out[f"{part}_name"] = np.array([s.name for s in samples])
        out[f"{part}_score"] = scored.score.numpy().astype(np.float64)
        out[f"{part}_gap"] = scored.mirror_gap.numpy().astype(np.float64)
        out[f"{part}_embedding"] = scored.embedding.numpy()
    return out


def fit_uncertainty(stats: dict[str, np.ndarray], *, difficulty: str = "distance", level: float = DEFAULT_LEVEL,
                    ood_rate: float = 0.05, score_range: tuple[float, float] = (1.0, 5.0),
                    calibration: np.ndarray | None = None, gaussian: FeatureDistance | None = None,
                    source: str = "") -> Uncertainty:
    """The :class:`Uncertainty` from :func:`split_statistics`' arrays.

    ``calibration`` (bool or index array over the validation faces) restricts the conformal
    scores and the OOD threshold to those faces (the coverage benchmark keeps the rest for
    measuring); None uses all of them. ``gaussian``: the OOD Gaussian already fitted on the training
    faces' features (it does not depend on ``calibration``).
    """
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"unknown difficulty {difficulty!r}; choose one of {DIFFICULTIES}")
    pick = slice(None) if calibration is None else calibration
    gaussian = gaussian if gaussian is not None else FeatureDistance.fit(stats["train_embedding"])
    embeddings = stats["val_embedding"][pick]
    raw = raw_difficulty(difficulty, stats["val_gap"][pick], gaussian.distance(embeddings))
    conformal = ConformalCalibration.fit(stats["val_target"][pick], stats["val_score"][pick], raw, name=difficulty,
                                         score_range=score_range, source=source)
    ood = gaussian.calibrate(embeddings, rate=ood_rate)
    return Uncertainty(conformal, ood, level, source)


def card_section(unc: Uncertainty, mean_width: float) -> str:
    """The model card's section on the intervals and the warning (Markdown, between the calibrate markers)."""
    c, o = unc.conformal, unc.ood
    return "\n".join([
        CARD_START, "## How sure a score is", "",
        f"Calibrated by `mdnet calibrate` (split conformal prediction) on {unc.source}. A score comes with a "
        f"{unc.level * 100:.0f} % interval, score +- q x (floor + d), d the face's "
        f"{'Mahalanobis distance to the training faces' if c.difficulty == 'distance' else c.difficulty} "
        f"(floor {c.floor:.3g}, q = {c.quantile(unc.level):.4g} at {unc.level:g}; any level can be asked for), "
        f"clipped to {c.score_range[0]:g}-{c.score_range[1]:g}; mean width on the calibration faces "
        f"{mean_width:.2f}. Faces farther from the training faces' features than {o.threshold:.3g} (the "
        f"conformal {(1 - o.rate) * 100:.0f} % quantile of held-out faces: about {o.rate * 100:.0f} % of faces "
        "like them) are flagged as unusual. The coverage holds for faces like the calibration faces (SCUT-FBP5500 "
        "lab photos); `python benchmarks/coverage.py` measures it on held-out halves, and "
        "`python benchmarks/ood_shares.py` how often in-the-wild photos and photo changes are flagged.",
        CARD_END])


def main(argv: list[str] | None = None, prog: str | None = None) -> Uncertainty:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True, help="SCUT-FBP5500 root (official layout)")
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="a local checkpoint folder")
    parser.add_argument("--level", type=float, default=DEFAULT_LEVEL, help="default interval level (0.9)")
    parser.add_argument("--ood-rate", type=float, default=0.05,
                        help="share of held-out faces the unusual-photo warning may flag (0.05)")
    parser.add_argument("--difficulty", choices=DIFFICULTIES, default="distance",
                        help="what scales each face's interval: the distance of its features to the training "
                             "faces' (default: the best measured), the face-mirror score gap, or nothing (constant)")
    parser.add_argument("--cache", default="cache", help="aligned-face cache folder ('' for none)")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's; 1 may be faster on a busy machine)")
    args = parser.parse_args(argv)
    if not 0 < args.level < 1:
        parser.error(f"--level must be between 0 and 1, got {args.level}")
    if not 0 < args.ood_rate < 1:
        parser.error(f"--ood-rate must be between 0 and 1, got {args.ood_rate}")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    folder = resolve_checkpoint(args.checkpoint)
    model = load_checkpoint(folder, device=default_device()).for_inference()
    stats = split_statistics(model, args.data_root, args.cache or None, args.val_fraction, args.seed)
    n_val = len(stats["val_target"])
    source = (f"{n_val} validation faces of SCUT-FBP5500 (stratified {args.val_fraction:g} of 60-40/train, "
              f"seed {args.seed}); OOD Gaussian on {len(stats['train_target'])} training faces")
    unc = fit_uncertainty(stats, difficulty=args.difficulty, level=args.level, ood_rate=args.ood_rate,
                          score_range=tuple(model.cfg.score_range), source=source)
    path = unc.save(folder)
    intervals = unc.describe_batch(stats["val_score"], stats["val_gap"], stats["val_embedding"])
    widths = np.array([i.high - i.low for i in intervals])
    summary = {"file": str(path), "faces": n_val, "level": args.level, "quantile": unc.conformal.quantile(args.level),
               "floor": unc.conformal.floor, "ood_threshold": unc.ood.threshold,
               "mean_width_on_calibration_faces": float(widths.mean())}
    summary["model_card"] = write_card_section(folder / "README.md", card_section(unc, float(widths.mean())))
    print(json.dumps(summary, indent=2))
    return unc
