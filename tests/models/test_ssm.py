"""The selective-scan paths agree with the sequential reference, forward and backward."""

from __future__ import annotations

import pytest
import torch

from mdnet.models import ssm
from mdnet.models.ssm import selective_scan, selective_scan_chunked, selective_scan_ref


def make_inputs(batch, dim, length, nstate, dtype, groups=0, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).to(device=device, dtype=dtype)

    bc = (batch, nstate, length) if not groups else (batch, groups, nstate, length)
    return {
        "u": rnd(batch, dim, length),
        "delta": rnd(batch, dim, length, scale=0.5, shift=-1.0),
        "A": -torch.rand(dim, nstate, generator=g, dtype=torch.float64).mul(8).add(0.1).to(device=device, dtype=dtype),
        "B": rnd(*bc),
        "C": rnd(*bc),
        "D": rnd(dim),
        "z": rnd(batch, dim, length),
        "delta_bias": rnd(dim, scale=0.5),
    }


def run_with_grads(fn, inputs, **kwargs):
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    y, last = fn(**leaves, delta_softplus=True, return_last_state=True, **kwargs)
    weights = torch.linspace(-1, 1, y.shape[-1], dtype=y.dtype, device=y.device)
    ((y * weights).sum() + (last**2).sum()).backward()
    return y.detach(), last.detach(), {k: v.grad for k, v in leaves.items()}


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
@pytest.mark.parametrize(
    "batch,dim,length,nstate,groups,chunk",
    [(1, 4, 1, 2, 0, 16), (3, 6, 37, 4, 0, 8), (2, 8, 50, 3, 2, 16), (2, 5, 19, 16, 0, 4), (4, 4, 33, 2, 4, 64)],
)
def test_chunked_matches_reference(dtype, tol, batch, dim, length, nstate, groups, chunk):
    inputs = make_inputs(batch, dim, length, nstate, dtype, groups)
    y_ref, last_ref, g_ref = run_with_grads(selective_scan_ref, inputs)
    y, last, grads = run_with_grads(selective_scan_chunked, inputs, chunk=chunk)
    assert y.dtype == dtype and y.shape == (batch, dim, length) and last.shape == (batch, dim, nstate)

    def close(a, b, name):
        scale = b.abs().max().clamp_min(1.0)
        assert (a - b).abs().max() <= tol * scale, f"{name}: max diff {(a - b).abs().max():.3g}"

    close(y, y_ref, "y")
    close(last, last_ref, "last state")
    for name in inputs:
        close(grads[name], g_ref[name], f"grad {name}")


def test_optional_arguments_are_optional():
    inputs = make_inputs(2, 4, 9, 3, torch.float64)
    core = {k: inputs[k] for k in ("u", "delta", "A", "B", "C")}
    y = selective_scan_chunked(**core)
    assert torch.allclose(y, selective_scan_ref(**core), atol=1e-12)
    # D adds a skip term, z gates: each changes the result.
    assert not torch.allclose(selective_scan_chunked(**core, D=inputs["D"]), y)
    assert not torch.allclose(selective_scan_chunked(**core, z=inputs["z"]), y)


def test_chunk_size_does_not_change_result():
    inputs = make_inputs(2, 6, 41, 4, torch.float64)
    ys = [selective_scan_chunked(**inputs, delta_softplus=True, chunk=c) for c in (1, 7, 16, 64)]
    for y in ys[1:]:
        assert torch.allclose(y, ys[0], atol=1e-12)


def test_half_precision_inputs_come_back_in_their_dtype():
    inputs = {k: v.to(torch.bfloat16) for k, v in make_inputs(1, 4, 12, 2, torch.float32).items()}
    y = selective_scan_chunked(**inputs, delta_softplus=True)
    assert y.dtype == torch.bfloat16
    ref = selective_scan_ref(**inputs, delta_softplus=True)
    assert torch.allclose(y.float(), ref.float(), atol=1e-2)


def test_auto_backend_is_torch_on_cpu_and_can_be_forced(monkeypatch):
    assert ssm.resolve_backend(torch.device("cpu")) == "torch"
    with ssm.use_backend("ref"):
        assert ssm.resolve_backend(torch.device("cpu")) == "ref"
    monkeypatch.setenv("MDNET_SCAN_BACKEND", "ref")
    assert ssm.resolve_backend(torch.device("cpu")) == "ref"
    assert ssm.resolve_backend(torch.device("cpu"), "torch") == "torch"  # the argument wins
    with pytest.raises(ValueError, match="unknown selective-scan backend"):
        ssm.resolve_backend(torch.device("cpu"), "fast")


def test_forced_cuda_backend_on_cpu_fails_clearly():
    with pytest.raises(RuntimeError, match="cuda"):
        ssm.resolve_backend(torch.device("cpu"), "cuda")


def test_dispatch_calls_the_chosen_path(monkeypatch):
    inputs = make_inputs(1, 4, 10, 2, torch.float64)
    calls = []
    monkeypatch.setattr(ssm, "selective_scan_ref", lambda *a, **k: calls.append("ref") or selective_scan_ref(*a, **k))
    out = selective_scan(**inputs, backend="ref")
    assert calls == ["ref"]
    assert torch.allclose(out, selective_scan(**inputs, backend="torch"), atol=1e-12)


def test_bad_shapes_are_refused():
    inputs = make_inputs(1, 6, 10, 2, torch.float32)
    inputs["B"] = inputs["B"][:, :, :5]
    with pytest.raises(ValueError, match="selective_scan expects"):
        selective_scan(**inputs)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-4)])
def test_chunked_matches_reference_on_cuda(dtype, tol):
    inputs = make_inputs(2, 64, 197, 16, dtype, device="cuda")
    y_ref, _, g_ref = run_with_grads(selective_scan_ref, inputs)
    y, _, grads = run_with_grads(selective_scan_chunked, inputs)
    assert (y - y_ref).abs().max() <= tol * y_ref.abs().max().clamp_min(1)
    for k in inputs:
        assert (grads[k] - g_ref[k]).abs().max() <= tol * g_ref[k].abs().max().clamp_min(1), k


@pytest.mark.gpu
@pytest.mark.skipif(not ssm.cuda_kernel_available(), reason="mamba-ssm is not installed")
@pytest.mark.parametrize("groups", [0, 2])
def test_mamba_ssm_kernel_matches_reference(groups):
    inputs = make_inputs(2, 64, 197, 16, torch.float32, groups=groups, device="cuda")
    y_ref, _, g_ref = run_with_grads(selective_scan_ref, inputs)
    y, _, grads = run_with_grads(selective_scan, inputs, backend="cuda")
    assert (y - y_ref).abs().max() <= 1e-3 * y_ref.abs().max().clamp_min(1)
    for k in inputs:
        assert (grads[k] - g_ref[k]).abs().max() <= 1e-2 * g_ref[k].abs().max().clamp_min(1), k
