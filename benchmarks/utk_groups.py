"""Predicted scores per UTKFace group (race x gender): a diagnostic of systematic shifts, not of accuracy.

UTKFace has no beauty labels, so nothing here says whether a score is right: the table only shows
where the score distribution of one group sits against the others and against the SCUT-FBP5500
training labels. Its race and gender labels are approximate (estimated per photo, parsed from the
file names, see :mod:`mdnet.faces.unlabeled`), its groups do not match SCUT's two (Asian, Caucasian
~ UTKFace's ``Asian``, ``White``), and its photos are in the wild (the copy in ``../shared`` holds
ages 16-70): the median age of each group is shown because age and photo conditions differ between
the groups and move the scores too (``--min-age``/``--max-age`` narrow the range).

Faces: a stratified seeded subset of ``--per-group`` faces per race x gender (a group with fewer
keeps all of them; photos without labels in their names are left out), or ``--all`` photos. Photos
the aligner rejected (``rejected.txt`` of the crop cache) are left out before the subset is drawn;
each face is aligned like the app aligns it (:func:`mdnet.faces.unlabeled.align_samples`, crops
cached) and scored with mirror averaging (:func:`mdnet.models.mdnet.score_aligned`). With several
``--checkpoint`` only the faces every checkpoint scored are counted, so the columns compare alike.

For reference, a second table gives the SCUT-FBP5500 training labels per subgroup (AF/AM/CF/CM:
the 2970 faces of the official 60/40 training list minus the 330 that ``stratified_split(train,
0.1, seed=0)`` keeps for validation), the labels of those 330 validation faces, and each
checkpoint's predictions on them. The official test split is not touched.

Scores are cached per face under ``cache/group-scores-<weights sha256>-<crop folder>/`` (one
``name<TAB>score`` line each, appended a chunk at a time), so an interrupted run resumes and a
larger subset reuses what a smaller one scored.

Usage::

    python benchmarks/utk_groups.py [--checkpoint checkpoints/default [--checkpoint other]]
        [--per-group 300 | --all] [--seed 0] [--min-age A] [--max-age B] [--threads 1] [--batch 32]
        [--folder ../shared/data/utkface/images] [--data-root ../shared/data/scut-fbp5500] [--output groups.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mdnet.faces.scut import GROUPS, ScutFBP5500, aligned_faces, stratified_split  # noqa: E402
from mdnet.faces.unlabeled import (  # noqa: E402, F401 (stratified_subset, select_faces: used by the tests)
    DEFAULT_FOLDER,
    GENDERS,
    RACES,
    UTK_GROUPS,
    UnlabeledSample,
    align_samples,
    known_rejects,
    read_folder,
    select_faces,
    stratified_subset,
)
from mdnet.models.checkpoint import WEIGHTS_NAME, file_sha256, load_checkpoint, resolve_checkpoint  # noqa: E402
from mdnet.training.score_store import append_scores, cached_scores, load_scores, score_cache  # noqa: E402, F401

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "scut-fbp5500"
DEFAULT_CHECKPOINT = "checkpoints/default"
QUANTILES = (0.1, 0.5, 0.9)


# ----------------------------------------------------------------------------- statistics and tables
def describe(values: Sequence[float]) -> dict:
    """``{"n", "mean", "std", "q10", "q50", "q90"}`` (std with n - 1; None where undefined)."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {"n": 0, "mean": None, "std": None, "q10": None, "q50": None, "q90": None}
    qs = np.quantile(a, QUANTILES)
    return {
        "n": int(a.size),
        "mean": float(a.mean()),
        "std": float(a.std(ddof=1)) if a.size > 1 else None,
        **{f"q{round(100 * q)}": float(v) for q, v in zip(QUANTILES, qs, strict=True)},
    }


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "n/a" if x is None else format(x, fmt)


def group_rows(samples: Sequence[UnlabeledSample]) -> dict[str, list[str]]:
    """Row label -> the names in it: each race x gender present, each gender, then all."""
    rows: dict[str, list[str]] = {}
    for race, gender in UTK_GROUPS:
        names = [s.name for s in samples if s.group == (race, gender)]
        if names:
            rows[f"{race} {gender}"] = names
    for gender in GENDERS:
        names = [s.name for s in samples if s.meta is not None and s.meta.gender_label == gender]
        if names:
            rows[f"all {gender}"] = names
    unknown = [s.name for s in samples if s.meta is None]
    if unknown:
        rows["no labels"] = unknown
    rows["all"] = [s.name for s in samples]
    return rows


