"""Training (resumable), evaluation and prediction, end to end on a miniature dataset."""

from __future__ import annotations

import json

import pytest
import torch
from fake_scut import NO_FACE, make_fake_scut

from mdnet import predict
from mdnet.models.checkpoint import load_checkpoint
from mdnet.training import evaluate, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = make_fake_scut(tmp_path_factory.mktemp("scut"), per_group=5)
    work = tmp_path_factory.mktemp("run")
    args = ["--data-root", str(root), "--preset", "micro", "--batch-size", "4", "--val-fraction", "0.25",
            "--output", str(work / "run"), "--cache", str(work / "cache")]
    train.main(args + ["--epochs", "1"])
    summary = train.main(args + ["--epochs", "2", "--resume", "--checkpoint-out", str(work / "ckpt")])
    return root, work, summary


def test_training_resumes_and_writes_its_logs(trained):
    _, work, summary = trained
    history = json.loads((work / "run" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert (work / "run" / "history.csv").is_file() and (work / "run" / "history.png").is_file()
    assert summary["unaligned_train"] + summary["unaligned_val"] == [NO_FACE]
    assert set(summary["validation"]) == {"full", "prior_only", "vim_only"}


def test_the_checkpoint_is_complete_and_calibrated(trained):
    _, work, summary = trained
    model = load_checkpoint(work / "ckpt")
    assert bool(model.references_ready)
    raw = json.loads((work / "ckpt" / "config.json").read_text())
    assert raw["metadata"]["command"].startswith("mdnet train")
    assert raw["metadata"]["validation_pc"] == pytest.approx(summary["validation"]["full"]["pc"], nan_ok=True)


def test_training_is_seeded(trained, tmp_path):
    root, work, _ = trained
    args = ["--data-root", str(root), "--preset", "micro", "--batch-size", "4", "--val-fraction", "0.25",
            "--epochs", "1", "--cache", str(work / "cache")]
    a = train.main(args + ["--output", str(tmp_path / "a")])
    b = train.main(args + ["--output", str(tmp_path / "b")])
    assert a["history"][0]["train_loss"] == b["history"][0]["train_loss"]


def test_evaluate_writes_the_metrics_json(trained, tmp_path):
    root, work, _ = trained
    out = tmp_path / "test.json"
    evaluate.main(["--data-root", str(root), "--split", "60-40/test", "--checkpoint", str(work / "ckpt"),
                   "--output", str(out), "--cache", str(work / "cache"), "--ablation"])
    result = json.loads(out.read_text())
    for key in ("pc", "mae", "rmse", "n"):
        assert key in result
    assert set(result["groups"]) == {"AF", "AM", "CF", "CM"}
    assert all({"pc", "mae", "rmse"} <= set(g) for g in result["groups"].values())
    assert result["n"] == len((root / "train_test_files/split_of_60%training and 40%testing/test.txt")
                              .read_text().splitlines())
    assert result["unaligned"] == (1 if NO_FACE in result["unaligned_names"] else 0)
    assert set(result["modes"]) == {"full", "prior_only", "vim_only"}


def test_predict_scores_files_and_folders_and_reports_errors(trained, tmp_path):
    root, work, _ = trained
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "face.jpg").write_bytes((root / "Images" / "AF1.jpg").read_bytes())
    (folder / "blank.png").write_bytes((root / "Images" / NO_FACE).read_bytes())
    (folder / "notes.txt").write_text("not a photo")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not really a jpeg")
    out = tmp_path / "scores.json"
    rows = predict.main([str(folder), str(broken), str(tmp_path / "missing.jpg"), "--checkpoint",
                         str(work / "ckpt"), "--output", str(out)])
    by_name = {r["file"].rsplit("/", 1)[-1]: r for r in rows}
    assert set(by_name) == {"face.jpg", "blank.png", "broken.jpg", "missing.jpg"}  # folders: images only
    assert 1 <= by_name["face.jpg"]["score"] <= 5 and by_name["face.jpg"]["error"] == ""
    for name in ("blank.png", "broken.jpg", "missing.jpg"):
        assert by_name[name]["score"] is None and by_name[name]["error"]
    assert json.loads(out.read_text()) == rows
    # The score is the app's: aligned, mirror-averaged, through the service.
    model = load_checkpoint(work / "ckpt")
    from mdnet.faces import align
    from mdnet.models.mdnet import score_aligned

    face = align(folder / "face.jpg", size=model.cfg.preprocess.image_size).image
    expected = float(score_aligned(model, torch.from_numpy(face).permute(2, 0, 1)[None])[0])
    assert by_name["face.jpg"]["score"] == pytest.approx(expected, abs=1e-4)
