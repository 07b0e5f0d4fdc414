"""Score photos: every image file given, or every image in a folder given.

    mdnet predict photo.jpg more_photos/ [--checkpoint PATH] [--output scores.csv|scores.json]

Each photo is aligned (largest face) and scored like in the app. A photo that
cannot be scored gets an error message in the ``error`` column instead of a
score; the run carries on.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from mdnet.models.checkpoint import DEFAULT_CHECKPOINT, default_device
from mdnet.models.mdnet import score_aligned

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


def predict(files: list[Path], model) -> list[dict]:
    from mdnet.faces import AlignError, align

    rows = []
    for f in tqdm(files, desc="scoring", disable=len(files) < 2):
        row = {"file": str(f), "score": None, "faces": 0, "error": ""}
        try:
            if not f.is_file():
                raise FileNotFoundError(f"no such file: {f}")
            face = align(f, size=model.cfg.preprocess.image_size)
            crop = torch.from_numpy(face.image).permute(2, 0, 1).unsqueeze(0)
            row.update(score=round(float(score_aligned(model, crop)[0]), 4), faces=len(face.faces))
        except (AlignError, OSError) as err:
            row["error"] = str(err)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None, prog: str | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("paths", nargs="+", help="image files or folders")
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--output", default=None, help=".csv or .json; printed as CSV when omitted")
    args = parser.parse_args(argv)
    from mdnet.models.checkpoint import CheckpointError, load_checkpoint

    try:
        model = load_checkpoint(args.checkpoint, device=default_device())
    except CheckpointError as err:
        parser.exit(2, f"error: {err}\n")
    rows = predict(collect(args.paths), model)
    if args.output and args.output.endswith(".json"):
        Path(args.output).write_text(json.dumps(rows, indent=2) + "\n")
    else:
        handle = open(args.output, "w", newline="") if args.output else sys.stdout  # noqa: SIM115
        writer = csv.DictWriter(handle, fieldnames=["file", "score", "faces", "error"])
        writer.writeheader()
        writer.writerows(rows)
        if args.output:
            handle.close()
    return rows
