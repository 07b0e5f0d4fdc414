"""Consistency and distillation on unlabeled faces, in the data-parallel pattern of every job.

Each optimizer step takes a labelled global batch (``--batch-size`` faces) and an unlabeled one
(``--unlabeled-batch-size`` faces, two independently augmented views each, drawn by
:func:`mdnet.training.camera.view_draws`). With ``s1, s2`` the scores of the two views and ``t``
the teacher's mirror-averaged score of the face (:mod:`mdnet.training.teacher_scores`), the
objective is::

    mean_labelled (score - target)^2
      + consistency_weight * mean_unlabeled (s1 - s2)^2                 # same face, another camera
      + distill_weight     * mean_unlabeled ((s1 + s2) / 2 - t)^2       # keep the teacher's ranking

Each mean is over its own global batch (:func:`mdnet.training.distributed.batch_loss`: every
process takes its share of both batches, and the gradient DDP averages is the global
objective's), so the result does not depend on the number of processes or accumulation steps.
The consistency term is symmetric: the gradient flows through both views (no stop-gradient),
and both views are equally augmented, neither is the "clean" one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from accelerate import Accelerator

from mdnet.training import distributed as dist

# The unlabeled sampler's seed is the run's seed plus this, so its stream never repeats the labelled one's.
UNLABELED_SEED_OFFSET = 1_000_003


class UnlabeledBatches(dist.GlobalBatches):
    """Global batches of ``n`` unlabeled faces, exactly ``steps`` per epoch, to pair with the labelled ones.

    Per epoch, one generator seeded with ``(seed + UNLABELED_SEED_OFFSET) * 1000 + epoch`` draws as many
    permutations of the faces as the epoch needs, back to back (a face recurs only once all have been
    seen), then each batch's ``draw``; as in :class:`GlobalBatches`, every process iterates the same
    sequence and takes its slice.
    """

    def __init__(self, n: int, batch_size: int, steps: int, seed: int,
                 draw: Callable[[torch.Tensor, torch.Generator], Any], shards: int = 1):
        if n < 1:
            raise ValueError("no unlabeled faces to draw from")
        super().__init__(n, batch_size, seed + UNLABELED_SEED_OFFSET, draw, drop_last=True, shards=shards)
        self.steps = steps

    def batches_per_epoch(self) -> int:
        return self.steps

    def __len__(self) -> int:
        return self.steps * self.batch_size

    def __iter__(self) -> Iterator[dist.Draw]:
        gen = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        need = self.steps * self.batch_size
        order = torch.cat([torch.randperm(self.n, generator=gen) for _ in range(-(-need // self.n))])
        for b in range(self.steps):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            augs = self.draw(idx, gen)
            yield from (dist.Draw(int(i), 1.0, len(idx), tuple(a)) for i, a in zip(idx, augs, strict=True))


def consistency(s1: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
    """(u,) squared difference of the two views' scores: zero exactly when they agree."""
    return (s1 - s2) ** 2


def distillation(s1: torch.Tensor, s2: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """(u,) squared difference between the mean of the two views' scores and the teacher's score."""
    return ((s1 + s2) / 2 - teacher.to(s1)) ** 2


def optimizer_step(accelerator: Accelerator, model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any,
                   losses: Callable[[], dict[str, torch.Tensor]], batches: dict[str, dict],
                   weights: dict[str, float]) -> dict[str, float]:
    """:func:`mdnet.training.distributed.optimizer_step` over several global batches at once.

    ``losses()`` returns per-sample losses by term (``{"mse": (b,), "consistency": (u,), ...}``);
    ``batches[term]`` is the micro-batch each term's samples come from (its ``weight`` and ``count``),
    ``weights[term]`` the term's factor in the objective. Returns each term's share of its global
    batch's mean (unweighted) for the logs.
    """
    with accelerator.accumulate(model):
        total, shares = None, {}
        for term, per_sample in losses().items():
            loss, shares[term] = dist.batch_loss(accelerator, per_sample, batches[term])
            loss = loss if weights[term] == 1 else weights[term] * loss
            total = loss if total is None else total + loss
        accelerator.backward(total)
        opt.step()
        if accelerator.sync_gradients and not opt.step_was_skipped:
            sched.step()
        opt.zero_grad(set_to_none=True)
    return shares
