"""Configuration dataclasses and named presets.

A config is plain data: it round-trips through ``to_dict``/``from_dict`` (and
the checkpoint's ``config.json``), so a checkpoint alone rebuilds its model.

Presets (see :func:`get_config`):

- ``tiny``: the CPU model the app ships: a latent-diffusion prior over the
  pretrained TAEF2 autoencoder's latents (64 px faces, a small U-Net pretrained
  here), and a 192-wide, 2-block Vim on a MobileNetV2 stem.
- ``tiny-sface``: ``tiny`` with the SFace face-recognition network (OpenCV Zoo) up to
  its stride-8 map as the Vim stem (the stem probe's best features); a candidate.
- ``tiny-sface-id``: ``tiny-sface`` whose class token also carries SFace's identity embedding of the
  face (a frozen SFace on the ArcFace crop; the stem probe: embedding + stride-8 features beat either).
- ``tiny-vae``: the first shipped model's recipe (its prior's VAE and U-Net both
  trained here on 3300 faces at 64 px); kept for the ablation table.
- ``paper``: the published setting (Stable Diffusion 1.5 U-Net + VAE by hub id,
  Vim-small). Needs internet once and, in practice, a GPU.
- ``micro``: a very small model for tests and smoke runs; ``micro-taef2`` the same
  over a TAEF2 prior (random TAEF2 weights unless loaded).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Stable Diffusion's training noise schedule (diffusers DDPMScheduler arguments).
SD_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
}


class ConfigError(ValueError):
    """A configuration that cannot describe a model (unknown keys, bad values)."""


@dataclass
class PreprocessConfig:
    """How an aligned face becomes the model's input tensor (travels with the checkpoint)."""

    image_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass
class PriorConfig:
    """The frozen generative-prior stream (encoder half of a diffusion U-Net).

    ``source="config"`` builds ``UNet2DConditionModel(**unet)`` locally (weights come from the
    checkpoint) with its autoencoder: ``autoencoder="vae"`` an ``AutoencoderKL(**vae)``,
    ``autoencoder="taef2"`` the pretrained TAEF2 encoder (:mod:`mdnet.models.taef2`; 32 latent
    channels at 1/8 of the side, latents normalised as ``(z - latent_shift) * latent_scale``).
    ``source="pretrained"`` loads U-Net and VAE with ``from_pretrained(pretrained)``, a hub id or a
    local diffusers folder with ``unet/`` and ``vae/`` subfolders.
    """

    source: str = "config"
    pretrained: str | None = None
    autoencoder: str = "vae"       # "vae" (AutoencoderKL) or "taef2" (source="config" only)
    latent_shift: float = 0.0      # taef2: mean of the training latents ...
    latent_scale: float = 1.0      # ... and 1 / their std (set by `mdnet pretrain-prior`)
    unet: dict[str, Any] = field(default_factory=dict)
    vae: dict[str, Any] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=lambda: dict(SD_SCHEDULER))
    image_size: int = 128          # the face is resized to this before the VAE
    timestep: int = 1              # VPD's choice: a clean latent read at t=1 ...
    add_noise: bool = False        # ... without noise, so scores are deterministic
    noise_seed: int = 0            # fixed noise draw when add_noise is on
    prompt_length: int = 8         # tokens of the stored empty-prompt embedding (source=config)


@dataclass
class VimConfig:
    """Vision Mamba stream (Zhu et al. 2024, bidirectional "v2" blocks)."""

    patch_size: int = 16
    stem: str = "patch"            # "patch": one strided conv (Vim); "mobilenet_v2": its first 14 layers;
                                   # "sface": SFace to stride 8 on the ArcFace-realigned crop (224 px, p=16)
    embed_dim: int = 192
    depth: int = 12
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int = 0               # 0 means ceil(embed_dim / 16), as Mamba does
    divide_out: bool = True        # halve the sum of the two directions
    drop_path: float = 0.0
    identity: bool = False         # sface stem only: add SFace's 128-d identity embedding of the face (a frozen
                                   # copy of SFace on the ArcFace crop), projected, to the class token

    @property
    def resolved_dt_rank(self) -> int:
        return self.dt_rank or math.ceil(self.embed_dim / 16)


@dataclass
class FusionConfig:
    """Cross-attention fusion: Vim tokens query the multi-scale U-Net tokens."""

    dim: int = 192
    heads: int = 4
    layers: int = 2
    mlp_ratio: float = 2.0
    dropout: float = 0.0
    reverse: bool = False          # also let the U-Net tokens attend to the Vim tokens
    prior_summary: bool = False    # the head also reads the U-Net features pooled, not only through Vim queries


