"""``mdnet explain PHOTO --output report.png``: explain one photo's score as a figure and JSON."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mdnet.explain.analysis import Analysis, analyze
from mdnet.explain.integrated_gradients import DEFAULT_STEPS


def main(argv: list[str] | None = None, prog: str | None = None) -> Analysis:
    """``mdnet explain PHOTO --output report.png [--json report.json] [--steps N] [--checkpoint PATH]``."""
    import json

    from tqdm import tqdm

    from mdnet.faces import AlignError, align, load_rgb
    from mdnet.models.checkpoint import (
        DEFAULT_CHECKPOINT,
        CheckpointError,
        default_device,
        load_checkpoint,
        resolve_checkpoint,
    )
    from mdnet.uncertainty.calibration import load_uncertainty

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Explain the score of the (largest) face in a photo: one figure, and the numbers as JSON.",
    )
    parser.add_argument("photo", help="image file")
    parser.add_argument("--output", required=True, help="the figure (.png, .jpg, .pdf or .svg)")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help=f"Integrated Gradients steps ({DEFAULT_STEPS})")
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="checkpoint folder or hub id")
    parser.add_argument("--face", type=int, default=0, help="which face, largest first (0)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    suffix = Path(args.output).suffix.lower().lstrip(".")
    if suffix not in ("png", "jpg", "jpeg", "pdf", "svg"):
        parser.error(f"--output must end in .png, .jpg, .pdf or .svg, not {Path(args.output).name!r}")
    try:
        folder = resolve_checkpoint(args.checkpoint)
        model = load_checkpoint(folder, device=default_device()).for_inference()  # as the app scores
        uncertainty = load_uncertainty(folder)
    except CheckpointError as err:
        parser.exit(2, f"error: {err}\n")
    try:
        photo = load_rgb(args.photo)
        aligned = align(photo, size=model.cfg.preprocess.image_size, face_index=args.face)
    except AlignError as err:
        parser.exit(2, f"error: {err}\n")
    with tqdm(total=100, desc="integrated gradients", unit="%", file=sys.stderr, leave=False) as bar:

        def progress(fraction: float) -> None:
            bar.update(round(100 * fraction) - bar.n)

        analysis = analyze(model, aligned, steps=args.steps, progress=progress)
    from mdnet.explain import viz

    viz.save_report(analysis, args.output, photo=photo)
    interval = None if uncertainty is None else uncertainty.describe_scores(analysis.scored)
    if args.json:
        numbers = analysis.to_json()
        numbers["interval"] = None if interval is None else interval.to_json()
        Path(args.json).write_text(json.dumps(numbers, indent=2) + "\n")
    written = f"{args.output}" + (f" and {args.json}" if args.json else "")
    said = f"score {analysis.score:.2f}" if interval is None else f"score {interval.text(analysis.score)}"
    print(f"{said} (model {analysis.model_name}); wrote {written}")
    if interval is not None and interval.unusual:
        from mdnet.uncertainty.calibration import UNUSUAL_SENTENCE

        print(UNUSUAL_SENTENCE)
    return analysis
