"""The SCUT-FBP5500 reader: official layout, splits, subgroups, validation carving, aligned-face cache."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from conftest import SCUT_ROOT
from fake_scut import NO_FACE, make_fake_scut

from mdnet.faces import scut as data
from mdnet.faces.scut import DatasetError, ScutFBP5500, read_list, stratified_split


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    return make_fake_scut(tmp_path_factory.mktemp("scut"))


def test_official_split_names_resolve(fake_root):
    ds = ScutFBP5500(fake_root)
    all_ = {s.name for s in ds.split("all")}
    train, test = ds.split("60-40/train"), ds.split("60-40/test")
    assert {s.name for s in train} | {s.name for s in test} == all_
    assert not {s.name for s in train} & {s.name for s in test}
    fold = ds.split("5fold-3/test")
    assert fold and {s.name for s in fold} | {s.name for s in ds.split("5fold-3/train")} == all_
    listed = ds.split(str(fake_root / "train_test_files" / "All_labels.txt"))
    assert {s.name for s in listed} == all_
    s = train[0]
    assert s.group == s.name[:2] and s.path.is_file() and 1 <= s.score <= 5


@pytest.mark.parametrize(
    "content,message",
    [
        ("AF1.jpg\n", "expected 'NAME SCORE'"),
        ("AF1.jpg three\n", "is not a number"),
        ("AF1.jpg 5.5\n", "outside 1.0-5.0"),
        ("AF1.jpg 3\nAF1.jpg 4\n", "listed twice"),
        ("XX1.jpg 3\n", "cannot tell its subgroup"),
        ("\n\n", "has no entries"),
    ],
)
def test_malformed_lists_are_refused_with_file_and_line(tmp_path, content, message):
    path = tmp_path / "list.txt"
    path.write_text(content)
    with pytest.raises(DatasetError, match=message) as err:
        read_list(path)
    assert "list.txt" in str(err.value)


def test_wrong_roots_and_missing_files(tmp_path, fake_root):
    with pytest.raises(DatasetError, match="does not exist"):
        ScutFBP5500(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no Images/ folder"):
        ScutFBP5500(tmp_path / "empty")
    with pytest.raises(DatasetError, match="unknown split"):
        ScutFBP5500(fake_root).split("70-30/train")
    lst = tmp_path / "ghosts.txt"
    lst.write_text("AF123456.jpg 3.0\n")
    with pytest.raises(DatasetError, match="1 images of ghosts.txt are missing"):
        ScutFBP5500(fake_root).split(str(lst))


def test_stratified_split_is_fixed_disjoint_and_proportional():
    samples = [data.Sample(f"{g}{i}.jpg", 1 + 4 * ((i * 37) % 100) / 100, g, None)
               for g, n in (("AF", 400), ("AM", 400), ("CF", 150), ("CM", 150)) for i in range(n)]
    train, val = stratified_split(samples, 0.1, seed=0)
    again = stratified_split(samples, 0.1, seed=0)
    assert [s.name for s in val] == [s.name for s in again[1]]
    assert not {s.name for s in train} & {s.name for s in val}
    assert len(train) + len(val) == len(samples)
    counts = Counter(s.group for s in val)
    assert counts == {"AF": 40, "AM": 40, "CF": 15, "CM": 15}
    mean = lambda xs: sum(s.score for s in xs) / len(xs)  # noqa: E731
    assert abs(mean(val) - mean(samples)) < 0.05
    assert [s.name for s in stratified_split(samples, 0.1, seed=1)[1]] != [s.name for s in val]


def test_shared_training_split_when_present():
    if not SCUT_ROOT.is_dir():
        pytest.skip(f"the shared SCUT-FBP5500 copy is not at {SCUT_ROOT}")
    train = ScutFBP5500(SCUT_ROOT).split("60-40/train")
    assert len(train) == 3300
    assert Counter(s.group for s in train) == {"AF": 1208, "AM": 1189, "CF": 465, "CM": 438}


def test_aligned_faces_are_cached_and_failures_reported(fake_root, tmp_path, monkeypatch):
    samples = ScutFBP5500(fake_root).split("all")
    faces, unaligned = data.aligned_faces(samples, 64, tmp_path / "cache")
    assert faces.shape == (len(samples), 3, 64, 64) and faces.dtype == torch.uint8
    assert unaligned == [NO_FACE]
    cached = list((tmp_path / "cache").rglob("*.png"))
    assert len(cached) == len(samples) - 1

    def fail(*args, **kwargs):
        raise AssertionError("alignment ran again despite the cache")

    monkeypatch.setattr("mdnet.faces.align", lambda *a, **k: fail())
    ok = [s for s in samples if s.name != NO_FACE]
    again, none = data.aligned_faces(ok, 64, tmp_path / "cache")
    assert none == [] and torch.equal(again, faces[[i for i, s in enumerate(samples) if s.name != NO_FACE]])
