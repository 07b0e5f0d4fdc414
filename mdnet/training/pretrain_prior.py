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
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from torch import nn
from tqdm import tqdm

from mdnet.models.config import get_config
from mdnet.training import distributed as dist


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


class NoiseObjective(nn.Module):
    """Per-latent DDPM loss: MSE of the U-Net's noise prediction, conditioned on the fixed empty prompt."""

    def __init__(self, unet: UNet2DConditionModel, context: torch.Tensor):
        super().__init__()
        self.unet = unet
        self.register_buffer("context", context, persistent=False)
        self.noise_sched = DDPMScheduler(**get_config("tiny").prior.scheduler)

    def forward(self, batch: dict) -> torch.Tensor:
        x0, noise, t = batch["latent"], batch["noise"], batch["t"]
        noisy = self.noise_sched.add_noise(x0, noise, t)
        pred = self.unet(noisy, t, encoder_hidden_states=self.context.expand(len(t), -1, -1)).sample
        return (pred - noise).pow(2).flatten(1).mean(1)


def _fit(accelerator: Accelerator, name: str, objective: nn.Module, data: dist.DrawDataset,
         sampler: dist.GlobalBatches, steps: int, lr: float, weight_decay: float, pct_start: float,
         clip: float | None = None, state_dir: Path | None = None, save_every_s: float = 300.0
         ) -> tuple[list[float], nn.Module]:
    """AdamW with a one-cycle schedule for ``steps`` optimizer steps over the sampler's global batches.

    ``objective(batch)`` returns per-item losses. With ``state_dir``, the state (weights, optimizer,
    random states, losses so far) is saved there every ``save_every_s`` seconds and at the end, and a
    later call resumes from it at the exact step (epoch ``e``'s batches depend only on the seed and
    ``e``, so the batches already trained are skipped, not redrawn). Returns (the per-step loss of
    the global batch, the trained objective, unwrapped).
    """
    if sampler.batches_per_epoch() == 0:
        raise ValueError(f"{name}: the batch ({sampler.batch_size}) is larger than the {sampler.n} training items")
    opt = torch.optim.AdamW(objective.parameters(), lr=lr, weight_decay=weight_decay)
    model, opt = accelerator.prepare(objective, opt)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=pct_start)
    loader = dist.train_loader(accelerator, data, sampler)
    losses: list[float] = []
    progress = dist.load_state(accelerator, state_dir) if state_dir is not None else None
    if progress is not None:
        if progress.get("steps") != steps or progress.get("name") != name:
            raise ValueError(f"{name}: {state_dir} holds a run of {progress.get('steps')} steps of "
                             f"{progress.get('name')!r}, not {steps}: use another --output or the same settings")
        losses = progress["losses"]
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": fast-forwarding on purpose
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(len(losses)):
                sched.step()
        accelerator.print(f"{name}: resumed after step {len(losses)} of {steps}")

    def save() -> None:
        if state_dir is not None:
            dist.save_state(accelerator, state_dir, {"name": name, "steps": steps, "losses": losses})

    bar = tqdm(total=steps, initial=len(losses), desc=name, disable=not accelerator.is_local_main_process)
    model.train()
    per_epoch = sampler.batches_per_epoch()
    epoch, step_loss, last_save = len(losses) // per_epoch, 0.0, time.time()
    while len(losses) < steps:
        loader.set_epoch(epoch)
        # Micro-batches of this epoch trained before a resume: whole global batches, skipped unseen.
        skip = (len(losses) - epoch * per_epoch) * accelerator.gradient_accumulation_steps
        seen: list[int] = []
        for batch in loader:
            if skip > 0:
                skip -= 1
                continue
            step_loss += dist.optimizer_step(accelerator, model, opt, sched, lambda b=batch: model(b).float(), batch,
                                             clip=clip)
            seen += dist.trained_indices(batch)
            if accelerator.sync_gradients:
                losses.append(dist.reduce_sum(accelerator, step_loss))
                step_loss = 0.0
                bar.update()
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                if time.time() - last_save > save_every_s and len(losses) < steps:
                    save()
                    last_save = time.time()
                if len(losses) == steps:
                    break
        dist.debug_record(accelerator, job=f"pretrain-prior {name}", epoch=epoch + 1, samples=seen)
        epoch += 1
    bar.close()
    save()
    model = accelerator.unwrap_model(model)
    model.eval()
    return losses, model


def train_vae(accelerator: Accelerator, vae: AutoencoderKL, faces: torch.Tensor, steps: int, batch_size: int,
              lr: float, kl_weight: float, seed: int) -> list[float]:
    """faces: (n, 3, s, s) in [-1, 1], mirrored at random. Returns the per-step loss."""

    def flips(idx: torch.Tensor, gen: torch.Generator) -> list[tuple]:
        return [(f,) for f in (torch.rand(len(idx), generator=gen) < 0.5).tolist()]

    data = dist.DrawDataset(len(faces), lambda d: {"image": faces[d.index].flip(-1) if d.aug[0] else faces[d.index]})
    sampler = dist.GlobalBatches(len(faces), batch_size, seed, flips, shards=dist.shards(accelerator))
    losses, _ = _fit(accelerator, "VAE", VAEObjective(vae, kl_weight), data, sampler, steps, lr, 0.0, 0.1)
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


