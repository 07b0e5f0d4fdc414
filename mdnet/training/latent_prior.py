"""Pretrain the prior's U-Net on TAEF2 latents (presets whose prior has ``autoencoder="taef2"``).

The autoencoder is not trained here: TAEF2 (:mod:`mdnet.models.taef2`, pretrained, MIT) is frozen.
The faces (the SCUT-FBP5500 training part plus unlabeled in-the-wild faces) are encoded once and
cached (:mod:`mdnet.training.latents`); the latents are normalised to zero mean and unit variance
(one shift and one scale for all channels, as FLUX's ``shift_factor`` / ``scaling_factor``); then
the ``UNet2DConditionModel`` of the preset learns DDPM noise prediction on them with Stable
Diffusion's noise schedule and a fixed all-zero "empty prompt" (unconditional). The state is saved
every few minutes and at the end, so a killed run resumes at its step (``--resume``).

Writes ``OUTPUT/unet`` (diffusers folder), ``OUTPUT/prior.json`` (autoencoder, image size, latent
shift / scale, the TAEF2 files' folder and hashes: what ``mdnet train --prior OUTPUT`` reads),
``OUTPUT/losses.json``, ``OUTPUT/losses.png`` and ``OUTPUT/samples.png`` (faces the prior draws from
noise, DDIM 50 steps, decoded by the TAEF2 decoder: synthetic, no dataset image)::

    mdnet pretrain-prior --data-root ../shared/data/scut-fbp5500 --output runs/prior --unet-steps 6000
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers import UNet2DConditionModel

from mdnet.models.config import get_config
from mdnet.models.taef2 import DECODER_FILE, ENCODER_FILE, SHA256, TAEF2, TAEF2Encoder, load_weights
from mdnet.training import distributed as dist
from mdnet.training.diffusion import plot_losses, sample_faces, save_grid, train_unet
from mdnet.training.latents import FaceList, cached_latents

PRIOR_FILE = "prior.json"


def latent_statistics(latents: torch.Tensor) -> tuple[float, float]:
    """(shift, scale) that make ``(latents - shift) * scale`` zero-mean and unit-variance over all values."""
    return float(latents.mean()), float(1.0 / latents.std())


def read_prior_info(folder: str | Path) -> dict | None:
    """The ``prior.json`` a TAEF2 prior pretraining wrote in ``folder``, or None (a VAE prior's folder)."""
    path = Path(folder) / PRIOR_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def load_taef2_encoder(folder: str | Path, check_sha256: bool = True) -> TAEF2Encoder:
    """The published TAEF2 encoder from ``folder``, strictly loaded (and its sha256 checked)."""
    encoder = TAEF2Encoder()
    load_weights(encoder, Path(folder) / ENCODER_FILE, SHA256[ENCODER_FILE] if check_sha256 else None)
    return encoder.requires_grad_(False).eval()


def pretrain_on_latents(accelerator: Accelerator, faces: FaceList, output: Path, preset: str = "tiny",
                        unet_steps: int = 6000, batch_size: int = 64, lr: float = 5e-4, seed: int = 0,
                        cache_dir: str | Path = "cache", taef2_dir: str | Path | None = None,
                        resume: bool = False, save_every_s: float = 300.0, check_sha256: bool = True) -> dict:
    """Encode ``faces`` with TAEF2 (cached), then train the preset's U-Net on the normalised latents.

    ``batch_size`` is the U-Net's global batch. Only the main process writes ``output``.
    """
    from mdnet.models.taef2 import DEFAULT_TAEF2_DIR

    cfg = get_config(preset).prior
    if cfg.autoencoder != "taef2":
        raise ValueError(f"preset {preset!r} has a {cfg.autoencoder!r} prior; this pretraining is for 'taef2' priors")
    taef2_dir = Path(taef2_dir or DEFAULT_TAEF2_DIR)
    torch.manual_seed(seed)  # the same initial U-Net on every process
    unet = UNet2DConditionModel(**cfg.unet)
    context = torch.zeros(1, cfg.prompt_length, unet.config.cross_attention_dim)
    encoder = load_taef2_encoder(taef2_dir, check_sha256)
    start = time.time()
    latents = cached_latents(accelerator, encoder, faces, cfg.image_size, cache_dir, SHA256[ENCODER_FILE])
    latent_minutes = (time.time() - start) / 60
    if tuple(latents.shape[1:]) != (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size):
        raise ValueError(f"latents {tuple(latents.shape[1:])} do not fit the preset's U-Net "
                         f"({unet.config.in_channels} channels, side {unet.config.sample_size})")
    shift, scale = latent_statistics(latents)
    state_dir = Path(output) / "state"
    if not resume and accelerator.is_main_process:
        import shutil

        for folder in (state_dir, state_dir.with_name("state.old")):
            shutil.rmtree(folder, ignore_errors=True)
    accelerator.wait_for_everyone()
    dist.seed_per_process(accelerator, seed)
    t0 = time.time()
    losses = train_unet(accelerator, unet, (latents - shift) * scale, context.to(accelerator.device), unet_steps,
                        batch_size, lr, seed * 1000 + 1, state_dir=state_dir, save_every_s=save_every_s)
    summary = {
        "autoencoder": "taef2", "image_size": cfg.image_size, "faces": len(faces), "labelled_faces": len(faces.scut),
        "unlabeled_faces": len(faces.unlabeled), "unet_steps": unet_steps, "batch_size": batch_size,
        "processes": accelerator.num_processes, "latent_shift": shift, "latent_scale": scale,
        "latent_minutes": latent_minutes, "unet_minutes_this_run": (time.time() - t0) / 60,
        "unet_final_loss": sum(losses[-100:]) / len(losses[-100:]),
        "taef2_dir": str(taef2_dir), "taef2_sha256": {n: SHA256[n] for n in (ENCODER_FILE, DECODER_FILE)},
    }
    if accelerator.is_main_process:
        output = Path(output)
        output.mkdir(parents=True, exist_ok=True)
        unet = unet.cpu()
        unet.save_pretrained(output / "unet")
        tae = TAEF2.from_files(taef2_dir, check_sha256)
        save_grid(sample_faces(unet, lambda z: tae.decode(z / scale + shift), context, seed=seed),
                  output / "samples.png")
        plot_losses({"U-Net": losses}, output / "losses.png")
        (output / "losses.json").write_text(json.dumps({**summary, "unet": losses}) + "\n")
        (output / PRIOR_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        dist.debug_record(accelerator, wrote=[str(output / n) for n in ("unet", "samples.png", "losses.png",
                                                                          "losses.json", PRIOR_FILE)])
    accelerator.wait_for_everyone()
    return summary
