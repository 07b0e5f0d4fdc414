"""Training throughput with 1 and 2 processes: does `mdnet train` share the work out?

Runs ``mdnet train`` once per setting and repeat, interleaved: one process as ``python -m mdnet
train`` with all the cores' threads and with one thread, N processes as ``accelerate launch
--multi_gpu --num_processes N -m mdnet train`` with cores / N threads each (``ACCELERATE_USE_CPU=1``
on a machine without GPUs, as here). The global batch is the same, so
each of N processes trains on batch / N faces per step. Throughput is training faces per second
of the training loop (epochs after the first, validation and startup excluded), read from the
run's ``history.json``; each process's share of the faces comes from its ``MDNET_DEBUG_RECORD``.

On a 2-core CPU two processes cannot beat one process with two threads: the table shows that the
work is split (each process trains on half the faces), not a speed-up. On N GPUs each process
has its own device.

    python benchmarks/bench_train_scaling.py                       # SCUT-FBP5500 subset, micro preset
    python benchmarks/bench_train_scaling.py --data-root synthetic --limit 0
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from timing import header

REPO = Path(__file__).resolve().parents[1]
SCUT = REPO.parent / "shared" / "data" / "scut-fbp5500"


def subset_list(root: Path, limit: int, folder: Path) -> str:
    """Every k-th line of the official training list, ``limit`` faces in all (0: the whole list)."""
    from mdnet.faces.scut import ScutFBP5500

    listed = ScutFBP5500(root).list_file("60-40/train").read_text().split("\n")
    listed = [line for line in listed if line.strip()]
    if limit:
        listed = listed[:: max(1, len(listed) // limit)][:limit]
    path = folder / f"train-{len(listed)}.txt"
    path.write_text("\n".join(listed) + "\n")
    return str(path)


def run(processes: int, threads: int, common: list[str], work: Path, tag: str) -> dict:
    out, record = work / f"run-{tag}", work / f"record-{tag}"
    env = {**os.environ, "MDNET_DEBUG_RECORD": str(record), "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    if processes == 1:
        cmd = [sys.executable, "-m", "mdnet", "train"]
    else:
        env["ACCELERATE_USE_CPU"] = "1" if not torch.cuda.is_available() else env.get("ACCELERATE_USE_CPU", "0")
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--num_cpu_threads_per_process", str(threads), "--mixed_precision", "no",
               "--dynamo_backend", "no", "-m", "mdnet", "train"]
    start = time.perf_counter()
    done = subprocess.run(cmd + common + ["--output", str(out)], cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-4000:]}")
    summary = json.loads((out / "summary.json").read_text())
    shares = []
    for rank in range(processes):
        lines = (record / f"rank-{rank}.jsonl").read_text().splitlines()
        shares.append(statistics.mean(len(r["samples"]) for r in map(json.loads, lines) if "samples" in r))
    return {"summary": summary, "wall": wall, "shares": shares}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=str(SCUT) if SCUT.is_dir() else "synthetic",
                        help="SCUT-FBP5500 root, or 'synthetic' (the tests' miniature dataset)")
    parser.add_argument("--limit", type=int, default=800, help="training-list faces to use (0: all)")
    parser.add_argument("--preset", default="micro")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="the first is not timed")
    parser.add_argument("--runs", nargs="+", default=None, metavar="PxT",
                        help="process count x threads per process; default: 1 process with all cores' threads, "
                             "1 process with 1 thread, 2 processes with cores / 2 threads each")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cache", default=str(REPO / "cache"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.data_root == "synthetic":
            sys.path.insert(0, str(REPO / "tests"))
            from fake_scut import make_fake_scut

            root = make_fake_scut(work / "scut", per_group=max(8, args.limit // 4))
            split = "60-40/train"
        else:
            root = Path(args.data_root)
            split = subset_list(root, args.limit, work)
        common = ["--data-root", str(root), "--split", split, "--preset", args.preset, "--batch-size",
                  str(args.batch_size), "--epochs", str(args.epochs), "--stem-weights", "none", "--cache", args.cache]
        subprocess.run([sys.executable, "-m", "mdnet", "train", *common, "--epochs", "1", "--output",
                        str(work / "warm")], cwd=REPO, check=True, capture_output=True)  # builds the alignment cache
        cores = os.cpu_count() or 1
        runs = [tuple(map(int, r.split("x"))) for r in args.runs] if args.runs else \
            [(1, cores), (1, 1), (2, max(1, cores // 2))]
        results: dict[tuple[int, int], list[dict]] = {r: [] for r in runs}
        for k in range(args.repeats):
            for n, threads in runs:
                results[(n, threads)].append(run(n, threads, common, work, f"{n}x{threads}-{k}"))

    first = results[runs[0]][0]["summary"]
    train_faces = first["train_faces"]
    steps = train_faces // args.batch_size
    print(header(f"`mdnet train` throughput, preset {args.preset}, by processes"))
    print(f"data: {args.data_root} ({train_faces} training faces, {first['val_faces']} validation), global batch "
          f"{args.batch_size}, {steps} steps per epoch, epochs 2-{args.epochs} timed, {args.repeats} runs each, "
          f"interleaved; {os.cpu_count()} CPU cores, {'CUDA' if torch.cuda.is_available() else 'no GPU'}\n")
    print("| processes | threads each | faces per process per step | faces trained per process per epoch "
          "| samples/s (median, min-max) | vs first row | prior-feature cache s | run wall s |")
    print("|---|---|---|---|---|---|---|---|")
    base = None
    for (n, threads), res in results.items():
        rates = [steps * args.batch_size / (60 * m) for r in res for m in r["summary"]["epoch_minutes"][1:]]
        median = statistics.median(rates)
        base = base or median
        cache = statistics.median(60 * r["summary"]["prior_cache_minutes"] for r in res)
        wall = statistics.median(r["wall"] for r in res)
        print(f"| {n} | {threads} | {args.batch_size // n} | {' + '.join(f'{s:.0f}' for s in res[0]['shares'])} | "
              f"{median:.1f} ({min(rates):.1f}-{max(rates):.1f}) | {median / base:.2f}x | {cache:.1f} | {wall:.0f} |")


if __name__ == "__main__":
    main()
