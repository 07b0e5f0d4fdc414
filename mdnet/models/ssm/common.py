"""What every selective-scan path does around the recurrence itself (shared by ref and chunked)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def prepare_inputs(u, delta, A, B, C, delta_bias=None, delta_softplus=False):
    """Cast to the compute dtype (float64 stays, all else float32) and finish ``delta``.

    Returns ``(u, delta, A, B, C)`` with ``delta = softplus(delta + delta_bias)``
    (each part only when asked for).
    """
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    u, delta, A, B, C = (t.to(compute) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(compute)[..., None]
    if delta_softplus:
        delta = F.softplus(delta)
    return u, delta, A, B, C


def finish_output(y, u, D=None, z=None, dtype=None):
    """``(y + D * u) * silu(z)``, each term only when given, cast back to ``dtype``."""
    if D is not None:
        y = y + u * D.to(y.dtype)[..., None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(dtype or y.dtype)