def utk_report(samples: Sequence[UnlabeledSample], scores: dict[str, dict[str, float]]) -> dict:
    """Per row of :func:`group_rows` (over the faces every checkpoint scored): n, median age, and per checkpoint
    :func:`describe` of its scores plus ``"shift"`` (the row mean minus the mean of all)."""
    common = [s for s in samples if all(s.name in sc for sc in scores.values())]
    by_name = {s.name: s for s in common}
    out: dict[str, dict] = {}
    for row, names in group_rows(common).items():
        ages = [by_name[n].meta.age for n in names if by_name[n].meta is not None]
        out[row] = {"n": len(names), "median_age": float(np.median(ages)) if ages else None, "scores": {}}
        for label, sc in scores.items():
            out[row]["scores"][label] = describe([sc[n] for n in names])
    for label in scores:
        overall = out["all"]["scores"][label]["mean"]
        for row in out.values():
            d = row["scores"][label]
            d["shift"] = None if d["mean"] is None or overall is None else d["mean"] - overall
    return out


def utk_table(report: dict) -> str:
    labels = list(report["all"]["scores"])
    head = "| group | n | median age |" + "".join(f" {lb}: mean | shift | std | 10 % | 50 % | 90 % |" for lb in labels)
    lines = [head, "|---|---:|---:|" + "---:|" * 6 * len(labels)]
    for row, r in report.items():
        name = f"**{row}**" if row == "all" else row
        cells = "".join(
            f" {_num(d['mean'])} | {_num(d['shift'], '+.2f')} | {_num(d['std'])} | {_num(d['q10'])} | "
            f"{_num(d['q50'])} | {_num(d['q90'])} |"
            for d in (r["scores"][lb] for lb in labels)
        )
        lines.append(f"| {name} | {r['n']} | {_num(r['median_age'], '.0f')} |{cells}")
    return "\n".join(lines)


def scut_report(train, valid, predictions: dict[str, dict[str, float]]) -> dict:
    """Per SCUT subgroup and all: :func:`describe` of the training labels, the validation labels and, per
    checkpoint, its validation predictions."""
    out = {}
    for g in (*GROUPS, "all"):
        tr = [s for s in train if g in ("all", s.group)]
        va = [s for s in valid if g in ("all", s.group)]
        out[g] = {
            "train_labels": describe([s.score for s in tr]),
            "valid_labels": describe([s.score for s in va]),
            "valid_predictions": {lb: describe([p[s.name] for s in va if s.name in p])
                                  for lb, p in predictions.items()},
        }
    return out


