"""SCUT-FBP5500: the official files, splits, subgroups and a fixed validation split.

Layout (as distributed)::

    ROOT/Images/AF1.jpg ...
    ROOT/train_test_files/All_labels.txt
    ROOT/train_test_files/split_of_60%training and 40%testing/{train,test}.txt
    ROOT/train_test_files/5_folders_cross_validations_files/cross_validation_K/{train,test}_K.txt

Each list line is ``NAME SCORE`` (the mean of 60 raters, 1-5). Split names:
``60-40/train``, ``60-40/test``, ``5fold-K/train``, ``5fold-K/test`` (K = 1..5),
``all``, or the path of a list file in the same format.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import re
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

GROUPS = ("AF", "AM", "CF", "CM")
SCORE_RANGE = (1.0, 5.0)
SPLIT_6040 = "split_of_60%training and 40%testing"
FOLDS = "5_folders_cross_validations_files"


class DatasetError(ValueError):
    """The dataset folder or one of its list files is not what SCUT-FBP5500 looks like."""


@dataclass(frozen=True)
class Sample:
    name: str          # file name, e.g. "AF1.jpg"
    score: float       # mean rating, 1-5
    group: str         # AF / AM / CF / CM
    path: Path         # the image file


def group_of(name: str) -> str:
    """Subgroup of an image name: Asian/Caucasian x female/male, from its prefix."""
    prefix = name[:2]
    if prefix not in GROUPS:
        raise DatasetError(f"{name!r} does not start with one of {GROUPS}: cannot tell its subgroup")
    return prefix


def read_list(path: str | Path) -> list[tuple[str, float]]:
    """Parse a ``NAME SCORE`` list file; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"list file {path} does not exist")
    entries, seen = [], set()
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise DatasetError(f"{path}:{number}: expected 'NAME SCORE', got {line.strip()!r}")
        name, raw = parts
        try:
            score = float(raw)
        except ValueError:
            raise DatasetError(f"{path}:{number}: score {raw!r} is not a number") from None
        if not (SCORE_RANGE[0] <= score <= SCORE_RANGE[1]) or math.isnan(score):
            raise DatasetError(f"{path}:{number}: score {score} is outside {SCORE_RANGE[0]}-{SCORE_RANGE[1]}")
        if name in seen:
            raise DatasetError(f"{path}:{number}: {name} is listed twice")
        try:
            group_of(name)
        except DatasetError as err:
            raise DatasetError(f"{path}:{number}: {err}") from None
        seen.add(name)
        entries.append((name, score))
    if not entries:
        raise DatasetError(f"list file {path} has no entries")
    return entries


class ScutFBP5500:
    """The dataset at ``root``: ``split(name)`` gives the samples of an official split or a list file."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DatasetError(f"dataset root {self.root} does not exist")
        self.images = self.root / "Images"
        if not self.images.is_dir():
            raise DatasetError(f"{self.root} has no Images/ folder: is it the SCUT-FBP5500 root?")
        self.lists = self.root / "train_test_files"

    def list_file(self, split: str) -> Path:
        """The list file behind a split name (or the path itself)."""
        if split == "all":
            return self.lists / "All_labels.txt"
        m = re.fullmatch(r"60-40/(train|test)", split)
        if m:
            return self.lists / SPLIT_6040 / f"{m[1]}.txt"
        m = re.fullmatch(r"5fold-([1-5])/(train|test)", split)
        if m:
            return self.lists / FOLDS / f"cross_validation_{m[1]}" / f"{m[2]}_{m[1]}.txt"
        path = Path(split).expanduser()
        if path.suffix == ".txt" or path.exists():
            return path
        raise DatasetError(
            f"unknown split {split!r}: use 60-40/train, 60-40/test, 5fold-K/train, 5fold-K/test, all, or a list file"
        )

    def split(self, split: str, check_images: bool = True) -> list[Sample]:
        path = self.list_file(split)
        if not path.is_file():
            raise DatasetError(f"split {split!r} needs {path}, which is not there")
        samples = [Sample(n, s, group_of(n), self.images / n) for n, s in read_list(path)]
        if check_images:
            missing = [s.name for s in samples if not s.path.is_file()]
            if missing:
                raise DatasetError(
                    f"{len(missing)} images of {path.name} are missing from {self.images} (e.g. {missing[:3]})"
                )
        return samples


def stratified_split(samples: list[Sample], fraction: float = 0.1, seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """Carve a fixed validation set, stratified by subgroup and by score.

    Within each subgroup the samples are sorted by score and cut into runs of
    ``round(1 / fraction)``; one sample per run (chosen with ``seed``) goes to
    validation, so every subgroup and every part of the score range is
    represented in proportion. Returns ``(train, validation)``, both sorted by name.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    rng = random.Random(seed)
    step = max(2, round(1 / fraction))
    by_group: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_group[s.group].append(s)
    val = set()
    for group in sorted(by_group):
        ranked = sorted(by_group[group], key=lambda s: (s.score, s.name))
        for start in range(0, len(ranked), step):
            run = ranked[start : start + step]
            if len(run) == step or rng.random() < len(run) / step:
                val.add(rng.choice(run).name)
    train = sorted((s for s in samples if s.name not in val), key=lambda s: s.name)
    valid = sorted((s for s in samples if s.name in val), key=lambda s: s.name)
    return train, valid


