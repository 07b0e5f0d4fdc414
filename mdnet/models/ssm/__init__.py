"""Selective scan (the Mamba SSM core) with one signature and three paths.

- ``"ref"``:   :func:`selective_scan_ref`, sequential plain PyTorch (ground truth).
- ``"torch"``: :func:`selective_scan_chunked`, fast plain PyTorch, any device.
- ``"cuda"``:  mamba-ssm's fused CUDA kernel, when ``mamba_ssm`` imports and the
  tensors are on a CUDA device.

:func:`selective_scan` picks ``cuda`` when it can and ``torch`` otherwise. Force a
path with its ``backend`` argument, with :func:`use_backend` (a context manager),
or for a whole process with the environment variable ``MDNET_SCAN_BACKEND``.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator

import torch

from mdnet.models.ssm.chunked import selective_scan_chunked
from mdnet.models.ssm.reference import selective_scan_ref

BACKENDS = ("auto", "ref", "torch", "cuda")
_forced: str | None = None

__all__ = [
    "BACKENDS",
    "cuda_kernel_available",
    "resolve_backend",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_ref",
    "use_backend",
]


@functools.cache
def _mamba_ssm_fn():
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # ImportError, or a broken CUDA build raising at import
        return None
    return selective_scan_fn


def cuda_kernel_available() -> bool:
    """True when mamba-ssm's CUDA selective-scan kernel can be imported."""
    return _mamba_ssm_fn() is not None


def _check(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown selective-scan backend {name!r}; choose one of {BACKENDS}")
    return name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force every :func:`selective_scan` call inside the block onto one path."""
    global _forced
    previous, _forced = _forced, _check(name)
    try:
        yield
    finally:
        _forced = previous


def resolve_backend(device: torch.device, backend: str = "auto") -> str:
    """The path a call on ``device`` takes: argument, then ``use_backend``, then env, then auto."""
    name = backend if backend != "auto" else (_forced or os.environ.get("MDNET_SCAN_BACKEND", "auto"))
    name = _check(name)
    if name == "auto":
        return "cuda" if device.type == "cuda" and cuda_kernel_available() else "torch"
    if name == "cuda":
        if not cuda_kernel_available():
            raise RuntimeError(
                "selective-scan backend 'cuda' needs mamba-ssm "
                "(pip install -r requirements-gpu.txt on a machine with CUDA)"
            )
        if device.type != "cuda":
            raise RuntimeError(f"selective-scan backend 'cuda' needs CUDA tensors, got {device}")
    return name


def selective_scan(
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
    backend: str = "auto",
):
    """Selective scan on the chosen path; arguments as in :func:`selective_scan_ref`.

    Shapes: u, delta, z (b, d, l); A (d, n); D, delta_bias (d,); B, C (b, n, l)
    or grouped (b, g, n, l) with d divisible by g.
    """
    grouped_ok = B.dim() == 4 and u.shape[1] % B.shape[1] == 0
    if A.dim() != 2 or B.shape != C.shape or not (B.dim() == 3 or grouped_ok):
        raise ValueError(
            "selective_scan expects A (d, n) and input-dependent B, C (b, n, l) or (b, g, n, l); "
            f"got u {tuple(u.shape)}, A {tuple(A.shape)}, B {tuple(B.shape)}, C {tuple(C.shape)}"
        )
    kwargs = dict(
        D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
        return_last_state=return_last_state,
    )
    path = resolve_backend(u.device, backend)
    if path == "cuda":
        # The kernel wants contiguous inputs along l; dt/u/z in (b, d, l) already are.
        return _mamba_ssm_fn()(
            u.contiguous(), delta.contiguous(), A.contiguous(), B.contiguous(), C.contiguous(), **kwargs
        )
    if path == "ref":
        return selective_scan_ref(u, delta, A, B, C, **kwargs)
    return selective_scan_chunked(u, delta, A, B, C, **kwargs)
