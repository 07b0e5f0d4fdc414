"""The generative-prior stream: multi-scale features, frozen, same class for local and pretrained U-Nets."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from pipeline_fixture import PROMPT_LENGTH, make_pipeline_folder

from mdnet.models.config import get_config
from mdnet.models.prior import DiffusionPrior


def pixels(batch=2, size=32, seed=0):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def prior():
    torch.manual_seed(0)
    return DiffusionPrior.from_config(get_config("micro").prior)


def test_returns_each_down_block_and_the_mid_block(prior):
    feats = prior(pixels())
    unet_cfg = get_config("micro").prior.unet
    assert len(feats) == len(unet_cfg["down_block_types"]) + 1
    assert [f.shape[1] for f in feats] == prior.feature_channels
    assert [tuple(f.shape[-2:]) for f in feats] == prior.feature_shapes
    # Finest first: each down block but the last halves the map.
    assert feats[0].shape[-1] == 2 * feats[1].shape[-1]


def test_tiny_preset_feature_shapes_match_a_forward_pass():
    torch.manual_seed(0)
    prior = DiffusionPrior.from_config(get_config("tiny").prior)
    feats = prior(pixels(1, 128))
    assert [tuple(f.shape[1:]) for f in feats] == [(c, h, w) for c, (h, w) in
                                                     zip(prior.feature_channels, prior.feature_shapes, strict=True)]


def test_frozen_but_differentiable_in_its_input(prior):
    assert not any(p.requires_grad for p in prior.parameters())
    prior.train()
    assert not prior.training and not any(m.training for m in prior.modules())
    x = pixels().requires_grad_()
    sum(f.sum() for f in prior(x)).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in prior.parameters())


def test_only_the_encoder_half_is_kept(prior):
    names = {n.split(".")[0] for n, _ in prior.named_parameters()}
    assert names == {"conv_in", "time_embedding", "down_blocks", "mid_block", "vae_encoder", "quant_conv"}


def test_deterministic_and_noise_is_seeded():
    torch.manual_seed(0)
    cfg = get_config("micro").prior
    clean = DiffusionPrior.from_config(cfg)
    x = pixels()
    assert all(torch.equal(a, b) for a, b in zip(clean(x), clean(x), strict=True))
    cfg.add_noise, cfg.timestep = True, 500
    noisy = DiffusionPrior.from_config(cfg)
    noisy.load_state_dict(clean.state_dict())
    a, b = noisy(x), noisy(x)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not torch.allclose(a[-1], clean(x)[-1])


def test_timestep_changes_the_features(prior):
    x = pixels()
    early = prior(x)[-1]
    prior.cfg.timestep = 900
    assert not torch.allclose(early, prior(x)[-1])


def test_pretrained_source_loads_a_diffusers_pipeline_folder(tmp_path):
    folder = make_pipeline_folder(tmp_path / "pipe")
    cfg = get_config("micro").prior
    cfg.source, cfg.pretrained = "pretrained", str(folder)
    prior = DiffusionPrior.from_config(cfg)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    assert torch.equal(prior.conv_in.weight, unet.conv_in.weight)
    assert torch.equal(prior.vae_encoder.conv_in.weight, AutoencoderKL.from_pretrained(folder, subfolder="vae")
                       .encoder.conv_in.weight)
    # The empty prompt was encoded once with the pipeline's own text encoder.
    assert prior.prompt_embeds.shape == (1, PROMPT_LENGTH, cfg.unet.get("cross_attention_dim", 16))
    assert prior.prompt_embeds.abs().sum() > 0
    assert len(prior(pixels())) == 4


def test_bad_prior_configs_are_refused():
    cfg = get_config("micro").prior
    cfg.source = "somewhere"
    with pytest.raises(ValueError, match="unknown prior source"):
        DiffusionPrior.from_config(cfg)
    cfg = get_config("micro").prior
    cfg.source, cfg.pretrained = "pretrained", None
    with pytest.raises(ValueError, match="needs 'pretrained'"):
        DiffusionPrior.from_config(cfg)
