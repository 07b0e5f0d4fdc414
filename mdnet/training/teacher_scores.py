"""Unlabeled faces for training, and a teacher checkpoint's scores of them, computed once and cached.

The faces come from :mod:`mdnet.faces.unlabeled` (any folder of photos; UTKFace by default), aligned
through the shared crop cache; faces without a usable face are dropped there and reported.

The teacher (any MD-Net checkpoint, e.g. ``checkpoints/default``) scores each face the one way
every scorer does (:func:`mdnet.models.mdnet.score_aligned`: mirror-averaged), split between the
processes (:func:`mdnet.training.distributed.sharded_map`). The scores are cached as JSON under
``CACHE/teacher-scores/``, in a file keyed by the teacher's weights (sha256 of its safetensors
file), the crops (size and alignment template) and the list of face names: another teacher,
another alignment or another subset of faces never reuses stale scores.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import NamedTuple

import torch
from accelerate import Accelerator

from mdnet.faces.scut import cache_folder
from mdnet.faces.unlabeled import align_samples, read_folder, resolve_folder
from mdnet.models.checkpoint import WEIGHTS_NAME, file_sha256, read_config, resolve_checkpoint
from mdnet.models.mdnet import MDNet, score_aligned
from mdnet.training import distributed as dist


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


def teacher_key(weights_sha256: str, names: list[str], size: int) -> str:
    """The cache file's name: the teacher's weights, the crops (size + template) and the faces."""
    crops = cache_folder(".", size).name  # aligned-SIZE-TEMPLATEHASH
    faces = hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]
    return f"{weights_sha256[:16]}-{crops}-{len(names)}-{faces}.json"


def _read(path: Path, names: list[str]) -> torch.Tensor | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("names") != names or len(data.get("scores", [])) != len(names):
        return None
    return torch.tensor(data["scores"], dtype=torch.float32)


def _write_atomically(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(json.dumps(data) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def teacher_scores(accelerator: Accelerator, teacher: str | Path, faces: torch.Tensor, names: list[str],
                   cache_dir: str | Path | None, batch: int = 64) -> tuple[torch.Tensor, bool]:
    """Mirror-averaged scores (n,) of ``faces`` (aligned at the teacher's size) by checkpoint ``teacher``.

    Read from the cache when every process finds it there; else computed by all processes together
    and written by the main one (collective). Returns (scores, whether they came from the cache).
    """
    directory = resolve_checkpoint(teacher)
    sha = file_sha256(directory / WEIGHTS_NAME)
    path = Path(cache_dir) / "teacher-scores" / teacher_key(sha, names, faces.shape[-1]) if cache_dir else None
    cached = _read(path, names) if path is not None and path.is_file() else None
    if dist.reduce_sum(accelerator, float(cached is not None)) == accelerator.num_processes:
        return cached, True
    model = MDNet.from_pretrained(directory, device=accelerator.device)
    if model.cfg.preprocess.image_size != faces.shape[-1]:
        raise ValueError(f"teacher {teacher} scores {model.cfg.preprocess.image_size} px crops, "
                         f"got {faces.shape[-1]} px")
    scores = dist.sharded_map(accelerator, lambda idx: score_aligned(model, faces[idx.cpu()], batch_size=len(idx)),
                              len(faces), batch, desc=f"teacher scores ({len(faces)} faces)")
    if path is not None and accelerator.is_main_process:
        _write_atomically(path, {"teacher": str(teacher), "weights_sha256": sha, "size": faces.shape[-1],
                                 "names": names, "scores": scores.tolist()})
    accelerator.wait_for_everyone()
    return scores.float(), False
