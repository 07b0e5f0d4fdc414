"""MD-Net: generative-prior stream + Vision Mamba stream + cross-attention fusion + head.

Input: aligned faces as normalised tensors ``(b, 3, s, s)`` (``cfg.preprocess``:
size, mean, std). Output: :class:`MDNetOutput` with the score on the 1-5 scale
and, on request, the fusion's attention weights.

Stream ablation (``mode``): ``"prior_only"`` replaces the Vim tokens, and
``"vim_only"`` the U-Net feature maps, by a stored reference: their mean over
the training faces (:meth:`MDNet.calibrate_references`), kept in the
checkpoint. A mean input carries no information about this face but keeps the
fusion and head in the range they were trained on, unlike zeros.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from mdnet.models.config import MDNetConfig, get_config
from mdnet.models.fusion import CrossAttentionFusion
from mdnet.models.inference_copy import InferenceCopy
from mdnet.models.prior import DiffusionPrior
from mdnet.models.vim import VisionMamba

MODES = ("full", "prior_only", "vim_only")


@dataclass
class MDNetOutput:
    score: torch.Tensor                       # (b,) on cfg.score_range
    attention: list[torch.Tensor] | None      # per fusion layer (b, heads, l + 1, m)
    prior_shapes: list[tuple[int, int]]       # U-Net scales (h_i, w_i), in key order
    vim_grid: tuple[int, int]                 # Vim patch grid; query i != cls_index maps onto it
    cls_index: int                            # position of the class token among the queries
    embedding: torch.Tensor | None = None     # (b, 2 or 3 * dim): what the head reads (class token, mean patch
                                              # token, and the pooled prior with cfg.fusion.prior_summary)


def normalise_faces(faces: torch.Tensor, size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Aligned faces, uint8 (b, s, s, 3) or (b, 3, s, s), or float in [0, 1] -> ``(x - mean) / std`` on
    ``mean``'s device: every model's input step (MD-Net's and its student's)."""
    if faces.dim() != 4:
        raise ValueError(f"expected a batch of faces (b, 3, s, s) or (b, s, s, 3), got {tuple(faces.shape)}")
    if faces.shape[-1] == 3 and faces.shape[1] != 3:
        faces = faces.permute(0, 3, 1, 2)
    if tuple(faces.shape[-2:]) != (size, size):
        raise ValueError(f"faces must be aligned {size}x{size} crops, got {tuple(faces.shape[-2:])}")
    x = faces.float() / 255 if faces.dtype == torch.uint8 else faces.float()
    return (x.to(mean.device) - mean) / std


