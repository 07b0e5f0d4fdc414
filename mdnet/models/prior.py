"""Generative-prior stream: the frozen encoder half of a diffusion U-Net.

A face (pixels in [0, 1]) is resized to ``cfg.image_size``, encoded by the
autoencoder to a latent (a VAE: the distribution's mean, times its scaling factor;
TAEF2: its latent, shifted and scaled by ``cfg.latent_shift`` / ``cfg.latent_scale``),
optionally noised to ``cfg.timestep``, and passed through the U-Net's
``conv_in``, time embedding, down blocks and mid block with a stored
empty-prompt embedding. The output of every down block and of the mid block is
returned: a list of feature maps from fine to coarse.

The same class serves the published setting (Stable Diffusion 1.5 by hub id)
and the small local configurations: a diffusers ``UNet2DConditionModel`` over
the latents of an ``AutoencoderKL`` or of the pretrained TAEF2 encoder
(:mod:`mdnet.models.taef2`, ``cfg.autoencoder="taef2"``). Only the modules the
encoder read needs are kept (the U-Net's up blocks and the decoder are dropped).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from torch import nn

from mdnet.models.config import PriorConfig
from mdnet.models.taef2 import DOWNSCALE as TAEF2_DOWNSCALE
from mdnet.models.taef2 import LATENT_CHANNELS as TAEF2_CHANNELS
from mdnet.models.taef2 import TAEF2Encoder

AUTOENCODERS = ("vae", "taef2")


def empty_prompt_embedding(pretrained: str) -> torch.Tensor:
    """Encode the empty prompt with the pipeline's own CLIP text encoder: (1, 77, dim).

    Needs ``transformers`` (``pip install -r requirements-gpu.txt``); only run
    when a prior is first built from a pretrained pipeline, never at inference
    from a checkpoint (the embedding is stored there).
    """
    try:
        from transformers import CLIPTextModel, CLIPTokenizer
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "building the prior from a pretrained pipeline needs 'transformers' to encode "
            "the empty prompt once: pip install transformers"
        ) from err
    tokenizer = CLIPTokenizer.from_pretrained(pretrained, subfolder="tokenizer")
    encoder = CLIPTextModel.from_pretrained(pretrained, subfolder="text_encoder")
    ids = tokenizer(
        "", padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        return encoder(ids)[0].float()


class DiffusionPrior(nn.Module):
    """Frozen U-Net encoder features of a face.

    ``forward(pixels)``: pixels (b, 3, h, w) in [0, 1] -> list of feature maps
    ``[(b, c_i, h_i, w_i)]``, one per down block, then the mid block's.
    Parameters never receive gradients; the input does (for attributions).
    """

    def __init__(
        self,
        cfg: PriorConfig,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL | TAEF2Encoder,
        prompt_embeds: torch.Tensor,
    ):
        """``vae``: the autoencoder ``cfg.autoencoder`` names (an ``AutoencoderKL`` or a ``TAEF2Encoder``)."""
        super().__init__()
        unsupported = [
            name
            for name in ("class_embedding", "add_embedding", "encoder_hid_proj")
            if getattr(unet, name, None) is not None
        ]
        if unsupported:
            raise ValueError(f"the prior reads plain text-conditioned U-Nets (SD 1.x/2.x); this one has {unsupported}")
        self.cfg = copy.deepcopy(cfg)  # not shared with the caller
        # U-Net encoder half.
        self.conv_in = unet.conv_in
        self.time_proj = unet.time_proj
        self.time_embedding = unet.time_embedding
        self.down_blocks = unet.down_blocks
        self.mid_block = unet.mid_block
        # Autoencoder encoder half.
        expected = TAEF2Encoder if cfg.autoencoder == "taef2" else AutoencoderKL
        if cfg.autoencoder not in AUTOENCODERS or not isinstance(vae, expected):
            raise ValueError(f"prior autoencoder {cfg.autoencoder!r} (one of {AUTOENCODERS}) does not match the "
                             f"module given ({type(vae).__name__})")
        if cfg.autoencoder == "taef2":
            self.vae_encoder, self.quant_conv, self.taef2_encoder = None, None, vae
            self.latent_channels, downscale = TAEF2_CHANNELS, TAEF2_DOWNSCALE
            self.scaling_factor, self.shift_factor = float(cfg.latent_scale), float(cfg.latent_shift)
        else:
            self.vae_encoder, self.taef2_encoder = vae.encoder, None
            self.quant_conv = vae.quant_conv if getattr(vae.config, "use_quant_conv", True) else None
            self.latent_channels = vae.config.latent_channels
            downscale = 2 ** (len(vae.config.block_out_channels) - 1)
            self.scaling_factor = float(vae.config.scaling_factor)
            self.shift_factor = float(getattr(vae.config, "shift_factor", None) or 0.0)

        self.register_buffer("prompt_embeds", prompt_embeds.detach().float().clone())
        scheduler = DDPMScheduler(**cfg.scheduler)
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.float().clone(), persistent=False)
        channels = list(unet.config.block_out_channels)
        self.feature_channels = channels + ([channels[-1]] if self.mid_block is not None else [])
        # Spatial size of each feature map: the autoencoder divides the side by `downscale`,
        # each U-Net down block but the last halves it again.
        side = cfg.image_size // downscale
        self.feature_shapes = []
        for i in range(len(channels)):
            side = side // 2 if i < len(channels) - 1 else side
            self.feature_shapes.append((side, side))
        if self.mid_block is not None:
            self.feature_shapes.append((side, side))
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_config(cls, cfg: PriorConfig, prompt_embeds: torch.Tensor | None = None) -> DiffusionPrior:
        """Build the prior described by ``cfg`` (random weights for ``source="config"``).

        ``prompt_embeds`` skips encoding the empty prompt (checkpoints store it).
        """
        if cfg.autoencoder not in AUTOENCODERS:
            raise ValueError(f"unknown prior autoencoder {cfg.autoencoder!r}; use one of {AUTOENCODERS}")
        if cfg.source == "config":
            if not cfg.unet or (cfg.autoencoder == "vae" and not cfg.vae):
                raise ValueError("prior source 'config' needs a 'unet' config dict (and a 'vae' one for autoencoder "
                                 "'vae')")
            unet = UNet2DConditionModel(**cfg.unet)
            # TAEF2's published weights come from its files (training) or from the checkpoint.
            vae = TAEF2Encoder() if cfg.autoencoder == "taef2" else AutoencoderKL(**cfg.vae)
            if prompt_embeds is None:
                # A null condition: the local prior is trained unconditionally with it.
                prompt_embeds = torch.zeros(1, cfg.prompt_length, unet.config.cross_attention_dim)
        elif cfg.source == "pretrained":
            if cfg.autoencoder != "vae":
                raise ValueError("prior source 'pretrained' reads a diffusers pipeline's own VAE; autoencoder "
                                 f"{cfg.autoencoder!r} needs source 'config'")
            if not cfg.pretrained:
                raise ValueError("prior source 'pretrained' needs 'pretrained' (a hub id or a local folder)")
            unet = UNet2DConditionModel.from_pretrained(cfg.pretrained, subfolder="unet")
            vae = AutoencoderKL.from_pretrained(cfg.pretrained, subfolder="vae")
            if prompt_embeds is None:
                prompt_embeds = empty_prompt_embedding(cfg.pretrained)
        else:
            raise ValueError(f"unknown prior source {cfg.source!r}; use 'config' or 'pretrained'")
        return cls(cfg, unet, vae, prompt_embeds)

    def train(self, mode: bool = True) -> DiffusionPrior:
        """The prior is frozen: it stays in eval mode whatever the parent does."""
        return super().train(False)

    def encode_latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (b, 3, h, w) in [0, 1] -> scaled latent (b, c, s/f, s/f)."""
        size = self.cfg.image_size
        if pixels.shape[-2:] != (size, size):
            pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        if self.taef2_encoder is not None:
            return (self.taef2_encoder(pixels) - self.shift_factor) * self.scaling_factor
        moments = self.vae_encoder(pixels * 2.0 - 1.0)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean = moments[:, : self.latent_channels]
        return (mean - self.shift_factor) * self.scaling_factor

    def noised(self, latents: torch.Tensor) -> torch.Tensor:
        """The latent at ``cfg.timestep``: unchanged unless ``cfg.add_noise`` (fixed seed)."""
        if not self.cfg.add_noise:
            return latents
        generator = torch.Generator(device="cpu").manual_seed(self.cfg.noise_seed)
        noise = torch.randn(latents.shape[1:], generator=generator).to(latents)
        alpha_bar = self.alphas_cumprod[self.cfg.timestep].to(latents)
        return alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise

    def unet_features(self, latents: torch.Tensor) -> list[torch.Tensor]:
        """Scaled latent (b, c, h, w) -> [down block outputs..., mid block output]."""
        batch = latents.shape[0]
        timesteps = torch.full((batch,), self.cfg.timestep, device=latents.device, dtype=torch.long)
        temb = self.time_embedding(self.time_proj(timesteps).to(latents.dtype))
        context = self.prompt_embeds.to(latents.dtype).expand(batch, -1, -1)
        sample = self.conv_in(latents)
        features = []
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                sample, _ = block(hidden_states=sample, temb=temb, encoder_hidden_states=context)
            else:
                sample, _ = block(hidden_states=sample, temb=temb)
            features.append(sample)
        if self.mid_block is not None:
            if getattr(self.mid_block, "has_cross_attention", False):
                sample = self.mid_block(sample, temb, encoder_hidden_states=context)
            else:
                sample = self.mid_block(sample, temb)
            features.append(sample)
        return features

    def forward(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        return self.unet_features(self.noised(self.encode_latents(pixels)))
