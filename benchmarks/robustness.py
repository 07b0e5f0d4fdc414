"""The same face, photographed differently: how far the score moves when only the photo changes.

Each validation face of SCUT-FBP5500 (the 10 % that ``stratified_split(train, 0.1, seed=0)``
carves from the official 60/40 training list; never the official test split) is scored the
way the app scores a photo (``align`` -> crop -> ``score_aligned`` with mirror averaging),
then changed as a camera, a phone or a messenger would change it (JPEG, downscaling, blur,
contrast, rotation, padding, ...) BEFORE alignment, aligned again and scored again. Per
transform and per checkpoint it reports the mean |score change| on the 1-5 scale, the mean
signed change (bias: negative means the transform lowers scores), and how many faces the
aligner no longer found after the transform (counted, not dropped silently).

Usage::

    python benchmarks/robustness.py [--checkpoint checkpoints/default [--checkpoint other]]
        [--data-root ../shared/data/scut-fbp5500] [--limit N] [--threads 1] [--output robustness.json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mdnet.faces import ROBUSTNESS_TRANSFORMS, AlignError, align, load_rgb  # noqa: E402
from mdnet.models.mdnet import MDNet, score_aligned  # noqa: E402
from mdnet.training.robustness_report import summary  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "scut-fbp5500"
DEFAULT_CHECKPOINT = "checkpoints/default"


# ----------------------------------------------------------------------------- photo transforms
# One definition for training augmentation and this benchmark: mdnet.faces.augment (uint8 RGB in and out,
# deterministic, applied to the photo before alignment).
Transform = Callable[[np.ndarray], np.ndarray]
TRANSFORMS: dict[str, Transform] = {name: t for name, t in ROBUSTNESS_TRANSFORMS.items()}


# ----------------------------------------------------------------------------- measurement
def _crops(rgb: np.ndarray, size: int) -> tuple[np.ndarray | None, str | None]:
    """The app's crop of the largest face, or (None, the aligner's error name)."""
    try:
        return align(rgb, size=size).image, None
    except AlignError as err:
        return None, type(err).__name__


def measure_robustness(
    models: dict[str, MDNet],
    photos: Iterable[tuple[str, np.ndarray]],
    transforms: dict[str, Transform] | None = None,
    progress: bool = True,
    total: int | None = None,
) -> dict:
    """Score every photo and every transformed copy of it with every model.

    Args:
        models: label -> model (eval mode); each aligns at its own ``cfg.preprocess.image_size``.
        photos: ``(name, (H, W, 3) uint8 RGB)`` original photos (any iterable: a generator keeps one in memory).
        transforms: name -> transform; default :data:`TRANSFORMS`.
        total: the number of photos, for the progress bar when ``photos`` has no length.

    Returns:
        ``{"faces", "unaligned_original": {label: [names]}, "results": {label: {transform: {"mean_abs",
        "bias", "p95_abs", "max_abs", "scored", "unaligned", "unaligned_faces"}}}, "scores": {label:
        {name: {"original": score, transform: score or None}}}}``. A photo whose original does not
        align is listed in ``unaligned_original`` and left out of every row (there is nothing to
        compare with); a transformed copy that does not align is counted in its row's ``unaligned``.
    """
    transforms = TRANSFORMS if transforms is None else transforms
    sizes = sorted({m.cfg.preprocess.image_size for m in models.values()})
    scores: dict[str, dict[str, dict[str, float | None]]] = {label: {} for label in models}
    failed: dict[int, dict[str, list[str]]] = {s: {t: [] for t in transforms} for s in sizes}
    failed_original: dict[int, list[str]] = {s: [] for s in sizes}
    n = 0
    for name, rgb in tqdm(photos, desc="faces", unit="face", total=total, disable=not progress):
        n += 1
        variants = {"original": rgb, **{t: fn(rgb) for t, fn in transforms.items()}}
        for size in sizes:
            crops: dict[str, np.ndarray] = {}
            for key, img in variants.items():
                crop, error = _crops(img, size)
                if crop is not None:
                    crops[key] = crop
                elif key == "original":
                    failed_original[size].append(f"{name} ({error})")
                    break
                else:
                    failed[size][key].append(f"{name} ({error})")
            if "original" not in crops:
                continue
            keys = list(crops)
            batch = torch.from_numpy(np.stack([crops[k] for k in keys])).permute(0, 3, 1, 2).contiguous()
            for label, model in models.items():
                if model.cfg.preprocess.image_size != size:
                    continue
                with torch.inference_mode():
                    s = score_aligned(model, batch).tolist()  # the model's own scoring: MD-Net mirror-averages
                row = dict(zip(keys, s, strict=True))
                scores[label][name] = {k: row.get(k) for k in ["original", *transforms]}
    results: dict[str, dict[str, dict]] = {}
    for label, model in models.items():
        size = model.cfg.preprocess.image_size
        results[label] = {}
        for t in transforms:
            d = np.array([r[t] - r["original"] for r in scores[label].values() if r[t] is not None], dtype=np.float64)
            a = np.abs(d)
            results[label][t] = {
                "mean_abs": float(a.mean()) if len(d) else None,
                "bias": float(d.mean()) if len(d) else None,
                "p95_abs": float(np.percentile(a, 95)) if len(d) else None,
                "max_abs": float(a.max()) if len(d) else None,
                "scored": int(len(d)),
                "unaligned": len(failed[size][t]),
                "unaligned_faces": failed[size][t],
            }
    return {
        "faces": n,
        "unaligned_original": {label: failed_original[m.cfg.preprocess.image_size] for label, m in models.items()},
        "results": results,
        "scores": scores,
    }


def markdown_table(report: dict) -> str:
    """Rows: transforms (and their mean); for each checkpoint: mean |change|, bias, faces not aligned."""
    labels = list(report["results"])
    head = "| transform |" + "".join(f" {lb}: mean abs change | bias | not aligned |" for lb in labels)
    lines = [head, "|---|" + "---:|---:|---:|" * len(labels)]
    transforms = list(report["results"][labels[0]])

    def num(x: float | None, fmt: str) -> str:
        return "n/a" if x is None else format(x, fmt)

    for t in transforms:
        cells = "".join(
            f" {num(r['mean_abs'], '.3f')} | {num(r['bias'], '+.3f')} | {r['unaligned']} |"
            for r in (report["results"][lb][t] for lb in labels)
        )
        lines.append(f"| {t} |{cells}")
    cells = ""
    for lb in labels:
        s = summary(report["results"][lb])
        cells += f" **{num(s['mean'], '.3f')}** | {num(s['bias'], '+.3f')} | {s['unaligned']} |"
    lines.append(f"| **mean of the rows** |{cells}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def validation_photos(data_root: Path, limit: int | None, seed: int) -> list[tuple[str, Path]]:
    """The validation faces carved from the official 60/40 training list (a seeded subset with ``limit``)."""
    from mdnet.faces.scut import ScutFBP5500, stratified_split

    _, valid = stratified_split(ScutFBP5500(data_root).split("60-40/train"), 0.1, seed=0)
    if limit and limit < len(valid):
        valid = sorted(random.Random(seed).sample(valid, limit), key=lambda s: s.name)
    return [(s.name, s.path) for s in valid]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--checkpoint", action="append", default=None,
                    help=f"checkpoint folder or hub id; repeat for side-by-side columns (default {DEFAULT_CHECKPOINT})")
    ap.add_argument("--limit", type=int, default=None, help="a seeded random subset of N validation faces")
    ap.add_argument("--seed", type=int, default=0, help="seed of the --limit subset")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default torch's own); 1 is much faster on a busy shared machine")
    ap.add_argument("--output", type=Path, default=None, help="also write the report (and every score) as JSON")
    args = ap.parse_args(argv)
    command = "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    from mdnet.models.checkpoint import load_checkpoint

    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    checkpoints = args.checkpoint or [DEFAULT_CHECKPOINT]
    if len(set(checkpoints)) != len(checkpoints):
        ap.error("the same --checkpoint is given twice")
    models = {c: load_checkpoint(c).for_inference() for c in checkpoints}  # as the app serves them
    items = validation_photos(args.data_root, args.limit, args.seed)
    photos = ((name, load_rgb(path)) for name, path in items)
    report = measure_robustness(models, photos, total=len(items))
    wall = time.perf_counter() - start

    print(f"## The same face, photographed differently: score change per photo transform\n\ncommand: `{command}`\n")
    print(
        f"{len(items)} validation faces of SCUT-FBP5500 (stratified 10 % of the official 60/40 training list, seed 0"
        + (f"; a seeded subset, seed {args.seed}" if args.limit else "")
        + "). Each transform is applied to the original photo, which is then aligned and scored like the app "
        "does (mirror-averaged); change = transformed score - original score, on the 1-5 scale. "
        "The transforms are mdnet.faces.ROBUSTNESS_TRANSFORMS (canvas the photo does not cover is filled with "
        "its border colour).\n"
    )
    print(markdown_table(report))
    print()
    for label, names in report["unaligned_original"].items():
        if names:
            print(f"{label}: {len(names)} original photos did not align and are left out: {', '.join(names)}")
    failures = {t: r["unaligned_faces"] for t, r in report["results"][checkpoints[0]].items() if r["unaligned_faces"]}
    for t, names in failures.items():
        print(f"Not aligned after '{t}': {', '.join(names[:10])}" + (" ..." if len(names) > 10 else ""))
    per_face = wall / max(1, len(items))
    print(f"\nWall time {wall:.0f} s ({per_face:.2f} s per face, torch threads: {torch.get_num_threads()}).")
    if args.output:
        report.update(command=command, data_root=str(args.data_root), wall_s=round(wall, 1),
                      transforms={n: t.description for n, t in ROBUSTNESS_TRANSFORMS.items()})
        args.output.write_text(json.dumps(report, indent=1))
        print(f"Report written to {args.output}.")


if __name__ == "__main__":
    main()
