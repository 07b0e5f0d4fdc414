"""Score photos: every image file given, or every image in a folder given.

    mdnet predict photo.jpg more_photos/ [--checkpoint PATH | --fast] [--output scores.csv|scores.json]

Each photo is aligned (largest face) and scored like in the app. A photo that
cannot be scored gets an error message in the ``error`` column instead of a
score; the run carries on.

Columns: ``file``, ``score``, ``low`` and ``high`` (the calibrated prediction interval at ``level``,
``--level`` or the checkpoint's default, 0.9; empty for a checkpoint never calibrated with ``mdnet
calibrate``), ``unusual`` (1 when the face is unlike the training faces: the interval was widened and
the score is less reliable), ``faces`` (how many were found), ``error``.

``--fast`` scores with the distilled student (``checkpoints/student``, or ``$MDNET_FAST_CHECKPOINT``;
``mdnet distill`` makes it): one small network pass per face instead of MD-Net on the face and its
mirror image, for large folders; its scores follow the teacher's closely but not exactly (its model
card says how closely).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from mdnet.models.checkpoint import DEFAULT_CHECKPOINT, default_device, fast_checkpoint
from mdnet.models.mdnet import score_faces
from mdnet.uncertainty.calibration import Uncertainty

COLUMNS = ["file", "score", "low", "high", "level", "unusual", "faces", "error"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def collect(paths: list[str]) -> list[Path]:
    """Files as given, plus the image files inside folders (sorted); missing paths are kept (they error later)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files.append(p)
    return files


def predict(files: list[Path], model, uncertainty: Uncertainty | None = None, level: float | None = None) -> list[dict]:
    """One row per file (:data:`COLUMNS`); ``uncertainty`` adds the interval at ``level`` (its default if None)."""
    from mdnet.faces import AlignError, align

    rows = []
    for f in tqdm(files, desc="scoring", disable=len(files) < 2):
        row = {"file": str(f), "score": None, "low": None, "high": None, "level": None, "unusual": None, "faces": 0,
               "error": ""}
        try:
            if not f.is_file():
                raise FileNotFoundError(f"no such file: {f}")
            face = align(f, size=model.cfg.preprocess.image_size)
            crop = torch.from_numpy(face.image).permute(2, 0, 1).unsqueeze(0)
            scored = score_faces(model, crop)
            score = float(scored.score[0])
            row.update(score=round(score, 4), faces=len(face.faces))
            if uncertainty is not None:
                i = uncertainty.describe_scores(scored, level=level)
                row.update(low=round(i.low, 4), high=round(i.high, 4), level=i.level, unusual=int(i.unusual))
        except (AlignError, OSError) as err:
            row["error"] = str(err)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None, prog: str | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("paths", nargs="+", help="image files or folders")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--checkpoint", default=None,
                       help=f"a checkpoint folder or hub id (default {DEFAULT_CHECKPOINT})")
    which.add_argument("--fast", action="store_true", help="score with the fast distilled student (see above)")
    parser.add_argument("--output", default=None, help=".csv or .json; printed as CSV when omitted")
    parser.add_argument("--level", type=float, default=None,
                        help="coverage of the low-high interval, e.g. 0.8 or 0.95 (default: the checkpoint's, 0.9)")
    args = parser.parse_args(argv)
    if args.level is not None and not 0 < args.level < 1:
        parser.error(f"--level must be between 0 and 1, got {args.level}")
    from mdnet.models.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint
    from mdnet.uncertainty.calibration import load_uncertainty

    checkpoint = fast_checkpoint() if args.fast else (args.checkpoint or str(DEFAULT_CHECKPOINT))
    try:
        folder = resolve_checkpoint(checkpoint)
        model = load_checkpoint(folder, device=default_device()).for_inference()  # as the app scores
    except CheckpointError as err:
        hint = " (make it with `mdnet distill`, or set MDNET_FAST_CHECKPOINT)" if args.fast else ""
        parser.exit(2, f"error: {err}{hint}\n")
    try:
        uncertainty = load_uncertainty(folder)
    except CheckpointError as err:  # the scores still work, as in the app; only the intervals are missing
        uncertainty = None
        print(f"note: {err}; low/high stay empty", file=sys.stderr)
    else:
        if uncertainty is None:
            print(f"note: {checkpoint} has no calibrated intervals (mdnet calibrate); low/high stay empty",
                  file=sys.stderr)
    rows = predict(collect(args.paths), model, uncertainty, args.level)
    if args.output and args.output.endswith(".json"):
        Path(args.output).write_text(json.dumps(rows, indent=2) + "\n")
    else:
        handle = open(args.output, "w", newline="") if args.output else sys.stdout  # noqa: SIM115
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        if args.output:
            handle.close()
    return rows
