"""The app-facing service: photo -> score (+ where it falls) -> analysis, friendly errors, nothing on disk.

Runs a calibrated ``micro`` checkpoint (64 px crops) on public-domain photos built from
``skimage.data.astronaut()``; a few seconds in all on a 2-core CPU.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from conftest import build_model, faces
from PIL import Image

from mdnet import cli, percentiles, service
from mdnet.faces import FaceIndexError, NoFaceError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "assets" / "examples"
# Scores of a made-up training list: the percentile of a score is then known exactly.
REFERENCE_SCORES = [1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5]


# --------------------------------------------------------------------------- shared helpers (other test files use them)
def make_checkpoint(folder: Path, intervals: bool = True) -> Path:
    """A calibrated micro checkpoint with a score distribution of :data:`REFERENCE_SCORES` and (``intervals``)
    an ``uncertainty.safetensors`` fitted on its own scores of random faces, made-up labels around them."""
    model = build_model("micro")
    model.calibrate_references([faces(model, 2, seed=s) for s in range(2)])
    model.save_pretrained(folder)
    labels = folder.parent / f"{folder.name}-labels.txt"
    labels.write_text("".join(f"AF{i}.jpg {s}\n" for i, s in enumerate(REFERENCE_SCORES, 1)))
    service.write_score_distribution(labels, folder)
    if intervals:
        make_uncertainty(model).save(folder)
    return folder


def make_uncertainty(model):
    """:func:`mdnet.uncertainty.calibrate.fit_uncertainty` on the model's scores of random uint8 faces."""
    import torch

    from mdnet.models.mdnet import score_faces
    from mdnet.uncertainty.calibrate import fit_uncertainty

    size = model.cfg.preprocess.image_size
    gen = torch.Generator().manual_seed(5)
    train = score_faces(model, torch.randint(0, 256, (24, 3, size, size), dtype=torch.uint8, generator=gen))
    val = score_faces(model, torch.randint(0, 256, (20, 3, size, size), dtype=torch.uint8, generator=gen))
    noise = np.random.default_rng(5).normal(0, 0.3, 20)
    stats = {"train_embedding": train.embedding.numpy(), "val_embedding": val.embedding.numpy(),
             "val_score": val.score.numpy(), "val_gap": val.mirror_gap.numpy(),
             "val_target": np.clip(val.score.numpy() + noise, 1, 5)}
    return fit_uncertainty(stats, source="20 random faces (test)")


@contextlib.contextmanager
def serving(folder: Path, fast: service.ModelStatus | None = None) -> Iterator[tuple[str, Any]]:
    """``python app.py`` in this process on a free local port, over a micro checkpoint saved in ``folder``.

    Yields ``(url, demo)``; the server has the app's bounds (its ``launch_kwargs``). The live webcam uses
    ``fast`` (a student's status), else the micro checkpoint (not the shipped student).
    """
    import app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    no_student = service.ModelStatus(None, "none", "no student in this test")
    demo = app.build_demo(service.load_model(make_checkpoint(folder)), fast or no_student)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                            **app.launch_kwargs(demo))
    try:
        yield url, demo
    finally:
        demo.close()


@contextlib.contextmanager
def running_app(folder: Path) -> Iterator[str]:
    """:func:`serving`, when only the URL is needed."""
    with serving(folder) as (url, _):
        yield url


def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def jpeg_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def status(tmp_path_factory) -> service.ModelStatus:
    folder = make_checkpoint(tmp_path_factory.mktemp("ckpt") / "micro")
    status = service.load_model(folder)
    assert status.ready, status.message
    return status


# --------------------------------------------------------------------------- scoring
def test_score_photo_aligns_scores_and_places_the_score(status):
    result = service.score_photo(jpeg_bytes(astronaut()), status=status)
    assert 1.0 <= result.score <= 5.0
    assert result.n_faces == 1 and result.face_index == 0 and result.faces_note == ""
    assert result.aligned.image.shape == (64, 64, 3)
    # the percentile comes from the checkpoint's score_distribution.json
    assert result.reference_source and "labels" in result.reference_source
    expected = 100 * np.interp(result.score, REFERENCE_SCORES, np.linspace(0, 1, len(REFERENCE_SCORES)))
    assert result.percentile == pytest.approx(expected, abs=1.0)
    data = json.loads(json.dumps(result.to_json()))
    assert data["score"] == pytest.approx(result.score, abs=1e-4) and data["faces_found"] == 1
    assert "higher than" in result.summary()
    assert result.face_view().shape == (service.CROP_DISPLAY, service.CROP_DISPLAY, 3)
    assert result.live_view().shape[1] <= service.LIVE_MAX_SIDE


def test_the_service_score_is_the_mirror_averaged_score_of_the_crop(status):
    import torch

    from mdnet.models.mdnet import score_aligned

    result = service.score_photo(astronaut(), status=status)
    crop = torch.from_numpy(result.aligned.image).permute(2, 0, 1).unsqueeze(0)
    assert result.score == pytest.approx(float(score_aligned(status.model, crop)[0]), abs=1e-6)


