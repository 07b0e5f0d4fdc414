"""One checkpoint's mirror-averaged scores of many faces, cached per face on disk and resumable.

``CACHE/group-scores-<weights sha256>-<crop folder>-<recipe>/<set>.tsv`` holds one
``name<TAB>score`` line per face, appended a chunk at a time: an interrupted run resumes where it
stopped, a larger set reuses what a smaller one scored, and another checkpoint, crop size,
alignment template or scoring recipe never reuses stale scores. ``benchmarks/utk_groups.py`` and
``mdnet distill`` (the teacher's scores) share it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from mdnet.faces.scut import cache_folder
from mdnet.models.mdnet import MDNet, score_aligned

RECIPE = "tta-v1"  # mirror-averaged full-mode scores of the app's crops; bump if the scoring changes
CHUNK = 48  # faces aligned, scored and appended to the cache at a time (< 64: align_samples draws no bar of its own)
# A chunk of items -> (uint8 faces (n, 3, s, s), the names of their rows, names dropped as unusable).
Aligner = Callable[[Sequence], tuple[torch.Tensor, list[str], list[str]]]


def score_cache(cache_dir: Path, weights_sha256: str, size: int) -> Path:
    """The folder of one checkpoint's cached scores: its weights' hash, the crop folder (size, template), the recipe."""
    return Path(cache_dir) / f"group-scores-{weights_sha256[:16]}-{cache_folder(cache_dir, size).name}-{RECIPE}"


def load_scores(path: Path) -> dict[str, float]:
    """``name<TAB>score`` lines; a line an interrupted write left incomplete is ignored."""
    out: dict[str, float] = {}
    if not path.is_file():
        return out
    # The last piece is "" after a complete write, or a line cut short (e.g. "3.1" as "3."): never read.
    for line in path.read_text(encoding="utf-8").split("\n")[:-1]:
        name, sep, value = line.rpartition("\t")
        try:
            if sep:
                out[name] = float(value)
        except ValueError:
            continue
    return out


def append_scores(path: Path, scores: dict[str, float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(f"{name}\t{score!r}\n" for name, score in scores.items()))


def cached_scores(
    model: MDNet,
    items: Sequence,
    align: Aligner,
    store: Path,
    batch: int = 32,
    desc: str = "scoring",
    progress: bool = True,
) -> tuple[dict[str, float], list[str]]:
    """Mirror-averaged scores of ``items`` (anything with ``.name``), cached in ``store``; new ones CHUNK at a time.

    Returns ``({name: score}`` for the items scored now or before, ``names dropped by align)``.
    """
    scores = load_scores(store)
    todo = [it for it in items if it.name not in scores]
    dropped: list[str] = []
    with tqdm(total=len(todo), desc=desc, unit="face", disable=not progress or not todo) as bar:
        for start in range(0, len(todo), CHUNK):
            part = todo[start : start + CHUNK]
            faces, names, rejected = align(part)
            dropped += rejected
            new: dict[str, float] = {}
            for i in range(0, len(names), batch):
                with torch.inference_mode():
                    s = score_aligned(model, faces[i : i + batch], tta=True, batch_size=batch).tolist()
                new.update(zip(names[i : i + batch], s, strict=True))
                bar.update(len(s))
            bar.update(len(rejected))
            append_scores(store, new)
            scores.update(new)
    wanted = {it.name for it in items}
    return {k: v for k, v in scores.items() if k in wanted}, dropped
