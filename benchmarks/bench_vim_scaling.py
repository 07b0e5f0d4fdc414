"""Vim's linear cost in the number of tokens, next to a ViT of the same width and depth.

Both encoders run at 196, 784 and 3136 patch tokens (224, 448 and 896 px with
16 px patches), batch 1, in one process with interleaved repeats. The ViT is
PyTorch's own pre-norm ``nn.TransformerEncoder`` (MLP ratio 4, fused attention).
Printed: time per forward and the growth relative to 196 tokens; linear cost
grows 4x and 16x, quadratic attention up to 16x and 256x.
"""

from __future__ import annotations

import argparse
from functools import partial

import torch
from timing import header, measure, ms
from torch import nn

from mdnet.models.config import VimConfig
from mdnet.models.vim import VisionMamba


class ViT(nn.Module):
    """Patch embedding + position embedding + class token + pre-norm transformer blocks."""

    def __init__(self, dim: int, depth: int, heads: int, patch: int, image_size: int):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(1, (image_size // patch) ** 2 + 1, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        return self.blocks(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448, 896])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    results = {}
    with torch.inference_mode():
        for size in args.sizes:
            vim = VisionMamba(VimConfig(embed_dim=args.dim, depth=args.depth), size).eval()
            vit = ViT(args.dim, args.depth, args.heads, 16, size).eval()
            x = torch.randn(1, 3, size, size)
            results[(size // 16) ** 2] = measure({"vim": partial(vim, x), "vit": partial(vit, x)},
                                                 repeats=args.repeats)
    print(header(f"Vim vs ViT forward, width {args.dim}, depth {args.depth}, batch 1"))
    print("| tokens | Vim ms | ViT ms | Vim growth | ViT growth | ViT / Vim |")
    print("|---|---|---|---|---|---|")
    base = results[min(results)]
    for tokens, r in results.items():
        vim_t, vit_t = r["vim"]["median"], r["vit"]["median"]
        print(
            f"| {tokens} | {ms(vim_t)} | {ms(vit_t)} | {vim_t / base['vim']['median']:.1f}x "
            f"| {vit_t / base['vit']['median']:.1f}x | {vit_t / vim_t:.2f} |"
        )


if __name__ == "__main__":
    main()
