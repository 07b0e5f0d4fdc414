"""How much beauty signal does MD-Net's prior stream carry? Stream ablation and a ridge probe of its features.

Two measurements per source, on the SCUT-FBP5500 official 60/40 training list split by
``stratified_split(train, 0.1, seed=0)`` into 2970 fitting and 330 validation faces (the official
test split is not touched); faces aligned by :func:`mdnet.faces.scut.aligned_faces` (crops cached):

(a) **Stream ablation** (a trained checkpoint only): PC, MAE and RMSE of the 330 validation faces scored
    mirror-averaged (:func:`mdnet.models.mdnet.score_aligned`) in ``mode="prior_only"`` (the Vim tokens
    replaced by their training mean), with ``full`` and ``vim_only`` for reference. What the trained
    fusion and head make of the prior alone.
(b) **Ridge probe** of the frozen prior's features: every feature map of
    ``model.prior_features(model.preprocess(faces))`` (one pass, no mirror), global average pool plus
    2x2 adaptive average pool (``c * 5`` values per map), one row per map, one for the global averages of
    all maps (what a read-out of the pooled prior, ``FusionConfig.prior_summary``, starts from) and one for
    all maps concatenated. Ridge as in :func:`probe_taef2.probe`: standardised on the fitting faces, alpha by
    5-fold CV on them only; PC/MAE/RMSE on the 330 validation faces. What a linear read-out can get
    from the prior, whatever the head learnt.

A source is a ``--checkpoint`` (repeat for several, side by side) or ``--prior-folder DIR --preset P``:
what ``mdnet pretrain-prior`` wrote, built with :func:`mdnet.training.train.build_model` (no MD-Net
training yet, so only (b)). Features and ablation scores are cached under ``cache/prior-probe-<key>/``
(key: the weights' sha256, the sample list, the recipe; features in chunks while they are computed,
so an interrupted run resumes); a rerun only refits the ridge.

Usage::

    python benchmarks/probe_prior.py [--checkpoint checkpoints/default [--checkpoint other]]
        [--prior-folder DIR --preset P] [--data-root ../shared/data/scut-fbp5500] [--threads 1] [--batch 32]
        [--output probe.json]
"""

from __future__ import annotations

import os

# numpy's BLAS (the ridge's eigendecompositions) on one thread unless told otherwise: on the busy shared
# 2-core machine one 1760x1760 eigh took 7 s on one thread and 32 s on two. (Only before numpy is imported.)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from probe_taef2 import probe  # noqa: E402

from mdnet.faces.scut import ScutFBP5500, aligned_faces, stratified_split  # noqa: E402
from mdnet.models.checkpoint import CONFIG_NAME, WEIGHTS_NAME, file_sha256, load_checkpoint, resolve_checkpoint  # noqa: E402
from mdnet.models.mdnet import MODES, MDNet, score_aligned  # noqa: E402
from mdnet.training.metrics import regression_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "scut-fbp5500"
DEFAULT_CHECKPOINT = "checkpoints/default"
RECIPE = "gap+2x2-v1"  # bump when pooled_prior_features changes: the cache key includes it
CHUNK = 256  # faces per cached chunk of features


# ----------------------------------------------------------------------------- sources
def checkpoint_key(path: str | Path) -> str:
    """sha256 of a checkpoint's weights and config (the config names an external prior, if any)."""
    folder = resolve_checkpoint(path)
    return hashlib.sha256(f"{file_sha256(folder / WEIGHTS_NAME)}|{file_sha256(folder / CONFIG_NAME)}".encode()
                          ).hexdigest()


def prior_folder_key(folder: Path, preset: str) -> str:
    """sha256 over every file of a pretrain-prior folder (unet/, vae/, prior.json) and the preset."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    parts = [f"{p.relative_to(folder)}:{file_sha256(p)}" for p in files]
    return hashlib.sha256("|".join([preset, *parts]).encode()).hexdigest()


def load_prior_folder(folder: Path, preset: str) -> MDNet:
    from mdnet.training.train import build_model

    return build_model(preset, str(folder), None).eval()


# ----------------------------------------------------------------------------- features
def pooled_prior_features(model: MDNet, faces: torch.Tensor) -> np.ndarray:
    """uint8 faces ``(B, 3, s, s)`` -> ``(B, sum_i 5 c_i)`` float32: per prior map, its global average
    ``(c_i)`` then its 2x2 adaptive average pool ``(c_i * 4)``, maps in the prior's order (fine to coarse)."""
    with torch.inference_mode():
        maps = model.prior_features(model.preprocess(faces))
        parts = []
        for f in maps:
            f = f.float()
            parts += [f.mean(dim=(2, 3)), F.adaptive_avg_pool2d(f, 2).flatten(1)]
        return torch.cat(parts, dim=1).numpy()


