"""Checkpoints: bit-exact round trips, atomic saves, and clear refusals of bad files."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_model, faces
from pipeline_fixture import make_pipeline_folder, pretrained_config

import mdnet.models.checkpoint as ckpt
from mdnet.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mdnet.models.mdnet import MDNet


@pytest.fixture
def saved(tmp_path, calibrated):
    return calibrated, save_checkpoint(calibrated, tmp_path / "ckpt", metadata={"note": "test"})


def test_round_trip_is_bit_exact(saved):
    model, path = saved
    loaded = MDNet.from_pretrained(path)
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.cfg == model.cfg and not loaded.training
    x = faces(model, 2, seed=5)
    with torch.no_grad():
        for mode in ("full", "prior_only", "vim_only"):
            assert torch.equal(model(x, mode=mode).score, loaded(x, mode=mode).score)


def test_folder_layout_and_metadata(saved):
    _, path = saved
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    raw = json.loads((path / "config.json").read_text())
    assert raw["format"] == "mdnet" and raw["metadata"] == {"note": "test"}
    assert raw["model"]["preprocess"]["image_size"] == 64
    # Loading through a file inside the folder works too.
    assert isinstance(load_checkpoint(path / "config.json"), MDNet)


def test_save_is_atomic_and_keeps_other_files(tmp_path, monkeypatch):
    model = build_model()
    path = save_checkpoint(model, tmp_path / "ckpt")
    (path / "README.md").write_text("model card")
    before = (path / "model.safetensors").read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(build_model(seed=1), path)
    # The old checkpoint is intact and no partial folder is left behind.
    assert (path / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    monkeypatch.undo()
    save_checkpoint(build_model(seed=1), path)
    assert (path / "README.md").read_text() == "model card"
    assert (path / "model.safetensors").read_bytes() != before


def test_refuses_to_overwrite_a_folder_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "me.jpg").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="not empty"):
        save_checkpoint(build_model(), tmp_path / "photos")


def test_corrupt_weights_are_refused_naming_the_file(saved):
    _, path = saved
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors is corrupt or truncated"):
        load_checkpoint(path)


def test_truncated_weights_are_refused_even_without_a_checksum(saved):
    _, path = saved
    raw = json.loads((path / "config.json").read_text())
    del raw["weights"]["sha256"]
    (path / "config.json").write_text(json.dumps(raw))
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is not a readable safetensors file"):
        load_checkpoint(path)


def test_weights_that_do_not_match_the_config_are_refused(saved):
    _, path = saved
    raw = json.loads((path / "config.json").read_text())
    raw["model"]["vim"]["embed_dim"] = 48
    (path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=r"model\.safetensors does not match its config: .*shape mismatches"):
        load_checkpoint(path)
    raw["model"]["vim"]["embed_dim"] = 32
    raw["model"]["vim"]["depth"] = 3
    (path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=r"missing tensors \(e\.g\. \['vim\.blocks\.2"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "text,message",
    [
        ("{not json", r"config\.json is not valid JSON"),
        ('{"format": "other"}', r"config\.json is not an MD-Net checkpoint config"),
        ('{"format": "mdnet", "format_version": 99}', r"format version 99"),
        ('{"format": "mdnet", "format_version": 1, "model": {"vim": {"size": 1}}}', r"invalid model config"),
    ],
)
def test_bad_configs_are_refused_naming_the_file(saved, text, message):
    _, path = saved
    (path / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_missing_files_and_paths(saved, tmp_path):
    _, path = saved
    (path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors is missing"):
        load_checkpoint(path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"config\.json is missing"):
        load_checkpoint(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="no such folder, and it is not a hub id"):
        load_checkpoint(tmp_path / "nowhere" / "ckpt")


def test_hub_ids_are_downloaded_with_huggingface_hub(saved, monkeypatch):
    _, path = saved
    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None):
        calls.append((repo_id, revision, tuple(allow_patterns)))
        return str(path)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    model = load_checkpoint("someone/mdnet-fbp", revision="v1")
    assert isinstance(model, MDNet)
    (repo, revision, patterns), = calls
    assert (repo, revision) == ("someone/mdnet-fbp", "v1")
    import fnmatch

    # the weights, the config and every companion a checkpoint folder may hold come down with it
    for name in ("config.json", "model.safetensors", "README.md", "score_distribution.json",
                 "uncertainty.safetensors", "history.png"):
        assert any(fnmatch.fnmatch(name, p) for p in patterns), name

    def offline(*args, **kwargs):
        raise OSError("no internet")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(CheckpointError, match="could not fetch checkpoint 'someone/mdnet-fbp'.*no internet"):
        load_checkpoint("someone/mdnet-fbp")


def test_pretrained_prior_weights_stay_out_of_the_checkpoint(tmp_path):
    folder = make_pipeline_folder(tmp_path / "pipe")
    torch.manual_seed(0)
    model = MDNet(pretrained_config(folder)).eval()
    path = save_checkpoint(model, tmp_path / "ckpt")
    from safetensors.torch import load_file

    stored = load_file(path / "model.safetensors")
    prior_keys = [k for k in stored if k.startswith("prior.")]
    assert prior_keys == ["prior.prompt_embeds"]
    # Rebuilt from the pipeline (the hub, for real users) plus the stored tensors: identical.
    loaded = load_checkpoint(path)
    a, b = model.state_dict(), loaded.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    x = faces(model, 1)
    with torch.no_grad():
        assert torch.equal(model(x).score, loaded(x).score)


def test_the_frozen_sface_head_is_stored_in_half_precision_and_round_trips_exactly(tmp_path):
    from dataclasses import replace

    from safetensors.torch import load_file

    from mdnet.models.config import PreprocessConfig, VimConfig, get_config

    torch.manual_seed(0)
    micro = get_config("micro")
    cfg = replace(micro, preprocess=PreprocessConfig(image_size=224),
                  vim=VimConfig(stem="sface", patch_size=16, embed_dim=16, depth=1, d_state=4, identity=True))
    model = MDNet(cfg).eval()
    path = save_checkpoint(model, tmp_path / "ckpt")
    stored = load_file(path / "model.safetensors")
    head = [k for k in stored if k.startswith("vim.identity.sface.")]
    assert "vim.identity.sface.fc.weight" in head
    assert all(stored[k].dtype == torch.float16 for k in head if stored[k].is_floating_point())
    assert stored["vim.patch_embed.0.trunk.conv_1.conv.weight"].dtype == torch.float32
    loaded = MDNet.from_pretrained(path)
    a, b = model.state_dict(), loaded.state_dict()
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
