"""The Vision Mamba stream: shapes, middle class token, both directions, scan paths agree."""

from __future__ import annotations

import torch

from mdnet.models.config import VimConfig
from mdnet.models.ssm import use_backend
from mdnet.models.vim import BiMamba, VisionMamba


def small_vim(**kw):
    torch.manual_seed(0)
    cfg = VimConfig(patch_size=8, embed_dim=16, depth=2, d_state=4, **kw)
    return VisionMamba(cfg, image_size=32).eval(), cfg


def test_shapes_and_middle_class_token():
    vim, cfg = small_vim()
    out = vim(torch.randn(3, 3, 32, 32))
    assert out.grid == (4, 4)
    assert out.tokens.shape == (3, 17, 16)
    assert out.cls_index == 8
    assert out.cls.shape == (3, 16) and out.patches.shape == (3, 16, 16)
    assert torch.equal(out.patches[:, 8], out.tokens[:, 9])


def test_mixer_is_bidirectional():
    # A one-directional (causal) scan gives exactly zero gradient from a token to
    # the tokens before it; the bidirectional mixer links every pair both ways.
    torch.manual_seed(0)
    mixer = BiMamba(VimConfig(embed_dim=8, d_state=4)).double().eval()
    h = torch.randn(1, 12, 8, dtype=torch.float64, requires_grad=True)
    first_wrt_last = torch.autograd.grad(mixer(h)[:, 0].sum(), h)[0][:, -1]
    last_wrt_first = torch.autograd.grad(mixer(h)[:, -1].sum(), h)[0][:, 0]
    assert first_wrt_last.abs().max() > 1e-9      # backward branch
    assert last_wrt_first.abs().max() > 1e-9      # forward branch
    # Switch the backward branch off (D = 0, input gate B = 0): the link to earlier tokens vanishes.
    with torch.no_grad():
        mixer.backward_branch.x_proj.weight[mixer.backward_branch.dt_rank :].zero_()
        mixer.backward_branch.D.zero_()
    first_wrt_last = torch.autograd.grad(mixer(h)[:, 0].sum(), h)[0][:, -1]
    assert first_wrt_last.abs().max() == 0


def test_directions_have_separate_parameters():
    mixer = BiMamba(VimConfig(embed_dim=8, d_state=4))
    names = {n for n, _ in mixer.named_parameters()}
    for part in ("conv1d.weight", "x_proj.weight", "dt_proj.weight", "dt_proj.bias", "A_log", "D"):
        assert f"forward_branch.{part}" in names and f"backward_branch.{part}" in names
    assert {"in_proj.weight", "out_proj.weight"} <= names


def test_reference_and_fast_scan_give_the_same_stream():
    vim, _ = small_vim()
    x = torch.randn(2, 3, 32, 32)
    with use_backend("ref"):
        ref = vim(x).tokens
    with use_backend("torch"):
        fast = vim(x).tokens
    assert torch.allclose(ref, fast, atol=1e-5)


def test_gradients_reach_every_parameter():
    vim, _ = small_vim()
    vim.train()
    vim(torch.randn(2, 3, 32, 32)).tokens.pow(2).mean().backward()
    missing = [n for n, p in vim.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
