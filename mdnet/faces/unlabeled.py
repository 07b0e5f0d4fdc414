"""Any folder of face photos without beauty scores (by default UTKFace, in ``../shared``).

Photos go through the same alignment and the same on-disk cache as SCUT-FBP5500
(:func:`mdnet.faces.scut.aligned_faces`: PNG crops under ``cache/aligned-SIZE-TAG/``, keyed by
the template). One difference, on purpose: SCUT-FBP5500 keeps a face the aligner cannot find
(resized whole, as its photos are centred frontal faces); an in-the-wild photo without a usable
face is **dropped** here, and its name is returned and reported, so nothing unaligned reaches a
model. Rejects are remembered in ``rejected.txt`` beside the crops, so later runs skip them
(``retry_rejects=True`` tries them again).

File names in UTKFace's style, ``AGE_GENDER_RACE_DATE.jpg`` (GENDER 0 male, 1 female; RACE 0
White, 1 Black, 2 Asian, 3 Indian, 4 Others), give each sample approximate metadata; other
names give ``meta=None``. UTKFace is for non-commercial research only: never commit its photos.

    from mdnet.faces.unlabeled import read_folder, align_samples, group_summary
    samples = read_folder(limit=2000, seed=0)          # default: ../shared/data/utkface/images
    result = align_samples(samples, size=224)          # faces (n, 3, 224, 224) uint8, names, rejected
    print(group_summary(samples, result.rejected))

Build the whole alignment cache once (prints the time and the rejects per group):

    mdnet align-folder --size 224 --cache-dir cache            # add --limit 2000 for a quick run

(On the shared 2-core machine, busy: 78 ms a photo, so about 24 min for all 18,336; 1.4 % rejected.)
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm import tqdm

from mdnet.faces.scut import DatasetError, aligned_faces, cache_folder, cache_path

UTKFACE_ROOT = Path(os.environ.get("MDNET_UTKFACE_DIR", Path(__file__).resolve().parents[3] / "shared/data/utkface"))
DEFAULT_FOLDER = UTKFACE_ROOT / "images"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jfif", ".png", ".webp", ".bmp", ".gif")  # what load_rgb decodes
GENDERS = ("male", "female")
RACES = ("White", "Black", "Asian", "Indian", "Others")
UNKNOWN = "unknown"
REJECTS_FILE = "rejected.txt"
NO_FACE = "no usable face found"
# AGE_GENDER_RACE[_DATE], then anything but a digit: UTKFace's own names end in ".jpg.chip.jpg", and two in
# this copy have a stray space or a missing dot before the suffix.
_UTK_NAME = re.compile(r"(\d{1,3})_([01])_([0-4])(?:_(\d+))?(?!\d)")
_CHUNK = 64  # samples per call of aligned_faces (a decode error only redoes its chunk, one by one)


class UnlabeledDataError(DatasetError):
    """The folder of face photos is missing, holds no images, or its names collide in the cache."""


@dataclass(frozen=True)
class FaceMeta:
    """UTKFace's own labels, parsed from the file name (estimated by hand: approximate)."""

    age: int            # years
    gender: int         # 0 male, 1 female
    race: int           # 0 White, 1 Black, 2 Asian, 3 Indian, 4 Others
    date: str | None    # capture/upload stamp, e.g. "20170102234641453"

    @property
    def gender_label(self) -> str:
        return GENDERS[self.gender]

    @property
    def race_label(self) -> str:
        return RACES[self.race]


@dataclass(frozen=True)
class UnlabeledSample:
    """One photo: ``name`` (the file name, also the cache key), ``path``, and metadata if the name has it."""

    name: str
    path: Path
    meta: FaceMeta | None = None

    @property
    def group(self) -> tuple[str, str]:
        """``(race, gender)`` labels, ``("unknown", "unknown")`` without metadata."""
        return (self.meta.race_label, self.meta.gender_label) if self.meta else (UNKNOWN, UNKNOWN)


class AlignedSet(NamedTuple):
    """What :func:`align_samples` returns."""

    faces: torch.Tensor          # (n_kept, 3, size, size) uint8 RGB, in the order of the samples
    names: list[str]             # the kept samples' names, one per row of ``faces``
    rejected: list[str]          # names dropped because no usable face was found or the file did not decode
    reasons: dict[str, str]      # name -> why it was rejected