def scut_table(report: dict) -> str:
    labels = list(report["all"]["valid_predictions"])
    blocks = ["training labels", "validation labels", *(f"{lb} on validation" for lb in labels)]
    head = "| SCUT group |" + "".join(f" {b}: n | mean | std | 10 % | 50 % | 90 % |" for b in blocks)
    lines = [head, "|---|" + "---:|" * 6 * len(blocks)]
    for g, r in report.items():
        ds = [r["train_labels"], r["valid_labels"], *(r["valid_predictions"][lb] for lb in labels)]
        cells = "".join(
            f" {d['n']} | {_num(d['mean'])} | {_num(d['std'])} | {_num(d['q10'])} | {_num(d['q50'])} | "
            f"{_num(d['q90'])} |"
            for d in ds
        )
        lines.append(f"| {'**all**' if g == 'all' else g} |{cells}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", action="append", default=None,
                    help=f"checkpoint folder; repeat for side-by-side columns (default {DEFAULT_CHECKPOINT})")
    ap.add_argument("--folder", type=Path, default=None, help=f"UTKFace-style photos (default {DEFAULT_FOLDER})")
    ap.add_argument("--data-root", type=Path, default=DEFAULT_DATA, help="SCUT-FBP5500 root, for the reference table")
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--per-group", type=int, default=300, help="faces per race x gender (default 300)")
    which.add_argument("--all", action="store_true", help="every photo of the folder")
    ap.add_argument("--seed", type=int, default=0, help="seed of the --per-group subset")
    ap.add_argument("--min-age", type=int, default=None, help="only faces at least this old (UTKFace's age label)")
    ap.add_argument("--max-age", type=int, default=None, help="only faces at most this old")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: fastest on a busy shared CPU)")
    ap.add_argument("--batch", type=int, default=32, help="faces per forward pass")
    ap.add_argument("--cache", type=Path, default=ROOT / "cache", help="crops and scores are cached here")
    ap.add_argument("--output", type=Path, default=None, help="also write the report (and every score) as JSON")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    if args.per_group < 1:
        ap.error("--per-group must be at least 1")
    command = "python " + " ".join([sys.argv[0] if argv is None else "benchmarks/utk_groups.py",
                                    *(argv if argv is not None else sys.argv[1:])])
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    checkpoints = args.checkpoint or [DEFAULT_CHECKPOINT]
    if len(set(checkpoints)) != len(checkpoints):
        ap.error("the same --checkpoint is given twice")
    models = {c: load_checkpoint(c, device="cpu").for_inference() for c in checkpoints}  # as the app serves them
    hashes = {c: file_sha256(resolve_checkpoint(c) / WEIGHTS_NAME) for c in checkpoints}
    sizes = sorted({m.cfg.preprocess.image_size for m in models.values()})
    rejects = set().union(*(known_rejects(args.cache, s) for s in sizes))
    samples = select_faces(args.folder, None if args.all else args.per_group, args.seed, rejects,
                           args.min_age, args.max_age)

    utk_scores: dict[str, dict[str, float]] = {}
    dropped: dict[str, list[str]] = {}
    for c, model in models.items():
        size = model.cfg.preprocess.image_size

        def align_utk(part, size=size):
            got = align_samples(part, size, args.cache, report=False)
            return got.faces, got.names, got.rejected

        store = score_cache(args.cache, hashes[c], size)
        utk_scores[c], dropped[c] = cached_scores(model, samples, align_utk, store / "unlabeled.tsv", args.batch,
                                                  f"UTKFace, {c}", not args.quiet)
    utk = utk_report(samples, utk_scores)

    train, valid = stratified_split(ScutFBP5500(args.data_root).split("60-40/train"), 0.1, seed=0)
    scut_predictions: dict[str, dict[str, float]] = {}
    for c, model in models.items():
        size = model.cfg.preprocess.image_size

        def align_scut(part, size=size):
            faces, _ = aligned_faces(list(part), size, args.cache)
            return faces, [s.name for s in part], []

        store = score_cache(args.cache, hashes[c], size)
        scut_predictions[c], _ = cached_scores(model, valid, align_scut, store / "scut-fbp5500.tsv", args.batch,
                                               f"SCUT validation, {c}", not args.quiet)
    scut = scut_report(train, valid, scut_predictions)
    wall = time.perf_counter() - start

    what = "every photo" if args.all else f"a stratified subset of {args.per_group} per race x gender, seed {args.seed}"
    ages = ""
    if args.min_age is not None or args.max_age is not None:
        ages = f", ages {args.min_age or 0}-{args.max_age if args.max_age is not None else 'any'}"
    print(f"## Predicted scores per UTKFace group\n\ncommand: `{command}`\n")
    print(f"UTKFace ({args.folder or DEFAULT_FOLDER}): {what}{ages}; {len(samples)} photos chosen, "
          f"{utk['all']['n']} scored by every checkpoint. Mirror-averaged scores on the 1-5 scale; shift = row mean "
          "minus the mean of all. UTKFace has no beauty labels (a diagnostic of systematic shifts, not an accuracy "
          "measure) and its race/gender labels are approximate.\n")
    print(utk_table(utk))
    for c, names in dropped.items():
        if names:
            print(f"\n{c}: {len(names)} photos without a usable face were left out: {', '.join(names[:10])}"
                  + (" ..." if len(names) > 10 else ""))
    print("\n## Reference: SCUT-FBP5500 labels and validation predictions per subgroup\n")
    print(f"Training labels: the {len(train)} faces of the official 60/40 training list that are not in the "
          f"validation part; validation: its {len(valid)} faces (stratified_split, seed 0).\n")
    print(scut_table(scut))
    print(f"\nWall time {wall:.0f} s (torch threads: {torch.get_num_threads()}).")
    report = {"command": command, "wall_s": round(wall, 1), "checkpoints": {c: {"weights_sha256": h}
              for c, h in hashes.items()}, "utkface": utk, "scut": scut, "dropped": dropped}
    if args.output:
        full = {**report, "utkface_scores": utk_scores, "scut_valid_predictions": scut_predictions}
        args.output.write_text(json.dumps(full, indent=1))
        print(f"Report written to {args.output}.")
    return report


if __name__ == "__main__":
    main()
