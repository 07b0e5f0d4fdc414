"""Snapshot-like variants of every training photo, aligned once and cached on disk.

Rotation, size, framing and re-compression of the whole photo change what the detector sees,
so their effect on the crop can only be learnt from photos perturbed BEFORE alignment
(:func:`mdnet.faces.augment.perturb_photo`). Alignment costs 40-80 ms a photo, too slow to do
per draw, so each training face gets ``count`` variants up front: variant ``k`` of face ``name``
is ``perturb_photo(photo, seed(name, k))`` -> :func:`mdnet.faces.align` -> crop. Training then
picks the original crop or one of the variants per draw (:mod:`mdnet.training.camera`).

Crops are PNG files beside the alignment cache (:func:`mdnet.faces.scut.cache_folder`, keyed by
crop size and template), in a folder keyed by a hash of the :class:`VariantRecipe` (its ranges,
its seed and :data:`RECIPE_VERSION`): changing any of them never reuses a stale crop. A variant
whose face the aligner rejects (shrunk under its 40 px minimum, say) falls back to the original
crop; it is listed in ``rejected.txt`` there, so later runs neither align it again nor lose count.
With several processes, each builds its share (:func:`mdnet.training.distributed.sharded_map`)
and every process gets all of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from accelerate import Accelerator
from tqdm import tqdm

from mdnet.faces import AlignError, align, load_rgb, perturb_photo
from mdnet.faces.scut import _read_cached, _write_atomically, cache_folder
from mdnet.training import distributed as dist

RECIPE_VERSION = 1  # bump when perturb_photo or the way a variant is made changes
REJECTS_FILE = "rejected.txt"


@dataclass(frozen=True)
class VariantRecipe:
    """The arguments of :func:`perturb_photo` for the variants, and the seed of their draws.

    The defaults cover what a phone and a messenger do to a portrait: up to 20 degrees of roll,
    the photo shrunk to 25-100 % of its side, a face 1-3x smaller in its frame, JPEG quality 25-95.
    """

    max_degrees: float = 20.0
    scale: tuple[float, float] = (0.25, 1.0)
    canvas: tuple[float, float] = (1.0, 3.0)
    quality: tuple[int, int] = (25, 95)
    seed: int = 0

    def tag(self) -> str:
        """A short hash of everything that makes a variant: the cache folder's key."""
        text = json.dumps({"version": RECIPE_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:10]

    def variant_seed(self, name: str, k: int) -> int:
        """The numpy seed of variant ``k`` of face ``name`` (the same on every process and run)."""
        return int.from_bytes(hashlib.sha256(f"{self.seed}/{name}/{k}".encode()).digest()[:8], "little")

    def make(self, photo: np.ndarray, name: str, k: int, size: int) -> np.ndarray:
        """Variant ``k`` of ``photo`` aligned to a ``size`` px crop (H, W, 3) uint8; raises AlignError."""
        snap = perturb_photo(photo, np.random.default_rng(self.variant_seed(name, k)), max_degrees=self.max_degrees,
                             scale=self.scale, canvas=self.canvas, quality=self.quality)
        return align(snap, size=size).image


class PhotoVariants(NamedTuple):
    """What :func:`photo_variants` returns."""

    crops: torch.Tensor    # (n, count, 3, size, size) uint8; a rejected variant holds the original crop
    fallbacks: list[str]   # "NAME#k" of every variant the aligner rejected (it fell back to the original)
    minutes: float         # time spent reading and building them


def variant_folder(cache_dir: str | Path, size: int, recipe: VariantRecipe) -> Path:
    """Where the ``size`` px variants of ``recipe`` are cached."""
    return cache_folder(cache_dir, size) / f"photo-variants-{recipe.tag()}"


def _key(name: str, k: int) -> str:
    return f"{name}#{k}"


def known_rejects(folder: Path) -> set[str]:
    """``NAME#k`` keys an earlier run could not align."""
    path = folder / REJECTS_FILE
    if not path.is_file():
        return set()
    return {line.split("\t")[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}


def _remember_rejects(folder: Path, keys: Sequence[tuple[str, str]]) -> None:
    # One short append per line (O_APPEND), as mdnet.faces.unlabeled does: a doubled line is harmless.
    if keys:
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / REJECTS_FILE, "a", encoding="utf-8") as f:
            f.writelines(f"{key}\t{' '.join(why.split())}\n" for key, why in keys)


def build_variants(samples: Sequence, originals: torch.Tensor, count: int, recipe: VariantRecipe,
                   folder: Path | None, rejects: set[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The variants of ``samples`` (anything with ``.name`` and ``.path``): read from ``folder`` or built.

    ``originals``: their aligned crops (n, 3, s, s) uint8, the fallback. Returns crops (n, count, 3, s, s)
    uint8 and a (n, count) uint8 mask of the variants that fell back (1).
    """
    size = originals.shape[-1]
    crops = originals[:, None].repeat(1, count, 1, 1, 1)
    fell_back = torch.zeros(len(samples), count, dtype=torch.uint8)
    new_rejects = []
    for i, s in enumerate(samples):
        photo = None
        for k in range(count):
            if _key(s.name, k) in rejects:
                fell_back[i, k] = 1
                continue
            path = folder / f"{Path(s.name).stem}.{k}.png" if folder is not None else None
            crop = _read_cached(path) if path is not None else None
            if crop is None:
                photo = load_rgb(s.path) if photo is None else photo
                try:
                    crop = recipe.make(photo, s.name, k, size)
                except AlignError as err:
                    fell_back[i, k] = 1
                    new_rejects.append((_key(s.name, k), type(err).__name__))
                    continue
                if path is not None:
                    _write_atomically(crop, path)
            crops[i, k] = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)
    if folder is not None:
        _remember_rejects(folder, new_rejects)
    return crops, fell_back


def photo_variants(samples: Sequence, originals: torch.Tensor, count: int, cache_dir: str | Path | None,
                   recipe: VariantRecipe | None = None, accelerator: Accelerator | None = None,
                   batch: int = 16) -> PhotoVariants:
    """``count`` cached variants of every training face (see the module docstring).

    With an ``accelerator``, the processes share the building and each gets all the crops (collective).
    """
    recipe = recipe or VariantRecipe()
    if count < 1:
        raise ValueError(f"need at least one photo variant, got {count}")
    folder = variant_folder(cache_dir, originals.shape[-1], recipe) if cache_dir else None
    rejects = known_rejects(folder) if folder is not None else set()
    start = time.time()
    main = accelerator is None or accelerator.is_local_main_process
    per_process = -(-len(samples) // (accelerator.num_processes if accelerator else 1))
    bar = tqdm(total=per_process, desc=f"photo variants ({count} per face)", unit="face", leave=False,
               disable=not main)

    def part(idx: torch.Tensor) -> list[torch.Tensor]:
        idx = idx.cpu()
        out = build_variants([samples[i] for i in idx.tolist()], originals[idx], count, recipe, folder, rejects)
        bar.update(len(idx))
        return list(out)

    if accelerator is None:
        crops, fell_back = part(torch.arange(len(samples)))
    else:
        crops, fell_back = dist.sharded_map(accelerator, part, len(samples), batch)
    bar.close()
    fallbacks = [_key(samples[i].name, k) for i, k in fell_back.nonzero().tolist()]
    return PhotoVariants(crops, fallbacks, (time.time() - start) / 60)
