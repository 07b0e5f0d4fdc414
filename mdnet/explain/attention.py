"""Where the fusion looked: the cross-attention of the Vim tokens over the U-Net tokens, as maps over the crop."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from mdnet.models.fusion import attention_to_maps
from mdnet.models.mdnet import MDNet


@dataclass
class AttentionMaps:
    """Cross-attention of the fusion, averaged over heads and layers.

    Attributes:
        cls: ``(s, s)`` float32, sums to one: where the class token's attention went, over the crop.
        tokens: ``(s, s)`` float32, sums to one: the same for the mean over the ``L`` patch tokens
            (the class token left out, so the two maps are separate views; they are the two
            inputs the regression head reads).
        cls_scales, tokens_scales: the raw per-scale grids ``[(h_i, w_i)]`` before upsampling;
            all scales together sum to one, each scale to the attention mass it received.
        shapes: ``[(h_i, w_i)]`` of the U-Net scales, in key order.
        score: the full model's score of this forward (no mirror averaging).
    """

    cls: np.ndarray
    tokens: np.ndarray
    cls_scales: list[np.ndarray]
    tokens_scales: list[np.ndarray]
    shapes: list[tuple[int, int]]
    score: float

    @property
    def cls_scale_mass(self) -> list[float]:
        """Share of the class token's attention that went to each U-Net scale (sums to one)."""
        return [float(g.sum()) for g in self.cls_scales]

    @property
    def tokens_scale_mass(self) -> list[float]:
        """Share of the patch tokens' attention that went to each U-Net scale (sums to one)."""
        return [float(g.sum()) for g in self.tokens_scales]


def combine_scales(grids: list[np.ndarray], size: int) -> np.ndarray:
    """Per-scale attention grids ``[(h_i, w_i)]`` -> one ``(size, size)`` map over the crop.

    Every U-Net scale covers the whole crop, so each grid is upsampled (bilinearly, as a
    density) to the crop and rescaled to the attention mass its scale received; the sum
    over scales is therefore the mass-weighted average of the scales' maps, and the result
    sums to the total mass of the grids (one for an attention row).
    """
    out = np.zeros((size, size), dtype=np.float64)
    for grid in grids:
        grid = np.asarray(grid, dtype=np.float64)
        mass = grid.sum()
        if mass <= 0:
            continue
        density = cv2.resize(grid / mass, (size, size), interpolation=cv2.INTER_LINEAR)
        density = np.clip(density, 0.0, None)
        out += mass * density / density.sum()
    return out.astype(np.float32)


@torch.no_grad()
def attention_maps(model: MDNet, x: torch.Tensor) -> AttentionMaps:
    """The fusion's attention over the U-Net locations, for one normalised face x ``(1, 3, s, s)``.

    Each attention row (one query, one head, one layer) is a distribution over the U-Net
    tokens of all scales (rows sum to one). Rows are averaged over heads and layers, then
    taken for the class token (``cls``) and averaged over the patch tokens (``tokens``),
    split into per-scale grids (:func:`mdnet.models.fusion.attention_to_maps`) and combined over
    the crop (:func:`combine_scales`). It measures what the Vim stream looked up in the
    prior's features, which is not the same as what the score depends on (see
    :func:`integrated_gradients` for that).
    """
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"attention_maps explains one face: expected x of shape (1, 3, s, s), got {tuple(x.shape)}")
    out = model(x, return_attention=True)
    weights = torch.stack(out.attention).float().mean(dim=(0, 2))[0]  # layers, heads -> (L + 1, M)
    cls_row = weights[out.cls_index]
    keep = torch.ones(weights.shape[0], dtype=torch.bool, device=weights.device)
    keep[out.cls_index] = False
    token_row = weights[keep].mean(0)
    size = x.shape[-1]
    cls_scales = [g.cpu().numpy() for g in attention_to_maps(cls_row, out.prior_shapes)]
    token_scales = [g.cpu().numpy() for g in attention_to_maps(token_row, out.prior_shapes)]
    return AttentionMaps(
        cls=combine_scales(cls_scales, size),
        tokens=combine_scales(token_scales, size),
        cls_scales=cls_scales,
        tokens_scales=token_scales,
        shapes=list(out.prior_shapes),
        score=float(out.score[0]),
    )
