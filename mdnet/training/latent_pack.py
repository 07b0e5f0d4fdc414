"""Pack cached latents small enough to travel: int8 per channel, half the size of the fp16 cache.

Each channel is scaled by its largest magnitude onto -127..127, so the error is at most half a
quantisation step of that channel. Unpacking can add uniform noise of one step's width
(dithering, as in the dequantisation of 8-bit images for likelihood models), so that a model
trained on unpacked latents sees a continuous distribution instead of a grid.
"""

from __future__ import annotations

import numpy as np
import torch


def pack_latents(latents: torch.Tensor, shift: float = 0.0, scale: float = 1.0) -> dict[str, np.ndarray]:
    """(n, c, h, w) latents -> {"q": int8, "step": per-channel float32, "shift", "scale"}.

    ``shift`` and ``scale`` (the normalisation a prior was trained with) travel with them unchanged.
    """
    if latents.ndim != 4 or not torch.isfinite(latents).all():
        raise ValueError(f"expected finite (n, c, h, w) latents, got shape {tuple(latents.shape)}")
    peak = latents.abs().amax(dim=(0, 2, 3)).clamp_min(1e-8)
    step = peak / 127.0
    q = torch.round(latents / step[None, :, None, None]).clamp(-127, 127).to(torch.int8)
    return {"q": q.numpy(), "step": step.float().numpy(), "shift": np.float64(shift), "scale": np.float64(scale)}


def unpack_latents(packed: dict, dither: bool = False, seed: int = 0) -> torch.Tensor:
    """The float32 latents back; with ``dither``, plus uniform noise of one step's width (seeded)."""
    q = torch.from_numpy(np.asarray(packed["q"])).float()
    step = torch.from_numpy(np.asarray(packed["step"])).float()[None, :, None, None]
    if dither:
        g = torch.Generator().manual_seed(seed)
        q = q + torch.rand(q.shape, generator=g) - 0.5
    return q * step
