"""A small, fast student of MD-Net for live scores: SFace's face-recognition convolutions and a small head.

Knowledge distillation (Hinton et al. 2015): a compact network learns to reproduce the teacher's
scores (``mdnet distill``, :mod:`mdnet.training.distill`), on labelled faces and, above all, on
unlabeled in-the-wild faces that no rater scored. The student sees the same aligned 224 px crop
as MD-Net, re-aligned on the ArcFace template at 112 px (:class:`~mdnet.models.sface.ArcFaceAlign`),
through SFace's convolutions (``conv_1`` .. ``conv_14``, OpenCV Zoo, Apache-2.0; initialised from
the copy the teacher's checkpoint holds) to a ``1024 x 7 x 7`` map, pooled onto a ``2 x 2`` grid
(where on the face, coarsely), then an MLP. SFace's 6.4 M-parameter embedding layer is left out:
the student is 3.7 M parameters (about 15 MB in float32, 7.5 MB in the float16 it is stored in).

``head="linear"`` (``mdnet distill --head ridge``) keeps SFace's convolutions exactly as they are and
puts one linear map on the whole ``1024 x 7 x 7`` map (``pool=7``), fitted in closed form (ridge
regression, :mod:`mdnet.training.ridge`) to the same targets; the map's per-feature mean and scale
travel with it. Its embedding (for the uncertainty estimate) is the map's average, 1024-d.
``head="mlp+linear"`` (``--head mlp+ridge``) has both on the same map, each fitted to the targets on
its own, and scores their average: an ensemble of two heads at the cost of one pass through SFace.

It has MD-Net's scoring interface (``preprocess``, ``forward(x) -> .score, .embedding``,
``cfg.preprocess``, ``cfg.score_range``, ``cfg.name``), so :func:`mdnet.models.mdnet.score_faces`
and the service score with either; it has no streams to explain.

Shapes: ``x (B, 3, 224, 224)`` normalised as ``cfg.preprocess`` says -> ``score (B,)``,
``embedding (B, head_hidden)``.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mdnet.models.config import ConfigError, PreprocessConfig, _from_dict
from mdnet.models.inference_copy import InferenceCopy
from mdnet.models.sface import TRUNK_UNITS, ArcFaceAlign, scale_input, sface_units

STUDENT_KIND = "student"
FEATURE_CHANNELS = 1024  # SFace's conv_14
HEADS = ("mlp", "linear", "mlp+linear")
WHOLE_MAP = 7  # SFace's conv_14 map is 7 x 7: the linear head of "mlp+linear" reads all of it


@dataclass
class StudentConfig:
    """What builds a :class:`FBPStudent` (travels in its checkpoint's ``config.json`` with ``kind: student``)."""

    name: str = "student-sface"
    kind: str = STUDENT_KIND
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    pool: int = 2                  # the final map is average-pooled onto pool x pool cells
    head_hidden: int = 128
    head_dropout: float = 0.1
    score_range: tuple[float, float] = (1.0, 5.0)
    head: str = "mlp"              # "mlp" (trained by gradient), "linear" (a ridge fit on the map pooled onto
                                   # pool x pool cells; head_* unused) or "mlp+linear" (both, averaged; the MLP
                                   # reads pool x pool cells, the linear map the whole 7 x 7 map)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudentConfig:
        cfg = _from_dict(cls, data, "student config")
        if cfg.kind != STUDENT_KIND:
            raise ConfigError(f"student config: kind must be {STUDENT_KIND!r}, got {cfg.kind!r}")
        if cfg.preprocess.image_size != 224:
            raise ConfigError("student config: the ArcFace re-alignment expects 224 px crops")
        if cfg.pool < 1 or cfg.head_hidden < 1:
            raise ConfigError("student config: pool and head_hidden must be positive")
        if cfg.head not in HEADS:
            raise ConfigError(f"student config: head must be one of {HEADS}, got {cfg.head!r}")
        return cfg


@dataclass
class StudentOutput:
    score: torch.Tensor          # (b,) on cfg.score_range
    embedding: torch.Tensor      # (b, head_hidden): the head's hidden layer


class FBPStudent(InferenceCopy, nn.Module):
    """The student network. ``forward`` takes :meth:`preprocess`'s output."""

    mirror_average = False  # one pass per face: it is here to be fast (and was trained on mirrored faces too)

    def __init__(self, cfg: StudentConfig | None = None):
        super().__init__()
        self.cfg = cfg or StudentConfig()
        c = self.cfg
        self.register_buffer("pixel_mean", torch.tensor(c.preprocess.mean).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(c.preprocess.std).view(1, 3, 1, 1))
        self.align = ArcFaceAlign(c.preprocess.image_size)
        units = sface_units()
        self.trunk = nn.Sequential(OrderedDict(units[:TRUNK_UNITS]))
        self.head_convs = nn.Sequential(OrderedDict(units[TRUNK_UNITS:]))
        width = FEATURE_CHANNELS * c.pool * c.pool
        if self.has_linear:
            linear_width = FEATURE_CHANNELS * self.linear_cells * self.linear_cells
            self.register_buffer("feature_mean", torch.zeros(linear_width))
            self.register_buffer("feature_scale", torch.ones(linear_width))
            self.linear = nn.Linear(linear_width, 1).requires_grad_(False)  # fitted in closed form, never by gradient
            with torch.no_grad():
                self.linear.weight.zero_()
                self.linear.bias.fill_(sum(c.score_range) / 2)
        if self.has_mlp:
            self.hidden = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, c.head_hidden), nn.GELU(),
                                        nn.Dropout(c.head_dropout))
            self.out = nn.Linear(c.head_hidden, 1)

    @property
    def has_mlp(self) -> bool:
        return self.cfg.head in ("mlp", "mlp+linear")

    @property
    def has_linear(self) -> bool:
        return self.cfg.head in ("linear", "mlp+linear")

    @property
    def linear_cells(self) -> int:
        """The linear head reads the map pooled onto ``linear_cells x linear_cells`` cells."""
        return self.cfg.pool if self.cfg.head == "linear" else WHOLE_MAP

    @property
    def embedding_dim(self) -> int:
        return self.cfg.head_hidden if self.has_mlp else FEATURE_CHANNELS

    def preprocess(self, faces: torch.Tensor) -> torch.Tensor:
        """Aligned faces, uint8 ``(b, s, s, 3)`` or ``(b, 3, s, s)`` -> normalised input (MD-Net's own step)."""
        from mdnet.models.mdnet import normalise_faces

        return normalise_faces(faces, self.cfg.preprocess.image_size, self.pixel_mean, self.pixel_std)

    def load_sface(self, state: dict[str, torch.Tensor], prefix: str = "") -> int:
        """Copy SFace's convolutions from a state dict (e.g. an MD-Net checkpoint's ``vim.identity.sface.``);
        returns how many tensors were copied. Raises ``KeyError`` when one is missing."""
        own = {f"trunk.{k}": v for k, v in self.trunk.state_dict().items()}
        own.update({f"head.{k}": v for k, v in self.head_convs.state_dict().items()})
        with torch.no_grad():
            for name, tensor in own.items():
                tensor.copy_(state[prefix + name].to(tensor.dtype))
        return len(own)

    def forward(self, x: torch.Tensor, mode: str = "full", prior_features: Any = None) -> StudentOutput:
        if mode != "full" or prior_features is not None:
            raise ValueError("the student has no streams: only mode='full', without prior features")
        feats = self.feature_map(x)
        low, high = self.cfg.score_range
        scores = []
        if self.has_linear:
            linear = self.linear((self._linear_input(feats) - self.feature_mean) * self.feature_scale)
            scores.append(linear.squeeze(-1).clamp(low, high))
            embedding = feats.mean((2, 3))
        if self.has_mlp:
            mlp, embedding = self._mlp(feats)  # the MLP's hidden layer is the embedding when there is one
            scores.append(mlp)
        return StudentOutput(sum(scores) / len(scores), embedding)

    def _mlp(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low, high = self.cfg.score_range
        hidden = self.hidden(F.adaptive_avg_pool2d(feats, self.cfg.pool).flatten(1))
        return low + (high - low) * torch.sigmoid(self.out(hidden).squeeze(-1)), hidden

    def mlp_score(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP head's own score (what ``mdnet distill`` trains by gradient; ``forward`` for ``head="mlp"``)."""
        if not self.has_mlp:
            raise ValueError("this student has no MLP head")
        return self._mlp(self.feature_map(x))[0]

    def _linear_input(self, feats: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(feats, self.linear_cells).flatten(1)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`preprocess`'s output -> SFace's ``(B, 1024, 7, 7)`` map, what the head reads."""
        rgb = (x * self.pixel_std + self.pixel_mean) * 255
        return self.head_convs(self.trunk(scale_input(self.align(rgb))))

    def linear_features(self, x: torch.Tensor) -> torch.Tensor:
        """What the linear head reads (and a ridge fit is fitted on): ``(B, 1024 x cells x cells)``, the map
        pooled onto ``pool x pool`` cells (``head="linear"``) or the whole 7 x 7 map (``"mlp+linear"``)."""
        return self._linear_input(self.feature_map(x))

    @torch.no_grad()
    def set_linear_head(self, weight: torch.Tensor, bias: float, mean: torch.Tensor, scale: torch.Tensor) -> None:
        """Install a fitted linear head: ``score = bias + weight . ((features - mean) * scale)``, clamped."""
        if not self.has_linear:
            raise ValueError("this student has an MLP head only, no linear one")
        self.linear.weight.copy_(weight.view(1, -1))
        self.linear.bias.fill_(float(bias))
        self.feature_mean.copy_(mean)
        self.feature_scale.copy_(scale)

    def train(self, mode: bool = True) -> FBPStudent:
        """Train mode, with SFace's BatchNorm statistics frozen (eval mode): small, similar batches of faces
        would otherwise overwrite the statistics of SFace's millions of faces, and training and scoring
        would see different networks. Their scales and shifts still train."""
        super().train(mode)  # refuses a copy for inference (InferenceCopy)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def freeze_units(self, n: int) -> int:
        """Stop training SFace's first ``n`` conv units (from the input side: the high-resolution ones, where
        most of a backward pass's time goes); returns the parameters frozen."""
        units = [*self.trunk, *self.head_convs]
        if not 0 <= n <= len(units):
            raise ValueError(f"can freeze 0 to {len(units)} SFace units, not {n}")
        frozen = 0
        for unit in units[:n]:
            for p in unit.parameters():
                p.requires_grad_(False)
                frozen += p.numel()
        return frozen

    @torch.no_grad()
    def estimate_bn_statistics(self, batches) -> int:
        """Set every BatchNorm's statistics to their averages over ``batches`` (normalised faces): what a
        randomly initialised student needs before its statistics are frozen. Returns the faces seen."""
        norms = [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average
            m.train()
        count = 0
        for x in batches:
            self(x)
            count += len(x)
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
            m.eval()
        return count

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def save_pretrained(self, directory: str | Path) -> Path:
        from mdnet.models.checkpoint import save_checkpoint

        return save_checkpoint(self, directory)

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | Path, device: str | torch.device = "cpu"):
        from mdnet.models.checkpoint import load_checkpoint

        return load_checkpoint(path_or_hub_id, device=device)