def parse_utkface_name(name: str) -> FaceMeta | None:
    """``AGE_GENDER_RACE_DATE.jpg`` -> :class:`FaceMeta`; ``None`` when the name is not in that form."""
    m = _UTK_NAME.match(Path(name).name)
    if m is None:
        return None
    return FaceMeta(age=int(m[1]), gender=int(m[2]), race=int(m[3]), date=m[4])


def read_folder(
    folder: str | Path | None = None, *, limit: int | None = None, seed: int = 0
) -> list[UnlabeledSample]:
    """The image files directly in ``folder`` (default :data:`DEFAULT_FOLDER`), sorted by name.

    Files are chosen by suffix (:data:`IMAGE_SUFFIXES`, any case); other files and sub-folders
    are ignored. ``limit`` keeps a random subset of that many, drawn with ``seed`` (the same
    seed gives the same subset), still sorted by name.

    Raises:
        UnlabeledDataError: the folder is missing, holds no images, or two images share a name
            stem (``a.jpg`` and ``a.png`` would share one cached crop).
    """
    folder = Path(folder if folder is not None else DEFAULT_FOLDER).expanduser()
    if not folder.is_dir():
        hint = " (UTKFace is expected in ../shared/data/utkface/images; MDNET_UTKFACE_DIR overrides)"
        raise UnlabeledDataError(f"face folder {folder} does not exist" + (hint if folder == DEFAULT_FOLDER else ""))
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise UnlabeledDataError(f"{folder} holds no images (looked for {', '.join(IMAGE_SUFFIXES)})")
    stems = Counter(p.stem for p in files)
    clashes = sorted(s for s, n in stems.items() if n > 1)
    if clashes:
        raise UnlabeledDataError(
            f"{len(clashes)} names in {folder} differ only by their suffix (e.g. {clashes[:3]}): "
            "they would share one cached crop; rename them"
        )
    samples = [UnlabeledSample(p.name, p, parse_utkface_name(p.name)) for p in files]
    return subset(samples, limit, seed)


FOLDER_ALIASES = ("utkface", "default")  # the shared UTKFace copy, as the training jobs' --unlabeled spell it


def resolve_folder(value: str | Path | None) -> Path | None:
    """A job's ``--unlabeled`` value -> the folder to read: ``utkface`` or ``default`` name the shared UTKFace
    copy (:data:`DEFAULT_FOLDER`), ``none`` (or nothing) none, anything else is a folder path."""
    if value is None or str(value) in ("", "none"):
        return None
    return DEFAULT_FOLDER if str(value) in FOLDER_ALIASES else Path(value)


def subset(samples: Sequence[UnlabeledSample], limit: int | None, seed: int = 0) -> list[UnlabeledSample]:
    """A seeded random subset of ``limit`` samples (all of them if ``limit`` is None or too large), sorted by name."""
    samples = sorted(samples, key=lambda s: s.name)
    if limit is None or limit >= len(samples):
        return samples
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    return sorted(random.Random(seed).sample(samples, limit), key=lambda s: s.name)


def known_rejects(cache_dir: str | Path | None, size: int) -> dict[str, str]:
    """Names an earlier run could not align at ``size`` (name -> reason), from the cache's ``rejected.txt``."""
    if not cache_dir:
        return {}
    path = cache_folder(cache_dir, size) / REJECTS_FILE
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        name, _, reason = line.partition("\t")
        if name:
            out[name] = reason or NO_FACE
    return out


def _remember_rejects(cache_dir: str | Path | None, size: int, reasons: dict[str, str]) -> None:
    # One short append per line (O_APPEND): safe enough when several processes build the cache at once;
    # a lost or doubled line only means a face is tried again or listed twice.
    if not cache_dir or not reasons:
        return
    path = cache_folder(cache_dir, size) / REJECTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        for name, reason in reasons.items():
            f.write(f"{name}\t{' '.join(reason.split())}\n")


