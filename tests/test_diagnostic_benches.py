"""benchmarks/utk_groups.py and benchmarks/probe_prior.py end to end, on made-up data with micro models.

A fake SCUT-FBP5500 root (:mod:`fake_scut`), a fake UTKFace folder (the astronaut's face under
UTKFace-style names, plus a blank photo the aligner rejects and a photo without labels) and two
micro checkpoints with calibrated stream references; everything under tmp_path, nothing from ../shared.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import build_model, faces
from fake_scut import astronaut_face, make_fake_scut
from PIL import Image

from mdnet.training import score_store

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
UTK_FACES = {  # name -> (race, gender)
    "25_0_0_20170104003740977.jpg": ("White", "male"),
    "33_0_0_20170104003740978.jpg": ("White", "male"),
    "31_1_2_20170116174525125.jpg": ("Asian", "female"),
    "28_1_2_20170116174525126.jpg": ("Asian", "female"),
    "40_1_1_20170109150557335.jpg": ("Black", "female"),
}
BLANK = "30_0_3_20170117173717445.jpg"  # Indian male, but no face: rejected by the aligner
NO_LABELS = "someone.jpg"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_bench", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("diag")
    scut = make_fake_scut(root / "scut", per_group=10)  # 3 validation faces
    utk = root / "utk"
    utk.mkdir()
    face = np.asarray(astronaut_face(200), dtype=np.float32)
    for i, name in enumerate([*UTK_FACES, NO_LABELS]):
        Image.fromarray(np.clip(face * (0.8 + 0.07 * i), 0, 255).astype(np.uint8)).save(utk / name, quality=90)
    Image.new("RGB", (200, 200), (128, 128, 128)).save(utk / BLANK)
    checkpoints = []
    for seed in (0, 1):
        model = build_model("micro", seed=seed)
        model.calibrate_references([faces(model, 4, seed=s) for s in range(2)])
        checkpoints.append(str(model.save_pretrained(root / f"ckpt{seed}")))
    return {"scut": scut, "utk": utk, "checkpoints": checkpoints, "cache": root / "cache", "root": root}


def _forbid(*_args, **_kwargs):
    raise AssertionError("recomputed what the cache holds")


def test_utk_groups_tables_and_cache(setup, capsys, monkeypatch):
    bench = _load("utk_groups")
    a, b = setup["checkpoints"]
    argv = ["--checkpoint", a, "--checkpoint", b, "--folder", str(setup["utk"]), "--data-root", str(setup["scut"]),
            "--cache", str(setup["cache"]), "--per-group", "1", "--quiet", "--threads", "1"]
    report = bench.main([*argv, "--output", str(setup["root"] / "groups.json")])
    out = capsys.readouterr().out
    # One face per race x gender present; the blank Indian male is chosen, then rejected and reported.
    assert report["utkface"]["all"]["n"] == 3
    assert report["dropped"][a] == [BLANK] and "photos without a usable face were left out" in out
    for row in ("| White male | 1 |", "| Asian female | 1 |", "| Black female | 1 |", "| all female | 2 |",
                "| **all** | 3 |", "| AF |", "| CM |", "| **all** |"):
        assert row in out, row
    assert f" {a}: mean | shift | std |" in out and f" {b}: mean | shift | std |" in out
    assert f"{b} on validation: n |" in out
    rows = report["utkface"]
    assert rows["all"]["scores"][a]["shift"] == pytest.approx(0)
    assert rows["White male"]["scores"][a]["mean"] != rows["White male"]["scores"][b]["mean"]
    d = rows["all"]["scores"][a]
    assert 1 <= d["q10"] <= d["q50"] <= d["q90"] <= 5
    scut = report["scut"]["all"]
    assert scut["valid_predictions"][a]["n"] == scut["valid_labels"]["n"] > 0 and scut["train_labels"]["n"] > 0

    # Second run: every score comes from the cache, and the blank is a known reject, left out up front.
    monkeypatch.setattr(score_store, "score_aligned", _forbid)
    again = bench.main(argv)
    capsys.readouterr()
    assert again["utkface"] == report["utkface"] and again["scut"] == report["scut"]
    assert again["dropped"][a] == []
    monkeypatch.undo()

    # --all: the faces scored before are reused, only the new ones are scored.
    calls = []
    score = score_store.score_aligned
    monkeypatch.setattr(score_store, "score_aligned", lambda m, f, **k: calls.append(len(f)) or score(m, f, **k))
    every = bench.main(["--checkpoint", a, "--folder", str(setup["utk"]), "--data-root", str(setup["scut"]),
                        "--cache", str(setup["cache"]), "--all", "--quiet"])
    assert sum(calls) == len(UTK_FACES) + 1 - 3
    assert every["utkface"]["all"]["n"] == len(UTK_FACES) + 1 and every["utkface"]["no labels"]["n"] == 1
    assert every["utkface"]["White male"]["n"] == 2
    assert "| no labels | 1 |" in capsys.readouterr().out


def test_score_cache_ignores_a_line_cut_short(tmp_path):
    bench = _load("utk_groups")
    path = tmp_path / "scores.tsv"
    bench.append_scores(path, {"a.jpg": 3.25, "b.jpg": 2.5})
    with open(path, "a") as f:
        f.write("c.jpg\t3.")  # an interrupted write
    assert bench.load_scores(path) == {"a.jpg": 3.25, "b.jpg": 2.5}


def test_probe_prior_tables_and_cache(setup, capsys, monkeypatch):
    bench = _load("probe_prior")
    a = setup["checkpoints"][0]
    argv = ["--checkpoint", a, "--data-root", str(setup["scut"]), "--cache", str(setup["cache"]), "--quiet"]
    seen: list[list[np.ndarray]] = [[], []]
    ridge = bench.probe
    monkeypatch.setattr(bench, "probe", lambda *xy: seen[0].append(xy[0]) or ridge(*xy))
    report = bench.main(argv)
    out = capsys.readouterr().out
    for row in ("| full |", "| prior_only |", "| vim_only |", "map 1: 16x8x8", "map 4: 32x4x4", "**all maps**"):
        assert row in out, row
    assert report["probe"][a]["all maps"]["dims"] == 5 * (16 + 32 + 32 + 32)
    n_val = report["ablation"][a]["full"]["n"]
    assert n_val == 3 and report["ablation"][a]["prior_only"]["n"] == n_val
    assert -1 <= report["probe"][a]["all maps"]["pc"] <= 1
    assert report["ablation"][a]["prior_only"]["mae"] != report["ablation"][a]["full"]["mae"]

    # Second run: features and ablation scores from the cache (the ridge, slow on a busy CPU, is not refitted here).
    monkeypatch.setattr(bench, "pooled_prior_features", _forbid)
    monkeypatch.setattr(bench, "score_aligned", _forbid)
    rows = iter(report["probe"][a].values())
    monkeypatch.setattr(bench, "probe", lambda *xy: seen[1].append(xy[0]) or next(rows))
    again = bench.main(argv)
    capsys.readouterr()
    assert again["ablation"] == report["ablation"]
    assert len(seen[1]) == len(seen[0]) == 6 and all(np.array_equal(x, y) for x, y in zip(*seen, strict=True))
    # the global-average row is each map's global average (the first c of its 5 c columns), maps in order
    maps, gap = seen[0][:4], seen[0][4]
    np.testing.assert_array_equal(gap, np.concatenate([m[:, : m.shape[1] // 5] for m in maps], axis=1))
    assert report["probe"][a]["all maps, global average only"]["dims"] == 16 + 32 + 32 + 32


def test_probe_prior_reads_a_pretrain_prior_folder(setup, capsys, monkeypatch):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from mdnet.models.config import get_config

    bench = _load("probe_prior")
    dims = []  # the ridge itself is tested above (and slow on a busy CPU): here only what it is given
    monkeypatch.setattr(bench, "probe", lambda x, *_: dims.append(x.shape[1]) or {
        "dims": x.shape[1], "alpha": "1", "cv_r": 0.5, "pc": 0.5, "mae": 0.5, "rmse": 0.5, "n": 3})
    cfg = get_config("micro")
    folder = setup["root"] / "prior"
    AutoencoderKL(**cfg.prior.vae).save_pretrained(folder / "vae")
    UNet2DConditionModel(**cfg.prior.unet).save_pretrained(folder / "unet")
    report = bench.main(["--prior-folder", str(folder), "--preset", "micro", "--data-root", str(setup["scut"]),
                         "--cache", str(setup["cache"]), "--quiet"])
    out = capsys.readouterr().out
    label = f"{folder} (micro)"
    assert report["ablation"] == {label: None} and "(a) Stream ablation" not in out
    assert f"| {label} | **all maps** | 560 |" in out and dims == [80, 160, 160, 160, 112, 560]
    with pytest.raises(SystemExit):
        bench.main(["--prior-folder", str(folder), "--data-root", str(setup["scut"])])  # no --preset


def test_ablation_table_rows_from_checkpoints_runs_and_a_robustness_report(setup, tmp_path, capsys):
    bench = _load("ablation_table")
    first, second = setup["checkpoints"]
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps(
        {"epoch_minutes": [10.0, 12.5], "prior_cache_minutes": None, "photo_variants": {"minutes": 2.5}}))
    singles = {"jpeg_q25": 0.10, "blur": 0.02}
    report = {"results": {first: {**{t: {"mean_abs": v} for t, v in singles.items()}, "compound": {"mean_abs": 0.3}}}}
    (tmp_path / "rob.json").write_text(json.dumps(report))
    out = tmp_path / "table.md"
    rows = bench.main(["--data-root", str(setup["scut"]), "--cache", str(setup["cache"]),
                       "--row", f"old=recipe={first}:35", "--row", f"new={second}:{run}",
                       "--robustness", str(tmp_path / "rob.json"), "--output", str(out)])
    assert [r["label"] for r in rows] == ["old=recipe", "new"]  # the label may hold '='
    assert rows[0]["minutes"] == 35 and rows[1]["minutes"] == 25.0
    assert rows[0]["compound"] == 0.3 and rows[0]["worst_single"] == 0.10
    assert rows[0]["mean_single"] == pytest.approx(0.06)
    assert rows[1]["compound"] is None  # not in the report: n/a, not made up
    assert rows[0]["pc"] != rows[1]["pc"]  # two different models were scored
    table = out.read_text()
    assert table == capsys.readouterr().out
    assert "| old=recipe (`" in table and "n/a" in table.splitlines()[-1]
    # Several reports (say, a later run for a new checkpoint): each checkpoint's columns from the one that holds it.
    later = {"results": {second: {"blur": {"mean_abs": 0.05}, "compound": {"mean_abs": 0.07}}}}
    assert bench.robustness_columns([report, later], second) == (0.07, 0.05, 0.05)
    assert bench.robustness_columns([report, later], first)[0] == 0.3
    assert bench.robustness_columns([], first) == (None, None, None)
    with pytest.raises(SystemExit):
        bench.main(["--row", "no-checkpoint"])
    with pytest.raises(SystemExit):
        bench.main(["--row", f"x={first}:{tmp_path / 'missing-run'}"])
