"""The one entry point the app (and later the CLI) talks to.

For now it finds and loads the model; alignment, scoring and explanations are
added here as they land (see the issues), so ``app.py`` stays a thin layout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from mdnet.checkpoint import CheckpointError, load_checkpoint
from mdnet.model import MDNet

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "default"


def default_device() -> torch.device:
    """The GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class ModelStatus:
    model: MDNet | None
    source: str
    message: str

    @property
    def ready(self) -> bool:
        return self.model is not None


def load_model(checkpoint: str | os.PathLike | None = None) -> ModelStatus:
    """Load ``checkpoint`` (a folder or hub id; default ``$MDNET_CHECKPOINT`` or the shipped one).

    Never raises for a missing or bad checkpoint: the status says what is wrong,
    in words a user can act on.
    """
    source = str(checkpoint or os.environ.get("MDNET_CHECKPOINT") or DEFAULT_CHECKPOINT)
    if checkpoint is None and "MDNET_CHECKPOINT" not in os.environ and not DEFAULT_CHECKPOINT.is_dir():
        return ModelStatus(None, source, "No trained checkpoint is shipped yet: the model is not trained.")
    try:
        model = load_checkpoint(source, device=default_device())
    except CheckpointError as err:
        return ModelStatus(None, source, f"The model could not be loaded: {err}")
    return ModelStatus(model, source, f"Model '{model.cfg.name}' loaded from {source} on {default_device()}.")


@torch.no_grad()
def score_aligned(
    model: MDNet, faces: torch.Tensor, tta: bool = True, batch_size: int = 32, mode: str = "full"
) -> torch.Tensor:
    """Scores of aligned faces, uint8 (n, 3, s, s): the one scoring path of evaluation, CLI and app.

    ``tta`` averages each face with its mirror image (as the model was trained on both).
    """
    model.eval()
    scores = []
    for i in range(0, len(faces), batch_size):
        x = model.preprocess(faces[i : i + batch_size])
        s = model(x, mode=mode).score
        if tta:
            s = (s + model(x.flip(-1), mode=mode).score) / 2
        scores.append(s.float().cpu())
    return torch.cat(scores) if scores else torch.empty(0)