def _align_chunk(chunk: list[UnlabeledSample], size: int, cache_dir: str | Path | None):
    """Aligned rows of ``chunk`` (faces not found included, resized whole) and ``{name: reason}`` of its rejects."""
    from mdnet.faces.errors import AlignError

    try:
        faces, unaligned = aligned_faces(chunk, size, cache_dir)
        return faces, dict.fromkeys(unaligned, NO_FACE)
    except AlignError:  # a file that does not decode: redo this chunk one by one to find it (the rest is cached)
        pass
    faces = torch.zeros(len(chunk), 3, size, size, dtype=torch.uint8)
    reasons: dict[str, str] = {}
    for i, s in enumerate(chunk):
        try:
            one, unaligned = aligned_faces([s], size, cache_dir)
        except AlignError as err:
            reasons[s.name] = f"unreadable: {err}"
            continue
        faces[i] = one[0]
        reasons.update(dict.fromkeys(unaligned, NO_FACE))
    return faces, reasons


def align_samples(
    samples: Sequence[UnlabeledSample],
    size: int = 224,
    cache_dir: str | Path | None = "cache",
    *,
    keep: bool = True,
    retry_rejects: bool = False,
    report: bool = True,
) -> AlignedSet:
    """Align every sample (through the SCUT-FBP5500 cache) and DROP the ones without a usable face.

    Args:
        samples: from :func:`read_folder` (anything with ``.name`` and ``.path``).
        size: side of the aligned crops.
        cache_dir: root of the crop cache (``None``: no cache, nothing remembered).
        keep: return the crops; ``False`` only builds the cache (``faces`` is then empty:
            the whole of UTKFace at 224 px is 2.8 GB of uint8).
        retry_rejects: try again the names an earlier run rejected.
        report: print one line with the counts to stderr.

    Returns:
        :class:`AlignedSet`: ``faces`` ``(n_kept, 3, size, size)`` uint8, ``names`` of its rows,
        ``rejected`` (the dropped names, in sample order) and ``reasons``.
    """
    samples = list(samples)
    remembered = {} if retry_rejects else known_rejects(cache_dir, size)
    todo = [s for s in samples if s.name not in remembered]
    names: list[str] = []
    if not keep and cache_dir is not None:  # only building the cache: a crop already there need not be decoded
        names = [s.name for s in todo if cache_path(cache_dir, size, s.name).is_file()]
        done = set(names)
        todo = [s for s in todo if s.name not in done]
    out = torch.empty(len(todo) if keep else 0, 3, size, size, dtype=torch.uint8)
    new_rejects: dict[str, str] = {}
    bar = tqdm(total=len(todo), desc=f"aligning unlabeled faces ({size} px)", unit="face", disable=len(todo) < _CHUNK)
    with bar:
        for start in range(0, len(todo), _CHUNK):
            chunk = todo[start : start + _CHUNK]
            faces, reasons = _align_chunk(chunk, size, cache_dir)
            new_rejects.update(reasons)
            for i, s in enumerate(chunk):
                if s.name in reasons:
                    continue
                if keep:
                    out[len(names)] = faces[i]
                names.append(s.name)
            bar.update(len(chunk))
    _remember_rejects(cache_dir, size, new_rejects)
    if not keep:  # crops found in the cache came first: back to the samples' order
        position = {s.name: i for i, s in enumerate(samples)}
        names.sort(key=position.__getitem__)
    kept = set(names)
    reasons = {s.name: remembered.get(s.name) or new_rejects[s.name] for s in samples if s.name not in kept}
    rejected = list(reasons)
    if report:
        pct = 100 * len(rejected) / max(1, len(samples))
        print(
            f"aligned {len(names)} of {len(samples)} faces at {size} px; dropped {len(rejected)} ({pct:.1f} %) "
            f"without a usable face ({len(rejected) - len(new_rejects)} known from an earlier run)",
            file=sys.stderr,
        )
    return AlignedSet(out[: len(names)] if keep else out, names, rejected, reasons)


def group_counts(samples: Iterable[UnlabeledSample]) -> Counter[tuple[str, str]]:
    """How many samples per ``(race, gender)`` label (``("unknown", "unknown")`` without metadata)."""
    return Counter(s.group for s in samples)


