"""One row per lever tried: validation PC / MAE / RMSE, prior-only PC, compound robustness, training time.

Every row is a checkpoint, scored here on the same validation faces (the 10 % that
``stratified_split(train, 0.1, seed=0)`` carves from the official 60/40 training list, mirror-averaged,
with the stream ablation). The robustness columns come from reports of ``benchmarks/robustness.py
--output FILE`` that scored the same checkpoints on the same faces (the compound transform, the mean
and the worst of the nine single transforms); the training minutes from the run's ``summary.json`` (``mdnet train
--output RUN``: photo variants + teacher + epochs, not the pretraining of the prior or the Vim),
or given as a number for a checkpoint whose run is gone.

Usage::

    python benchmarks/ablation_table.py --data-root ../shared/data/scut-fbp5500 \\
        --row "shipped: tiny-vae, MobileNetV2, no camera training=checkpoints/default:35" \\
        --row "TAEF2 prior, SFace stem, camera training, UTKFace=runs/ckpt-real:runs/train-real" \\
        --robustness runs/robustness.json [--robustness runs/robustness-more.json] [--output runs/ablation.md]

A row is ``LABEL=CHECKPOINT[:RUN_DIR or MINUTES]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mdnet.training.evaluate import evaluate  # noqa: E402
from mdnet.training.robustness_report import report_results, summary  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "scut-fbp5500"


def parse_row(spec: str) -> tuple[str, str, float | None]:
    """``LABEL=CHECKPOINT[:RUN_DIR or MINUTES]`` -> (label, checkpoint, training minutes or None)."""
    label, sep, rest = spec.rpartition("=")  # the label may hold '=', a checkpoint path rarely does
    if not sep or not label or not rest:
        raise ValueError(f"a row is LABEL=CHECKPOINT[:RUN_DIR or MINUTES], got {spec!r}")
    checkpoint, _, extra = rest.partition(":")
    if not extra:
        return label, checkpoint, None
    try:
        return label, checkpoint, float(extra)
    except ValueError:
        return label, checkpoint, run_minutes(Path(extra))


def run_minutes(run: Path) -> float:
    """Wall minutes of an ``mdnet train`` run: cached prior features / photo variants, then the epochs."""
    summary_file = run / "summary.json"
    if not summary_file.is_file():
        raise FileNotFoundError(f"{summary_file} not found: is {run} the --output of `mdnet train`?")
    summary = json.loads(summary_file.read_text())
    variants = (summary.get("photo_variants") or {}).get("minutes") or 0.0
    return sum(summary["epoch_minutes"]) + (summary.get("prior_cache_minutes") or 0.0) + variants


def robustness_columns(reports: list[dict], checkpoint: str) -> tuple[float | None, float | None, float | None]:
    """(compound, mean of the single transforms, worst single transform) of ``checkpoint``, from the first of the
    robustness reports that scored it (``None``s where none did)."""
    for report in reports:
        if checkpoint in report_results(report):
            s = summary(report_results(report)[checkpoint])
            return s["compound"], s["mean_single"], s["worst_single"]
    return None, None, None


def markdown(rows: list[dict]) -> str:
    def num(x: float | None, fmt: str = ".4f") -> str:
        return "n/a" if x is None else format(x, fmt)

    lines = ["| lever (checkpoint) | val PC | MAE | RMSE | prior-only PC | Vim-only PC | compound | mean single "
             "| worst single | training min |", "|---|" + "---:|" * 9]
    for r in rows:
        lines.append(f"| {r['label']} (`{r['checkpoint']}`) | {num(r['pc'])} | {num(r['mae'])} | {num(r['rmse'])} "
                     f"| {num(r['prior_only'], '.3f')} | {num(r['vim_only'], '.3f')} | {num(r['compound'], '.3f')} "
                     f"| {num(r['mean_single'], '.3f')} | {num(r['worst_single'], '.3f')} "
                     f"| {num(r['minutes'], '.0f')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--row", action="append", required=True, help="LABEL=CHECKPOINT[:RUN_DIR or MINUTES]; repeat")
    ap.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--robustness", type=Path, action="append", default=[],
                    help="JSON from benchmarks/robustness.py --output; repeat for reports of different checkpoints "
                         "(the same --limit and --seed, so the same faces)")
    ap.add_argument("--cache", default="cache", help="aligned-face cache folder ('' for none)")
    ap.add_argument("--output", type=Path, default=None, help="also write the table (markdown) here")
    args = ap.parse_args(argv)
    try:
        specs = [parse_row(s) for s in args.row]
    except (ValueError, FileNotFoundError) as err:
        ap.error(str(err))
    reports = [json.loads(path.read_text()) for path in args.robustness]
    rows = []
    for label, checkpoint, minutes in specs:
        m = evaluate(checkpoint, str(args.data_root), "val", args.cache or None,
                     modes=("full", "prior_only", "vim_only"))
        compound, mean_single, worst = robustness_columns(reports, checkpoint)
        rows.append({"label": label, "checkpoint": checkpoint, "pc": m["pc"], "mae": m["mae"], "rmse": m["rmse"],
                     "prior_only": m["modes"]["prior_only"]["pc"], "vim_only": m["modes"]["vim_only"]["pc"],
                     "compound": compound, "mean_single": mean_single, "worst_single": worst, "minutes": minutes})
        print(f"{label}: PC {m['pc']:.4f}", file=sys.stderr)
    table = markdown(rows)
    print(table)
    if args.output:
        args.output.write_text(table + "\n")
    return rows


if __name__ == "__main__":
    main()
