"""`mdnet train` with the whole recipe: photo variants, camera, stream dropout, unlabeled faces and a teacher."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import build_model
from fake_scut import astronaut_face, make_fake_scut
from PIL import Image
from safetensors.torch import load_file
from test_distributed import history_close, launch_two, weights_close

from mdnet import predict
from mdnet.models.checkpoint import load_checkpoint, save_checkpoint
from mdnet.training import train

RECIPE = ["--camera-augment", "camera", "--photo-variants", "1", "--stream-dropout", "0.3",
          "--unlabeled-batch-size", "2", "--consistency-weight", "1", "--distill-weight", "0.5",
          "--prior-only-weight", "0.5"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = make_fake_scut(tmp_path_factory.mktemp("scut"), per_group=4)
    work = tmp_path_factory.mktemp("work")
    folder = work / "unlabeled"
    folder.mkdir()
    face = np.asarray(astronaut_face(200), dtype=np.float32)
    for i in range(4):  # UTKFace-style names; one photo without a face, which is dropped
        Image.fromarray(np.clip(face * (0.7 + 0.15 * i), 0, 255).astype(np.uint8)).save(
            folder / f"{20 + i}_{i % 2}_0_2017010{i}.jpg")
    Image.new("RGB", (200, 200), (90, 90, 90)).save(folder / "30_1_2_20170105.jpg")
    save_checkpoint(build_model("micro", seed=5), work / "teacher")
    args = ["--data-root", str(root), "--preset", "micro", "--batch-size", "4", "--val-fraction", "0.25",
            "--cache", str(work / "cache"), "--unlabeled", str(folder), "--teacher", str(work / "teacher"), *RECIPE]
    return root, work, args


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def resumed(setup):
    """A 2-epoch run stopped during its second epoch (after the first one's state was saved), then resumed."""
    _, work, args = setup
    validate = train.predict_sharded
    calls = []

    def stop_in_epoch_two(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise Interrupted
        return validate(*a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "predict_sharded", stop_in_epoch_two)
        with pytest.raises(Interrupted):
            train.main(args + ["--epochs", "2", "--output", str(work / "run")])
    first = json.loads((work / "run" / "state" / "progress.json").read_text())
    second = train.main(args + ["--epochs", "2", "--resume", "--output", str(work / "run"),
                                "--checkpoint-out", str(work / "ckpt")])
    return first, second


def test_the_recipe_trains_a_checkpoint_that_predict_scores(setup, resumed, tmp_path):
    root, work, _ = setup
    first, summary = resumed
    history = json.loads((work / "run" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    for h in history:
        assert {"train_loss", "consistency", "distill", "prior_only", "objective", "step_seconds",
                "prior_seconds"} <= set(h)
        assert h["objective"] == pytest.approx(h["train_loss"] + h["consistency"] + 0.5 * h["distill"]
                                               + 0.5 * h["prior_only"])
        assert h["consistency"] > 0 and h["prior_only"] > 0
    assert summary["unlabeled"]["faces"] == 4 and summary["unlabeled"]["rejected"] == 1
    assert first["epoch"] == 1 and summary["unlabeled"]["teacher_scores_cached"]  # scored by the first run
    assert summary["photo_variants"]["per_face"] == 1
    assert summary["options"]["stream_dropout"] == 0.3 and summary["options"]["camera_augment"] == "camera"
    assert set(summary["validation"]) == {"full", "prior_only", "vim_only"}
    rows = predict.main([str(root / "Images" / "AF1.jpg"), "--checkpoint", str(work / "ckpt")])
    assert rows[0]["error"] == "" and 1 <= rows[0]["score"] <= 5


@pytest.fixture(scope="module")
def straight(setup):
    _, work, args = setup
    return train.main(args + ["--epochs", "2", "--output", str(work / "straight"),
                              "--checkpoint-out", str(work / "straight-ckpt")])


def test_a_resumed_run_equals_a_straight_one(setup, resumed, straight):
    _, work, _ = setup
    _, summary = resumed
    assert straight["unlabeled"]["teacher_scores_cached"]
    for a, b in zip(straight["history"], summary["history"], strict=True):
        for key in ("train_loss", "consistency", "distill", "prior_only", "val_mae"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), key
    wa, wb = load_file(work / "straight-ckpt" / "model.safetensors"), load_file(work / "ckpt" / "model.safetensors")
    assert all(torch.allclose(wa[k].float(), wb[k].float(), atol=1e-6) for k in wa)


def test_two_processes_share_both_batches_and_match_one(setup, straight):
    root, work, args = setup
    recipe = args[args.index("--cache") + 2 :]  # the unlabeled faces, the teacher and the recipe's flags
    launch_two(root, work, "two", 2, *recipe, "--checkpoint-out", str(work / "two" / "ckpt"), record="two-record")
    two = json.loads((work / "two" / "summary.json").read_text())
    history_close(two["history"], straight["history"])
    for a, b in zip(two["history"], straight["history"], strict=True):
        assert a["consistency"] == pytest.approx(b["consistency"], abs=1e-6)
        assert a["distill"] == pytest.approx(b["distill"], abs=1e-6)
        assert a["prior_only"] == pytest.approx(b["prior_only"], abs=1e-6)  # scored by the unwrapped model
    weights_close(work / "two" / "ckpt", work / "straight-ckpt", 2)


def test_bad_recipes_are_usage_errors(setup, tmp_path):
    _, _, args = setup
    i = args.index("--unlabeled")
    for bad in (args + ["--stream-dropout", "0.7"], args + ["--unlabeled-batch-size", "0"],
                args[:i] + args[i + 2 :]):  # a teacher without unlabeled faces
        with pytest.raises(SystemExit) as err:
            train.main(bad + ["--output", str(tmp_path / "x")])
        assert err.value.code == 2


def test_a_second_stage_trains_only_the_named_parts_of_a_trained_model(setup, straight, tmp_path):
    _, work, args = setup
    i = args.index("--preset")
    stage = args[:i] + args[i + 2 :] + ["--init-from", str(work / "straight-ckpt"), "--train-parts", "fusion,head"]
    summary = train.main(stage + ["--prior-summary", "--epochs", "1", "--output", str(tmp_path / "run"),
                                  "--checkpoint-out", str(tmp_path / "ckpt")])
    assert summary["options"]["init_from"] == str(work / "straight-ckpt")
    before = load_file(work / "straight-ckpt" / "model.safetensors")
    after = load_file(tmp_path / "ckpt" / "model.safetensors")
    learnt = {k for k in before if not torch.equal(before[k], after[k])}
    assert learnt and all(k.startswith(("fusion.", "head.", "vim_reference", "prior_reference")) for k in learnt)
    assert any(k.startswith("fusion.") for k in learnt) and any(k.startswith("head.") for k in learnt)
    # --prior-summary grew the pooled prior's read-out, which started at zero and learnt
    assert set(after) - set(before) == {"fusion.summary_norm.weight", "fusion.summary_norm.bias", "head.summary.weight"}
    assert torch.count_nonzero(after["head.summary.weight"]) > 0
    assert load_checkpoint(tmp_path / "ckpt").cfg.fusion.prior_summary
    at = stage.index("--init-from") + 1
    missing = stage[:at] + [str(tmp_path / "nothing")] + stage[at + 1 :]
    for bad in (stage + ["--preset", "micro"], stage[:-1] + ["fusion,stem"], missing,
                stage[:-1] + ["vim,head", "--prior-summary"]):  # the summary's layers would stay at zero
        with pytest.raises(SystemExit) as err:
            train.main(bad + ["--output", str(tmp_path / "x")])
        assert err.value.code == 2