def group_summary(samples: Sequence[UnlabeledSample], rejected: Iterable[str] = ()) -> str:
    """A Markdown table of race x gender: photos, rejected by the aligner, and the reject rate."""
    rejected = set(rejected)
    total = group_counts(samples)
    dropped = group_counts(s for s in samples if s.name in rejected)
    order = [(r, g) for r in RACES for g in GENDERS] + [(UNKNOWN, UNKNOWN)]
    lines = ["| race | gender | photos | rejected | rejected % |", "|---|---|---|---|---|"]
    for key in order:
        if total[key]:
            rate = 100 * dropped[key] / total[key]
            lines.append(f"| {key[0]} | {key[1]} | {total[key]} | {dropped[key]} | {rate:.1f} |")
    n, d = sum(total.values()), sum(dropped.values())
    lines.append(f"| all | | {n} | {d} | {100 * d / max(1, n):.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Build the alignment cache for a folder of faces; print the time and the rejects per group."""
    parser = argparse.ArgumentParser(prog=prog, description=main.__doc__)
    parser.add_argument("--folder", default=None, help=f"folder of face photos (default {DEFAULT_FOLDER})")
    parser.add_argument("--size", type=int, default=224, help="side of the aligned crops (default 224)")
    parser.add_argument("--cache-dir", default="cache", help="root of the crop cache (default cache/)")
    parser.add_argument("--limit", type=int, default=None, help="only a seeded random subset of this many photos")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subset (default 0)")
    parser.add_argument("--retry-rejects", action="store_true", help="try again the photos an earlier run rejected")
    args = parser.parse_args(argv)
    try:
        samples = read_folder(args.folder, limit=args.limit, seed=args.seed)
    except UnlabeledDataError as err:
        parser.exit(2, f"error: {err}\n")
    start = time.perf_counter()
    result = align_samples(samples, args.size, args.cache_dir, keep=False, retry_rejects=args.retry_rejects)
    seconds = time.perf_counter() - start
    print(f"{len(samples)} photos in {seconds:.1f} s ({1000 * seconds / len(samples):.1f} ms per photo)")
    print(group_summary(samples, result.rejected))
    unreadable = [n for n, why in result.reasons.items() if why.startswith("unreadable")]
    if unreadable:
        print(f"{len(unreadable)} files did not decode, e.g. {unreadable[:3]}")
    return 0


# A stratified subset by race x gender (benchmarks/utk_groups.py, mdnet distill --unlabeled-per-group).
UTK_GROUPS = [(r, g) for r in RACES for g in GENDERS]


def stratified_subset(
    samples: Sequence[UnlabeledSample], per_group: int, seed: int = 0
) -> list[UnlabeledSample]:
    """``per_group`` samples of every race x gender (all of a smaller group), sorted by name.

    Each group draws with its own seed (``seed`` and the group), so one group's subset does not
    depend on the others. Samples without metadata are left out.
    """
    by_group: dict[tuple[str, str], list[UnlabeledSample]] = defaultdict(list)
    for s in samples:
        if s.meta is not None:
            by_group[s.group].append(s)
    out: list[UnlabeledSample] = []
    for key in UTK_GROUPS:
        pool = sorted(by_group[key], key=lambda s: s.name)
        out += pool if len(pool) <= per_group else random.Random(f"{seed}-{key[0]}-{key[1]}").sample(pool, per_group)
    return sorted(out, key=lambda s: s.name)


def select_faces(
    folder: str | Path | None,
    per_group: int | None,
    seed: int,
    rejects: set[str],
    min_age: int | None = None,
    max_age: int | None = None,
) -> list[UnlabeledSample]:
    """The photos to score: known rejects and ages out of range dropped, then the stratified subset (None: all)."""
    samples = [s for s in read_folder(folder) if s.name not in rejects]
    if min_age is not None or max_age is not None:
        lo, hi = min_age if min_age is not None else 0, max_age if max_age is not None else 1000
        samples = [s for s in samples if s.meta is not None and lo <= s.meta.age <= hi]
    return samples if per_group is None else stratified_subset(samples, per_group, seed)
