"""Stem initialisation for training: frozen pretrained layers stay fixed functions, BatchNorm included."""

from __future__ import annotations

import torch

from mdnet.models.config import VimConfig
from mdnet.models.vim import VisionMamba, stem_layers
from mdnet.training.stems import frozen_stem_layers_eval, init_stem


def _bn_stats(layers: torch.nn.Module) -> list[torch.Tensor]:
    return [m.running_mean.clone() for m in layers.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_frozen_stem_layers_keep_their_batchnorm_statistics_in_train_mode():
    torch.manual_seed(0)
    vim = VisionMamba(VimConfig(stem="mobilenet_v2", embed_dim=16, depth=1, d_state=4), image_size=224)
    init_stem(vim, "none", 4)  # random weights, the first four layers frozen
    layers = stem_layers(vim)
    frozen, trained = _bn_stats(layers[:4]), _bn_stats(layers[4:])
    vim.train()
    frozen_stem_layers_eval(vim, 4)
    assert not any(p.requires_grad for p in layers[:4].parameters())
    assert all(p.requires_grad for p in layers[4:].parameters())
    vim(torch.randn(2, 3, 224, 224) * 3 + 1).tokens.sum().backward()
    assert all(torch.equal(a, b) for a, b in zip(frozen, _bn_stats(layers[:4]), strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(trained, _bn_stats(layers[4:]), strict=True))
    assert layers[4].training and not layers[3].training


def test_no_frozen_layers_or_no_pretrained_stem_change_nothing():
    vim = VisionMamba(VimConfig(stem="patch", embed_dim=16, depth=1, d_state=4), image_size=224).train()
    frozen_stem_layers_eval(vim, 4)
    assert all(m.training for m in vim.modules())
    vim = VisionMamba(VimConfig(stem="mobilenet_v2", embed_dim=16, depth=1, d_state=4), image_size=224).train()
    frozen_stem_layers_eval(vim, 0)
    assert all(m.training for m in vim.modules())
