"""Which models the service scores with: loading a checkpoint into a status that never raises, and the
process-wide model of each role (MD-Net for photos and analyses, the fast student for the live webcam).

    status = load_model()          # MD-Net: $MDNET_CHECKPOINT or checkpoints/default
    fast = load_fast_model()       # the student: $MDNET_FAST_CHECKPOINT or checkpoints/student
    status.ready, status.message   # whether it loaded, and a sentence for the page either way
    get_status() / set_status(s)   # the shared one, loaded on first use (likewise get/set_fast_status)

:mod:`mdnet.service` re-exports all of these.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

from mdnet.errors import ModelUnavailableError
from mdnet.models.checkpoint import (
    DEFAULT_CHECKPOINT,
    FAST_CHECKPOINT_ENV,
    STUDENT_CHECKPOINT,
    CheckpointError,
    default_device,
    fast_checkpoint,
    load_checkpoint,
    resolve_checkpoint,
)
from mdnet.models.mdnet import MDNet
from mdnet.percentiles import ScoreReference, reference_for
from mdnet.uncertainty.calibration import Uncertainty, load_uncertainty


@dataclass
class ModelStatus:
    """The loaded model (None when it could not be), where it came from, a sentence for the page, and
    its calibrated intervals (:class:`mdnet.uncertainty.Uncertainty`; None for a checkpoint that was
    never calibrated with ``mdnet calibrate``)."""

    model: MDNet | None
    source: str
    message: str
    uncertainty: Uncertainty | None = None

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
        folder = resolve_checkpoint(source)
        model = load_checkpoint(folder, device=default_device())
    except CheckpointError as err:
        return ModelStatus(None, source, f"The model could not be loaded: {err}")
    model = model.for_inference()  # BatchNorm folded, channels-last weights: faster, the same scores
    message = f"Model '{model.cfg.name}' loaded from {source} on {default_device()}."
    try:
        uncertainty = load_uncertainty(folder)
    except CheckpointError as err:  # the scores still work; only their intervals are missing
        uncertainty = None
        message += f" Scores come without intervals: {err}"
    return ModelStatus(model, source, message, uncertainty)


def load_fast_model(checkpoint: str | os.PathLike | None = None) -> ModelStatus:
    """The fast student for live scores (default ``$MDNET_FAST_CHECKPOINT`` or ``checkpoints/student``).

    Not ready (``model`` None, a sentence why) when there is none: the live score then comes from the
    full model, less often.
    """
    source = str(checkpoint or fast_checkpoint())
    if checkpoint is None and FAST_CHECKPOINT_ENV not in os.environ and not STUDENT_CHECKPOINT.is_dir():
        return ModelStatus(None, source, f"No fast student at {source} (`mdnet distill` makes one): "
                                         "live scores come from the full model.")
    return load_model(source)


# =========================================================================== the shared models
# One status per role ("full": MD-Net, "fast": the student), each loaded on first use.
_LOADERS: dict[str, Callable[[], ModelStatus]] = {"full": lambda: load_model(), "fast": lambda: load_fast_model()}
_SHARED: dict[str, ModelStatus] = {}
_STATUS_LOCK = threading.Lock()


def _shared(role: str) -> ModelStatus:
    with _STATUS_LOCK:
        if role not in _SHARED:
            _SHARED[role] = _LOADERS[role]()
        return _SHARED[role]


def _set_shared(role: str, status: ModelStatus | None) -> None:
    with _STATUS_LOCK:
        if status is None:
            _SHARED.pop(role, None)
        else:
            _SHARED[role] = status


def get_status() -> ModelStatus:
    """The process-wide model status, loaded on first use (``load_model()``'s defaults)."""
    return _shared("full")


def set_status(status: ModelStatus | None) -> None:
    """Make ``status`` the process-wide model (None: load the default again on next use)."""
    _set_shared("full", status)


def get_fast_status() -> ModelStatus:
    """The process-wide fast student (:func:`load_fast_model`), loaded on first use."""
    return _shared("fast")


def set_fast_status(status: ModelStatus | None) -> None:
    """Make ``status`` the process-wide fast student (None: load the default again on next use)."""
    _set_shared("fast", status)


# =========================================================================== where a score falls
def score_reference(status: ModelStatus | None = None) -> ScoreReference | None:
    """The training faces' score distribution for the model of ``status`` (cached), or None."""
    return reference_for((status or get_status()).source)


def _require_model(status: ModelStatus | None) -> MDNet:
    status = status or get_status()
    if not status.ready:
        raise ModelUnavailableError(status.message)
    return status.model  # type: ignore[return-value]
