"""Masked image modelling for the Vim stream (SimMIM-style; the MAE-FBP idea on faces).

A share of the patch grid is hidden; the Vim must reconstruct what it cannot see:

1. :func:`block_masks` picks the hidden patches: exactly :func:`hidden_count` per image, drawn in
   ``block x block`` squares of the grid (SimMIM's 32 px mask patches for a 16 px-patch ViT: on a
   face, a lone 16 px patch is too easy to fill in from its neighbours). ``block=1``: single patches.
2. :func:`hide_pixels` blanks the hidden patches in the *input* (to 0 after normalisation: the
   dataset's mean colour), so a convolutional stem cannot see them through its receptive field;
   the Vim then swaps their tokens for a learned mask token (``VisionMamba(token_fn=...)``).
   A scan model needs the whole sequence, so, unlike MAE, hidden tokens stay in it.
3. A linear decoder maps each output patch token to a target; the loss (:func:`masked_loss`) is the
   MSE over the hidden patches only. The target is a plug-in (:class:`Target`): today
   :class:`PixelTarget`, MAE's per-patch normalised pixels at a reduced resolution (8 x 8 x 3 a
   patch by default); a latent target (TAEF2) can take its place later.

:class:`MaskedVimPretrainer` wraps a :class:`~mdnet.models.vim.VisionMamba` and owns the mask token
and the decoder; ``forward(batch)`` returns the per-image loss. Only the Vim's state dict is kept
after pretraining.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from mdnet.models.config import PreprocessConfig
from mdnet.models.vim import VisionMamba

DEFAULT_MASK_RATIO = 0.6
DEFAULT_MASK_BLOCK = 2
NORM_EPS = 1e-6  # MAE's norm_pix_loss


def hidden_count(grid: tuple[int, int], ratio: float, block: int = DEFAULT_MASK_BLOCK) -> int:
    """Patches hidden per image: ``round(ratio x blocks)`` whole ``block x block`` squares, at least one."""
    rows, cols = grid
    if not 0 < ratio < 1:
        raise ValueError(f"mask ratio must be in (0, 1), got {ratio}")
    if block < 1 or rows % block or cols % block:
        raise ValueError(f"mask block {block} does not tile the {rows}x{cols} patch grid")
    blocks = (rows // block) * (cols // block)
    return min(blocks - 1, max(1, round(ratio * blocks))) * block * block


def block_masks(n: int, grid: tuple[int, int], ratio: float, generator: torch.Generator,
                block: int = DEFAULT_MASK_BLOCK) -> torch.Tensor:
    """``n`` masks, (n, rows * cols) bool in row-major grid order; True = hidden.

    Each image hides exactly :func:`hidden_count` patches: a uniformly random set of whole
    ``block x block`` squares, drawn from ``generator`` (the same generator state gives the same masks).
    """
    rows, cols = grid
    k = hidden_count(grid, ratio, block) // (block * block)
    br, bc = rows // block, cols // block
    order = torch.stack([torch.randperm(br * bc, generator=generator) for _ in range(n)])  # (n, blocks)
    coarse = torch.zeros(n, br * bc, dtype=torch.bool)
    coarse.scatter_(1, order[:, :k], True)
    fine = coarse.view(n, br, 1, bc, 1).expand(n, br, block, bc, block)
    return fine.reshape(n, rows * cols)


def pixel_mask(mask: torch.Tensor, grid: tuple[int, int], patch_size: int) -> torch.Tensor:
    """(b, l) patch mask -> (b, 1, rows * p, cols * p) pixel mask."""
    b = mask.shape[0]
    rows, cols = grid
    m = mask.view(b, 1, rows, 1, cols, 1).expand(b, 1, rows, patch_size, cols, patch_size)
    return m.reshape(b, 1, rows * patch_size, cols * patch_size)


def hide_pixels(images: torch.Tensor, mask: torch.Tensor, patch_size: int, fill: float = 0.0) -> torch.Tensor:
    """images (b, c, s, s), mask (b, l) -> images with every hidden patch set to ``fill`` (a new tensor)."""
    rows, cols = images.shape[-2] // patch_size, images.shape[-1] // patch_size
    if mask.shape[1] != rows * cols:
        raise ValueError(f"a mask of {mask.shape[1]} patches for a {rows}x{cols} grid")
    return images.masked_fill(pixel_mask(mask.to(images.device), (rows, cols), patch_size), fill)


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(b, c, rows * p, cols * p) -> (b, rows * cols, p * p * c), row-major patches, pixels as (py, px, c)."""
    b, c, h, w = images.shape
    rows, cols = h // patch_size, w // patch_size
    x = images.reshape(b, c, rows, patch_size, cols, patch_size)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, rows * cols, patch_size * patch_size * c)


