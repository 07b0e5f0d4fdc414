"""Denoising-diffusion training pieces shared by the prior's pretraining jobs (VAE or TAEF2 latents).

:func:`train_unet` trains a diffusers ``UNet2DConditionModel`` with the DDPM noise-prediction objective and
Stable Diffusion's noise schedule on a tensor of latents, conditioned on a fixed "empty prompt", through
:func:`fit` (AdamW, one-cycle schedule, the data-parallel pattern of :mod:`mdnet.training.distributed`,
resumable at the exact step); :func:`sample_faces` draws from the result with DDIM; :func:`save_grid` and
:func:`plot_losses` draw what the model card shows.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from torch import nn
from tqdm import tqdm

from mdnet.models.config import get_config
from mdnet.training import distributed as dist


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


def fit(accelerator: Accelerator, name: str, objective: nn.Module, data: dist.DrawDataset,
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
        dist.debug_record(accelerator, job=name, epoch=epoch + 1, samples=seen)
        epoch += 1
    bar.close()
    save()
    model = accelerator.unwrap_model(model)
    model.eval()
    return losses, model


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