def test_several_faces_are_listed_largest_first_and_each_can_be_scored(status):
    photo = EXAMPLES / "two_faces.jpg"
    first = service.score_photo(photo, 0, status=status, search="thorough")
    second = service.score_photo(photo, 1, status=status, search="thorough")
    assert first.n_faces == second.n_faces == 2
    assert first.aligned.faces[0].width > first.aligned.faces[1].width
    assert second.face_index == 1 and not np.allclose(first.aligned.box, second.aligned.box)
    assert "2 faces were found" in first.faces_note and first.face_choices == ["Face 1 (largest)", "Face 2"]
    with pytest.raises(FaceIndexError) as err:
        service.score_photo(photo, 5, status=status, search="thorough")
    assert "only 2 faces" in service.friendly_error(err.value)


def test_every_score_comes_with_its_calibrated_interval(status):
    assert status.uncertainty is not None
    result = service.score_photo(jpeg_bytes(astronaut()), status=status)
    i = result.interval
    assert 1.0 <= i.low <= i.high <= 5.0 and i.level == 0.9
    # the interval is the stored calibration applied to this face's mirror gap and features
    import torch

    from mdnet.models.mdnet import score_faces

    crop = torch.from_numpy(result.aligned.image).permute(2, 0, 1).unsqueeze(0)
    scored = score_faces(status.model, crop)
    again = status.uncertainty.describe(float(scored.score[0]), float(scored.mirror_gap[0]),
                                        scored.embedding[0].numpy())
    assert (i.low, i.high) == pytest.approx((again.low, again.high), abs=1e-5)
    data = json.loads(json.dumps(result.to_json()))
    assert data["interval"]["low"] == pytest.approx(i.low, abs=1e-4) and data["interval"]["level"] == 0.9
    assert "likely between" in result.summary()
    assert data["unusual_photo_note"] == (service.UNUSUAL_SENTENCE if i.unusual else "")
    report = service.explain_result(result, steps=2, status=status)
    assert report.result.interval == i  # the analysis reports the same interval
    assert json.loads(json.dumps(report.to_json()))["interval"]["high"] == pytest.approx(i.high, abs=1e-4)


def test_a_checkpoint_without_calibration_scores_without_an_interval(tmp_path):
    status = service.load_model(make_checkpoint(tmp_path / "plain", intervals=False))
    assert status.ready and status.uncertainty is None
    result = service.score_photo(astronaut(), status=status)
    assert result.interval is None and result.to_json()["interval"] is None and "likely" not in result.summary()
    (tmp_path / "plain" / "uncertainty.safetensors").write_bytes(b"not a safetensors file")
    damaged = service.load_model(tmp_path / "plain")
    assert damaged.ready and damaged.uncertainty is None  # the scores still work
    assert "without intervals" in damaged.message and "mdnet calibrate" in damaged.message


# --------------------------------------------------------------------------- analysis
def test_analyze_photo_gives_every_panel_on_the_crop_and_on_the_photo(status):
    calls: list[float] = []
    report = service.analyze_photo(astronaut(), steps=4, progress=calls.append, status=status)
    assert calls[-1] == 1.0 and calls == sorted(calls) and len(calls) >= 3
    quick = service.score_photo(astronaut(), status=status)
    assert report.score == pytest.approx(quick.score, abs=1e-6)  # one score on the whole page
    crop = report.views("crop")
    assert {k: v.shape for k, v in crop.items()} == {k: (service.CROP_DISPLAY,) * 2 + (3,) for k in crop}
    photo = report.views("photo")
    assert all(v.shape == (512, 512, 3) and v.dtype == np.uint8 for v in photo.values())
    assert not np.array_equal(photo["ig"], astronaut())  # something was drawn
    with pytest.raises(ValueError):
        report.views("elsewhere")
    for fig in (report.ablation_figure(), report.regions_figure()):
        assert fig.axes and fig.get_figwidth() > 0
    assert "alone" in report.ablation_text() and "Integrated Gradients" in report.regions_text()
    data = json.loads(json.dumps(report.to_json()))
    assert {"score", "percentile", "ablation", "regions", "integrated_gradients", "faces_found"} <= set(data)
    assert data["integrated_gradients"]["n_steps"] == 4


def test_explaining_a_scored_face_gives_the_same_analysis(status):
    quick = service.score_photo(astronaut(), status=status)
    a = service.explain_result(quick, steps=2, status=status)
    b = service.analyze_photo(astronaut(), steps=2, status=status)
    assert a.score == pytest.approx(b.score) == pytest.approx(quick.score)
    assert np.allclose(a.analysis.ig.signed, b.analysis.ig.signed, atol=1e-5)


def test_analyze_refuses_silly_step_counts(status):
    with pytest.raises(ValueError):
        service.analyze_photo(astronaut(), steps=0, status=status)


