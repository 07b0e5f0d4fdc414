"""What one training draw does to a face: photo variant, camera, mirror, shift and stream dropout.

Every random choice comes from the sampler's per-(seed, epoch) generator in the ``draw``
functions below (:class:`mdnet.training.distributed.GlobalBatches` calls them once per global
batch), never from a global random state: a draw is a tuple of integers, and the dataset's
``make(draw)`` is a pure function of it. A sample is therefore augmented identically on any
process and any number of processes, and a run is reproducible and resumable.

A labelled draw is ``(variant, camera_seed, flip, dy, dx, stream)``:

- ``variant``: 0 the original crop, ``k`` the cached photo variant ``k - 1``
  (:mod:`mdnet.training.photo_variants`), uniformly;
- ``camera_seed``: the numpy seed of :class:`mdnet.faces.augment.CameraAugment` on the crop (blur,
  light, white balance, occlusion, noise, resolution, JPEG, alignment jitter), or ``NO_CAMERA``
  (a draw is camera-augmented with probability ``camera_p``);
- ``flip``, ``dy``, ``dx``: the mirror image and a shift of up to ``max_shift`` px, as before;
- ``stream``: stream dropout, :data:`KEEP`, :data:`DROP_PRIOR` or :data:`DROP_VIM` (each with
  probability ``stream_dropout``, never both).

An unlabeled draw is two views of one face, ``(camera_seed, flip, dy, dx)`` each.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mdnet.faces.augment import CameraAugment
from mdnet.training import distributed as dist

NO_CAMERA = -1
KEEP, DROP_PRIOR, DROP_VIM = 0, 1, 2
SEED_HIGH = 2**62  # camera seeds are drawn in [0, SEED_HIGH)

Draws = Callable[[torch.Tensor, torch.Generator], Sequence[tuple]]


@dataclass(frozen=True)
class DrawRecipe:
    """What the draws may do (the flags of ``mdnet train``)."""

    variants: int = 0             # photo variants per face (0: the original crop only)
    camera_p: float = 0.0         # probability that a crop goes through CameraAugment
    max_shift: int = 8            # px
    stream_dropout: float = 0.0   # probability of dropping the prior, and (separately) the Vim stream

    def __post_init__(self):
        if not 0 <= self.stream_dropout <= 0.5:
            raise ValueError(f"stream dropout must be in [0, 0.5] (two exclusive events), got {self.stream_dropout}")
        if not 0 <= self.camera_p <= 1:
            raise ValueError(f"camera probability must be in [0, 1], got {self.camera_p}")


def shift(image: torch.Tensor, dy: int, dx: int, max_shift: int) -> torch.Tensor:
    """Translate one face (3, s, s) by ``(dy, dx) - max_shift`` px with reflect padding, as float."""
    if max_shift == 0:
        return image.float()
    size = image.shape[-1]
    padded = F.pad(image[None].float(), (max_shift,) * 4, mode="reflect")[0]
    return padded[:, dy : dy + size, dx : dx + size]


def stream_codes(n: int, p: float, gen: torch.Generator) -> torch.Tensor:
    """(n,) codes from one uniform draw each: DROP_PRIOR below ``p``, DROP_VIM in ``[p, 2p)``, else KEEP."""
    u = torch.rand(n, generator=gen)
    return torch.where(u < p, DROP_PRIOR, torch.where(u < 2 * p, DROP_VIM, KEEP))


def with_stream_codes(draw: Draws, p: float) -> Draws:
    """``draw`` with a stream-dropout code appended to each sample's tuple (drawn after its own draws)."""

    def both(idx: torch.Tensor, gen: torch.Generator) -> list[tuple]:
        augs = list(draw(idx, gen))
        return [(*a, int(c)) for a, c in zip(augs, stream_codes(len(idx), p, gen).tolist(), strict=True)]

    return both


def _camera_seeds(n: int, p: float, gen: torch.Generator) -> list[int]:
    chosen = torch.rand(n, generator=gen) < p
    seeds = torch.randint(0, SEED_HIGH, (n,), generator=gen)
    return torch.where(chosen, seeds, NO_CAMERA).tolist()


