"""Fast selective scan in pure PyTorch: chunked, cache-friendly, hand-written backward.

The recurrence ``h[t] = exp(dt[t] A) h[t-1] + dt[t] u[t] B[t]`` is run over
chunks of ``chunk`` steps. For each chunk the decays and inputs are built with a
few large ops into buffers that stay in the CPU cache, the state is advanced
with one fused ``addcmul`` per step, and the outputs ``y[t] = <C[t], h[t]>`` of
the whole chunk come from one contraction. Only the chunk-start states are
kept for the backward pass, which recomputes each chunk's states and runs the
adjoint recurrence in reverse (the scheme of mamba-ssm's CUDA kernel).

Forward and gradients match :func:`mdnet.models.ssm.reference.selective_scan_ref`
(``tests/test_ssm.py``). Works on any device; on CUDA the mamba-ssm kernel is
faster when installed.
"""

from __future__ import annotations

import torch

from mdnet.models.ssm.common import finish_output, prepare_inputs

CHUNK_ELEMENTS = 1_500_000  # decay buffer per chunk: about 6 MB in float32, near this CPU's cache


def auto_chunk(state_elements: int) -> int:
    """Steps per chunk so one chunk's decay buffer stays cache-sized: a power of two in [4, 32]."""
    steps = max(1, CHUNK_ELEMENTS // max(state_elements, 1))
    return min(32, max(4, 1 << (steps.bit_length() - 1)))


def _chunk_inputs(dt, dtu, A, B, s, e, dA, dBu):
    """Fill decays ``dA = exp(dt A)`` and inputs ``dBu = dt u B`` for steps ``s:e``.

    dt, dtu: (l, b, g, d/g); A: (g, d/g, n); B: (l, b, g, n); buffers (chunk, b, g, d/g, n).
    """
    k = e - s
    torch.mul(dt[s:e].unsqueeze(-1), A, out=dA[:k])
    dA[:k].exp_()
    torch.mul(dtu[s:e].unsqueeze(-1), B[s:e].unsqueeze(-2), out=dBu[:k])
    return dA[:k], dBu[:k]


def _run_chunk(h0, dA, dBu, hs):
    """hs[0] = h0, hs[t+1] = dA[t] * hs[t] + dBu[t] for t < len(dA)."""
    hs[0].copy_(h0)
    states, decays, inputs = hs.unbind(0), dA.unbind(0), dBu.unbind(0)
    for t in range(len(decays)):
        torch.addcmul(inputs[t], decays[t], states[t], out=states[t + 1])


class _ChunkedScan(torch.autograd.Function):
    """Scan on time-major, grouped tensors: dt, u (l, b, g, dg); A (g, dg, n); B, C (l, b, g, n)."""

    @staticmethod
    def forward(ctx, dt, u, A, B, C, chunk: int):
        length = dt.shape[0]
        state = (*dt.shape[1:], A.shape[-1])                              # (b, g, dg, n)
        dtu = dt * u
        y = dt.new_empty(dt.shape)
        starts = dt.new_zeros((length + chunk - 1) // chunk + 1, *state)
        hs = dt.new_empty(chunk + 1, *state)
        dA = dt.new_empty(chunk, *state)
        dBu = torch.empty_like(dA)
        for k, s in enumerate(range(0, length, chunk)):
            e = min(s + chunk, length)
            a, b = _chunk_inputs(dt, dtu, A, B, s, e, dA, dBu)
            _run_chunk(starts[k], a, b, hs)
            y[s:e] = torch.einsum("tbgdn,tbgn->tbgd", hs[1 : e - s + 1], C[s:e])
            starts[k + 1].copy_(hs[e - s])
        ctx.save_for_backward(dt, u, A, B, C, starts)
        ctx.chunk = chunk
        return y, starts[-1].clone()

    @staticmethod
    def backward(ctx, gy, glast):
        dt, u, A, B, C, starts = ctx.saved_tensors
        chunk, length = ctx.chunk, dt.shape[0]
        dtu = dt * u
        gy = gy.contiguous()
        g_dt, g_dtu = torch.zeros_like(dt), torch.zeros_like(dt)
        g_A, g_B, g_C = torch.zeros_like(A), torch.zeros_like(B), torch.zeros_like(C)
        gh = torch.zeros_like(starts[0]) if glast is None else glast.clone()
        hs = dt.new_empty(chunk + 1, *starts.shape[1:])
        dA = dt.new_empty(chunk, *starts.shape[1:])
        dBu, ghs = torch.empty_like(dA), torch.empty_like(dA)
        for k in reversed(range((length + chunk - 1) // chunk)):
            s = k * chunk
            e = min(s + chunk, length)
            n = e - s
            a, b = _chunk_inputs(dt, dtu, A, B, s, e, dA, dBu)
            _run_chunk(starts[k], a, b, hs)
            h_cur, h_prev = hs[1 : n + 1], hs[:n]
            # y[t] = <C[t], h[t]>: the gradient of C, and the direct gradient into h[t].
            g_C[s:e] = torch.matmul(gy[s:e].unsqueeze(-2), h_cur).squeeze(-2)
            direct = gy[s:e].unsqueeze(-1) * C[s:e].unsqueeze(-2)
            # Adjoint recurrence: gh[t] = direct[t] + exp(dt[t+1] A) gh[t+1].
            for t in reversed(range(n)):
                torch.add(direct[t], gh, out=ghs[t])
                gh = ghs[t] * a[t]
            g = ghs[:n]
            # h[t] = a[t] h[t-1] + dtu[t] B[t], a[t] = exp(dt[t] A)
            g_dtu[s:e] = torch.matmul(g, B[s:e].unsqueeze(-1)).squeeze(-1)
            g_B[s:e] = torch.matmul(dtu[s:e].unsqueeze(-2), g).squeeze(-2)
            g_log_a = g * h_prev * a
            g_dt[s:e] = (g_log_a * A).sum(-1)
            g_A += torch.einsum("tbgdn,tbgd->gdn", g_log_a, dt[s:e])
        g_dt += g_dtu * u
        return g_dt, g_dtu * dt, g_A, g_B, g_C, None


def selective_scan_chunked(
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
    chunk: int | None = None,
):
    """Chunked selective scan; same signature and shapes as ``selective_scan_ref``.

    Shapes: u, delta, z (b, d, l); A (d, n); B, C (b, n, l) or grouped
    (b, g, n, l); D, delta_bias (d,). ``chunk`` trades cache locality against
    per-chunk overhead; ``None`` picks it from the state size (the result does
    not depend on it).
    """
    dtype_in = u.dtype
    u, delta, A, B, C = prepare_inputs(u, delta, A, B, C, delta_bias, delta_softplus)
    batch, dim, length = u.shape
    if B.dim() == 3:
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    groups, nstate = B.shape[1], B.shape[2]
    if chunk is None:
        chunk = auto_chunk(batch * dim * nstate)

    def time_major(t):  # (b, d, l) -> (l, b, g, d/g)
        return t.permute(2, 0, 1).reshape(length, batch, groups, dim // groups)

    y_t, last = _ChunkedScan.apply(
        time_major(delta).contiguous(),
        time_major(u).contiguous(),
        A.reshape(groups, dim // groups, nstate).contiguous(),
        B.permute(3, 0, 1, 2).contiguous(),
        C.permute(3, 0, 1, 2).contiguous(),
        int(chunk),
    )
    y = y_t.reshape(length, batch, dim).permute(1, 2, 0)
    y = finish_output(y, u, D, z, dtype_in)
    return (y, last.reshape(batch, dim, nstate)) if return_last_state else y
