"""The reader for folders of unlabeled face photos: names, metadata, subsets, rejects and the shared cache.

The folder is made in tmp_path from ``skimage.data.astronaut()`` (public domain) with UTKFace-style
names, plus a blank image (no face), a corrupt JPEG and a text file. Only the last test reads
UTKFace itself, and skips when ../shared is not there.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import mdnet.faces
from mdnet.faces import scut
from mdnet.faces import unlabeled as U
from mdnet.faces.scut import DatasetError

FACES = ("25_0_0_20170104003740977.jpg", "31_1_2_20170116174525125.jpg", "40_1_1_20170109150557335.jpg")
BLANK = "blank_wall.jpg"
BROKEN = "70_0_3_20170117173717445.jpg"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from skimage import data

    root = tmp_path_factory.mktemp("faces")
    face = data.astronaut()[20:240, 100:320]  # the face filling the frame, like UTKFace's tight crops
    for i, name in enumerate(FACES):
        arr = np.clip(face.astype(np.float32) * (0.85 + 0.15 * i), 0, 255).astype(np.uint8)
        Image.fromarray(arr).resize((200, 200), Image.BILINEAR).save(root / name, quality=90)
    Image.new("RGB", (200, 200), (128, 128, 128)).save(root / BLANK)
    (root / BROKEN).write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    (root / "notes.txt").write_text("not an image")
    (root / "sub").mkdir()
    Image.new("RGB", (50, 50)).save(root / "sub" / "ignored.png")
    return root


def test_reads_images_sorted_with_metadata(folder):
    samples = U.read_folder(folder)
    names = [s.name for s in samples]
    assert names == sorted([*FACES, BLANK, BROKEN])
    by_name = {s.name: s for s in samples}
    meta = by_name["31_1_2_20170116174525125.jpg"].meta
    assert (meta.age, meta.gender_label, meta.race_label, meta.date) == (31, "female", "Asian", "20170116174525125")
    assert by_name[BLANK].meta is None and by_name[BLANK].group == ("unknown", "unknown")
    assert by_name[FACES[0]].group == ("White", "male")
    assert all(s.path == folder / s.name for s in samples)


@pytest.mark.parametrize(
    "name,expected",
    [
        ("16_0_0_20170102234641453.jpg", (16, 0, 0, "20170102234641453")),
        ("61_1_4_20170109142408075.jpg.chip.jpg", (61, 1, 4, "20170109142408075")),  # UTKFace's own naming
        ("24_0_1_20170116220224657 .jpg", (24, 0, 1, "20170116220224657")),  # quirks of two files in ../shared
        ("55_0_0_20170116232725357jpg.chip.jpg", (55, 0, 0, "20170116232725357")),
        ("30_1_3.png", (30, 1, 3, None)),
        ("30_1_3_x.png", (30, 1, 3, None)),
        ("30_2_3_2017.jpg", None),   # gender out of range
        ("30_1_7_2017.jpg", None),   # race out of range
        ("39_1_20170116174525125.jpg", None),  # race missing (a known UTKFace quirk)
        ("AF1.jpg", None),
    ],
)
def test_parse_utkface_name(name, expected):
    meta = U.parse_utkface_name(name)
    assert (meta and (meta.age, meta.gender, meta.race, meta.date)) == expected


def test_missing_or_empty_folders_are_typed_errors(tmp_path):
    with pytest.raises(U.UnlabeledDataError, match="does not exist"):
        U.read_folder(tmp_path / "nope")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(U.UnlabeledDataError, match="holds no images") as err:
        U.read_folder(tmp_path)
    assert isinstance(err.value, DatasetError)  # callers that catch the SCUT reader's errors catch these too
    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    with pytest.raises(U.UnlabeledDataError, match="share one cached crop"):
        U.read_folder(tmp_path)


def test_seeded_subsets(folder):
    every = U.read_folder(folder)
    a, b = U.read_folder(folder, limit=3, seed=1), U.read_folder(folder, limit=3, seed=1)
    assert a == b and len(a) == 3 and [s.name for s in a] == sorted(s.name for s in a)
    assert {s.name for s in a} < {s.name for s in every}
    assert len({tuple(s.name for s in U.subset(every, 2, seed)) for seed in range(10)}) > 1
    assert U.read_folder(folder, limit=100) == every
    with pytest.raises(ValueError):
        U.subset(every, 0)


def test_rejects_are_dropped_counted_and_cached(folder, tmp_path, monkeypatch, capsys):
    samples = U.read_folder(folder)
    cache = tmp_path / "cache"
    first = U.align_samples(samples, size=64, cache_dir=cache)
    assert first.names == list(FACES)  # sorted order kept, rejects dropped
    assert first.rejected == [BROKEN, BLANK]
    assert first.reasons[BLANK] == U.NO_FACE and first.reasons[BROKEN].startswith("unreadable")
    assert first.faces.shape == (3, 3, 64, 64) and first.faces.dtype == torch.uint8
    assert "aligned 3 of 5 faces" in capsys.readouterr().err

    # The crops sit in the SCUT-FBP5500 cache folder (the same key), with the rejects beside them.
    crops = sorted(p.name for p in scut.cache_folder(cache, 64).glob("*.png"))
    assert crops == sorted(n.replace(".jpg", ".png") for n in FACES)
    assert scut.cache_path(cache, 64, FACES[0]).parent == scut.cache_folder(cache, 64)
    assert set(U.known_rejects(cache, 64)) == {BLANK, BROKEN}
    stamps = {p: p.stat().st_mtime_ns for p in scut.cache_folder(cache, 64).iterdir()}

    calls = []
    monkeypatch.setattr(mdnet.faces, "align", lambda *a, **k: calls.append(a) or pytest.fail("re-aligned"))
    monkeypatch.setattr(mdnet.faces, "load_rgb", lambda *a, **k: calls.append(a) or pytest.fail("re-decoded"))
    second = U.align_samples(samples, size=64, cache_dir=cache, report=False)
    assert not calls
    assert torch.equal(second.faces, first.faces) and second.names == first.names
    assert second.rejected == first.rejected and second.reasons == first.reasons
    assert {p: p.stat().st_mtime_ns for p in scut.cache_folder(cache, 64).iterdir()} == stamps
    monkeypatch.undo()

    # Only building the cache: crops already there are not even decoded.
    monkeypatch.setattr(scut, "_read_cached", lambda path: pytest.fail(f"decoded {path}"))
    built = U.align_samples(samples, size=64, cache_dir=cache, keep=False, report=False)
    assert built.names == first.names and built.rejected == first.rejected
    monkeypatch.undo()

    retried = U.align_samples(samples, size=64, cache_dir=cache, retry_rejects=True, keep=False, report=False)
    assert retried.names == first.names and retried.rejected == first.rejected
    assert retried.faces.numel() == 0


def test_without_cache_nothing_is_written(folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    samples = [s for s in U.read_folder(folder) if s.name in (FACES[0], BLANK)]
    result = U.align_samples(samples, size=32, cache_dir=None, report=False)
    assert result.names == [FACES[0]] and result.rejected == [BLANK]
    assert not list(tmp_path.iterdir())


def test_group_summary(folder):
    samples = U.read_folder(folder)
    counts = U.group_counts(samples)
    assert counts[("White", "male")] == 1 and counts[("Indian", "male")] == 1 and counts[("unknown", "unknown")] == 1
    table = U.group_summary(samples, [BLANK, BROKEN])
    assert "| Indian | male | 1 | 1 | 100.0 |" in table
    assert "| unknown | unknown | 1 | 1 | 100.0 |" in table
    assert "| Asian | female | 1 | 0 | 0.0 |" in table
    assert table.splitlines()[-1] == "| all | | 5 | 2 | 40.0 |"


def test_the_command_builds_the_cache(folder, tmp_path, capsys):
    from mdnet import cli

    cli.run(["align-folder", "--folder", str(folder), "--size", "32", "--cache-dir", str(tmp_path / "c"),
             "--limit", "2"])
    assert "2 photos in" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        cli.run(["align-folder", "--folder", str(tmp_path / "missing")])
    assert exit_.value.code == 2 and capsys.readouterr().err.startswith("error: ")


@pytest.mark.skipif(not U.DEFAULT_FOLDER.is_dir(), reason="UTKFace is not in ../shared/data/utkface/images")
def test_utkface_names_all_parse():
    samples = U.read_folder()
    assert len(samples) > 18000
    assert all(s.meta is not None and 16 <= s.meta.age <= 70 for s in samples)
    assert U.group_counts(samples)[("White", "male")] == 4293  # the counts in the data set's README


def test_every_job_spells_the_unlabeled_folder_the_same_way(tmp_path):
    assert U.resolve_folder("utkface") == U.resolve_folder("default") == U.DEFAULT_FOLDER
    assert U.resolve_folder("none") is None and U.resolve_folder(None) is None
    assert U.resolve_folder(str(tmp_path)) == tmp_path