@dataclass
class MDNetConfig:
    name: str = "tiny"
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    vim: VimConfig = field(default_factory=VimConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    head_hidden: int = 256
    head_dropout: float = 0.1
    score_range: tuple[float, float] = (1.0, 5.0)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MDNetConfig:
        return _from_dict(cls, data, "config")


def _from_dict(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown} for {cls.__name__}")
    kwargs = {}
    for name, value in data.items():
        default = fields[name].default_factory() if callable(fields[name].default_factory) else fields[name].default
        if dataclasses.is_dataclass(default):
            value = _from_dict(type(default), value, f"{where}.{name}")
        elif isinstance(default, tuple):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def _tiny_prior() -> PriorConfig:
    # A miniature latent-diffusion model that a 2-core CPU can pretrain in minutes:
    # the VAE turns a 64 px face into a 4 x 16 x 16 latent; the U-Net has SD's
    # block types (two cross-attention levels, then a plain one) at 1/10 of its width.
    return PriorConfig(
        source="config",
        image_size=64,
        prompt_length=8,
        vae={
            "in_channels": 3,
            "out_channels": 3,
            "down_block_types": ["DownEncoderBlock2D"] * 3,
            "up_block_types": ["UpDecoderBlock2D"] * 3,
            "block_out_channels": [32, 64, 64],
            "layers_per_block": 1,
            "latent_channels": 4,
            "norm_num_groups": 16,
            "sample_size": 64,
            "scaling_factor": 1.0,
        },
        unet={
            "sample_size": 16,
            "in_channels": 4,
            "out_channels": 4,
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            "block_out_channels": [32, 64, 128],
            "layers_per_block": 1,
            "cross_attention_dim": 64,
            "attention_head_dim": 8,
            "norm_num_groups": 16,
        },
    )


def _taef2_prior() -> PriorConfig:
    # The pretrained TAEF2 encoder turns a 64 px face into a 32 x 8 x 8 latent; a U-Net with two
    # cross-attention levels (8 -> 4 px) is pretrained on those latents by `mdnet pretrain-prior`.
    # 64 px because TAEF2 is dense (64 channels at full resolution: 1.9 GFLOP a face at 64 px,
    # 4.3 at 96, 7.7 at 128) and the mirror-averaged score must stay within 150 ms on a laptop CPU;
    # a ridge probe on its 64 px latents already predicts the score (validation PC 0.82).
    return PriorConfig(
        source="config",
        autoencoder="taef2",
        image_size=64,
        prompt_length=8,
        unet={
            "sample_size": 8,
            "in_channels": 32,
            "out_channels": 32,
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            "block_out_channels": [64, 128],
            "layers_per_block": 2,
            "cross_attention_dim": 64,
            "attention_head_dim": 8,
            "norm_num_groups": 32,
        },
    )


def _micro_prior() -> PriorConfig:
    prior = _tiny_prior()
    prior.image_size = 32
    prior.prompt_length = 4
    prior.vae.update(block_out_channels=[8, 16], down_block_types=["DownEncoderBlock2D"] * 2,
                     up_block_types=["UpDecoderBlock2D"] * 2, norm_num_groups=4, sample_size=32)
    prior.unet.update(sample_size=16, block_out_channels=[16, 32, 32], cross_attention_dim=16,
                      attention_head_dim=4, norm_num_groups=8)
    return prior


def _micro_taef2_prior() -> PriorConfig:
    # The TAEF2 encoder at its real width on 32 px faces (4 x 4 latents), a very small U-Net: for tests.
    prior = _taef2_prior()
    prior.image_size = 32
    prior.prompt_length = 4
    prior.unet.update(sample_size=4, block_out_channels=[16, 32], layers_per_block=1, cross_attention_dim=16,
                      attention_head_dim=4, norm_num_groups=8)
    return prior


def _paper_prior() -> PriorConfig:
    # Stable Diffusion 1.5 (the community mirror of runwayml/stable-diffusion-v1-5).
    return PriorConfig(
        source="pretrained",
        pretrained="stable-diffusion-v1-5/stable-diffusion-v1-5",
        image_size=512,
        prompt_length=77,
    )


PRESETS = {
    "tiny": lambda: MDNetConfig(
        name="tiny",
        prior=_taef2_prior(),
        vim=VimConfig(stem="mobilenet_v2", embed_dim=192, depth=2),
        fusion=FusionConfig(dim=192, heads=4, layers=2),
    ),
    "tiny-sface": lambda: MDNetConfig(
        name="tiny-sface",
        prior=_taef2_prior(),
        vim=VimConfig(stem="sface", embed_dim=192, depth=2),
        fusion=FusionConfig(dim=192, heads=4, layers=2),
    ),
    "tiny-sface-id": lambda: MDNetConfig(
        name="tiny-sface-id",
        prior=_taef2_prior(),
        vim=VimConfig(stem="sface", embed_dim=192, depth=2, identity=True),
        fusion=FusionConfig(dim=192, heads=4, layers=2),
    ),
    "tiny-vae": lambda: MDNetConfig(
        name="tiny-vae",
        prior=_tiny_prior(),
        vim=VimConfig(stem="mobilenet_v2", embed_dim=192, depth=2),
        fusion=FusionConfig(dim=192, heads=4, layers=2),
    ),
    "paper": lambda: MDNetConfig(
        name="paper",
        prior=_paper_prior(),
        vim=VimConfig(embed_dim=384, depth=24),
        fusion=FusionConfig(dim=384, heads=8, layers=2),
        head_hidden=512,
    ),
    "micro": lambda: MDNetConfig(
        name="micro",
        preprocess=PreprocessConfig(image_size=64),
        prior=_micro_prior(),
        vim=VimConfig(patch_size=16, embed_dim=32, depth=2, d_state=4),
        fusion=FusionConfig(dim=32, heads=2, layers=1),
        head_hidden=32,
        head_dropout=0.0,
    ),
    "micro-taef2": lambda: dataclasses.replace(PRESETS["micro"](), name="micro-taef2", prior=_micro_taef2_prior()),
}


def get_config(name: str, **overrides: Any) -> MDNetConfig:
    """A fresh copy of a named preset; ``overrides`` replace top-level fields."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    cfg = copy.deepcopy(PRESETS[name]())
    return dataclasses.replace(cfg, **overrides) if overrides else cfg
