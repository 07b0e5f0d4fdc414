"""Unlabeled faces for training, and a teacher checkpoint's scores of them, computed once and cached.

The faces come from :mod:`mdnet.faces.unlabeled` (any folder of photos; UTKFace by default), aligned
through the shared crop cache; faces without a usable face are dropped there and reported.

The teacher (any MD-Net checkpoint, e.g. ``checkpoints/default``) scores each face the one way
every scorer does (:func:`mdnet.models.mdnet.score_aligned`: mirror-averaged), split between the
processes (:func:`mdnet.training.distributed.sharded_map`). The scores are cached per face in the
store that ``mdnet distill`` and ``benchmarks/utk_groups.py`` share
(:mod:`mdnet.training.score_store`: keyed by the teacher's weights, the crops and the scoring
recipe), so a face any of them scored is never scored again and a larger subset reuses a smaller one's.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from mdnet.faces.unlabeled import align_samples, read_folder, resolve_folder
from mdnet.models.checkpoint import WEIGHTS_NAME, file_sha256, read_config, resolve_checkpoint
from mdnet.models.mdnet import MDNet, score_aligned
from mdnet.training import distributed as dist
from mdnet.training.score_store import append_scores, load_scores, score_cache


class UnlabeledFaces(NamedTuple):
    faces: torch.Tensor          # (n, 3, size, size) uint8 aligned crops of the kept photos
    names: list[str]             # one per row
    rejected: list[str]          # photos dropped: no usable face, or not decodable
    teacher_faces: torch.Tensor  # the same faces aligned at the teacher's size (``faces`` when it is the same)


def load_unlabeled(folder: str, size: int, cache_dir: str | Path | None, limit: int | None = None, seed: int = 0,
                   teacher_size: int | None = None) -> UnlabeledFaces:
    """Aligned crops of a seeded subset of ``limit`` photos of ``folder`` ('utkface': the shared copy).

    With a ``teacher_size`` other than ``size``, the kept faces are aligned at that size too (through
    the same cache), and a face only kept at one size is dropped at both.
    """
    samples = read_folder(resolve_folder(folder), limit=limit, seed=seed)
    aligned = align_samples(samples, size, cache_dir)
    if not teacher_size or teacher_size == size:
        return UnlabeledFaces(aligned.faces, aligned.names, aligned.rejected, aligned.faces)
    kept = set(aligned.names)
    other = align_samples([s for s in samples if s.name in kept], teacher_size, cache_dir)
    both = set(other.names)
    rows = [i for i, name in enumerate(aligned.names) if name in both]
    return UnlabeledFaces(aligned.faces[rows], other.names, aligned.rejected + other.rejected, other.faces)


def teacher_size(teacher: str | Path) -> int:
    """The crop size the teacher checkpoint scores (its ``preprocess.image_size``)."""
    return read_config(resolve_checkpoint(teacher))[0].preprocess.image_size


def teacher_scores(accelerator: Accelerator, teacher: str | Path, faces: torch.Tensor, names: list[str],
                   cache_dir: str | Path | None, batch: int = 64,
                   set_name: str = "unlabeled") -> tuple[torch.Tensor, bool]:
    """Mirror-averaged scores (n,) of ``faces`` (aligned at the teacher's size) by checkpoint ``teacher``.

    The faces the store (``set_name``.tsv in :func:`~mdnet.training.score_store.score_cache`) lacks are
    scored by all processes together and appended by the main one (collective; the main process's
    view of the store decides what is scored). Returns (scores, whether all came from the cache).
    """
    directory = resolve_checkpoint(teacher)
    sha = file_sha256(directory / WEIGHTS_NAME)
    store = score_cache(Path(cache_dir), sha, faces.shape[-1]) / f"{set_name}.tsv" if cache_dir else None
    known = load_scores(store) if store is not None else {}
    todo = broadcast_object_list([[i for i, name in enumerate(names) if name not in known]])[0]
    if todo:
        model = MDNet.from_pretrained(directory, device=accelerator.device).for_inference()
        if model.cfg.preprocess.image_size != faces.shape[-1]:
            raise ValueError(f"teacher {teacher} scores {model.cfg.preprocess.image_size} px crops, "
                             f"got {faces.shape[-1]} px")
        rows = torch.tensor(todo, dtype=torch.long)
        new = dist.sharded_map(accelerator, lambda idx: score_aligned(model, faces[rows[idx.cpu()]],
                                                                        batch_size=len(idx)),
                               len(rows), batch, desc=f"teacher scores ({len(rows)} of {len(faces)} faces)")
        scored = dict(zip([names[i] for i in todo], new.float().tolist(), strict=True))
        if store is not None and accelerator.is_main_process:
            append_scores(store, scored)
        accelerator.wait_for_everyone()
        known = {**known, **scored}
    return torch.tensor([known[name] for name in names], dtype=torch.float32), not todo