def test_photos_are_never_written_to_disk(status, tmp_path, monkeypatch):
    """Scoring and analysing from bytes leave no file behind in the working or temporary folders."""
    work, tmp = tmp_path / "work", tmp_path / "tmp"
    work.mkdir()
    tmp.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr("tempfile.tempdir", str(tmp))
    report = service.analyze_photo(jpeg_bytes(astronaut()), steps=2, status=status)
    report.views("photo")
    report.to_json()
    assert list(work.iterdir()) == [] and list(tmp.iterdir()) == []


# --------------------------------------------------------------------------- errors -> words
def too_small_face() -> np.ndarray:
    return cv2.resize(astronaut(), (150, 150), interpolation=cv2.INTER_AREA)  # a 30 px face


@pytest.mark.parametrize(
    ("make", "kind", "words"),
    [
        (lambda: np.asarray(Image.open(EXAMPLES / "coffee_no_face.jpg")), "no_face", "No face was found"),
        (too_small_face, "face_too_small", "too small"),
        (lambda: np.zeros((20, 20, 3), np.uint8), "face_too_small", "too small"),
        (lambda: b"this is not an image", "not_an_image", "not an image"),
        (lambda: b"", "empty_image", "empty"),
        (lambda: np.zeros((30, 400, 3), np.uint8), "aspect_ratio", "too wide"),
    ],
)
def test_bad_photos_become_friendly_messages(status, make, kind, words):
    with pytest.raises(Exception) as err:
        service.score_photo(make(), status=status)
    got_kind, message = service.describe_error(err.value)
    assert got_kind == kind and words in message
    assert service.is_user_error(err.value) and "Traceback" not in message


def test_an_upload_over_the_limit_is_refused_before_decoding(tmp_path):
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff" * (service.MAX_UPLOAD_BYTES + 1))
    with pytest.raises(service.UploadTooLargeError) as err:
        service.read_photo(big)
    assert f"the limit is {service.MAX_UPLOAD_MB} MB" in service.friendly_error(err.value)
    with pytest.raises(service.UploadTooLargeError):
        service.read_photo(b"\x00" * 11, max_bytes=10)


def test_a_missing_model_is_a_message_not_a_crash(tmp_path):
    broken = service.load_model(tmp_path / "nothing-here")
    assert not broken.ready
    with pytest.raises(service.ModelUnavailableError) as err:
        service.score_photo(astronaut(), status=broken)
    kind, message = service.describe_error(err.value)
    assert kind == "model_unavailable" and "could not be loaded" in message
    with pytest.raises(service.ModelUnavailableError):
        service.analyze_photo(astronaut(), status=broken)


def test_unexpected_errors_hide_their_details():
    kind, message = service.describe_error(KeyError("/secret/path"))
    assert kind == "internal" and "/secret" not in message and not service.is_user_error(KeyError())
    assert service.describe_error(MemoryError())[0] == "out_of_memory"
    assert service.describe_error(NoFaceError("none"))[1] == "none"


# --------------------------------------------------------------------------- where a score falls
def test_score_reference_percentiles():
    ref = service.ScoreReference.from_scores(np.array(REFERENCE_SCORES), "test")
    assert ref.percentile(0.5) == 0.0 and ref.percentile(5.0) == 100.0
    assert ref.percentile(3.0) == pytest.approx(50.0)
    values = [ref.percentile(s) for s in np.linspace(1, 5, 41)]
    assert values == sorted(values)
    again = service.ScoreReference.from_json(json.loads(json.dumps(ref.to_json())), "x")
    assert again == ref
    tied = service.ScoreReference.from_scores(np.array([2.0] * 5 + [3.0] * 5), "ties")
    assert 0 < tied.percentile(2.0) < 100
    with pytest.raises(ValueError):
        service.ScoreReference.from_json({"levels": [0, 100], "values": [3, 2]}, "bad")


def test_the_reference_can_live_in_the_checkpoint_metadata(tmp_path, monkeypatch):
    monkeypatch.setenv("MDNET_SCUT_DIR", str(tmp_path / "no-dataset"))
    model = build_model("micro")
    model.save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    status = service.ModelStatus(model, str(tmp_path / "ckpt"), "ok")
    assert service.score_reference(status) is None  # nothing to compare with: no percentile
    percentiles._REFERENCES.clear()
    ref = service.ScoreReference.from_scores(np.array(REFERENCE_SCORES), "meta")
    config["metadata"]["score_quantiles"] = ref.to_json()
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    assert service.score_reference(status).source == "meta"
    percentiles._REFERENCES.clear()


def test_the_cli_writes_the_distribution(tmp_path):
    labels = tmp_path / "train.txt"
    labels.write_text("AF1.jpg 2.0\nAM1.jpg 4.0\n")
    cli.run(["score-distribution", str(labels), str(tmp_path)])
    data = json.loads((tmp_path / service.SCORE_DISTRIBUTION_NAME).read_text())
    assert data["count"] == 2 and data["values"][0] == 2.0 and data["values"][-1] == 4.0
    assert os.path.getsize(tmp_path / service.SCORE_DISTRIBUTION_NAME) < 10_000
