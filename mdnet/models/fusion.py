"""Cross-attention fusion of the two streams.

The U-Net feature maps (one per scale) are projected to a common width, given
a scale embedding and a 2-D sine-cosine position code, and flattened into one
token set. The Vim tokens (class token included) are the queries of
multi-head cross-attention over those U-Net tokens; optionally (``reverse``)
the U-Net tokens then attend back to the Vim tokens. Attention weights can be
returned and cut back into per-scale maps on the image grid
(:func:`attention_to_maps`).

With ``prior_summary`` the fusion also returns the U-Net tokens pooled (the mean of each scale's
tokens, averaged over the scales, layer-normalised): a read-out of the prior that does not pass
through the Vim queries, so it still tells faces apart when the Vim stream is switched off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mdnet.models.config import FusionConfig


def sincos_2d(height: int, width: int, dim: int, device=None, dtype=None) -> torch.Tensor:
    """Fixed 2-D sine-cosine position code: (height * width, dim), row-major."""
    if dim % 4:
        raise ValueError(f"sincos position code needs dim divisible by 4, got {dim}")
    quarter = dim // 4
    freq = torch.exp(-math.log(10000.0) * torch.arange(quarter, device=device, dtype=torch.float32) / quarter)
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=torch.float32) / max(height, 1),
        torch.arange(width, device=device, dtype=torch.float32) / max(width, 1),
        indexing="ij",
    )
    # Positions on a unit square, so scales of different sizes share one frame.
    y = ys.reshape(-1, 1) * freq * 64
    x = xs.reshape(-1, 1) * freq * 64
    return torch.cat([y.sin(), y.cos(), x.sin(), x.cos()], dim=1).to(dtype)


class PriorTokens(nn.Module):
    """Multi-scale feature maps [(b, c_i, h_i, w_i)] -> tokens (b, sum h_i w_i, dim)."""

    def __init__(self, channels: list[int], dim: int):
        super().__init__()
        self.proj = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in channels)
        self.scale_embed = nn.Parameter(torch.zeros(len(channels), dim))
        nn.init.trunc_normal_(self.scale_embed, std=0.02)
        self.dim = dim

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        tokens, shapes = [], []
        for i, (proj, f) in enumerate(zip(self.proj, features, strict=True)):
            t = proj(f).flatten(2).transpose(1, 2)                        # (b, h w, dim)
            h, w = f.shape[-2:]
            t = t + self.scale_embed[i] + sincos_2d(h, w, self.dim, t.device, t.dtype)
            tokens.append(t)
            shapes.append((h, w))
        return torch.cat(tokens, dim=1), shapes


class CrossAttention(nn.Module):
    """Multi-head attention of queries (b, q, dim) over keys/values (b, k, dim)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"fusion dim {dim} is not divisible by {heads} heads")
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, queries, context, need_weights: bool = False):
        """Returns (out (b, q, dim), weights (b, heads, q, k) or None); rows of weights sum to one."""
        b, nq, dim = queries.shape
        q = self.q(queries).view(b, nq, self.heads, -1).transpose(1, 2)
        k, v = self.kv(context).view(b, context.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        if need_weights:
            weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
            out = F.dropout(weights, p, self.training) @ v
        else:
            weights, out = None, F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return self.out(out.transpose(1, 2).reshape(b, nq, dim)), weights


class FusionLayer(nn.Module):
    """Pre-norm cross-attention (+ optional reverse attention) and an MLP, each residual."""

    def __init__(self, cfg: FusionConfig):
        super().__init__()
        dim = cfg.dim
        self.norm_q, self.norm_kv = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, cfg.heads, cfg.dropout)
        self.reverse = CrossAttention(dim, cfg.heads, cfg.dropout) if cfg.reverse else None
        if self.reverse is not None:
            self.norm_rq, self.norm_rkv = nn.LayerNorm(dim), nn.LayerNorm(dim)
        hidden = int(dim * cfg.mlp_ratio)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(hidden, dim))

    def forward(self, vim_tokens, prior_tokens, need_weights: bool = False):
        if self.reverse is not None:
            upd, _ = self.reverse(self.norm_rq(prior_tokens), self.norm_rkv(vim_tokens))
            prior_tokens = prior_tokens + upd
        upd, weights = self.attn(self.norm_q(vim_tokens), self.norm_kv(prior_tokens), need_weights)
        vim_tokens = vim_tokens + upd
        vim_tokens = vim_tokens + self.mlp(self.norm_mlp(vim_tokens))
        return vim_tokens, prior_tokens, weights


@dataclass
class FusionOutput:
    tokens: torch.Tensor                      # (b, l + 1, dim) fused Vim tokens
    attention: list[torch.Tensor] | None      # per layer (b, heads, l + 1, m), rows sum to one
    prior_shapes: list[tuple[int, int]]       # (h_i, w_i) of each U-Net scale, in token order
    prior_summary: torch.Tensor | None = None  # (b, dim) pooled U-Net tokens (cfg.prior_summary), else None


class CrossAttentionFusion(nn.Module):
    """Vim tokens (b, l + 1, d_vim) x U-Net features -> fused tokens (b, l + 1, dim)."""

    def __init__(self, cfg: FusionConfig, vim_dim: int, prior_channels: list[int]):
        super().__init__()
        self.vim_proj = nn.Linear(vim_dim, cfg.dim)
        self.prior_tokens = PriorTokens(prior_channels, cfg.dim)
        self.layers = nn.ModuleList(FusionLayer(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.dim)
        self.summary_norm = nn.LayerNorm(cfg.dim) if cfg.prior_summary else None

    def forward(self, vim_tokens, prior_features, return_attention: bool = False) -> FusionOutput:
        q = self.vim_proj(vim_tokens)
        kv, shapes = self.prior_tokens(prior_features)
        summary = None
        if self.summary_norm is not None:  # each scale's mean token, the scales weighted equally
            scales = kv.split([h * w for h, w in shapes], dim=1)
            summary = self.summary_norm(torch.stack([t.mean(1) for t in scales]).mean(0))
        maps = []
        for layer in self.layers:
            q, kv, w = layer(q, kv, need_weights=return_attention)
            maps.append(w)
        return FusionOutput(self.norm(q), maps if return_attention else None, shapes, summary)


def attention_to_maps(weights: torch.Tensor, shapes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Split attention (..., m) over the U-Net tokens into per-scale grids [(..., h_i, w_i)]."""
    sizes = [h * w for h, w in shapes]
    if weights.shape[-1] != sum(sizes):
        raise ValueError(f"attention has {weights.shape[-1]} keys, the scales {shapes} have {sum(sizes)}")
    parts = weights.split(sizes, dim=-1)
    return [p.reshape(*p.shape[:-1], h, w) for p, (h, w) in zip(parts, shapes, strict=True)]
