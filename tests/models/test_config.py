"""Configs round-trip through plain dicts and refuse what they do not understand."""

from __future__ import annotations

import json

import pytest

from mdnet.models.config import PRESETS, ConfigError, MDNetConfig, get_config


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_json(name):
    cfg = get_config(name)
    again = MDNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


def test_paper_preset_is_the_published_setting():
    cfg = get_config("paper")
    assert cfg.prior.source == "pretrained" and "stable-diffusion-v1-5" in cfg.prior.pretrained
    assert (cfg.vim.embed_dim, cfg.vim.depth, cfg.vim.d_state, cfg.vim.expand) == (384, 24, 16, 2)


def test_get_config_returns_independent_copies():
    a = get_config("tiny")
    a.prior.unet["block_out_channels"].append(1)
    assert get_config("tiny").prior.unet["block_out_channels"] == [64, 128]


def test_tiny_reads_taef2_latents_and_tiny_vae_keeps_the_first_recipe():
    tiny, first = get_config("tiny").prior, get_config("tiny-vae").prior
    assert (tiny.autoencoder, tiny.image_size) == ("taef2", 64)
    assert (tiny.unet["in_channels"], tiny.unet["sample_size"]) == (32, 8)
    assert (first.autoencoder, first.vae["latent_channels"]) == ("vae", 4)
    assert first.unet["block_out_channels"] == [32, 64, 128]
    # The shipped checkpoint's config (written before `autoencoder` existed) still reads as a VAE prior.
    data = get_config("tiny-vae").to_dict()
    for key in ("autoencoder", "latent_shift", "latent_scale"):
        del data["prior"][key]
    assert MDNetConfig.from_dict(data).prior.autoencoder == "vae"


def test_unknown_keys_and_presets_are_refused():
    data = get_config("micro").to_dict()
    data["vim"]["embed_dims"] = 3
    with pytest.raises(ConfigError, match=r"config\.vim: unknown keys \['embed_dims'\]"):
        MDNetConfig.from_dict(data)
    with pytest.raises(ConfigError, match="unknown preset"):
        get_config("huge")
    with pytest.raises(ConfigError, match="expected an object"):
        MDNetConfig.from_dict({"vim": 3})
