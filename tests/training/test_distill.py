"""``mdnet distill`` end to end on made-up faces: a random micro teacher at 224 px, a student from scratch."""

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
from conftest import build_model
from fake_scut import astronaut_face, make_fake_scut
from PIL import Image

from mdnet.models.config import PreprocessConfig
from mdnet.models.mdnet import MDNet, score_faces
from mdnet.models.student import FBPStudent
from mdnet.training import distill
from mdnet.training import distributed as dist

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    scut = make_fake_scut(root / "scut", per_group=6)
    utk = root / "utk"
    utk.mkdir()
    face = np.asarray(astronaut_face(220), dtype=np.float32)
    for i in range(8):
        tone = np.array([0.75 + 0.05 * i, 0.9, 1.1 - 0.04 * i], dtype=np.float32)
        Image.fromarray(np.clip(face * tone, 0, 255).astype(np.uint8)).save(utk / f"{20 + i}_0_0_2017010400374{i}.jpg")
    teacher = build_model("micro", seed=3, preprocess=PreprocessConfig(image_size=224))
    return {"scut": scut, "utk": utk, "teacher": str(teacher.save_pretrained(root / "teacher")), "root": root}


def args(data, output: str, *extra: str) -> list[str]:
    root = data["root"]
    return ["--data-root", str(data["scut"]), "--teacher", data["teacher"], "--unlabeled", str(data["utk"]),
            "--holdout", "2", "--output", str(root / output), "--cache", str(root / "cache"), "--init", "random",
            "--batch-size", "8", "--epochs", "4", "--camera-p", "0", "--max-shift", "0", "--label-weight", "0",
            "--lr", "1e-3", *extra]


def samples(folder: Path, rank: int) -> dict[int, list[int]]:
    path = folder / f"rank-{rank}.jsonl"
    return {r["epoch"]: r["samples"] for r in map(json.loads, path.read_text().splitlines()) if "samples" in r}


@pytest.fixture(scope="module")
def run(data):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(dist.DEBUG_RECORD_ENV, str(data["root"] / "one-record"))
        return distill.main(args(data, "one"))


def test_the_student_learns_the_teachers_scores(data, run):
    losses = json.loads((data["root"] / "one" / "losses.json").read_text())
    assert len(losses) == run["steps"] >= 8
    assert np.mean(losses[-3:]) < 0.3 * np.mean(losses[:3])
    assert run["faces"]["holdout"] == 2 and run["faces"]["unlabeled_trained"] == 6
    assert run["holdout_agreement"]["teacher_mae"] < 0.3
    assert set(run["validation"]) >= {"pc", "mae", "rmse", "teacher_corr"}


def test_the_saved_student_round_trips_small(data, run):
    folder = Path(run["checkpoint"])
    student = MDNet.from_pretrained(folder)
    assert isinstance(student, FBPStudent) and run["size_mb"] < 10
    card = (folder / "README.md").read_text()
    assert "fast student of MD-Net" in card and f"--teacher {data['teacher']}" in card and "| student |" in card
    config = json.loads((folder / "config.json").read_text())
    assert config["model"]["kind"] == "student" and config["metadata"]["teacher"] == data["teacher"]
    faces = torch.randint(0, 256, (3, 3, 224, 224), dtype=torch.uint8)
    again = MDNet.from_pretrained(folder)
    assert torch.equal(score_faces(student, faces, tta=False).score, score_faces(again, faces, tta=False).score)


def test_a_teacher_without_sface_cannot_seed_the_student(data, tmp_path):
    with pytest.raises(SystemExit):
        distill.main([*args(data, "bad"), "--init", "teacher"])


