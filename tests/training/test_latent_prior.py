"""The TAEF2 prior: latents cached and reused, the U-Net pretrained (and resumed) on them, then loaded by training.

Faces come from the miniature SCUT-FBP5500 folder (tests/fake_scut.py) and a small folder of unlabeled
copies of the same public-domain face. The TAEF2 encoder has random weights unless ../shared holds the
published files (the tests that need them say so and skip).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fake_scut import astronaut_face, make_fake_scut

from mdnet.faces.scut import ScutFBP5500, stratified_split
from mdnet.faces.unlabeled import read_folder
from mdnet.models import taef2
from mdnet.models.checkpoint import load_checkpoint, save_checkpoint
from mdnet.models.taef2 import TAEF2Encoder
from mdnet.training import distributed as dist
from mdnet.training import latent_prior, latents
from mdnet.training.latents import FaceList, cached_latents, usable_unlabeled
from mdnet.training.train import build_model

HAVE_TAEF2 = all((taef2.DEFAULT_TAEF2_DIR / n).is_file() for n in (taef2.ENCODER_FILE, taef2.DECODER_FILE))


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> tuple[FaceList, str]:
    root = make_fake_scut(tmp_path_factory.mktemp("scut"), per_group=2)
    folder = tmp_path_factory.mktemp("unlabeled")
    for i in range(3):
        astronaut_face(200).rotate(5 * i).save(folder / f"{30 + i}_1_2_2017010400374097{i}.jpg", quality=90)
    cache = str(tmp_path_factory.mktemp("cache"))
    train, _ = stratified_split(ScutFBP5500(root).split("60-40/train"), 0.25, 0)
    unlabeled, rejected = usable_unlabeled(read_folder(folder), 224, cache)
    assert rejected == [] and len(unlabeled) == 3
    return FaceList(train, unlabeled), cache


def test_latents_are_cached_in_chunks_and_reused(faces, monkeypatch):
    face_list, cache = faces
    monkeypatch.setattr(latents, "CHUNK", 4)
    torch.manual_seed(0)
    encoder = TAEF2Encoder().eval()
    accelerator = dist.make_accelerator()
    z = cached_latents(accelerator, encoder, face_list, 32, cache, "sha-a")
    assert z.shape == (len(face_list), 32, 4, 4) and z.dtype == torch.float32
    folders = list((latents.Path(cache)).glob("taef2-latents-32-*"))
    assert len(folders) == 1 and len(list(folders[0].glob("chunk-*.npy"))) == -(-len(face_list) // 4)
    # The same faces again: read from the cache, the encoder is not run.
    monkeypatch.setattr(encoder, "forward", lambda x: pytest.fail("encoder ran although the latents are cached"))
    assert torch.equal(cached_latents(accelerator, encoder, face_list, 32, cache, "sha-a"), z)
    # A row is one face: the cached latent of face 0 is its encoding (float16 storage).
    crops = face_list.crops([0], 224, cache)
    with torch.no_grad():
        direct = TAEF2Encoder.forward(encoder, latents.resize_faces(crops, 32))
    assert torch.allclose(z[0], direct[0], atol=2e-2 * float(direct.abs().max()) + 1e-3)


def test_another_encoder_or_face_list_never_reuses_the_cache(faces):
    face_list, cache = faces
    names = face_list.names
    key = latents.cache_key(32, "sha-a", names)
    assert latents.cache_key(32, "sha-b", names) != key
    assert latents.cache_key(32, "sha-a", names[:-1]) != key
    assert latents.cache_key(64, "sha-a", names) != key


def test_latent_statistics_normalise():
    z = torch.randn(50, 32, 4, 4) * 3 + 2
    shift, scale = latent_prior.latent_statistics(z)
    normalised = (z - shift) * scale
    assert abs(float(normalised.mean())) < 1e-5 and float(normalised.std()) == pytest.approx(1.0, rel=1e-4)


@pytest.fixture(scope="module")
def pretrained(faces, tmp_path_factory, monkeypatch_module):
    face_list, cache = faces
    monkeypatch_module.setattr(latent_prior, "load_taef2_encoder", lambda folder, check=True: TAEF2Encoder().eval())
    monkeypatch_module.setattr(latent_prior.TAEF2, "from_files", classmethod(lambda cls, *a, **k: cls().eval()))
    out = tmp_path_factory.mktemp("prior")
    torch.manual_seed(0)
    summary = latent_prior.pretrain_on_latents(dist.make_accelerator(), face_list, out, "micro-taef2", unet_steps=4,
                                               batch_size=4, cache_dir=cache, save_every_s=0.0)
    return out, summary


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_pretraining_writes_a_prior_that_training_loads(pretrained, monkeypatch):
    out, summary = pretrained
    for name in ("unet", "samples.png", "losses.png", "losses.json", latent_prior.PRIOR_FILE):
        assert (out / name).exists(), name
    info = json.loads((out / latent_prior.PRIOR_FILE).read_text())
    assert info["autoencoder"] == "taef2" and info["image_size"] == 32 and info["unlabeled_faces"] == 3
    assert len(json.loads((out / "losses.json").read_text())["unet"]) == 4
    # Training builds MD-Net on it: the latent statistics travel in the config, the U-Net weights load.
    from mdnet.training import train

    monkeypatch.setattr(train, "load_taef2_encoder", lambda folder: TAEF2Encoder().eval())
    model = build_model("micro-taef2", str(out), None)
    assert model.cfg.prior.latent_shift == summary["latent_shift"]
    assert model.cfg.prior.latent_scale == summary["latent_scale"]
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(out, subfolder="unet")
    assert torch.equal(model.prior.conv_in.weight, unet.conv_in.weight)


def test_a_vae_preset_refuses_a_taef2_prior_folder_and_back(pretrained, tmp_path):
    out, _ = pretrained
    with pytest.raises(OSError):
        build_model("micro", str(out), None)  # no vae/ subfolder
    with pytest.raises(ValueError, match="not a TAEF2 prior"):
        build_model("micro-taef2", str(tmp_path), None)


def test_the_unet_resumes_at_its_step(faces, tmp_path, monkeypatch):
    """Four steps in one go == two steps, a kill, then a resume for the other two."""
    from diffusers import UNet2DConditionModel

    from mdnet.models.config import get_config
    from mdnet.training.diffusion import train_unet

    cfg = get_config("micro-taef2").prior
    z = torch.randn(12, 32, 4, 4, generator=torch.Generator().manual_seed(0))
    context = torch.zeros(1, cfg.prompt_length, cfg.unet["cross_attention_dim"])

    def run(state, steps_before_kill=None):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**cfg.unet)
        accelerator = dist.make_accelerator()
        if steps_before_kill is not None:
            real_step = dist.optimizer_step
            calls = {"n": 0}

            def step(*args, **kwargs):
                if calls["n"] == steps_before_kill:
                    raise KeyboardInterrupt
                calls["n"] += 1
                return real_step(*args, **kwargs)

            monkeypatch.setattr(dist, "optimizer_step", step)
        try:
            return train_unet(accelerator, unet, z, context, 4, 4, 1e-3, 7, state_dir=state, save_every_s=0.0), unet
        finally:
            monkeypatch.undo()

    straight, unet_a = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", steps_before_kill=2)
    assert json.loads((tmp_path / "b" / dist.PROGRESS_FILE).read_text())["losses"] == straight[:2]
    resumed, unet_b = run(tmp_path / "b")
    assert np.allclose(resumed, straight, rtol=1e-5)
    for p, q in zip(unet_a.parameters(), unet_b.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)


def test_a_taef2_model_round_trips_through_a_checkpoint(tmp_path):
    from mdnet.models.mdnet import MDNet

    torch.manual_seed(0)
    model = MDNet("micro-taef2").eval()
    model.cfg.prior.latent_shift, model.cfg.prior.latent_scale = 0.25, 1.5
    model.prior.shift_factor, model.prior.scaling_factor = 0.25, 1.5
    x = torch.rand(2, 3, 64, 64)
    save_checkpoint(model, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt").eval()
    assert any(k.startswith("prior.taef2_encoder.") for k in loaded.state_dict())
    assert loaded.prior.scaling_factor == 1.5 and loaded.prior.shift_factor == 0.25
    with torch.no_grad():
        assert torch.allclose(model(model.preprocess(x)).score, loaded(loaded.preprocess(x)).score, atol=1e-6)


@pytest.mark.skipif(not HAVE_TAEF2, reason="the published TAEF2 files are not in ../shared/weights/taef2")
def test_the_published_encoder_loads_strictly_into_the_prior():
    encoder = latent_prior.load_taef2_encoder(taef2.DEFAULT_TAEF2_DIR)
    from mdnet.models.mdnet import MDNet

    model = MDNet("micro-taef2")
    model.prior.taef2_encoder.load_state_dict(encoder.state_dict(), strict=True)
    face = torch.from_numpy(np.array(astronaut_face(64))).permute(2, 0, 1)[None].float() / 255
    z = model.prior.encode_latents(face)
    assert z.shape == (1, 32, 4, 4) and torch.isfinite(z).all()