SPLIT_SEED = 0  # the project's validation part: stratified_split(60-40/train, 0.1, seed=0)


def add_split_seed(parser, held_out: str = "the validation part") -> None:
    """``--split-seed``: the seed of :func:`stratified_split`, apart from a job's ``--seed``."""
    parser.add_argument("--split-seed", type=int, default=SPLIT_SEED,
                        help=f"seed that carves {held_out} from the training list (default {SPLIT_SEED}: the "
                             "project's validation part, which the benchmarks, `mdnet calibrate` and `mdnet "
                             "distill` also use). Not --seed: runs with other seeds, and a second stage on an "
                             "--init-from model, keep the same faces out")


def cache_folder(cache_dir: str | Path, size: int) -> Path:
    """Where :func:`aligned_faces` keeps the ``size`` px crops: keyed by the template, so a new template
    never reuses stale crops."""
    from mdnet.faces.transform import TEMPLATE

    tag = hashlib.sha1(np.ascontiguousarray(TEMPLATE, dtype=np.float64).tobytes()).hexdigest()[:8]
    return Path(cache_dir) / f"aligned-{size}-{tag}"


def cache_path(cache_dir: str | Path, size: int, name: str) -> Path:
    """Where the crop of the image called ``name`` is cached."""
    return cache_folder(cache_dir, size) / f"{Path(name).stem}.png"


def aligned_faces(
    samples: list[Sample], size: int, cache_dir: str | Path | None = "cache"
) -> tuple[torch.Tensor, list[str]]:
    """Every sample's face aligned by :func:`mdnet.faces.align`: uint8 (n, 3, size, size).

    Crops are cached as PNG under ``cache_dir`` so alignment runs once per image.
    An image where no face is found is kept, resized whole (SCUT images are
    already frontal, centred faces), and its name is returned in the second
    value so callers count and report it.

    Several processes may build the same cache at once: each writes its own
    temporary file and renames it into place (atomic), so a reader finds a
    whole PNG or none, and an unreadable cached file is rebuilt. (Training
    lets the main process build it first, then the others read it.)
    """
    from mdnet.faces import AlignError, align, load_rgb

    out = torch.empty(len(samples), 3, size, size, dtype=torch.uint8)
    unaligned: list[str] = []
    for i, s in enumerate(tqdm(samples, desc=f"aligning faces ({size} px)", leave=False)):
        cached = cache_path(Path(cache_dir), size, s.name) if cache_dir else None
        crop = _read_cached(cached) if cached is not None else None
        if crop is None:
            rgb = load_rgb(s.path)
            try:
                crop = align(rgb, size=size).image
            except AlignError:
                unaligned.append(s.name)
                crop = np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR))
            else:
                if cached is not None:
                    _write_atomically(crop, cached)
        out[i] = torch.from_numpy(np.array(crop)).permute(2, 0, 1)
    return out, unaligned


def _read_cached(path: Path) -> np.ndarray | None:
    """A cached crop, or None when it is missing or unreadable (then it is built again)."""
    if not path.is_file():
        return None
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError):
        return None


def _write_atomically(crop: np.ndarray, path: Path) -> None:
    """Write a PNG under a name no other process uses, then rename it into place (atomic on one file system)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.png")
    try:
        Image.fromarray(crop).save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
