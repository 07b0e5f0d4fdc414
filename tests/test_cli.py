"""The ``mdnet`` command: every job is reachable, with its own ``--help``, and errors keep their codes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mdnet import cli, service
from mdnet.models import DEFAULT_CHECKPOINT

ROOT = Path(__file__).resolve().parents[1]
ASTRONAUT = ROOT / "assets" / "examples" / "astronaut.jpg"
DOCUMENTED_JOBS = {"predict", "explain", "evaluate", "train", "pretrain-prior", "baseline", "serve"}


def test_every_documented_job_is_listed():
    assert set(cli.JOBS) >= DOCUMENTED_JOBS


@pytest.mark.parametrize("job", sorted(cli.JOBS))
def test_each_job_has_its_own_help(job, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.run([job, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: mdnet {job} ")


def test_usage_errors_exit_with_code_2(capsys):
    for argv in ([], ["no-such-job"]):
        with pytest.raises(SystemExit) as exit_:
            cli.run(argv)
        assert exit_.value.code == 2
    assert "unknown job 'no-such-job'" in capsys.readouterr().err


def test_predict_through_the_command_matches_the_service(tmp_path):
    out = tmp_path / "scores.json"
    cli.run(["predict", str(ASTRONAUT), "--output", str(out)])
    rows = json.loads(out.read_text())
    expected = service.score_photo(ASTRONAUT.read_bytes(), status=service.load_model(DEFAULT_CHECKPOINT)).score
    assert rows[0]["score"] == pytest.approx(expected, abs=1e-4)


def test_serve_refuses_nothing_but_help_here(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.run(["serve", "--help"])
    assert exit_.value.code == 0
    assert "--port" in capsys.readouterr().out


def test_console_script_and_module_agree():
    """``python -m mdnet`` always works; the ``mdnet`` script exists after ``pip install -e .``."""
    by_module = subprocess.run([sys.executable, "-m", "mdnet", "--help"], capture_output=True, text=True, timeout=120)
    assert by_module.returncode == 0 and "pretrain-prior" in by_module.stdout
    script = shutil.which("mdnet", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the mdnet console script is not installed (pip install -e . installs it)")
    by_script = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert by_script.returncode == 0 and by_script.stdout == by_module.stdout


def test_the_old_module_paths_are_gone():
    for old in ("mdnet.train", "mdnet.evaluate", "mdnet.align", "mdnet.model", "mdnet.viz"):
        done = subprocess.run([sys.executable, "-c", f"import {old}"], capture_output=True, text=True, timeout=120)
        assert done.returncode != 0, old


def test_predict_writes_the_interval_columns_for_a_calibrated_checkpoint(tmp_path):
    from test_service import make_checkpoint

    folder = make_checkpoint(tmp_path / "micro")
    out = tmp_path / "scores.csv"
    cli.run(["predict", str(ASTRONAUT), str(tmp_path / "missing.jpg"), "--checkpoint", str(folder),
             "--level", "0.8", "--output", str(out)])
    import csv

    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["file", "score", "low", "high", "level", "unusual", "faces", "error"]
    low, score, high = float(rows[0]["low"]), float(rows[0]["score"]), float(rows[0]["high"])
    assert 1 <= low <= score <= high <= 5 and rows[0]["level"] == "0.8" and rows[0]["unusual"] in ("0", "1")
    status = service.load_model(folder)
    expected = service.score_photo(ASTRONAUT.read_bytes(), status=status)
    assert score == pytest.approx(expected.score, abs=1e-4)
    assert rows[1]["score"] == rows[1]["low"] == "" and "no such file" in rows[1]["error"]
    with pytest.raises(SystemExit) as exit_:
        cli.run(["predict", str(ASTRONAUT), "--checkpoint", str(folder), "--level", "90"])
    assert exit_.value.code == 2


def test_predict_fast_uses_the_student_and_says_where_to_get_one(tmp_path, monkeypatch, capsys):
    import csv

    from mdnet.models.mdnet import score_faces
    from mdnet.models.student import FBPStudent

    torch.manual_seed(0)
    folder = FBPStudent().save_pretrained(tmp_path / "student")
    monkeypatch.setenv("MDNET_FAST_CHECKPOINT", str(folder))
    out = tmp_path / "fast.csv"
    cli.run(["predict", str(ASTRONAUT), "--fast", "--output", str(out)])
    row = next(csv.DictReader(out.open()))
    status = service.load_model(folder)
    crop = service.score_photo(ASTRONAUT.read_bytes(), status=status).aligned.image
    one_pass = score_faces(status.model, torch.from_numpy(crop).permute(2, 0, 1)[None], tta=False)
    assert float(row["score"]) == pytest.approx(float(one_pass.score[0]), abs=1e-4) and row["low"] == ""
    monkeypatch.setenv("MDNET_FAST_CHECKPOINT", str(tmp_path / "nowhere"))
    with pytest.raises(SystemExit) as exit_:
        cli.run(["predict", str(ASTRONAUT), "--fast"])
    assert exit_.value.code == 2 and "mdnet distill" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.run(["predict", str(ASTRONAUT), "--fast", "--checkpoint", str(folder)])  # one or the other


def test_predict_scores_on_when_the_interval_file_is_damaged(tmp_path, capsys):
    import csv

    from test_service import make_checkpoint

    folder = make_checkpoint(tmp_path / "micro")
    (folder / "uncertainty.safetensors").write_bytes(b"not a safetensors file")
    out = tmp_path / "scores.csv"
    cli.run(["predict", str(ASTRONAUT), "--checkpoint", str(folder), "--output", str(out)])
    row = next(csv.DictReader(out.open()))
    assert float(row["score"]) > 0 and row["low"] == "" and "mdnet calibrate" in capsys.readouterr().err
