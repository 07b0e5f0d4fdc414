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
above their VAE reconstructions: dataset images, so keep it out of any repository)::

    mdnet pretrain-prior --data-root ../shared/data/scut-fbp5500 --output runs/prior
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from tqdm import tqdm

from mdnet.models.config import get_config


def _batches(n: int, batch_size: int, gen: torch.Generator):
    order = torch.randperm(n, generator=gen)
    for i in range(0, n - batch_size + 1, batch_size):
        yield order[i : i + batch_size]


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def _fit(name: str, params, steps: int, lr: float, weight_decay: float, pct_start: float, n: int,
         batch_size: int, gen: torch.Generator, loss_fn, clip: float | None = None) -> list[float]:
    """AdamW with a one-cycle schedule for ``steps`` steps over shuffled batches of ``n`` items.

    ``loss_fn(indices)`` returns the batch loss. Returns the per-step loss.
    """
    params = list(params)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=pct_start)
    losses: list[float] = []
    bar = tqdm(total=steps, desc=name)
    while len(losses) < steps:
        for idx in _batches(n, batch_size, gen):
            loss = loss_fn(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if len(losses) == steps:
                break
    bar.close()
    return losses


def train_vae(vae: AutoencoderKL, faces: torch.Tensor, steps: int, batch_size: int, lr: float,
              kl_weight: float, gen: torch.Generator) -> list[float]:
    """faces: (n, 3, s, s) in [-1, 1]. Returns the per-step loss."""

    def loss_fn(idx):
        x = _augment(faces[idx], gen)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=None)).sample
        return F.l1_loss(recon, x) + kl_weight * posterior.kl().mean()

    vae.train()
    losses = _fit("VAE", vae.parameters(), steps, lr, 0.0, 0.1, len(faces), batch_size, gen, loss_fn)
    vae.eval()
    return losses


@torch.no_grad()
def encode_all(vae: AutoencoderKL, faces: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Unscaled latent means of faces and their mirror images: (2n, c, h, w)."""
    out = []
    for i in range(0, len(faces), batch):
        x = faces[i : i + batch]
        out += [vae.encode(x).latent_dist.mean, vae.encode(x.flip(-1)).latent_dist.mean]
    return torch.cat(out)


def train_unet(unet: UNet2DConditionModel, latents: torch.Tensor, context: torch.Tensor, steps: int,
               batch_size: int, lr: float, gen: torch.Generator) -> list[float]:
    """DDPM epsilon-prediction on scaled latents (n, c, h, w). Returns the per-step loss."""
    noise_sched = DDPMScheduler(**get_config("tiny").prior.scheduler)

    def loss_fn(idx):
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(idx),), generator=gen)
        pred = unet(noise_sched.add_noise(x0, noise, t), t, encoder_hidden_states=context.expand(len(idx), -1, -1))
        return F.mse_loss(pred.sample, noise)

    unet.train()
    losses = _fit("U-Net", unet.parameters(), steps, lr, 1e-2, 0.05, len(latents), batch_size, gen, loss_fn,
                  clip=1.0)
    unet.eval()
    return losses


@torch.no_grad()
def sample_faces(unet, vae, context, n: int = 16, steps: int = 50, seed: int = 0) -> torch.Tensor:
    """Draw n faces from noise with DDIM; pixels in [0, 1], (n, 3, s, s)."""
    ddim = DDIMScheduler(**get_config("tiny").prior.scheduler, clip_sample=False, set_alpha_to_one=False)
    ddim.set_timesteps(steps)
    c = unet.config.in_channels
    side = unet.config.sample_size
    x = torch.randn(n, c, side, side, generator=torch.Generator().manual_seed(seed))
    for t in ddim.timesteps:
        eps = unet(x, t, encoder_hidden_states=context.expand(n, -1, -1)).sample
        x = ddim.step(eps, t, x).prev_sample
    pixels = vae.decode(x / vae.config.scaling_factor).sample
    return ((pixels + 1) / 2).clamp(0, 1)


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

    fig, axes = plt.subplots(1, len(losses), figsize=(5 * len(losses), 3.2))
    for ax, (name, values) in zip(axes, losses.items(), strict=True):
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
             batch_size: int = 32, seed: int = 0) -> dict:
    """faces: uint8 (n, 3, s, s) aligned training faces at the prior's image size."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    cfg = get_config(preset).prior
    size = cfg.image_size
    x = faces.float() / 127.5 - 1
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    output.mkdir(parents=True, exist_ok=True)
    start = time.time()
    vae = AutoencoderKL(**cfg.vae)
    vae_losses = train_vae(vae, x, vae_steps, batch_size, 1e-3, 1e-6, gen)
    latents = encode_all(vae, x)
    scale = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scale)
    vae_minutes = (time.time() - start) / 60
    unet = UNet2DConditionModel(**cfg.unet)
    context = torch.zeros(1, cfg.prompt_length, unet.config.cross_attention_dim)
    unet_losses = train_unet(unet, latents * scale, context, unet_steps, 2 * batch_size, 5e-4, gen)
    minutes = (time.time() - start) / 60
    vae.save_pretrained(output / "vae")
    unet.save_pretrained(output / "unet")
    save_grid(sample_faces(unet, vae, context, seed=seed), output / "samples.png")
    with torch.no_grad():
        recon = vae.decode(vae.encode(x[:8]).latent_dist.mean).sample
    save_grid(torch.cat([(x[:8] + 1) / 2, ((recon + 1) / 2).clamp(0, 1)]), output / "reconstructions.png", cols=8)
    plot_losses({"VAE": vae_losses, "U-Net": unet_losses}, output / "losses.png")
    summary = {
        "faces": len(faces), "vae_steps": vae_steps, "unet_steps": unet_steps, "batch_size": batch_size,
        "latent_scaling_factor": scale, "vae_minutes": vae_minutes, "total_minutes": minutes,
        "vae_final_loss": sum(vae_losses[-50:]) / len(vae_losses[-50:]),
        "unet_final_loss": sum(unet_losses[-100:]) / len(unet_losses[-100:]),
    }
    (output / "losses.json").write_text(json.dumps({**summary, "vae": vae_losses, "unet": unet_losses}) + "\n")
    return summary


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    from mdnet.faces.scut import ScutFBP5500, aligned_faces, stratified_split

    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--split", default="60-40/train")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="held out, as in training")
    parser.add_argument("--output", default="runs/prior")
    parser.add_argument("--cache", default="cache", help="aligned-face cache folder")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--vae-steps", type=int, default=600)
    parser.add_argument("--unet-steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    ds = ScutFBP5500(args.data_root)
    train, _ = stratified_split(ds.split(args.split), args.val_fraction, args.seed)
    # The same aligned crops MD-Net trains on, downsized to the prior's resolution in pretrain().
    faces, _ = aligned_faces(train, get_config(args.preset).preprocess.image_size, args.cache)
    summary = pretrain(faces, Path(args.output), args.preset, args.vae_steps, args.unet_steps, args.batch_size,
                       args.seed)
    print(json.dumps(summary, indent=2))
