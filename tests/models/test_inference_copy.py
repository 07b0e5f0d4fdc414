"""The copies for scoring only (:mod:`mdnet.models.inference_copy`): BatchNorm folded into the SFace
convolutions, channels-last weights, the same scores as the model they came from."""

from __future__ import annotations

import pytest
import torch

from mdnet.models.checkpoint import CheckpointError
from mdnet.models.config import PreprocessConfig, VimConfig, get_config
from mdnet.models.mdnet import MDNet, score_faces
from mdnet.models.sface import ConvUnit


def sface_mdnet() -> MDNet:
    """A small MD-Net on the SFace stem with the identity embedding, every SFace BatchNorm doing something."""
    torch.manual_seed(0)
    cfg = get_config("micro", preprocess=PreprocessConfig(image_size=224),
                     vim=VimConfig(stem="sface", embed_dim=16, depth=1, d_state=4, identity=True))
    model = MDNet(cfg).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return model


def faces(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 224, 224, 3), generator=g, dtype=torch.uint8)


def test_mdnet_copy_for_inference_folds_every_sface_unit_and_scores_the_same(tmp_path):
    model = sface_mdnet()
    fast = model.for_inference()
    units = [m for m in model.modules() if isinstance(m, ConvUnit)]
    assert len(units) == 50  # the stem's 23 units and the identity copy's 27
    assert all(isinstance(m.bn, torch.nn.BatchNorm2d) for m in units)  # the original is untouched
    assert not any(isinstance(m.bn, torch.nn.BatchNorm2d) for m in fast.modules() if isinstance(m, ConvUnit))
    assert fast.vim.patch_embed[0].trunk.conv_12.conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = faces(4, seed=1)
    ref, got = score_faces(model, x), score_faces(fast, x)
    assert ref.score.std() > 1e-4  # the faces score differently: the comparison can fail
    torch.testing.assert_close(got.score, ref.score, atol=1e-4, rtol=0)
    torch.testing.assert_close(got.embedding, ref.embedding, atol=1e-3, rtol=1e-3)
    with pytest.raises(RuntimeError, match="copy for inference"):
        fast.train()
    with pytest.raises(CheckpointError, match="copy for inference"):
        fast.save_pretrained(tmp_path / "fast")
    model.train()  # the original still trains


def test_the_copy_keeps_gradients_to_the_input_for_saliency():
    model = sface_mdnet()
    fast = model.for_inference()
    x = model.preprocess(faces(1, seed=2)).requires_grad_()
    (grad_ref,) = torch.autograd.grad(model(x).score.sum(), x)
    (grad_fast,) = torch.autograd.grad(fast(x).score.sum(), x)
    assert grad_ref.abs().sum() > 0
    torch.testing.assert_close(grad_fast, grad_ref, atol=1e-5, rtol=1e-3)
