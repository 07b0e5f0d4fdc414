"""How much each stream matters for this face: the score with either stream replaced by its training mean."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mdnet.models.mdnet import MDNet


@dataclass
class StreamAblation:
    """Scores of one face with each stream switched off (no mirror averaging).

    Attributes:
        full: both streams.
        prior_only: the Vim tokens replaced by their stored mean over the training faces.
        vim_only: the U-Net feature maps replaced by their stored mean.
    """

    full: float
    prior_only: float
    vim_only: float

    @property
    def full_minus_prior_only(self) -> float:
        """What this face's Vim tokens add to the score (vs the average Vim tokens)."""
        return self.full - self.prior_only

    @property
    def full_minus_vim_only(self) -> float:
        """What this face's U-Net features add to the score (vs the average features)."""
        return self.full - self.vim_only

    def to_json(self) -> dict[str, float]:
        return {
            "full": self.full,
            "prior_only": self.prior_only,
            "vim_only": self.vim_only,
            "full_minus_prior_only": self.full_minus_prior_only,
            "full_minus_vim_only": self.full_minus_vim_only,
        }


@torch.no_grad()
def stream_ablation(model: MDNet, x: torch.Tensor) -> StreamAblation:
    """Score x ``(1, 3, s, s)`` in the three modes of :meth:`MDNet.forward`; deterministic.

    Measures how much the score depends on each stream for this face: the switched-off
    stream is replaced by its stored reference (the mean over the training faces), so a
    difference ``full - prior_only`` is what this face's Vim tokens add relative to an
    average face's, and ``full - vim_only`` the same for the prior's features. Needs
    ``model.references_ready`` (raises ``RuntimeError`` otherwise).
    """
    model.eval()
    features = model.prior_features(x)
    scores = {
        mode: float(model(x, mode=mode, prior_features=None if mode == "vim_only" else features).score[0])
        for mode in ("full", "prior_only", "vim_only")
    }
    return StreamAblation(**scores)
