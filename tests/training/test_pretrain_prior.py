"""The prior's pretraining writes a diffusers folder that MD-Net training then loads and freezes."""

from __future__ import annotations

import json

import torch
from diffusers import AutoencoderKL

from mdnet.training.pretrain_prior import encode_all, pretrain
from mdnet.training.train import build_model


def test_pretraining_writes_a_loadable_prior(tmp_path):
    torch.manual_seed(0)
    faces = (torch.rand(8, 3, 64, 64) * 255).to(torch.uint8)
    out = tmp_path / "prior"
    summary = pretrain(faces, out, "micro", vae_steps=3, unet_steps=3, batch_size=4)
    for name in ("vae", "unet", "samples.png", "losses.png", "losses.json"):
        assert (out / name).exists(), name
    logged = json.loads((out / "losses.json").read_text())
    assert len(logged["vae"]) == 3 and len(logged["unet"]) == 3
    # The latent scale makes the training latents unit-variance, as SD's 0.18215 does.
    vae = AutoencoderKL.from_pretrained(out, subfolder="vae")
    x = torch.nn.functional.interpolate(faces.float() / 127.5 - 1, size=(32, 32), mode="bilinear",
                                        antialias=True, align_corners=False)
    scaled = encode_all(vae, x) * vae.config.scaling_factor
    assert abs(scaled.std().item() - 1) < 1e-3
    assert summary["latent_scaling_factor"] == vae.config.scaling_factor
    # MD-Net training picks it up, frozen, with the new scale in its config.
    model = build_model("micro", str(out), None)
    assert model.cfg.prior.vae["scaling_factor"] == vae.config.scaling_factor
    assert torch.equal(model.prior.vae_encoder.conv_in.weight, vae.encoder.conv_in.weight)
    assert not any(p.requires_grad for p in model.prior.parameters())