class RegressionHead(nn.Module):
    """Fused tokens -> one raw value: MLP over [class token, mean of the patch tokens] and, with
    ``prior_summary``, the pooled prior (:class:`~mdnet.models.fusion.FusionOutput`).

    The pooled prior enters the hidden layer through its own projection (``summary``), which
    starts at zero: a head grown from a trained one (:meth:`MDNet.grow_prior_summary`) scores
    exactly as before until it learns to use the new input.
    """

    def __init__(self, dim: int, hidden: int, dropout: float, prior_summary: bool = False):
        super().__init__()
        self.dim = dim
        self.net = nn.Sequential(
            nn.LayerNorm(2 * dim), nn.Linear(2 * dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 1)
        )
        self.summary = nn.Linear(dim, hidden, bias=False) if prior_summary else None
        if self.summary is not None:
            nn.init.zeros_(self.summary.weight)

    @staticmethod
    def features(tokens: torch.Tensor, cls_index: int, summary: torch.Tensor | None = None) -> torch.Tensor:
        """Fused tokens (b, l, dim) -> (b, 2 * dim): the class token and the mean of the others; (b, 3 * dim)
        with the pooled prior ``summary`` (b, dim) after them."""
        cls = tokens[:, cls_index]
        rest = (tokens.sum(1) - cls) / (tokens.shape[1] - 1)
        return torch.cat([cls, rest] if summary is None else [cls, rest, summary], dim=-1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        norm, first, *rest = self.net
        hidden = first(norm(features[:, : 2 * self.dim]))
        if self.summary is not None:
            hidden = hidden + self.summary(features[:, 2 * self.dim :])
        for layer in rest:
            hidden = layer(hidden)
        return hidden.squeeze(-1)


class MDNet(InferenceCopy, nn.Module):
    mirror_average = True  # score_faces averages each face with its mirror image by default
    def __init__(self, cfg: MDNetConfig | str = "tiny", prior: DiffusionPrior | None = None):
        super().__init__()
        self.cfg = get_config(cfg) if isinstance(cfg, str) else cfg
        c = self.cfg
        self.prior = prior if prior is not None else DiffusionPrior.from_config(c.prior)
        self.vim = VisionMamba(c.vim, c.preprocess.image_size)
        self.fusion = CrossAttentionFusion(c.fusion, c.vim.embed_dim, self.prior.feature_channels)
        self.head = RegressionHead(c.fusion.dim, c.head_hidden, c.head_dropout, c.fusion.prior_summary)
        self.register_buffer("pixel_mean", torch.tensor(c.preprocess.mean).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(c.preprocess.std).view(1, 3, 1, 1))
        # Stream references for ablation (set by calibrate_references).
        self.register_buffer("references_ready", torch.tensor(False))
        self.register_buffer("vim_reference", torch.zeros(self.vim.num_patches + 1, c.vim.embed_dim))
        shapes = self.prior.feature_shapes
        for i, (ch, (h, w)) in enumerate(zip(self.prior.feature_channels, shapes, strict=True)):
            self.register_buffer(f"prior_reference_{i}", torch.zeros(ch, h, w))

    def preprocess(self, faces: torch.Tensor) -> torch.Tensor:
        """Aligned faces, uint8 (b, s, s, 3) or (b, 3, s, s), or float in [0, 1] -> model input.

        The one normalisation step that training, evaluation and the app share (:func:`normalise_faces`).
        """
        return normalise_faces(faces, self.cfg.preprocess.image_size, self.pixel_mean, self.pixel_std)

    # ----------------------------------------------------------------- streams
    @property
    def prior_references(self) -> list[torch.Tensor]:
        return [getattr(self, f"prior_reference_{i}") for i in range(len(self.prior.feature_channels))]

    def prior_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Frozen U-Net features of normalised faces x (b, 3, s, s); cacheable, as the prior never changes."""
        return self.prior(x * self.pixel_std + self.pixel_mean)

    def _require_references(self, mode: str) -> None:
        if not bool(self.references_ready):
            raise RuntimeError(
                f"mode {mode!r} needs the stream references; this model has none yet "
                "(call calibrate_references on training faces, or load a trained checkpoint)"
            )

    def forward(
        self,
        x: torch.Tensor,
        mode: str = "full",
        return_attention: bool = False,
        prior_features: list[torch.Tensor] | None = None,
        vim_mask: torch.Tensor | None = None,
    ) -> MDNetOutput:
        """Score normalised faces x (b, 3, s, s).

        ``mode``: ``"full"``, ``"prior_only"`` or ``"vim_only"``. ``prior_features``
        reuses precomputed prior features (from :meth:`prior_features`). ``vim_mask``
        (b,) bool, for training's stream dropout: the marked faces' Vim tokens are
        replaced by ``vim_reference`` as it stands (``prior_only`` per face); None
        changes nothing.
        """
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
        batch = x.shape[0]
        if mode == "vim_only":
            self._require_references(mode)
            prior_features = [r.unsqueeze(0).expand(batch, -1, -1, -1) for r in self.prior_references]
        elif prior_features is None:
            prior_features = self.prior_features(x)
        if mode == "prior_only":
            self._require_references(mode)
            vim_tokens = self.vim_reference.unsqueeze(0).expand(batch, -1, -1)
        else:
            vim_tokens = self.vim(x).tokens
            if vim_mask is not None:
                reference = self.vim_reference.to(vim_tokens.dtype)
                vim_tokens = torch.where(vim_mask.view(-1, 1, 1).to(vim_tokens.device), reference, vim_tokens)
        fused = self.fusion(vim_tokens, prior_features, return_attention=return_attention)
        embedding = self.head.features(fused.tokens, self.vim.cls_index, fused.prior_summary)
        raw = self.head(embedding)
        low, high = self.cfg.score_range
        return MDNetOutput(
            score=low + (high - low) * torch.sigmoid(raw),
            attention=fused.attention,
            prior_shapes=fused.prior_shapes,
            vim_grid=self.vim.grid,
            cls_index=self.vim.cls_index,
            embedding=embedding,
        )

    @torch.no_grad()
    def calibrate_references(self, batches: Iterable[torch.Tensor]) -> int:
        """Set the ablation references to the mean Vim tokens and U-Net maps over ``batches``.

        ``batches`` yields normalised faces (b, 3, s, s), typically the training
        set. Returns the number of faces seen.
        """
        was_training = self.training
        self.eval()
        count = 0
        vim_sum = torch.zeros_like(self.vim_reference)
        prior_sums = [torch.zeros_like(r) for r in self.prior_references]
        for x in batches:
            x = x.to(self.pixel_mean.device)
            vim_sum += self.vim(x).tokens.sum(0)
            for acc, f in zip(prior_sums, self.prior_features(x), strict=True):
                acc += f.sum(0)
            count += x.shape[0]
        if count == 0:
            raise ValueError("calibrate_references got no faces")
        self.vim_reference.copy_(vim_sum / count)
        for ref, acc in zip(self.prior_references, prior_sums, strict=True):
            ref.copy_(acc / count)
        self.references_ready.fill_(True)
        self.train(was_training)
        return count

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    @property
    def embedding_dim(self) -> int:
        """Width of :attr:`MDNetOutput.embedding` (what the head reads)."""
        return (3 if self.cfg.fusion.prior_summary else 2) * self.cfg.fusion.dim

    def grow_prior_summary(self) -> MDNet:
        """This trained model with ``cfg.fusion.prior_summary`` added: a new model with every weight of this one
        and the two new modules (the summary's LayerNorm, the head's zero projection), so it scores as this one
        does until trained further (``mdnet train --init-from ... --prior-summary``)."""
        if self.cfg.fusion.prior_summary:
            raise ValueError("this model already reads the pooled prior (cfg.fusion.prior_summary)")
        cfg = MDNetConfig.from_dict(self.cfg.to_dict())
        cfg.fusion.prior_summary = True
        grown = MDNet(cfg, prior=self.prior).to(self.pixel_mean.device)
        missing, unexpected = grown.load_state_dict(self.state_dict(), strict=False)
        new = {n for n, _ in grown.named_parameters() if n.startswith(("fusion.summary_norm.", "head.summary."))}
        if unexpected or set(missing) != new:
            raise RuntimeError(f"growing the prior summary: missing {missing}, unexpected {unexpected}")
        return grown.train(self.training)

    # ------------------------------------------------------------- checkpoints
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write safetensors weights + config.json atomically (see :mod:`mdnet.models.checkpoint`)."""
        from mdnet.models.checkpoint import save_checkpoint

        return save_checkpoint(self, directory)

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | Path, device: str | torch.device = "cpu") -> MDNet:
        """Rebuild the exact model from a local checkpoint folder or a Hugging Face hub id."""
        from mdnet.models.checkpoint import load_checkpoint

        return load_checkpoint(path_or_hub_id, device=device)


