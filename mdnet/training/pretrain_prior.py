"""Pretrain the miniature latent-diffusion model behind the CPU prior stream.

No pretrained diffusion weights can be downloaded where this project is built, so
the ``tiny`` prior is a small latent diffusion model trained here, in two stages,
on the aligned training faces (the same crops MD-Net sees):

1. an ``AutoencoderKL`` (the preset's ``vae`` config): reconstruction (L1) plus a
   small KL term, as in latent diffusion; its latent scaling factor is then set
   to 1 / std of the training latents, as Stable Diffusion's 0.18215 was;
2. a ``UNet2DConditionModel`` (the preset's ``unet`` config) trained on those
   latents with the DDPM noise-prediction objective and Stable Diffusion's noise
   schedule, conditioned on a fixed all-zero "empty prompt".

Writes ``OUTPUT/vae``, ``OUTPUT/unet`` (diffusers folders), ``OUTPUT/losses.json``,
``OUTPUT/losses.png``, ``OUTPUT/samples.png`` (faces drawn from noise by the
trained model, DDIM 50 steps) and ``OUTPUT/reconstructions.png`` (training faces
above their VAE reconstructions: dataset images, so keep it out of any repository).
Runs on one process or, under ``accelerate launch -m mdnet pretrain-prior``, on several,
each training on its share of every global batch (:mod:`mdnet.training.distributed`)::

    mdnet pretrain-prior --data-root ../shared/data/scut-fbp5500 --output runs/prior
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn

from mdnet.models.config import get_config
from mdnet.training import distributed as dist
from mdnet.training.diffusion import plot_losses, sample_faces, save_grid, train_unet
from mdnet.training.fit import fit


class VAEObjective(nn.Module):
    """Per-face VAE loss: L1 reconstruction of the posterior sample plus ``kl_weight`` x KL.

    A module, so that Accelerate's DDP wrapper sees the whole step in ``forward``.
    """

    def __init__(self, vae: AutoencoderKL, kl_weight: float):
        super().__init__()
        self.vae, self.kl_weight = vae, kl_weight

    def forward(self, batch: dict) -> torch.Tensor:
        x = batch["image"]
        posterior = self.vae.encode(x).latent_dist
        recon = self.vae.decode(posterior.sample(generator=None)).sample  # the process's own RNG
        return (recon - x).abs().flatten(1).mean(1) + self.kl_weight * posterior.kl()


def train_vae(accelerator: Accelerator, vae: AutoencoderKL, faces: torch.Tensor, steps: int, batch_size: int,
              lr: float, kl_weight: float, seed: int) -> list[float]:
    """faces: (n, 3, s, s) in [-1, 1], mirrored at random. Returns the per-step loss."""

    def flips(idx: torch.Tensor, gen: torch.Generator) -> list[tuple]:
        return [(f,) for f in (torch.rand(len(idx), generator=gen) < 0.5).tolist()]

    data = dist.DrawDataset(len(faces), lambda d: {"image": faces[d.index].flip(-1) if d.aug[0] else faces[d.index]})
    sampler = dist.GlobalBatches(len(faces), batch_size, seed, flips, shards=dist.shards(accelerator))
    losses, _ = fit(accelerator, "VAE", VAEObjective(vae, kl_weight), data, sampler, steps, lr, 0.0, 0.1)
    return losses


@torch.no_grad()
def encode_all(vae: AutoencoderKL, faces: torch.Tensor, batch: int = 64,
               accelerator: Accelerator | None = None) -> torch.Tensor:
    """Unscaled latent means of faces, then of their mirror images: (2n, c, h, w).

    With an ``accelerator``, the processes share the work and each gets every latent.
    """
    device = next(vae.parameters()).device

    def means(idx: torch.Tensor) -> list[torch.Tensor]:
        x = faces[idx.cpu()].to(device)
        return [vae.encode(x).latent_dist.mean, vae.encode(x.flip(-1)).latent_dist.mean]

    if accelerator is None:
        parts = [means(torch.arange(i, min(i + batch, len(faces)))) for i in range(0, len(faces), batch)]
        plain, mirrored = (torch.cat(p).cpu() for p in zip(*parts, strict=True))
    else:
        plain, mirrored = dist.sharded_map(accelerator, means, len(faces), batch)
    return torch.cat([plain, mirrored])


def vae_decoder(vae: AutoencoderKL):
    """The VAE's decoder as ``decode(scaled latents) -> pixels in [0, 1]``."""
    return lambda x: (vae.decode(x / vae.config.scaling_factor).sample + 1) / 2