def labelled_draws(recipe: DrawRecipe) -> Draws:
    """Per global batch: ``(variant, camera_seed, flip, dy, dx, stream)`` per face (see the module docstring)."""

    def draw(idx: torch.Tensor, gen: torch.Generator) -> list[tuple]:
        n = len(idx)
        variant = torch.randint(0, recipe.variants + 1, (n,), generator=gen).tolist()
        seeds = _camera_seeds(n, recipe.camera_p, gen)
        flips = (torch.rand(n, generator=gen) < 0.5).long().tolist()
        shifts = torch.randint(0, 2 * recipe.max_shift + 1, (n, 2), generator=gen).tolist()
        codes = stream_codes(n, recipe.stream_dropout, gen).tolist()
        return [(v, s, f, dy, dx, c) for v, s, f, (dy, dx), c in zip(variant, seeds, flips, shifts, codes, strict=True)]

    return draw


def view_draws(recipe: DrawRecipe, views: int = 2) -> Draws:
    """Per global batch of unlabeled faces: ``views`` independent ``(camera_seed, flip, dy, dx)`` per face, flat."""

    def draw(idx: torch.Tensor, gen: torch.Generator) -> list[tuple]:
        n = len(idx)
        per_view = []
        for _ in range(views):
            seeds = _camera_seeds(n, recipe.camera_p, gen)
            flips = (torch.rand(n, generator=gen) < 0.5).long().tolist()
            shifts = torch.randint(0, 2 * recipe.max_shift + 1, (n, 2), generator=gen).tolist()
            per_view.append([(s, f, dy, dx) for s, f, (dy, dx) in zip(seeds, flips, shifts, strict=True)])
        return [sum(row, ()) for row in zip(*per_view, strict=True)]

    return draw


def augment_crop(crop: torch.Tensor, camera_seed: int, flip: int, dy: int, dx: int, max_shift: int,
                 camera: CameraAugment) -> torch.Tensor:
    """An aligned crop uint8 (3, s, s) -> CameraAugment (unless NO_CAMERA), mirror, shift -> float [0, 1] (3, s, s)."""
    if camera_seed != NO_CAMERA:
        hwc = np.ascontiguousarray(crop.permute(1, 2, 0).numpy())
        crop = torch.from_numpy(camera(hwc, np.random.default_rng(camera_seed))).permute(2, 0, 1)
    if flip:
        crop = crop.flip(-1)
    return shift(crop, dy, dx, max_shift) / 255


def labelled_faces(faces: torch.Tensor, variants: torch.Tensor | None, targets: torch.Tensor, recipe: DrawRecipe,
                   camera: CameraAugment, rows: torch.Tensor | None = None) -> dist.DrawDataset:
    """Training faces as :func:`labelled_draws` say: ``{"image", "target", "stream"}`` per draw.

    ``faces``: (n, 3, s, s) uint8; ``variants``: (n, V, 3, s, s) uint8 or None (V = ``recipe.variants``).
    ``rows``: draw ``i`` is face ``rows[i]`` (a face may be drawn several times an epoch); None: every face once.
    """

    def make(d: dist.Draw) -> dict:
        k, seed, flip, dy, dx, code = d.aug
        row = d.index if rows is None else int(rows[d.index])
        crop = faces[row] if k == 0 else variants[row, k - 1]
        return {"image": augment_crop(crop, seed, flip, dy, dx, recipe.max_shift, camera),
                "target": targets[row], "stream": code}

    return dist.DrawDataset(len(faces) if rows is None else len(rows), make)


def unlabeled_views(faces: torch.Tensor, teacher: torch.Tensor | None, recipe: DrawRecipe,
                    camera: CameraAugment, views: int = 2) -> dist.DrawDataset:
    """Unlabeled faces as :func:`view_draws` say: ``{"views": (views, 3, s, s)}`` and the ``"teacher"`` score if any."""

    def make(d: dist.Draw) -> dict:
        crops = [augment_crop(faces[d.index], *d.aug[4 * v : 4 * v + 4], recipe.max_shift, camera)
                 for v in range(views)]
        item = {"views": torch.stack(crops)}
        if teacher is not None:
            item["teacher"] = teacher[d.index]
        return item

    return dist.DrawDataset(len(faces), make)