def train_unet(accelerator: Accelerator, unet: UNet2DConditionModel, latents: torch.Tensor, context: torch.Tensor,
               steps: int, batch_size: int, lr: float, seed: int, state_dir: Path | None = None,
               save_every_s: float = 300.0) -> list[float]:
    """DDPM epsilon-prediction on scaled latents (n, c, h, w). Returns the per-step loss.

    ``state_dir``: save the state there every ``save_every_s`` seconds and resume from it (see :func:`_fit`).
    """
    timesteps = get_config("tiny").prior.scheduler["num_train_timesteps"]

    def noise_and_time(idx: torch.Tensor, gen: torch.Generator) -> list[tuple]:
        noise = torch.randn((len(idx), *latents.shape[1:]), generator=gen)
        t = torch.randint(0, timesteps, (len(idx),), generator=gen).tolist()
        return list(zip(noise, t, strict=True))

    data = dist.DrawDataset(len(latents), lambda d: {"latent": latents[d.index], "noise": d.aug[0], "t": d.aug[1]})
    sampler = dist.GlobalBatches(len(latents), batch_size, seed, noise_and_time, shards=dist.shards(accelerator))
    losses, _ = _fit(accelerator, "U-Net", NoiseObjective(unet, context), data, sampler, steps, lr, 1e-2, 0.05,
                     clip=1.0, state_dir=state_dir, save_every_s=save_every_s)
    return losses


@torch.no_grad()
def sample_faces(unet, decode, context, n: int = 16, steps: int = 50, seed: int = 0) -> torch.Tensor:
    """Draw n faces from noise with DDIM; ``decode(latents)`` maps the U-Net's (normalised) latents to
    pixels in [0, 1], (n, 3, s, s)."""
    ddim = DDIMScheduler(**get_config("tiny").prior.scheduler, clip_sample=False, set_alpha_to_one=False)
    ddim.set_timesteps(steps)
    c = unet.config.in_channels
    side = unet.config.sample_size
    x = torch.randn(n, c, side, side, generator=torch.Generator().manual_seed(seed))
    for t in ddim.timesteps:
        eps = unet(x, t, encoder_hidden_states=context.expand(n, -1, -1)).sample
        x = ddim.step(eps, t, x).prev_sample
    return decode(x).clamp(0, 1)


def vae_decoder(vae: AutoencoderKL):
    """The VAE's decoder as ``decode(scaled latents) -> pixels in [0, 1]``."""
    return lambda x: (vae.decode(x / vae.config.scaling_factor).sample + 1) / 2


def save_grid(images: torch.Tensor, path: Path, cols: int = 4) -> None:
    from PIL import Image

    n, _, h, w = images.shape
    rows = (n + cols - 1) // cols
    grid = torch.ones(3, rows * h, cols * w)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[:, r * h : (r + 1) * h, c * w : (c + 1) * w] = images[i]
    Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(path)


def plot_losses(losses: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(losses), figsize=(5 * len(losses), 3.2), squeeze=False)
    for ax, (name, values) in zip(axes[0], losses.items(), strict=True):
        k = max(1, len(values) // 50)
        smooth = [sum(values[i : i + k]) / len(values[i : i + k]) for i in range(0, len(values), k)]
        ax.plot(range(0, len(values), k), smooth)
        ax.set_title(f"{name} training loss")
        ax.set_xlabel("step")
        ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
    from mdnet.faces.scut import ScutFBP5500, aligned_faces, stratified_split

    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--split", default="60-40/train")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="held out, as in training")
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
    train, _ = stratified_split(ds.split(args.split), args.val_fraction, args.seed)
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
    from mdnet.faces.unlabeled import DEFAULT_FOLDER, read_folder
    from mdnet.training.latent_prior import pretrain_on_latents
    from mdnet.training.latents import FaceList, usable_unlabeled

    size = get_config(args.preset).preprocess.image_size
    unlabeled, rejected = [], []
    with dist.shared_work_first(accelerator):  # the alignment caches, built once
        aligned_faces(train, size, args.cache)
        if args.unlabeled != "none":
            folder = DEFAULT_FOLDER if args.unlabeled == "default" else args.unlabeled
            unlabeled, rejected = usable_unlabeled(read_folder(folder, limit=args.unlabeled_limit, seed=args.seed),
                                                   size, args.cache)
    summary = pretrain_on_latents(
        accelerator, FaceList(train, unlabeled), Path(args.output), args.preset, args.unet_steps, args.batch_size,
        args.lr, args.seed, args.cache, args.taef2, args.resume, 60 * args.save_every_minutes)
    summary["unlabeled_rejected"] = len(rejected)
    if accelerator.is_main_process:
        print(json.dumps(summary, indent=2))
    return summary
