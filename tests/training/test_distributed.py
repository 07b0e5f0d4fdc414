"""Data-parallel training: every process trains on its own half, and the result is the one-process result.

The multi-process tests start ``accelerate launch --multi_gpu --num_processes 2`` with
``ACCELERATE_USE_CPU=1``: two CPU processes joined by gloo. (In accelerate 1.x,
``accelerate launch --cpu --num_processes 2`` starts a single process.) Each process records
what it trained on and what it wrote (``MDNET_DEBUG_RECORD``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from fake_scut import NO_FACE, make_fake_scut
from safetensors.torch import load_file

from mdnet.faces import scut
from mdnet.training import distributed as dist
from mdnet.training import train

REPO = Path(__file__).resolve().parents[2]
# Tolerances, 1 process x batch 4 vs 2 processes x 2 faces (or 2 accumulation steps x 2). Float error only
# (measured: 98 % of the weight tensors within 6.4e-7, most equal), except where a parameter's true gradient
# is zero: softmax ignores the attention key bias, so its gradient is rounding noise, which Adam turns into
# steps of up to the learning rate (measured: 4.6e-4 apart after 9 steps). Hence two bounds on the weights.
PEAK_LR = 1e-3  # train.py's default --lr; the stem's is lower
WEIGHTS_TYPICAL_ATOL = 2e-5  # all weight tensors but the worst 2 %
METRIC_ATOL = 1e-4           # training loss, validation MAE and RMSE, per epoch
STEPS_PER_EPOCH = 3


def weights_atol(epochs: int) -> float:
    """Every weight: the most two Adam runs can drift apart, a full learning-rate step each way per step."""
    return 2 * PEAK_LR * STEPS_PER_EPOCH * epochs


def run_args(root: Path, work: Path, output: str, epochs: int, preset: str | None = "micro") -> list[str]:
    return ["--data-root", str(root), *(["--preset", preset] if preset else []), "--batch-size", "4",
            "--val-fraction", "0.25", "--cache", str(work / "cache"), "--epochs", str(epochs), "--output",
            str(work / output)]


def train_here(root: Path, work: Path, output: str, epochs: int, *extra: str, record: str | None = None,
               preset: str | None = "micro") -> dict:
    with pytest.MonkeyPatch.context() as mp:
        if record:
            mp.setenv(dist.DEBUG_RECORD_ENV, str(work / record))
        return train.main(run_args(root, work, output, epochs, preset) + list(extra))


def launch_two(root: Path, work: Path, output: str, epochs: int, *extra: str, record: str,
               check: bool = True, preset: str | None = "micro") -> subprocess.CompletedProcess:
    """``mdnet train`` as two CPU processes under ``accelerate launch`` (``check``: it must succeed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", dist.DEBUG_RECORD_ENV: str(work / record),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           str(port), "-m", "mdnet", "train", *run_args(root, work, output, epochs, preset), *extra]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 or not check, done.stdout[-3000:] + done.stderr[-5000:]
    return done


def records(folder: Path, rank: int) -> list[dict]:
    path = folder / f"rank-{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def epoch_samples(folder: Path, rank: int) -> dict[int, list[str]]:
    return {r["epoch"]: r["samples"] for r in records(folder, rank) if "samples" in r}


def weights_close(a: Path, b: Path, epochs: int) -> None:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    worst = sorted((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)
    assert worst[-1] <= weights_atol(epochs), worst[-5:]
    assert worst[int(0.98 * len(worst))] <= WEIGHTS_TYPICAL_ATOL, worst[-8:]


def history_close(a: list[dict], b: list[dict]) -> None:
    assert [h["epoch"] for h in a] == [h["epoch"] for h in b]
    for x, y in zip(a, b, strict=True):
        for key in ("train_loss", "val_mae", "val_rmse"):
            assert x[key] == pytest.approx(y[key], abs=METRIC_ATOL), (key, x, y)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The one-process reference, run in this process: 2 epochs of 3 steps of 4 faces."""
    root = make_fake_scut(tmp_path_factory.mktemp("scut"), per_group=6)
    work = tmp_path_factory.mktemp("work")
    ref = train_here(root, work, "ref", 2, "--checkpoint-out", str(work / "ref-2"), record="ref-record")
    return root, work, ref


@pytest.fixture(scope="module")
def two_processes(one_process):
    root, work, _ = one_process
    launch_two(root, work, "two", 2, "--checkpoint-out", str(work / "two" / "ckpt"), record="two-record")
    return root, work


def test_two_processes_train_on_disjoint_halves_and_match_one(one_process, two_processes):
    _, work, ref = one_process
    one = epoch_samples(work / "ref-record", 0)
    r0, r1 = epoch_samples(work / "two-record", 0), epoch_samples(work / "two-record", 1)
    assert sorted(one) == sorted(r0) == sorted(r1) == [1, 2]
    for epoch, order in one.items():
        assert not set(r0[epoch]) & set(r1[epoch])
        # Step by step, process 0 trains on the first half of the one-process batch, process 1 on the second.
        halves = [order[i : i + 2] for i in range(0, len(order), 2)]
        assert r0[epoch] == sum(halves[0::2], []) and r1[epoch] == sum(halves[1::2], [])
    assert len(one[1]) == 4 * STEPS_PER_EPOCH and len(r0[1]) == len(r1[1]) == 2 * STEPS_PER_EPOCH

    # One copy of every output, written by the main process only.
    assert not any("wrote" in r for r in records(work / "two-record", 1))
    written = [p for r in records(work / "two-record", 0) for p in r.get("wrote", [])]
    assert sorted(set(written)) == sorted(str(work / "two" / n) for n in (
        "state", "history.json", "history.csv", "history.png", "summary.json", "ckpt"))
    files = sorted(str(p.relative_to(work / "two")) for p in (work / "two").rglob("*") if p.is_file())
    assert files == ["ckpt/config.json", "ckpt/model.safetensors", "history.csv", "history.json", "history.png",
                     "state/model.safetensors", "state/optimizer.bin", "state/progress.json",
                     "state/random_states_0.pkl", "state/random_states_1.pkl", "summary.json"]
    assert not list((work / "cache").rglob("*.tmp.png"))

    summary = json.loads((work / "two" / "summary.json").read_text())
    assert summary["processes"] == 2
    assert summary["validation"]["full"]["n"] == ref["val_faces"]  # gathered: every face once
    history_close(summary["history"], ref["history"])
    weights_close(work / "two" / "ckpt", work / "ref-2", 2)


def test_a_run_resumes_on_a_different_number_of_processes(one_process, two_processes, capsys):
    root, work, _ = one_process
    # Two processes -> one: the two-process run continues here to epoch 3, as the one-process run does.
    train_here(root, work, "ref", 3, "--resume", "--checkpoint-out", str(work / "ref-3"))
    assert "the saved run planned 2 epochs and this one 3" in capsys.readouterr().out  # a schedule warm restart
    three = train_here(root, work, "two", 3, "--resume", "--checkpoint-out", str(work / "two-3"))
    assert [h["epoch"] for h in three["history"]] == [1, 2, 3]
    weights_close(work / "two-3", work / "ref-3", 3)
    # One process -> two: a one-epoch run continues on two processes, and here.
    train_here(root, work, "short", 1)
    shutil.copytree(work / "short", work / "short-copy")
    train_here(root, work, "short", 2, "--resume", "--checkpoint-out", str(work / "short-2"))
    launch_two(root, work, "short-copy", 2, "--resume", "--checkpoint-out", str(work / "short-copy-2"),
               record="resume-record")
    assert sorted(epoch_samples(work / "resume-record", 1)) == [2]  # epoch 1 was not trained again
    weights_close(work / "short-copy-2", work / "short-2", 2)
    ref = json.loads((work / "short" / "summary.json").read_text())
    history_close(json.loads((work / "short-copy" / "summary.json").read_text())["history"], ref["history"])


def test_an_error_in_the_main_processs_shared_work_stops_every_process(tmp_path):
    """A bad --init-from fails on the main process while the other waits for its turn: both exit, nobody hangs."""
    root = make_fake_scut(tmp_path / "scut", per_group=2)
    missing = tmp_path / "no-such-checkpoint"
    start = time.monotonic()
    done = launch_two(root, tmp_path, "bad", 1, "--init-from", str(missing), record="bad-record", check=False,
                      preset=None)
    assert done.returncode != 0 and time.monotonic() - start < 120
    assert f"--init-from {missing}" in done.stderr and "another process failed" in done.stderr, done.stderr[-3000:]
    assert not (tmp_path / "bad" / "state").exists()


def test_another_seed_validates_on_the_same_faces_and_a_second_stage_keeps_its_models_part(one_process, capsys):
    root, work, ref = one_process
    other = train_here(root, work, "seed-1", 1, "--seed", "1")
    assert other["val_names"] == ref["val_names"] and len(ref["val_names"]) == ref["val_faces"]
    assert other["history"][0]["train_loss"] != ref["history"][0]["train_loss"]  # the seed still acts
    saved = json.loads((work / "ref-2" / "config.json").read_text())["metadata"]
    assert (saved["split_seed"], saved["val_fraction"], saved["split"]) == (0, 0.25, "60-40/train")
    with pytest.raises(SystemExit) as err:  # its validation faces would include faces ref-2 trained on
        train_here(root, work, "stage-2", 1, "--init-from", str(work / "ref-2"), "--split-seed", "1", preset=None)
    assert err.value.code == 2
    assert "trained with another validation part (split_seed 0 there, 1 here)" in capsys.readouterr().err


def test_gradient_accumulation_gives_the_same_steps(one_process):
    root, work, ref = one_process
    acc = train_here(root, work, "accumulated", 2, "--gradient-accumulation-steps", "2", "--checkpoint-out",
                     str(work / "accumulated-2"), record="accumulated-record")
    history_close(acc["history"], ref["history"])
    weights_close(work / "accumulated-2", work / "ref-2", 2)
    assert epoch_samples(work / "accumulated-record", 0) == epoch_samples(work / "ref-record", 0)
    with pytest.raises(SystemExit) as err:  # 4 faces cannot be split into 3 passes
        train_here(root, work, "bad", 1, "--gradient-accumulation-steps", "3")
    assert err.value.code == 2


def test_an_interrupted_state_swap_still_resumes(one_process, tmp_path):
    root, work, _ = one_process
    train_here(root, tmp_path, "cut", 1)
    (tmp_path / "cut" / "state").rename(tmp_path / "cut" / "state.old")  # stopped between the two renames
    out = train_here(root, tmp_path, "cut", 2, "--resume")
    assert [h["epoch"] for h in out["history"]] == [1, 2]
    assert (tmp_path / "cut" / "state" / "progress.json").is_file() and not (tmp_path / "cut" / "state.old").exists()


def fake_accelerator(processes: int, accumulation: int) -> SimpleNamespace:
    return SimpleNamespace(num_processes=processes, gradient_accumulation_steps=accumulation)


def test_global_batches_are_seeded_per_epoch_and_padded_with_zero_weights():
    def draw(idx, gen):
        return [(float(v),) for v in torch.rand(len(idx), generator=gen)]

    s = dist.GlobalBatches(10, 4, seed=3, draw=draw)
    first = list(s)
    assert len(first) == len(s) == 8 and s.batches_per_epoch() == 2 and first == list(s)
    s.set_epoch(1)
    assert list(s) != first
    kept = dist.GlobalBatches(10, 4, seed=3, draw=draw, drop_last=False)
    assert len(list(kept)) == len(kept) == 10 and kept.batches_per_epoch() == 3
    assert list(kept)[:8] == first
    padded = list(dist.GlobalBatches(10, 4, seed=3, draw=draw, drop_last=False, shards=2))
    assert len(padded) == 12 and [d.weight for d in padded[8:]] == [1, 1, 0, 0]
    assert {d.count for d in padded[8:]} == {2} and padded[10:] == [d._replace(weight=0.0) for d in padded[8:10]]


def test_batch_loss_is_the_global_mean_whatever_the_split():
    losses = torch.arange(1.0, 9.0)  # one global batch of 8
    batch = {"weight": torch.ones(8), "count": torch.full((8,), 8)}
    for processes, accumulation in ((1, 1), (2, 1), (2, 2), (1, 4)):
        acc, parts = fake_accelerator(processes, accumulation), processes * accumulation
        size = 8 // parts
        pieces = [dist.batch_loss(acc, losses[i : i + size], {k: v[i : i + size] for k, v in batch.items()})
                  for i in range(0, 8, size)]
        # DDP averages over processes, accelerator.backward divides by accumulation steps.
        assert sum(loss for loss, _ in pieces) / parts == pytest.approx(losses.mean())
        assert sum(share for _, share in pieces) == pytest.approx(losses.mean().item())
    assert dist.check_batch_size(fake_accelerator(2, 2), 6) is not None
    assert dist.check_batch_size(fake_accelerator(2, 2), 8) is None


def test_the_alignment_cache_survives_concurrent_builders(tmp_path, monkeypatch):
    root = make_fake_scut(tmp_path / "scut", per_group=2)
    samples = scut.ScutFBP5500(root).split("all")
    cache = tmp_path / "cache"
    results: list = []
    workers = [threading.Thread(target=lambda: results.append(scut.aligned_faces(samples, 64, cache)))
               for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(results) == 3 and all(torch.equal(r[0], results[0][0]) for r in results)
    assert all(r[1] == [NO_FACE] for r in results)
    assert not list(cache.rglob("*.tmp.png")) and len(list(cache.rglob("*.png"))) == len(samples) - 1
    # A cached file cut short (a crash in an older version) is rebuilt, not trusted.
    broken = next(cache.rglob("*.png"))
    broken.write_bytes(broken.read_bytes()[:50])
    again, _ = scut.aligned_faces(samples, 64, cache)
    assert torch.equal(again, results[0][0])
