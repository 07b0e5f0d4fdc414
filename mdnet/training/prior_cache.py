"""The frozen prior's features, cached per face and per mirror image; the recipe that trains on them.

The prior never changes, so its features of a fixed image can be computed once: validation always
does so (:func:`predict_sharded`), and so does training with ``--camera-augment none`` (the old
recipe: :func:`augment_draws` draws only a mirror flip and a shift per face, and
:func:`training_faces` serves the cached features of the face or of its mirror image).
"""

from __future__ import annotations

import torch
from accelerate import Accelerator
from tqdm import tqdm

from mdnet.models.mdnet import MDNet, score_aligned
from mdnet.training import distributed as dist
from mdnet.training.camera import KEEP, shift


@torch.no_grad()
def prior_feature_cache(model: MDNet, faces: torch.Tensor, accelerator: Accelerator | None = None,
                        batch: int = 64) -> dict[bool, list[torch.Tensor]]:
    """Prior features of every face and of its mirror image, float16: {flipped: [(n, c, h, w) per scale]}.

    With an ``accelerator``, the processes share the work and each gets the whole cache.
    """
    def features(idx: torch.Tensor) -> list[torch.Tensor]:
        x = model.preprocess(faces[idx.cpu()])
        return [f.half() for flipped in (False, True) for f in model.prior_features(x.flip(-1) if flipped else x)]

    if accelerator is None:
        parts = [features(torch.arange(i, min(i + batch, len(faces))))
                 for i in tqdm(range(0, len(faces), batch), desc="caching prior features", leave=False)]
        flat = [torch.cat(p).cpu() for p in zip(*parts, strict=True)]
    else:
        flat = dist.sharded_map(accelerator, features, len(faces), batch)
    half = len(flat) // 2
    return {False: flat[:half], True: flat[half:]}


def augment_draws(max_shift: int):
    """Per global batch: a mirror flip per face, then a shift per face (the sampler's ``draw``)."""

    def draw(idx: torch.Tensor, gen: torch.Generator) -> list[tuple]:
        flips = (torch.rand(len(idx), generator=gen) < 0.5).tolist()
        shifts = [torch.randint(0, 2 * max_shift + 1, (2,), generator=gen).tolist() if max_shift else [0, 0]
                  for _ in flips]
        return [(f, dy, dx) for f, (dy, dx) in zip(flips, shifts, strict=True)]

    return draw


def training_faces(faces: torch.Tensor, features: dict[bool, list[torch.Tensor]], targets: torch.Tensor,
                   max_shift: int) -> dist.DrawDataset:
    """Aligned faces with their cached prior features, flipped and shifted as each sample's draw says
    (``--camera-augment none``); a fourth draw, if any, is the stream-dropout code."""

    def make(d: dist.Draw) -> dict:
        flip, dy, dx = d.aug[:3]
        image = faces[d.index].flip(-1) if flip else faces[d.index]
        return {"image": shift(image, dy, dx, max_shift) / 255, "target": targets[d.index],
                "features": [f[d.index].float() for f in features[bool(flip)]],
                "stream": d.aug[3] if len(d.aug) > 3 else KEEP}

    return dist.DrawDataset(len(faces), make)


def predict_sharded(accelerator: Accelerator, model: MDNet, faces: torch.Tensor,
                    features: dict[bool, list[torch.Tensor]], mode: str = "full") -> torch.Tensor:
    """Mirror-averaged scores of every face, computed by all processes together (each face once)."""

    def scores(idx: torch.Tensor) -> torch.Tensor:
        idx = idx.cpu()
        cached = {k: [f[idx] for f in v] for k, v in features.items()}
        return score_aligned(model, faces[idx], batch_size=len(idx), mode=mode, prior_features=cached)

    return dist.sharded_map(accelerator, scores, len(faces), 64)


def calibrate_sharded(accelerator: Accelerator, model: MDNet, faces: torch.Tensor, batch: int = 64) -> None:
    """``model.calibrate_references`` over all ``faces``, each process averaging its contiguous share."""
    model.eval()
    with accelerator.split_between_processes(list(range(len(faces)))) as part:
        lo, hi = (part[0], part[-1] + 1) if part else (0, 0)
    starts = tqdm(range(lo, hi, batch), desc=f"stream references ({hi - lo} faces)", unit="batch",
                  disable=not accelerator.is_local_main_process)
    batches = (model.preprocess(faces[i : min(i + batch, hi)]) for i in starts)
    count = model.calibrate_references(batches) if hi > lo else 0
    if accelerator.num_processes > 1:
        total = dist.reduce_sum(accelerator, float(count))
        for ref in [model.vim_reference, *model.prior_references]:
            ref.copy_(accelerator.reduce(ref * count, "sum") / total)
        model.references_ready.fill_(True)