def unpatchify(patches: torch.Tensor, grid: tuple[int, int], channels: int = 3) -> torch.Tensor:
    """The inverse of :func:`patchify`: (b, rows * cols, p * p * c) -> (b, c, rows * p, cols * p)."""
    b, _, d = patches.shape
    rows, cols = grid
    p = round((d // channels) ** 0.5)
    x = patches.reshape(b, rows, cols, p, p, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, rows * p, cols * p)


class Target(Protocol):
    """What the decoder predicts for each patch: ``target(images) -> (b, l, dim)``, one row per grid patch.

    ``images``: the *unmasked* normalised input (b, 3, s, s). Computed without gradients.
    """

    dim: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


class PixelTarget:
    """Each patch's pixels at ``size x size`` (area-averaged), normalised per patch (MAE's normalised pixels).

    ``(b, 3, s, s) -> (b, l, size * size * 3)``. Per-patch normalisation takes out each patch's
    brightness and contrast, so the loss is about structure (and does not reward predicting the
    face's average colour).
    """

    def __init__(self, patch_size: int, size: int = 8, normalise: bool = True):
        if patch_size % size:
            raise ValueError(f"target size {size} does not divide the patch size {patch_size}")
        self.patch_size, self.size, self.normalise = patch_size, size, normalise
        self.dim = size * size * 3

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Un-normalised targets: (b, l, size * size * 3)."""
        k = self.patch_size // self.size
        small = F.avg_pool2d(images, k) if k > 1 else images
        return patchify(small, self.size)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = self.pixels(images.float())
        if not self.normalise:
            return x
        return (x - x.mean(-1, keepdim=True)) / (x.var(-1, keepdim=True) + NORM_EPS).sqrt()

    def to_images(self, pred: torch.Tensor, images: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Predictions (b, l, dim) back to images (b, 3, s, s), with each patch's true mean and std (as MAE shows)."""
        x = self.pixels(images.float())
        if self.normalise:
            pred = pred * (x.var(-1, keepdim=True) + NORM_EPS).sqrt() + x.mean(-1, keepdim=True)
        small = unpatchify(pred, grid)
        return F.interpolate(small, size=images.shape[-2:], mode="nearest")


def masked_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-image MSE over the hidden patches only: pred, target (b, l, dim), mask (b, l) bool -> (b,)."""
    per_patch = (pred.float() - target.float()).pow(2).mean(-1)           # (b, l)
    m = mask.to(per_patch.dtype)
    return (per_patch * m).sum(1) / m.sum(1).clamp_min(1)


class MaskedVimPretrainer(nn.Module):
    """A :class:`VisionMamba` with a learned mask token and a linear decoder: ``forward(batch) -> (b,)`` losses.

    ``batch["image"]``: aligned faces, uint8 or float in [0, 1], (b, 3, s, s); ``batch["mask"]``: (b, l)
    bool, True = hidden (from :func:`block_masks`). Normalised with ``preprocess`` (the same mean and std
    as ``MDNet.preprocess``). ``target`` defaults to :class:`PixelTarget` (8 x 8 per patch).

    ``freeze_stem_norm`` keeps the stem's BatchNorm layers on their running (ImageNet) statistics in
    training: batches that are 60 % blank would otherwise drag them away from those of real faces, and
    each image's loss would depend on the rest of its batch.
    """

    def __init__(self, vim: VisionMamba, preprocess: PreprocessConfig, target: Target | None = None,
                 fill: float = 0.0, freeze_stem_norm: bool = True):
        super().__init__()
        self.vim = vim
        self.target = target or PixelTarget(vim.cfg.patch_size)
        self.fill, self.freeze_stem_norm = fill, freeze_stem_norm
        self.mask_token = nn.Parameter(torch.zeros(1, 1, vim.embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.decoder = nn.Linear(vim.embed_dim, self.target.dim)
        self.register_buffer("pixel_mean", torch.tensor(preprocess.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(preprocess.std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> MaskedVimPretrainer:
        super().train(mode)
        if mode and self.freeze_stem_norm:
            for m in self.vim.patch_embed.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def normalise(self, faces: torch.Tensor) -> torch.Tensor:
        x = faces.float() / 255 if faces.dtype == torch.uint8 else faces.float()
        return (x - self.pixel_mean) / self.pixel_std

    def mask_tokens(self, mask: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """The ``token_fn`` for :meth:`VisionMamba.forward`: hidden patch tokens -> the mask token."""
        return lambda tokens: torch.where(mask[..., None], self.mask_token.to(tokens.dtype), tokens)

    def predict(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(normalised images (b, 3, s, s), predictions (b, l, dim), targets (b, l, dim))."""
        x = self.normalise(batch["image"])
        mask = batch["mask"].to(x.device, torch.bool)
        with torch.no_grad():
            target = self.target(x)
        out = self.vim(hide_pixels(x, mask, self.vim.cfg.patch_size, self.fill), token_fn=self.mask_tokens(mask))
        return x, self.decoder(out.patches), target

    def forward(self, batch: dict) -> torch.Tensor:
        _, pred, target = self.predict(batch)
        return masked_loss(pred, target, batch["mask"].to(pred.device, torch.bool))