def pretrain(faces: torch.Tensor, output: Path, preset: str = "tiny", vae_steps: int = 600, unet_steps: int = 3000,
             batch_size: int = 32, seed: int = 0, accelerator: Accelerator | None = None) -> dict:
    """faces: uint8 (n, 3, s, s) aligned training faces at the prior's image size.

    ``batch_size`` is the VAE's global batch (the U-Net's is twice that: it also sees the mirror
    images' latents). With several processes each trains on its share of every batch; only the
    main process writes ``output``.
    """
    accelerator = accelerator or dist.make_accelerator()
    torch.manual_seed(seed)  # the same initial models on every process
    cfg = get_config(preset).prior
    size = cfg.image_size
    x = faces.float() / 127.5 - 1
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    vae = AutoencoderKL(**cfg.vae)
    unet = UNet2DConditionModel(**cfg.unet)
    context = torch.zeros(1, cfg.prompt_length, unet.config.cross_attention_dim)
    dist.seed_per_process(accelerator, seed)
    start = time.time()
    vae_losses = train_vae(accelerator, vae, x, vae_steps, batch_size, 1e-3, 1e-6, seed)
    latents = encode_all(vae, x, accelerator=accelerator)
    scale = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scale)
    vae_minutes = (time.time() - start) / 60
    unet_losses = train_unet(accelerator, unet, latents * scale, context.to(accelerator.device), unet_steps,
                             2 * batch_size, 5e-4, seed * 1000 + 1)
    minutes = (time.time() - start) / 60
    summary = {
        "faces": len(faces), "vae_steps": vae_steps, "unet_steps": unet_steps, "batch_size": batch_size,
        "processes": accelerator.num_processes, "latent_scaling_factor": scale, "vae_minutes": vae_minutes,
        "total_minutes": minutes, "vae_final_loss": sum(vae_losses[-50:]) / len(vae_losses[-50:]),
        "unet_final_loss": sum(unet_losses[-100:]) / len(unet_losses[-100:]),
    }
    if accelerator.is_main_process:
        vae, unet = vae.cpu(), unet.cpu()
        output.mkdir(parents=True, exist_ok=True)
        vae.save_pretrained(output / "vae")
        unet.save_pretrained(output / "unet")
        save_grid(sample_faces(unet, vae_decoder(vae), context, seed=seed), output / "samples.png")
        with torch.no_grad():
            recon = vae.decode(vae.encode(x[:8]).latent_dist.mean).sample
        save_grid(torch.cat([(x[:8] + 1) / 2, ((recon + 1) / 2).clamp(0, 1)]), output / "reconstructions.png",
                  cols=8)
        plot_losses({"VAE": vae_losses, "U-Net": unet_losses}, output / "losses.png")
        (output / "losses.json").write_text(json.dumps({**summary, "vae": vae_losses, "unet": unet_losses}) + "\n")
        dist.debug_record(accelerator, wrote=[str(output / n) for n in ("vae", "unet", "samples.png",
                                                                          "reconstructions.png", "losses.png",
                                                                          "losses.json")])
    accelerator.wait_for_everyone()
    return summary


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    from mdnet.faces.scut import ScutFBP5500, add_split_seed, aligned_faces, stratified_split

    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--split", default="60-40/train")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="held out, as in training")
    add_split_seed(parser, "the faces held out (as `mdnet train` does)")
    parser.add_argument("--output", default="runs/prior")
    parser.add_argument("--cache", default="cache", help="aligned-face (and latent) cache folder")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--vae-steps", type=int, default=600, help="VAE priors only")
    parser.add_argument("--unet-steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=32,
                        help="global batch per optimizer step, shared by all processes and accumulation steps: the "
                             "VAE's (its U-Net's is twice that, with the mirror images) or, for a TAEF2 prior, the "
                             "U-Net's")
    parser.add_argument("--lr", type=float, default=5e-4, help="peak learning rate of the U-Net")
    parser.add_argument("--seed", type=int, default=0)
    taef2 = parser.add_argument_group("TAEF2 priors (presets with autoencoder 'taef2')")
    taef2.add_argument("--unlabeled", default="default",
                       help="folder of unlabeled face photos also learned from ('default': UTKFace in ../shared; "
                            "'none': only the labelled training faces)")
    taef2.add_argument("--unlabeled-limit", type=int, default=None, help="a seeded random subset of that many")
    taef2.add_argument("--taef2", default=None, help="folder with taef2_encoder.pth / taef2_decoder.pth (default: "
                                                     "../shared/weights/taef2)")
    taef2.add_argument("--resume", action="store_true", help="continue the U-Net from OUTPUT/state")
    taef2.add_argument("--save-every-minutes", type=float, default=5.0)
    dist.add_arguments(parser)
    args = parser.parse_args(argv)
    accelerator = dist.make_accelerator(args.mixed_precision, args.gradient_accumulation_steps)
    if error := dist.check_batch_size(accelerator, args.batch_size):
        parser.error(error)
    cfg = get_config(args.preset)
    ds = ScutFBP5500(args.data_root)
    train, _ = stratified_split(ds.split(args.split), args.val_fraction, args.split_seed)
    if cfg.prior.autoencoder == "taef2":
        return _main_taef2(args, accelerator, train)
    # The same aligned crops MD-Net trains on, downsized to the prior's resolution in pretrain().
    with dist.shared_work_first(accelerator):
        faces, _ = aligned_faces(train, cfg.preprocess.image_size, args.cache)
    summary = pretrain(faces, Path(args.output), args.preset, args.vae_steps, args.unet_steps, args.batch_size,
                       args.seed, accelerator)
    if accelerator.is_main_process:
        print(json.dumps(summary, indent=2))
    return summary


def _main_taef2(args: argparse.Namespace, accelerator: Accelerator, train: list) -> dict:
    from mdnet.faces.scut import aligned_faces
    from mdnet.faces.unlabeled import read_folder, resolve_folder
    from mdnet.training.latent_prior import pretrain_on_latents
    from mdnet.training.latents import FaceList, usable_unlabeled

    size = get_config(args.preset).preprocess.image_size
    unlabeled, rejected = [], []
    with dist.shared_work_first(accelerator):  # the alignment caches, built once
        aligned_faces(train, size, args.cache)
        if (folder := resolve_folder(args.unlabeled)) is not None:
            unlabeled, rejected = usable_unlabeled(read_folder(folder, limit=args.unlabeled_limit, seed=args.seed),
                                                   size, args.cache)
    summary = pretrain_on_latents(
        accelerator, FaceList(train, unlabeled), Path(args.output), args.preset, args.unet_steps, args.batch_size,
        args.lr, args.seed, args.cache, args.taef2, args.resume, 60 * args.save_every_minutes)
    summary["unlabeled_rejected"] = len(rejected)
    if accelerator.is_main_process:
        print(json.dumps(summary, indent=2))
    return summary