def test_two_processes_follow_the_same_steps(data, run):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", dist.DEBUG_RECORD_ENV: str(data["root"] / "two-record"),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           str(port), "-m", "mdnet", "distill", *args(data, "two")]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    # each process trained on its own half of every global batch; together, on what one process trained on
    one, ranks = samples(data["root"] / "one-record", 0), [samples(data["root"] / "two-record", r) for r in (0, 1)]
    assert one and set(one) == set(ranks[0]) == set(ranks[1])
    for epoch, seen in one.items():
        assert not set(ranks[0][epoch]) & set(ranks[1][epoch])
        assert sorted(ranks[0][epoch] + ranks[1][epoch]) == sorted(seen)
    summary = json.loads((data["root"] / "two" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == run["steps"]


@pytest.fixture(scope="module")
def ridge_run(data):
    return distill.main(args(data, "ridge", "--head", "ridge", "--camera-p", "0.5", "--max-shift", "4"))


def launch_two(data, *argv: str) -> subprocess.CompletedProcess:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           str(port), "-m", "mdnet", "distill", *argv]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_a_ridge_head_is_fitted_in_closed_form_and_saved_in_float32(data, ridge_run):
    from safetensors import safe_open

    from mdnet.training.ridge import ALPHAS

    assert ridge_run["steps"] == 0 and ridge_run["ridge"]["alpha"] in ALPHAS
    assert ridge_run["ridge"]["draws"] == 3 * ridge_run["faces"]["labelled"] + ridge_run["faces"]["unlabeled_trained"]
    assert ridge_run["holdout_agreement"]["teacher_mae"] < 0.3
    folder = Path(ridge_run["checkpoint"])
    student = MDNet.from_pretrained(folder)
    assert student.cfg.head == "linear" and student.cfg.pool == 7 and ridge_run["size_mb"] < 10
    assert float(student.linear.weight.abs().sum()) > 0  # a fitted head, not the initial zeros
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert f.get_slice("linear.weight").get_dtype() == "F32" and f.get_slice("feature_mean").get_dtype() == "F32"
        assert f.get_slice("trunk.conv_1.conv.weight").get_dtype() == "F16"
    assert "ridge fit" in (folder / "README.md").read_text()
    faces = torch.randint(0, 256, (4, 3, 224, 224), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    fast = student.for_inference()
    assert torch.allclose(score_faces(student, faces, tta=False).score, score_faces(fast, faces, tta=False).score,
                          atol=1e-3)


def test_two_processes_fit_the_same_ridge_head(data, ridge_run):
    done = launch_two(data, *args(data, "ridge-two", "--head", "ridge", "--camera-p", "0.5", "--max-shift", "4"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    two = json.loads((data["root"] / "ridge-two" / "summary.json").read_text())
    assert two["processes"] == 2 and two["ridge"] == ridge_run["ridge"]  # the same draws, features and fit
    a, b = MDNet.from_pretrained(ridge_run["checkpoint"]), MDNet.from_pretrained(two["checkpoint"])
    assert torch.allclose(a.linear.weight, b.linear.weight, atol=1e-4, rtol=1e-3)


def test_a_ridge_head_can_read_an_earlier_students_convolutions(data, run):
    """``--trunk-from``: SFace's convolutions start from a student checkpoint (here the MLP run's, trained
    from random weights), not from the teacher's copy."""
    two_stage = distill.main(args(data, "ridge-on-mlp", "--head", "ridge", "--trunk-from", run["checkpoint"],
                                  "--holdout", "0"))
    mlp, ridge = MDNet.from_pretrained(run["checkpoint"]).eval(), MDNet.from_pretrained(two_stage["checkpoint"]).eval()
    faces = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = mlp.feature_map(mlp.preprocess(faces)), ridge.feature_map(ridge.preprocess(faces))
    assert torch.allclose(a, b, atol=1e-2 * float(a.abs().mean()))
    assert json.loads((Path(two_stage["checkpoint"]) / "config.json").read_text())["metadata"]["recipe"][
        "trunk_from"] == run["checkpoint"]
    with pytest.raises(SystemExit):  # not a student checkpoint
        distill.main(args(data, "bad-trunk", "--head", "ridge", "--trunk-from", data["teacher"]))


def test_mlp_and_ridge_heads_are_trained_each_on_its_own_and_averaged(data, run):
    both = distill.main(args(data, "both", "--head", "mlp+ridge", "--freeze-units", "11"))
    assert both["steps"] == run["steps"] and both["ridge"]["draws"] == 3 * both["faces"]["labelled"] + 6
    losses = json.loads((data["root"] / "both" / "losses.json").read_text())
    assert np.mean(losses[-3:]) < 0.3 * np.mean(losses[:3])  # the MLP learned, by gradient
    student = MDNet.from_pretrained(both["checkpoint"]).eval()
    assert student.cfg.head == "mlp+linear" and both["size_mb"] < 10
    assert float(student.linear.weight.abs().sum()) > 0  # fitted after the MLP, on the same map
    faces = torch.randint(0, 256, (3, 3, 224, 224), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        x = student.preprocess(faces)
        mlp = student.mlp_score(x)
    assert not torch.allclose(student(x).score, mlp)  # the linear map takes part in the score
    assert "two heads" in (Path(both["checkpoint"]) / "README.md").read_text()


def test_two_processes_train_both_heads(data):
    """The linear map takes no gradient while the MLP trains (DDP would refuse a parameter left unused)."""
    done = launch_two(data, *args(data, "both-two", "--head", "mlp+ridge", "--epochs", "1"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    two = json.loads((data["root"] / "both-two" / "summary.json").read_text())
    assert two["processes"] == 2 and two["steps"] > 0 and two["ridge"]["draws"] > 0