def map_slices(model: MDNet) -> list[tuple[str, slice]]:
    """``(label, columns)`` of each map in :func:`pooled_prior_features`'s output, e.g. ``("map 1: 32x8x8", ...)``."""
    out, start = [], 0
    for i, (c, (h, w)) in enumerate(zip(model.prior.feature_channels, model.prior.feature_shapes, strict=True)):
        out.append((f"map {i + 1}: {c}x{h}x{w}", slice(start, start + 5 * c)))
        start += 5 * c
    return out


def extract(model: MDNet, images: torch.Tensor, folder: Path, batch: int, progress: bool = True) -> np.ndarray:
    """:func:`pooled_prior_features` of every image, computed in cached chunks of ``CHUNK`` (a rerun resumes)."""
    final = folder / "features.npy"
    if final.is_file():
        return np.load(final)
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    with tqdm(total=len(images), desc="prior features", unit="face", disable=not progress) as bar:
        for start in range(0, len(images), CHUNK):
            path = folder / f"chunk-{start:05d}.npy"
            if path.is_file():
                chunk = np.load(path)
            else:
                chunk = np.concatenate([pooled_prior_features(model, images[i : i + batch])
                                        for i in range(start, min(start + CHUNK, len(images)), batch)])
                tmp = path.with_name(f".{path.stem}.tmp.npy")
                np.save(tmp, chunk)
                tmp.replace(path)
            parts.append(chunk)
            bar.update(len(chunk))
    out = np.concatenate(parts)
    tmp = final.with_name(".features.tmp.npy")
    np.save(tmp, out)
    tmp.replace(final)
    for path in folder.glob("chunk-*.npy"):
        path.unlink()
    return out


