"""Who gets the "unlike the training faces" warning? Its share per UTKFace group and per photo transform.

A diagnostic of the checkpoint's calibrated uncertainty (``uncertainty.safetensors``, written by
``mdnet calibrate``), not a measure of accuracy:

- **UTKFace groups** (race x gender; in-the-wild photos, no beauty labels): the share of faces
  flagged as unusual, the mean Mahalanobis distance (over the threshold) and the mean width of the
  interval. The threshold flags about 5 % of held-out SCUT-FBP5500 faces, so shares far above
  that say which groups the model knows least.
- **Photo transforms** of the robustness benchmark (``benchmarks/robustness.py``: JPEG 25, down to
  25 %, blur, rotation, ... and the compound), on ``--limit`` validation faces (never trained on):
  the share flagged, the mean width, and the coverage of the true mean rating by the interval of
  the transformed photo (the 90 % guarantee holds for photos like the calibration faces; this shows
  how it degrades when the photo changes).

Faces are aligned like the app aligns them and scored with :func:`mdnet.models.mdnet.score_faces`
(face + mirror image, the app's path); the interval is :meth:`Uncertainty.describe_batch`.

Usage::

    python benchmarks/ood_shares.py [--checkpoint checkpoints/default] [--per-group 100] [--limit 60]
        [--threads 1] [--output ood.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from robustness import TRANSFORMS, _crops, validation_photos
from tqdm import tqdm
from utk_groups import DEFAULT_DATA, group_rows, select_faces

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mdnet.faces import load_rgb  # noqa: E402
from mdnet.faces.scut import ScutFBP5500  # noqa: E402
from mdnet.faces.unlabeled import align_samples, known_rejects  # noqa: E402
from mdnet.models.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint, resolve_checkpoint  # noqa: E402
from mdnet.models.mdnet import MDNet, score_faces  # noqa: E402
from mdnet.uncertainty.calibration import Uncertainty, load_uncertainty  # noqa: E402


def describe(model: MDNet, unc: Uncertainty, crops: torch.Tensor, batch: int = 32) -> list:
    """The :class:`ScoreInterval` (and score) of each aligned crop ``(n, 3, s, s)`` uint8."""
    out = []
    for start in range(0, len(crops), batch):
        scored = score_faces(model, crops[start:start + batch])
        intervals = unc.describe_batch(scored.score.numpy(), scored.mirror_gap.numpy(), scored.embedding.numpy())
        out += list(zip(scored.score.tolist(), intervals, strict=True))
    return out


def summarise(rows: list, targets: list[float] | None = None) -> dict:
    flagged = [i.unusual for _, i in rows]
    out = {"n": len(rows), "flagged": float(np.mean(flagged)) if rows else None,
           "distance_over_threshold": float(np.mean([i.distance / i.threshold for _, i in rows])) if rows else None,
           "mean_width": float(np.mean([i.high - i.low for _, i in rows])) if rows else None}
    if targets is not None and rows:
        out["coverage"] = float(np.mean([i.low <= y <= i.high for (_, i), y in zip(rows, targets, strict=True)]))
    return out


def utk_shares(model: MDNet, unc: Uncertainty, args) -> dict:
    size = model.cfg.preprocess.image_size
    samples = select_faces(args.folder, args.per_group, args.seed, set(known_rejects(args.cache, size)))
    got = align_samples(samples, size, args.cache, report=False)
    by_name = dict(zip(got.names, describe(model, unc, got.faces, args.batch), strict=True))
    kept = [s for s in samples if s.name in by_name]
    return {row: summarise([by_name[n] for n in names]) for row, names in group_rows(kept).items()}


def transform_shares(model: MDNet, unc: Uncertainty, args) -> dict:
    size = model.cfg.preprocess.image_size
    labels = {s.name: s.score for s in ScutFBP5500(args.data_root).split("60-40/train")}
    rows: dict[str, list] = {t: [] for t in ["original", *TRANSFORMS]}
    targets: dict[str, list[float]] = {t: [] for t in rows}
    photos = validation_photos(args.data_root, args.limit, args.seed)
    for name, path in tqdm(photos, desc="transforms", unit="face", disable=args.quiet):
        rgb = load_rgb(path)
        crops, keys = [], []
        for key in rows:
            crop, _ = _crops(rgb if key == "original" else TRANSFORMS[key](rgb), size)
            if crop is not None:
                crops.append(crop)
                keys.append(key)
        if not crops:
            continue
        described = describe(model, unc, torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous(), args.batch)
        for key, row in zip(keys, described, strict=True):
            rows[key].append(row)
            targets[key].append(labels[name])
    return {t: summarise(rows[t], targets[t]) for t in rows}


def table(title: str, report: dict, coverage: bool) -> str:
    head = "| | n | flagged | distance / threshold | mean width 90 % |" + (" coverage 90 % |" if coverage else "")
    lines = [f"### {title}", "", head, "|---" * (head.count("|") - 1) + "|"]
    for row, r in report.items():
        cells = [row, str(r["n"]), f"{r['flagged']:.3f}", f"{r['distance_over_threshold']:.2f}",
                 f"{r['mean_width']:.2f}"]
        if coverage:
            cells.append(f"{r['coverage']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    ap.add_argument("--folder", type=Path, default=None, help="UTKFace-style photos (default ../shared/data/utkface)")
    ap.add_argument("--data-root", type=Path, default=DEFAULT_DATA, help="SCUT-FBP5500 root")
    ap.add_argument("--per-group", type=int, default=100, help="UTKFace faces per race x gender (0: skip)")
    ap.add_argument("--limit", type=int, default=60, help="validation faces for the transforms (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--cache", type=Path, default=ROOT / "cache")
    ap.add_argument("--output", type=Path, default=None)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    folder = resolve_checkpoint(args.checkpoint)
    unc = load_uncertainty(folder)
    if unc is None:
        ap.error(f"{folder} has no uncertainty.safetensors: run `mdnet calibrate --checkpoint {folder}` first")
    model = load_checkpoint(folder, device="cpu").eval()
    start = time.perf_counter()
    report = {"command": "python benchmarks/ood_shares.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "checkpoint": str(folder), "ood_rate": unc.ood.rate, "level": unc.level}
    if args.per_group:
        report["utkface"] = utk_shares(model, unc, args)
        print(table(f"UTKFace ({args.per_group} per group)", report["utkface"], coverage=False) + "\n")
    if args.limit:
        report["transforms"] = transform_shares(model, unc, args)
        print(table(f"Photo transforms ({args.limit} validation faces)", report["transforms"], coverage=True) + "\n")
    report["wall_s"] = time.perf_counter() - start
    if args.output:
        args.output.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
