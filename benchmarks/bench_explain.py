"""Time of the full explanation of one photo on this machine, and the IG completeness error per step count.

The full analysis is what the app's "explain" button and ``mdnet explain``
run: alignment + score (mirror-averaged) + attention maps + stream ablation +
Integrated Gradients at the default steps + the region summary
(:func:`mdnet.explain.analyze`); drawing the report figure is timed separately. The
photo is ``skimage.data.astronaut()`` (public domain, 512x512). Uses the default
checkpoint when it exists, else the preset with random weights (latency does not
depend on the values; the stream references are then calibrated on random faces so
the ablation runs too).

``--completeness`` adds a table of the IG convergence delta against the number of
steps (the accuracy side of the speed / accuracy trade-off behind the default).

On a shared machine the wall-clock time depends on the other processes; the CPU time
of this process is printed too: with one torch thread it is close to the wall-clock
time the same run takes on an idle core.

Usage::

    python benchmarks/bench_explain.py [--preset tiny] [--checkpoint PATH] [--steps N] [--repeats 3] [--completeness]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from timing import header, measure

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mdnet import explain as E  # noqa: E402
from mdnet.faces import align  # noqa: E402
from mdnet.models.checkpoint import DEFAULT_CHECKPOINT, default_device  # noqa: E402
from mdnet.models.config import get_config  # noqa: E402
from mdnet.models.mdnet import MDNet  # noqa: E402


def load(args) -> tuple[MDNet, str]:
    path = args.checkpoint or (DEFAULT_CHECKPOINT if (DEFAULT_CHECKPOINT / "config.json").is_file() else None)
    if path is not None:
        from mdnet.models.checkpoint import load_checkpoint

        return load_checkpoint(path, device=args.device), f"checkpoint {path}"
    torch.manual_seed(0)
    model = MDNet(get_config(args.preset)).eval().to(args.device)
    size = model.cfg.preprocess.image_size
    gen = torch.Generator().manual_seed(0)
    model.calibrate_references([torch.randn(4, 3, size, size, generator=gen).to(args.device)])
    return model, f"preset '{args.preset}', random weights"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--checkpoint", default=None, help=f"default: {DEFAULT_CHECKPOINT} when it exists")
    parser.add_argument("--steps", type=int, default=E.DEFAULT_STEPS)
    parser.add_argument("--internal-batch-size", type=int, default=E.DEFAULT_INTERNAL_BATCH)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=str(default_device()))
    parser.add_argument("--completeness", action="store_true", help="also tabulate the IG delta per step count")
    args = parser.parse_args()
    from skimage import data

    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    model, source = load(args)
    photo = data.astronaut()
    size = model.cfg.preprocess.image_size
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    runs: list[E.Analysis] = []
    align_seconds: list[float] = []
    cpu_seconds: list[float] = []
    aligned_once = align(photo, size=size)

    def full() -> None:
        start, cpu = time.perf_counter(), time.process_time()
        aligned = align(photo, size=size)
        align_seconds.append(time.perf_counter() - start)
        runs.append(E.analyze(model, aligned, steps=args.steps, internal_batch_size=args.internal_batch_size))
        sync()
        cpu_seconds.append(time.process_time() - cpu)

    def figure() -> None:
        from mdnet.explain import viz

        viz.figure_to_array(viz.report_figure(runs[-1], photo))

    times = measure({"full": full, "figure": figure}, repeats=args.repeats)
    print(header(f"Explanation of one photo ({args.device})"))
    print(f"model: {source}; IG: {args.steps} steps ({E.DEFAULT_STEPS} by default), internal batch "
          f"{args.internal_batch_size}; photo: astronaut 512x512, crop {size} px")
    busy = load_before > 0.5
    print(f"1-minute load average before the run: {load_before:.2f} on {os.cpu_count()} cores"
          + (" -- measured under load from other processes" if busy else " (machine otherwise idle)") + "\n")
    print("| stage | median s | share |")
    print("|---|---|---|")
    keep = runs[1:] or runs  # the first run is the warm-up
    medians = {"alignment": float(np.median(align_seconds[1:] or align_seconds))}
    medians.update({k: float(np.median([r.timings[k] for r in keep])) for k in keep[0].timings})
    total = times["full"]["median"]
    for name in medians:
        print(f"| {name.replace('_', ' ')} | {medians[name]:.3f} | {100 * medians[name] / total:.0f} % |")
    print(f"| **full analysis** | **{total:.2f}** (min {times['full']['min']:.2f}, max {times['full']['max']:.2f}) "
          "| 100 % |")
    cpu = float(np.median(cpu_seconds[1:] or cpu_seconds))
    print(f"| full analysis, CPU time of this process | {cpu:.2f} | |")
    print(f"| report figure (not in the target) | {times['figure']['median']:.2f} | |")

    if args.completeness:
        x = model.preprocess(torch.from_numpy(aligned_once.image).permute(2, 0, 1).unsqueeze(0))
        print("\n| IG steps | f(face) - f(blur) | convergence delta | relative delta | IG seconds |")
        print("|---|---|---|---|---|")
        results: list[E.IntegratedGradientsResult] = []
        for steps in sorted({4, 8, 12, 16, 24, 32, args.steps}):
            r = measure({"ig": lambda s=steps: results.append(E.integrated_gradients(model, x, n_steps=s))},
                        repeats=1, warmup=0)
            ig = results[-1]
            print(f"| {steps} | {ig.score - ig.baseline_score:+.4f} | {ig.delta:+.2e} | {ig.relative_delta:.2e} "
                  f"| {r['ig']['median']:.2f} |")


if __name__ == "__main__":
    main()