@dataclass
class FaceScores:
    """What one scoring pass over aligned faces gives (:func:`score_faces`).

    Attributes:
        score: ``(n,)`` mirror-averaged scores (the face alone without ``tta``).
        mirror_gap: ``(n,)`` ``|f(face) - f(mirror image)|`` (zeros without ``tta``): a free
            per-face difficulty for the score's interval.
        embedding: ``(n, 2 * dim)`` what the head read, averaged over the face and its mirror image.
    """

    score: torch.Tensor
    mirror_gap: torch.Tensor
    embedding: torch.Tensor


@torch.no_grad()
def score_faces(
    model: MDNet,
    faces: torch.Tensor,
    tta: bool | None = None,
    batch_size: int = 32,
    mode: str = "full",
    prior_features: dict[bool, list[torch.Tensor]] | None = None,
    progress: str | None = None,
) -> FaceScores:
    """Score aligned faces, uint8 (n, 3, s, s): the one scoring path of evaluation, the CLIs and the app.

    ``tta`` averages each face with its mirror image (as the model was trained on both); None: the
    model's own choice (``model.mirror_average``: MD-Net yes, the fast student no).
    ``prior_features`` reuses cached prior features of these faces, ``{False: [(n, c_i, h_i, w_i)
    per scale], True: the same for the mirror images}`` (training validates with them).
    ``progress``: show a progress bar with this description (for long runs from the CLIs).
    """
    if model.training:  # (eval() walks every module: ~2 ms a call, a live frame's budget is ~50)
        model.eval()
    tta = model.mirror_average if tta is None else tta

    def cached(mirrored: bool, start: int) -> list[torch.Tensor] | None:
        if prior_features is None:
            return None
        return [f[start : start + batch_size].float().to(model.pixel_mean.device) for f in prior_features[mirrored]]

    scores, gaps, embeddings = [], [], []
    bar = tqdm(total=len(faces), desc=progress, unit="face", disable=progress is None)
    for i in range(0, len(faces), batch_size):
        x = model.preprocess(faces[i : i + batch_size])
        if not tta:
            out = model(x, mode=mode, prior_features=cached(False, i))
            s, e, gap = out.score, out.embedding, torch.zeros_like(out.score)
        else:  # the faces and their mirror images in one forward pass (about 15 % faster on a CPU than two)
            features = None
            if prior_features is not None:
                features = [torch.cat(pair) for pair in zip(cached(False, i), cached(True, i), strict=True)]
            out = model(torch.cat([x, x.flip(-1)]), mode=mode, prior_features=features)
            n = x.shape[0]
            s, e = (out.score[:n] + out.score[n:]) / 2, (out.embedding[:n] + out.embedding[n:]) / 2
            gap = (out.score[:n] - out.score[n:]).abs()
        scores.append(s.float().cpu())
        gaps.append(gap.float().cpu())
        embeddings.append(e.float().cpu())
        bar.update(len(x))
    bar.close()
    if not scores:
        return FaceScores(torch.empty(0), torch.empty(0), torch.empty(0, model.embedding_dim))
    return FaceScores(torch.cat(scores), torch.cat(gaps), torch.cat(embeddings))


def score_aligned(model: MDNet, faces: torch.Tensor, *args: Any, **options: Any) -> torch.Tensor:
    """The scores ``(n,)`` of :func:`score_faces` (same arguments: ``tta``, ``batch_size``, ``mode``,
    ``prior_features``)."""
    return score_faces(model, faces, *args, **options).score
