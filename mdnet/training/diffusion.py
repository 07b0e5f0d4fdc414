"""Denoising-diffusion training pieces shared by the prior's pretraining jobs (VAE or TAEF2 latents).

:func:`train_unet` trains a diffusers ``UNet2DConditionModel`` with the DDPM noise-prediction objective and
Stable Diffusion's noise schedule on a tensor of latents, conditioned on a fixed "empty prompt", through
:func:`mdnet.training.fit.fit` (AdamW, one-cycle schedule, the data-parallel pattern of
:mod:`mdnet.training.distributed`, resumable at the exact step); :func:`sample_faces` draws from the result
with DDIM; :func:`save_grid` and :func:`plot_losses` draw what the model card shows.
"""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from torch import nn

from mdnet.models.config import get_config
from mdnet.training import distributed as dist
from mdnet.training.fit import fit


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


def train_unet(accelerator: Accelerator, unet: UNet2DConditionModel, latents: torch.Tensor, context: torch.Tensor,
               steps: int, batch_size: int, lr: float, seed: int, state_dir: Path | None = None,
               save_every_s: float = 300.0) -> list[float]:
    """DDPM epsilon-prediction on scaled latents (n, c, h, w). Returns the per-step loss.

    ``state_dir``: save the state there every ``save_every_s`` seconds and resume from it (see :func:`fit`).
    """
    timesteps = get_config("tiny").prior.scheduler["num_train_timesteps"]

    def noise_and_time(idx: torch.Tensor, gen: torch.Generator) -> list[tuple]:
        noise = torch.randn((len(idx), *latents.shape[1:]), generator=gen)
        t = torch.randint(0, timesteps, (len(idx),), generator=gen).tolist()
        return list(zip(noise, t, strict=True))

    data = dist.DrawDataset(len(latents), lambda d: {"latent": latents[d.index], "noise": d.aug[0], "t": d.aug[1]})
    sampler = dist.GlobalBatches(len(latents), batch_size, seed, noise_and_time, shards=dist.shards(accelerator))
    losses, _ = fit(accelerator, "U-Net", NoiseObjective(unet, context), data, sampler, steps, lr, 1e-2, 0.05,
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
