"""Sequential selective scan in plain PyTorch: the readable ground truth.

Same signature as ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``
for the case Mamba uses (real ``A``, input-dependent ``B`` and ``C``). Every
other path in :mod:`mdnet.models.ssm` is tested against this one.
"""

from __future__ import annotations

import torch

from mdnet.models.ssm.common import finish_output, prepare_inputs


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
):
    """Run the selective state-space recurrence one step at a time.

    Shapes (b = batch, d = channels, l = length, n = state size):
        u, delta, z: (b, d, l);  A: (d, n);  D, delta_bias: (d,)
        B, C: (b, n, l), or (b, g, n, l) for g groups of d / g channels each

    For every step t::

        dt   = softplus(delta[t] + delta_bias)        (when delta_softplus)
        h[t] = exp(dt * A) * h[t-1] + dt * B[t] * u[t]
        y[t] = <C[t], h[t]> + D * u[t]
        out  = y * silu(z)                            (when z is given)

    Returns ``out`` (b, d, l), and the last state h (b, d, n) too when
    ``return_last_state``. Computed in float32 (or float64 if given), returned
    in ``u``'s dtype.
    """
    dtype_in = u.dtype
    u, delta, A, B, C = prepare_inputs(u, delta, A, B, C, delta_bias, delta_softplus)

    # Discretise every step up front (zero-order hold on A, Euler on B), as
    # mamba-ssm's selective_scan_ref does, then walk the sequence.
    # Per-channel B, C (b, d, n, l); with g groups, group k serves channels
    # k*d/g ... (k+1)*d/g - 1.
    if B.dim() == 3:
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    B = B.repeat_interleave(u.shape[1] // B.shape[1], dim=1)
    C = C.repeat_interleave(u.shape[1] // C.shape[1], dim=1)
    decay = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))          # (b, d, l, n)
    drive = torch.einsum("bdl,bdnl,bdl->bdln", delta, B, u)            # (b, d, l, n)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])                # (b, d, n)
    ys = []
    for t in range(u.shape[2]):
        h = decay[:, :, t] * h + drive[:, :, t]
        ys.append(torch.einsum("bdn,bdn->bd", h, C[..., t]))
    y = torch.stack(ys, dim=-1)                                        # (b, d, l)

    y = finish_output(y, u, D, z, dtype_in)
    return (y, h) if return_last_state else y
