"""``mdnet pretrain-vim`` end to end on a miniature dataset: it learns, resumes (mid-epoch too), leaves the
validation faces out, writes a Vim that loads strictly, and gives the one-process result on two processes.

The faces: a fake SCUT-FBP5500 folder (``fake_scut``) and a fake unlabeled folder in UTKFace's naming, both
made from ``skimage.data.astronaut()`` (public domain), ``micro`` preset (64 px, 4 x 4 patches).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_scut import astronaut_face, make_fake_scut
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from mdnet.faces.scut import ScutFBP5500, stratified_split
from mdnet.models.config import VimConfig, get_config
from mdnet.models.vim import VisionMamba
from mdnet.training import distributed as dist
from mdnet.training import pretrain_vim

REPO = Path(__file__).resolve().parents[2]
UNLABELED = ("23_0_0_20170104003740977.jpg", "35_1_2_20170116174525125.jpg", "52_1_1_20170109150557335.jpg")
EPOCHS = 4
STEPS_PER_EPOCH = 4  # 15 SCUT training faces + 3 unlabeled ones, batch 4
LR = 3e-3
LOSS_ATOL = 1e-4  # per-step losses of runs that must agree up to float error


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = make_fake_scut(tmp_path_factory.mktemp("scut"), per_group=6)
    folder = tmp_path_factory.mktemp("unlabeled")
    face = np.asarray(astronaut_face(200), dtype=np.float32)
    for i, name in enumerate(UNLABELED):
        Image.fromarray(np.clip(face * (0.85 + 0.1 * i), 0, 255).astype(np.uint8)).save(folder / name, quality=90)
    Image.new("RGB", (200, 200), (90, 90, 90)).save(folder / "blank_wall.jpg")  # no face: dropped
    return root, folder, tmp_path_factory.mktemp("work")


def args(data, output: str, epochs: int = EPOCHS, *extra: str) -> list[str]:
    root, folder, work = data
    return ["--data-root", str(root), "--unlabeled", str(folder), "--preset", "micro", "--batch-size", "4",
            "--epochs", str(epochs), "--lr", str(LR), "--cache", str(work / "cache"), "--output",
            str(work / output), *extra]


def run_here(data, output: str, epochs: int = EPOCHS, *extra: str, record: str | None = None) -> dict:
    with pytest.MonkeyPatch.context() as mp:
        if record:
            mp.setenv(dist.DEBUG_RECORD_ENV, str(data[2] / record))
        return pretrain_vim.main(args(data, output, epochs, *extra))


def records(folder: Path, rank: int) -> list[dict]:
    path = folder / f"rank-{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def epoch_samples(folder: Path, rank: int) -> dict[int, list[str]]:
    return {r["epoch"]: r["samples"] for r in records(folder, rank) if "samples" in r}


def losses(data, output: str) -> list[float]:
    return json.loads((data[2] / output / "losses.json").read_text())["losses"]


def vim_close(a: Path, b: Path, atol: float) -> None:
    wa, wb = load_file(a / pretrain_vim.VIM_FILE), load_file(b / pretrain_vim.VIM_FILE)
    assert wa.keys() == wb.keys()
    worst = max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)
    assert worst <= atol, worst


@pytest.fixture(scope="module")
def reference(data):
    """The uninterrupted one-process run: 4 epochs of 4 steps of 4 faces."""
    return run_here(data, "ref", record="ref-record")


def test_the_loss_goes_down_and_the_outputs_are_written(data, reference):
    work = data[2]
    assert reference["faces"] == 18 and reference["scut_train"] == 15
    assert reference["unlabeled"] == 3 and reference["unlabeled_rejected"] == 1
    assert reference["steps_per_epoch"] == STEPS_PER_EPOCH and reference["hidden_patches"] == 8
    assert len(losses(data, "ref")) == EPOCHS * STEPS_PER_EPOCH
    first, last = reference["epochs"][0]["loss"], reference["epochs"][-1]["loss"]
    assert last < 0.8 * first, [e["loss"] for e in reference["epochs"]]
    for name in ("vim.safetensors", "losses.json", "losses.png", "reconstructions.png", "state/progress.json"):
        assert (work / "ref" / name).is_file(), name


def test_the_vim_loads_strictly_into_a_fresh_one(data, reference):
    path = data[2] / "ref" / pretrain_vim.VIM_FILE
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    cfg = VimConfig(**json.loads(meta["vim_config"]))
    assert cfg == get_config("micro").vim and meta["image_size"] == "64"
    vim = VisionMamba(cfg, int(meta["image_size"]))
    vim.load_state_dict(load_file(path), strict=True)
    assert vim(torch.rand(1, 3, 64, 64)).tokens.shape == (1, 17, cfg.embed_dim)


def test_only_training_faces_are_used(data, reference):
    root, _, work = data
    train, val = stratified_split(ScutFBP5500(root).split("60-40/train"), 0.1, 0)
    seen = epoch_samples(work / "ref-record", 0)
    assert sorted(seen) == list(range(1, EPOCHS + 1))
    for names in seen.values():
        assert len(names) == STEPS_PER_EPOCH * 4 and len(set(names)) == len(names)
        assert not set(names) & {s.name for s in val}
        assert set(names) <= {s.name for s in train} | set(UNLABELED)
    assert set(sum(seen.values(), [])) >= set(UNLABELED) and "blank_wall.jpg" not in sum(seen.values(), [])


def test_the_same_face_gets_the_same_mask_however_the_batch_is_split():
    draw = pretrain_vim.mask_draws((4, 4), 0.6, 2)
    one = list(dist.GlobalBatches(18, 4, seed=3, draw=draw))
    split = list(dist.GlobalBatches(18, 4, seed=3, draw=draw, shards=2))
    assert [d.index for d in one] == [d.index for d in split]
    assert all(torch.equal(a.aug[1], b.aug[1]) and a.aug[0] == b.aug[0] for a, b in zip(one, split, strict=True))
    assert all(int(d.aug[1].sum()) == 8 for d in one)


class Killed(Exception):
    pass


def kill_after(monkeypatch, steps: int) -> None:
    """Make the next run die (as a session cut off would) when it starts its optimizer step ``steps + 1``."""
    step, calls = dist.optimizer_step, []

    def dies(*a, **kw):
        if len(calls) == steps:
            monkeypatch.setattr(dist, "optimizer_step", step)
            raise Killed
        calls.append(1)
        return step(*a, **kw)

    monkeypatch.setattr(dist, "optimizer_step", dies)


def test_a_run_killed_after_an_epoch_resumes_from_its_end(data, reference, monkeypatch):
    kill_after(monkeypatch, 2 * STEPS_PER_EPOCH + 1)  # only the end-of-epoch saves (every 5 minutes)
    with pytest.raises(Killed):
        run_here(data, "by-epoch", EPOCHS)
    progress = json.loads((data[2] / "by-epoch" / "state" / "progress.json").read_text())
    assert (progress["epoch"], progress["epoch_step"]) == (2, 0)
    resumed = run_here(data, "by-epoch", EPOCHS, "--resume")
    assert [e["epoch"] for e in resumed["epochs"]] == list(range(1, EPOCHS + 1))
    assert losses(data, "by-epoch") == pytest.approx(losses(data, "ref"), abs=LOSS_ATOL)
    vim_close(data[2] / "by-epoch", data[2] / "ref", 1e-5)


def test_a_run_killed_mid_epoch_resumes_from_its_last_save(data, reference, monkeypatch):
    kill_after(monkeypatch, STEPS_PER_EPOCH + 2)  # epoch 2, after its second step
    with pytest.raises(Killed):
        run_here(data, "killed", EPOCHS, "--save-every-minutes", "0")
    progress = json.loads((data[2] / "killed" / "state" / "progress.json").read_text())
    assert (progress["epoch"], progress["epoch_step"], len(progress["losses"])) == (1, 2, STEPS_PER_EPOCH + 2)
    with safe_open(str(data[2] / "killed" / pretrain_vim.VIM_FILE), "pt") as f:  # the Vim as of the last save
        assert f.metadata()["optimizer_steps"] == str(STEPS_PER_EPOCH + 2)
    resumed = run_here(data, "killed", EPOCHS, "--resume", record="killed-record")
    assert resumed["epochs"][1]["resumed_at_step"] == 2
    assert losses(data, "killed") == pytest.approx(losses(data, "ref"), abs=LOSS_ATOL)
    vim_close(data[2] / "killed", data[2] / "ref", 1e-5)
    # The resumed part of epoch 2 trained on the rest of that epoch's faces, in the same order.
    ref_epoch2 = epoch_samples(data[2] / "ref-record", 0)[2]
    assert epoch_samples(data[2] / "killed-record", 0)[2] == ref_epoch2[2 * 4 :]


def test_a_finished_run_can_be_extended(data, reference):
    run_here(data, "longer", 1)
    first = losses(data, "longer")
    longer = run_here(data, "longer", 2, "--resume")
    assert [e["epoch"] for e in longer["epochs"]] == [1, 2]
    assert losses(data, "longer")[:STEPS_PER_EPOCH] == first and len(losses(data, "longer")) == 2 * STEPS_PER_EPOCH


def test_bad_inputs_are_usage_errors(data, reference, tmp_path):
    for extra in (["--resume", "--unlabeled", "none"],  # other data: the saved epochs would not line up
                  ["--unlabeled", str(tmp_path / "missing")], ["--mask-block", "3"], ["--mask-ratio", "1"],
                  ["--preset", "tiny-sface-id"]):  # the identity embedding would see the hidden patches
        with pytest.raises(SystemExit) as err:
            run_here(data, "ref", EPOCHS, *extra)
        assert err.value.code == 2, extra


def launch_two(data, output: str, *extra: str, record: str) -> None:
    """``mdnet pretrain-vim`` as two CPU processes under ``accelerate launch`` (as tests/training/test_distributed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", dist.DEBUG_RECORD_ENV: str(data[2] / record),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           str(port), "-m", "mdnet", "pretrain-vim", *args(data, output, EPOCHS, *extra)]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]


def test_two_processes_train_on_disjoint_halves_and_match_one(data, reference):
    work = data[2]
    launch_two(data, "two", record="two-record")
    one = epoch_samples(work / "ref-record", 0)
    r0, r1 = epoch_samples(work / "two-record", 0), epoch_samples(work / "two-record", 1)
    assert sorted(r0) == sorted(r1) == sorted(one)
    for epoch, order in one.items():
        halves = [order[i : i + 2] for i in range(0, len(order), 2)]
        assert r0[epoch] == sum(halves[0::2], []) and r1[epoch] == sum(halves[1::2], [])
    assert not any("wrote" in r for r in records(work / "two-record", 1))  # one copy of every output
    assert losses(data, "two") == pytest.approx(losses(data, "ref"), abs=LOSS_ATOL)
    vim_close(work / "two", work / "ref", 1e-4)  # measured: 5e-7
    assert json.loads((work / "two" / "losses.json").read_text())["processes"] == 2


def test_training_starts_from_the_pretrained_vim(tmp_path):
    """`mdnet train --vim-init` loads the pretrained Vim strictly; a Vim of another shape is refused."""
    from mdnet.training.pretrain_vim import save_vim
    from mdnet.training.train import build_model

    torch.manual_seed(3)
    donor = build_model("micro", None, None).vim
    with torch.no_grad():
        for p in donor.parameters():
            p.add_(torch.randn_like(p))
    save_vim(donor, tmp_path / "vim.safetensors", "micro")
    model = build_model("micro", None, None, str(tmp_path / "vim.safetensors"))
    for (name, a), b in zip(donor.state_dict().items(), model.vim.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="holds a Vim with config"):
        build_model("tiny", None, None, str(tmp_path / "vim.safetensors"))


def test_pretraining_then_fine_tuning_then_prediction(data, reference, tmp_path):
    """The chain the recipe runs: masked pretraining on unlabeled + training faces -> `mdnet train --vim-init`
    (with the unlabeled faces again) -> checkpoint -> `mdnet predict`."""
    from fake_scut import NO_FACE

    from mdnet import predict
    from mdnet.models.checkpoint import load_checkpoint
    from mdnet.training import train

    root, folder, work = data
    vim_file = work / "ref" / pretrain_vim.VIM_FILE
    summary = train.main(["--data-root", str(root), "--preset", "micro", "--batch-size", "4", "--epochs", "1",
                          "--val-fraction", "0.25", "--vim-init", str(vim_file), "--unlabeled", str(folder),
                          "--unlabeled-batch-size", "2", "--photo-variants", "0", "--cache", str(work / "cache"),
                          "--output", str(tmp_path / "run"), "--checkpoint-out", str(tmp_path / "ckpt")])
    assert summary["history"][0]["epoch"] == 1
    model = load_checkpoint(tmp_path / "ckpt")
    # The same run from a fresh Vim ends elsewhere: the pretrained start was used.
    scratch = train.main(["--data-root", str(root), "--preset", "micro", "--batch-size", "4", "--epochs", "1",
                          "--val-fraction", "0.25", "--unlabeled", str(folder), "--unlabeled-batch-size", "2",
                          "--photo-variants", "0", "--cache", str(work / "cache"), "--output", str(tmp_path / "b"),
                          "--checkpoint-out", str(tmp_path / "ckpt-b")])
    other = load_checkpoint(tmp_path / "ckpt-b")
    assert not torch.equal(model.vim.pos_embed, other.vim.pos_embed)
    assert scratch["history"][0]["train_loss"] != summary["history"][0]["train_loss"]
    images = sorted((root / "Images").glob("*.jpg"))
    rows = predict.main([str(images[0]), str(root / "Images" / NO_FACE), "--checkpoint", str(tmp_path / "ckpt"),
                         "--output", str(tmp_path / "scores.csv")])
    assert (tmp_path / "scores.csv").is_file()
    scored = {row["file"]: row for row in rows}
    assert 1 <= scored[str(images[0])]["score"] <= 5
    assert scored[str(root / "Images" / NO_FACE)]["score"] is None and scored[str(root / "Images" / NO_FACE)]["error"]
