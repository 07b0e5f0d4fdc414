"""TAEF2 latents of aligned faces, computed once and cached on disk: what the prior's U-Net trains on.

The faces are the SCUT-FBP5500 training part and, optionally, a folder of unlabeled faces
(:mod:`mdnet.faces.unlabeled`), both read through the alignment cache. Each face is resized to the
prior's ``size`` (as :meth:`mdnet.models.prior.DiffusionPrior.encode_latents` does) and encoded by the
frozen TAEF2 encoder. Latents are written in chunks of ``CHUNK`` faces as float16 ``.npy`` files under
``cache/taef2-latents-SIZE-KEY/`` (``KEY``: the size, the encoder's hash and the list of names), so an
interrupted run resumes at the first missing chunk and a changed face list never reuses stale latents.
The processes of an ``accelerate launch`` share every chunk (:func:`mdnet.training.distributed.sharded_map`);
only the main process writes.

    faces = FaceList.from_sources(scut_samples, unlabeled_samples)
    latents = cached_latents(accelerator, encoder, faces, size=64, cache_dir="cache")   # (n, 32, 8, 8) float32
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from tqdm import tqdm

from mdnet.faces.scut import Sample, aligned_faces
from mdnet.faces.unlabeled import UnlabeledSample, align_samples
from mdnet.training import distributed as dist

CHUNK = 1024  # faces per cached file


@dataclass
class FaceList:
    """The faces to encode, in order: labelled SCUT-FBP5500 samples first, then unlabeled ones."""

    scut: list[Sample]
    unlabeled: list[UnlabeledSample]

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.scut] + [s.name for s in self.unlabeled]

    def __len__(self) -> int:
        return len(self.scut) + len(self.unlabeled)

    def crops(self, indices: Sequence[int], crop_size: int, cache_dir: str | Path | None) -> torch.Tensor:
        """Aligned crops uint8 (k, 3, crop_size, crop_size) of the faces at ``indices`` (through the crop cache)."""
        n_scut = len(self.scut)
        scut = [self.scut[i] for i in indices if i < n_scut]
        other = [self.unlabeled[i - n_scut] for i in indices if i >= n_scut]
        parts = []
        if scut:
            parts.append(aligned_faces(scut, crop_size, cache_dir)[0])
        if other:
            got = align_samples(other, crop_size, cache_dir, report=False)
            if got.rejected:  # the caller drops rejects first (see usable_unlabeled), so this is a changed cache
                raise RuntimeError(f"{len(got.rejected)} unlabeled faces lost their aligned crop (e.g. "
                                   f"{got.rejected[0]}); rebuild the cache with `mdnet align-folder`")
            parts.append(got.faces)
        return torch.cat(parts) if parts else torch.empty(0, 3, crop_size, crop_size, dtype=torch.uint8)


def usable_unlabeled(samples: Sequence[UnlabeledSample], crop_size: int, cache_dir: str | Path | None
                     ) -> tuple[list[UnlabeledSample], list[str]]:
    """Align every sample once (builds the cache) and return (those with a usable face, the rejected names)."""
    got = align_samples(samples, crop_size, cache_dir, keep=False)
    rejected = set(got.rejected)
    return [s for s in samples if s.name not in rejected], got.rejected


def resize_faces(crops: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 crops (k, 3, s, s) -> float pixels in [0, 1] at ``size`` (antialiased, as the prior resizes)."""
    x = crops.float() / 255
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


def cache_key(size: int, encoder_sha256: str, names: Sequence[str]) -> str:
    return hashlib.sha1(json.dumps([size, encoder_sha256, list(names)]).encode()).hexdigest()[:10]


def cached_latents(accelerator: Accelerator, encoder: torch.nn.Module, faces: FaceList, size: int,
                   cache_dir: str | Path, encoder_sha256: str, crop_size: int = 224, batch: int = 32) -> torch.Tensor:
    """Unnormalised TAEF2 latents of every face, (n, 32, size/8, size/8) float32, cached chunk by chunk."""
    folder = Path(cache_dir) / f"taef2-latents-{size}-{cache_key(size, encoder_sha256, faces.names)}"
    device = accelerator.device
    encoder = encoder.to(device).eval()

    @torch.no_grad()
    def encode(idx: torch.Tensor) -> torch.Tensor:
        crops = faces.crops(idx.tolist(), crop_size, cache_dir)
        return encoder(resize_faces(crops, size).to(device)).half()

    parts = []
    starts = range(0, len(faces), CHUNK)
    bar = tqdm(total=len(faces), desc=f"TAEF2 latents ({size} px)", unit="face",
               disable=not accelerator.is_local_main_process)
    for start in starts:
        path = folder / f"chunk-{start // CHUNK:05d}.npy"
        count = min(CHUNK, len(faces) - start)
        if path.is_file():
            part = torch.from_numpy(np.load(path))
        else:
            part = dist.sharded_map(accelerator, lambda idx, s=start: encode(idx + s), count, batch)
            if accelerator.is_main_process:
                folder.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.stem}.tmp.npy")
                np.save(tmp, part.numpy())
                tmp.replace(path)
            accelerator.wait_for_everyone()
        parts.append(part)
        bar.update(count)
    bar.close()
    if not parts:
        raise ValueError("no faces to encode")
    return torch.cat(parts).float()
