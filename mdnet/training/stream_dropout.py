"""Stream dropout: train the fusion so that each stream alone still carries signal.

Per labelled sample, the draw (:mod:`mdnet.training.camera`) says whether to replace the prior's
feature maps by their reference (probability ``p``), the Vim tokens by theirs (probability
``p``), or neither; never both. The references are what the eval-time ablation feeds in
(``MDNet.forward`` modes, :meth:`MDNet.calibrate_references`): a mean input that carries nothing
about this face, so the head learns to score from the stream that is left.

- The prior is frozen, so its reference is fixed: the mean feature maps over (up to ~512 evenly
  spaced) training faces, set once before training (``calibrate_sharded``) in the model's
  ``prior_reference_*`` buffers.
- The Vim stream changes as it trains, so its reference is a running mean of its tokens,
  :class:`VimTokenMean`: after every optimizer step, ``vim_reference <- m * vim_reference +
  (1 - m) * mean tokens of that global batch`` (summed over the processes: the same on any number
  of processes). It starts from the calibrated mean and lives in the model's ``vim_reference``
  buffer, so it is saved with the resumable state; the final calibration replaces it.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator

from mdnet.models.mdnet import MDNet
from mdnet.training import distributed as dist
from mdnet.training.camera import DROP_PRIOR, DROP_VIM


def masks(codes: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (prior, vim) boolean masks (rows,) from the labelled draws' codes, False past them."""
    prior = torch.zeros(rows, dtype=torch.bool, device=codes.device)
    vim = torch.zeros_like(prior)
    prior[: len(codes)] = codes == DROP_PRIOR
    vim[: len(codes)] = codes == DROP_VIM
    return prior, vim


def drop_prior(features: list[torch.Tensor], references: list[torch.Tensor], mask: torch.Tensor) -> list[torch.Tensor]:
    """``features`` [(b, c_i, h_i, w_i)] with the rows of ``mask`` (b,) replaced by ``references`` [(c_i, h_i, w_i)]."""
    m = mask.view(-1, 1, 1, 1).to(features[0].device)
    return [torch.where(m, r.to(f), f) for f, r in zip(features, references, strict=True)]


class VimTokenMean:
    """The running mean of the Vim tokens over training batches, kept in ``model.vim_reference``.

    A forward hook on ``model.vim`` keeps the last tokens it produced; :meth:`add` takes the first
    ``rows`` of them (the labelled faces), weighted by the samples' weights; :meth:`update`, after
    each optimizer step, folds the global batch's mean in (collective: every process calls it).
    """

    def __init__(self, model: MDNet, momentum: float = 0.9):
        self.model, self.momentum = model, momentum
        self.total = torch.zeros_like(model.vim_reference, dtype=torch.float32)
        self.count = 0.0
        self.last: torch.Tensor | None = None
        self._hook = model.vim.register_forward_hook(self._capture)

    def _capture(self, module, inputs, output) -> None:
        self.last = output.tokens.detach()

    def add(self, rows: int, weight: torch.Tensor) -> None:
        tokens = self.last[:rows].float()
        w = weight.to(tokens).view(-1, 1, 1)
        self.total += (tokens * w).sum(0).to(self.total.device)
        self.count += float(weight.sum())

    @torch.no_grad()
    def update(self, accelerator: Accelerator) -> None:
        total = accelerator.reduce(self.total, "sum") if accelerator.num_processes > 1 else self.total
        count = dist.reduce_sum(accelerator, self.count)
        if count > 0:
            ref = self.model.vim_reference
            ref.mul_(self.momentum).add_((total / count).to(ref), alpha=1 - self.momentum)
        self.total.zero_()
        self.count = 0.0

    def close(self) -> None:
        self._hook.remove()