def ablation_scores(
    model: MDNet, images: torch.Tensor, folder: Path, batch: int, mode: str, progress: bool = True
) -> np.ndarray | None:
    """Mirror-averaged scores in ``mode`` (cached); None when the model has no stream references."""
    if mode != "full" and not bool(model.references_ready):
        return None
    path = folder / f"scores-{mode}.npy"
    if path.is_file():
        return np.load(path)
    parts = []
    for i in tqdm(range(0, len(images), batch), desc=f"scores, {mode}", unit="batch", disable=not progress):
        parts.append(score_aligned(model, images[i : i + batch], tta=True, batch_size=batch, mode=mode).numpy())
    scores = np.concatenate(parts) if parts else np.empty(0, np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.npy")
    np.save(tmp, scores)
    tmp.replace(path)
    return scores


# ----------------------------------------------------------------------------- tables
def _num(x: float | None, fmt: str = ".4f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def ablation_table(ablation: dict[str, dict[str, dict] | None]) -> str:
    """Rows: modes; per source with an ablation: PC | MAE | RMSE."""
    labels = [lb for lb, a in ablation.items() if a is not None]
    head = "| mode |" + "".join(f" {lb}: val PC | MAE | RMSE |" for lb in labels)
    lines = [head, "|---|" + "---:|" * 3 * len(labels)]
    for mode in MODES:
        cells = ""
        for lb in labels:
            m = ablation[lb].get(mode)
            cells += " n/a | n/a | n/a |" if m is None else f" {_num(m['pc'])} | {_num(m['mae'])} | {_num(m['rmse'])} |"
        lines.append(f"| {mode} |{cells}")
    return "\n".join(lines)


def probe_table(probes: dict[str, dict[str, dict]]) -> str:
    lines = ["| source | prior features (GAP + 2x2 pool) | dims | alpha | 5-fold CV r | val PC | val MAE | val RMSE |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for lb, rows in probes.items():
        for name, r in rows.items():
            name = f"**{name}**" if name == "all maps" else name
            lines.append(f"| {lb} | {name} | {r['dims']} | {r['alpha']} | {_num(r['cv_r'])} | {_num(r['pc'])} | "
                         f"{_num(r['mae'])} | {_num(r['rmse'])} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", action="append", default=None,
                    help=f"MD-Net checkpoint; repeat for several (default {DEFAULT_CHECKPOINT} unless --prior-folder)")
    ap.add_argument("--prior-folder", type=Path, default=None, help="a pretrain-prior output folder (needs --preset)")
    ap.add_argument("--preset", default=None, help="the preset the prior folder was trained for")
    ap.add_argument("--data-root", type=Path, default=DEFAULT_DATA, help="SCUT-FBP5500 root (official layout)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: fastest on a busy shared CPU)")
    ap.add_argument("--batch", type=int, default=32, help="faces per forward pass")
    ap.add_argument("--cache", type=Path, default=ROOT / "cache", help="crops, features and scores are cached here")
    ap.add_argument("--output", type=Path, default=None, help="also write the report as JSON")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    if (args.prior_folder is None) != (args.preset is None):
        ap.error("--prior-folder and --preset go together")
    checkpoints = args.checkpoint or ([] if args.prior_folder else [DEFAULT_CHECKPOINT])
    if len(set(checkpoints)) != len(checkpoints):
        ap.error("the same --checkpoint is given twice")
    command = "python " + " ".join([sys.argv[0] if argv is None else "benchmarks/probe_prior.py",
                                    *(argv if argv is not None else sys.argv[1:])])
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()

    samples = ScutFBP5500(args.data_root).split("60-40/train")
    train, valid = stratified_split(samples, 0.1, seed=0)
    index = {s.name: i for i, s in enumerate(samples)}
    tr = np.array([index[s.name] for s in train])
    va = np.array([index[s.name] for s in valid])
    y = np.array([s.score for s in samples])
    names = "\n".join(s.name for s in samples)

    sources: dict[str, tuple[str, Callable[[], MDNet]]] = {}
    for c in checkpoints:
        sources[c] = (checkpoint_key(c), lambda c=c: load_checkpoint(c, device="cpu").eval())
    if args.prior_folder:
        label = f"{args.prior_folder} ({args.preset})"
        sources[label] = (prior_folder_key(args.prior_folder, args.preset),
                          lambda: load_prior_folder(args.prior_folder, args.preset))

    images: dict[int, tuple[torch.Tensor, list[str]]] = {}
    ablation: dict[str, dict[str, dict] | None] = {}
    probes: dict[str, dict[str, dict]] = {}
    timings: dict[str, dict[str, float]] = {}
    for label, (key, load) in sources.items():
        t = time.perf_counter()
        model = load()
        size = model.cfg.preprocess.image_size
        if size not in images:
            images[size] = aligned_faces(samples, size, args.cache)
        faces = images[size][0]
        digest = hashlib.sha1(f"{key}|{names}|{size}|{RECIPE}".encode()).hexdigest()[:16]
        folder = args.cache / f"prior-probe-{digest}"
        t_load = time.perf_counter() - t

        t = time.perf_counter()
        if label in checkpoints:
            ablation[label] = {}
            for mode in MODES:
                s = ablation_scores(model, faces[va], folder, args.batch, mode, not args.quiet)
                ablation[label][mode] = None if s is None else regression_metrics(s, y[va])
        else:
            ablation[label] = None
        t_ablation = time.perf_counter() - t

        t = time.perf_counter()
        feats = extract(model, faces, folder, args.batch, not args.quiet).astype(np.float64)
        t_feat = time.perf_counter() - t
        t = time.perf_counter()
        gap = [i for _, c in map_slices(model) for i in range(c.start, c.start + (c.stop - c.start) // 5)]  # GAP first
        sets = [*map_slices(model), ("all maps, global average only", gap), ("all maps", slice(0, feats.shape[1]))]
        probes[label] = {name: probe(feats[tr][:, cols], y[tr], feats[va][:, cols], y[va]) for name, cols in sets}
        timings[label] = {"load": t_load, "ablation": t_ablation, "features": t_feat,
                          "ridge": time.perf_counter() - t}
    wall = time.perf_counter() - t0

    baseline = regression_metrics(np.full(len(va), y[tr].mean()), y[va])
    unaligned = sorted({n for _, miss in images.values() for n in miss})
    print(f"## How much beauty signal does the prior stream carry?\n\ncommand: `{command}`\n")
    print(f"SCUT-FBP5500 official 60/40 training list: {len(tr)} fitting faces, {len(va)} validation faces "
          f"(stratified_split, seed 0); {len(unaligned)} without a detected face, resized whole.\n")
    if any(a is not None for a in ablation.values()):
        print("### (a) Stream ablation: validation faces, mirror-averaged; prior_only = the Vim tokens replaced by "
              "their training mean, vim_only = the prior's maps replaced by theirs\n")
        print(ablation_table(ablation))
        print()
    print("### (b) Ridge probe of the frozen prior's features (one pass, no mirror): per map global average + "
          "2x2 average pool, standardised; alpha by 5-fold CV on the fitting faces only\n")
    print(probe_table(probes))
    print(f"\nFor scale: predicting the fitting faces' mean label for every validation face gives MAE "
          f"{baseline['mae']:.4f}, RMSE {baseline['rmse']:.4f}.")
    for label, tm in timings.items():
        print(f"{label}: load {tm['load']:.0f} s (crops included), ablation {tm['ablation']:.0f} s, "
              f"features {tm['features']:.0f} s, ridge {tm['ridge']:.0f} s")
    print(f"Wall time {wall:.0f} s (torch threads: {torch.get_num_threads()}).")
    report = {"command": command, "wall_s": round(wall, 1), "ablation": ablation, "probe": probes,
              "mean_baseline": baseline, "timings_s": timings, "unaligned": unaligned}
    if args.output:
        args.output.write_text(json.dumps(report, indent=1))
        print(f"Report written to {args.output}.")
    return report


if __name__ == "__main__":
    main()
