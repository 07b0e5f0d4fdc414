"""Cross-attention fusion: weights are distributions over U-Net tokens that map back onto the grids."""

from __future__ import annotations

import torch

from mdnet.models.config import FusionConfig
from mdnet.models.fusion import CrossAttention, CrossAttentionFusion, attention_to_maps

CHANNELS, SHAPES = [8, 16, 16], [(8, 8), (4, 4), (4, 4)]


def features(batch=2):
    return [torch.randn(batch, c, h, w) for c, (h, w) in zip(CHANNELS, SHAPES, strict=True)]


def test_weights_are_row_stochastic_and_map_onto_the_grids():
    torch.manual_seed(0)
    fusion = CrossAttentionFusion(FusionConfig(dim=16, heads=4, layers=2), vim_dim=12, prior_channels=CHANNELS).eval()
    out = fusion(torch.randn(2, 17, 12), features(), return_attention=True)
    assert out.tokens.shape == (2, 17, 16)
    assert out.prior_shapes == SHAPES
    assert len(out.attention) == 2
    for w in out.attention:
        assert w.shape == (2, 4, 17, 64 + 16 + 16)
        assert torch.allclose(w.sum(-1), torch.ones(2, 4, 17), atol=1e-5)
        maps = attention_to_maps(w, out.prior_shapes)
        assert [tuple(m.shape[-2:]) for m in maps] == SHAPES
        assert torch.allclose(sum(m.sum((-1, -2)) for m in maps), torch.ones(2, 4, 17), atol=1e-5)


def test_weights_are_only_computed_on_request_and_do_not_change_the_output():
    torch.manual_seed(0)
    fusion = CrossAttentionFusion(FusionConfig(dim=16, heads=2, layers=1, reverse=True), 12, CHANNELS).eval()
    q, f = torch.randn(2, 5, 12), features()
    plain = fusion(q, f)
    assert plain.attention is None
    assert torch.allclose(plain.tokens, fusion(q, f, return_attention=True).tokens, atol=1e-5)


def test_attention_follows_the_keys():
    # A query equal to one key (scaled up) attends mostly to that key.
    torch.manual_seed(0)
    attn = CrossAttention(8, heads=1).eval()
    with torch.no_grad():
        for lin in (attn.q,):
            lin.weight.copy_(torch.eye(8) * 4)
            lin.bias.zero_()
        attn.kv.weight.zero_()
        attn.kv.weight[:8] = torch.eye(8) * 4
        attn.kv.bias.zero_()
    keys = torch.eye(8).unsqueeze(0)
    _, w = attn(keys[:, 3:4], keys, need_weights=True)
    assert w.argmax(-1).item() == 3 and w.max() > 0.5
