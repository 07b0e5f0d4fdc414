"""Masked pretraining of the Vim: the masks hide exactly what they claim, and the loss sees only what is hidden."""

from __future__ import annotations

import pytest
import torch

from mdnet.models import masking as M
from mdnet.models.config import PreprocessConfig, VimConfig, get_config
from mdnet.models.mdnet import MDNet
from mdnet.models.vim import VisionMamba

GRID = (14, 14)


def pretrainer(seed: int = 0, **target) -> M.MaskedVimPretrainer:
    torch.manual_seed(seed)
    vim = VisionMamba(VimConfig(patch_size=8, embed_dim=16, depth=2, d_state=4), image_size=32)
    return M.MaskedVimPretrainer(vim, PreprocessConfig(image_size=32), **target).eval()


def smooth_faces(n: int, size: int = 32, seed: int = 1) -> torch.Tensor:
    coarse = torch.rand(n, 3, size // 4, size // 4, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def masks(n: int, grid=(4, 4), ratio=0.5, block=1, seed=0) -> torch.Tensor:
    return M.block_masks(n, grid, ratio, torch.Generator().manual_seed(seed), block)


@pytest.mark.parametrize(("ratio", "block", "hidden"), [(0.6, 2, 116), (0.6, 1, 118), (0.75, 2, 148)])
def test_every_image_hides_exactly_the_count(ratio, block, hidden):
    assert M.hidden_count(GRID, ratio, block) == hidden
    m = M.block_masks(50, GRID, ratio, torch.Generator().manual_seed(0), block)
    assert m.shape == (50, 196) and m.dtype == torch.bool
    assert m.sum(1).tolist() == [hidden] * 50
    assert len({tuple(row.tolist()) for row in m}) == 50  # each image its own mask
    # round(ratio x blocks) whole blocks, at least one hidden and one visible
    assert [M.hidden_count(GRID, r, 7) for r in (0.05, 0.3, 0.4, 0.99)] == [49, 49, 98, 147]


def test_blocks_are_whole_squares_of_the_grid():
    m = M.block_masks(20, GRID, 0.6, torch.Generator().manual_seed(3), 2).view(20, 7, 2, 7, 2)
    # Within every 2 x 2 square all four patches agree.
    assert (m == m[:, :, :1, :, :1]).all()


def test_masks_are_seeded():
    a, b, c = masks(8, seed=5), masks(8, seed=5), masks(8, seed=6)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bad_masks_are_refused():
    with pytest.raises(ValueError, match="ratio"):
        M.hidden_count(GRID, 1.0)
    with pytest.raises(ValueError, match="tile"):
        M.hidden_count(GRID, 0.6, block=3)


def test_hidden_pixels_are_filled_and_visible_ones_untouched():
    x = torch.randn(3, 3, 32, 32)
    m = masks(3)
    y = M.hide_pixels(x, m, 8, fill=0.0)
    pix = M.pixel_mask(m, (4, 4), 8).expand_as(x)
    assert (y[pix] == 0).all()
    assert torch.equal(y[~pix], x[~pix])
    assert pix[:, 0].flatten(1).sum(1).tolist() == [64 * 8] * 3  # 8 hidden patches of 8 x 8 pixels each
    # Patch k of the mask is the k-th patch of the grid, row-major.
    one = torch.zeros(1, 16, dtype=torch.bool)
    one[0, 6] = True  # row 1, column 2
    hidden = M.pixel_mask(one, (4, 4), 8)[0, 0]
    assert hidden[8:16, 16:24].all() and hidden.sum() == 64


def test_patchify_round_trip_and_pixel_targets():
    x = torch.randn(2, 3, 32, 32)
    p = M.patchify(x, 8)
    assert p.shape == (2, 16, 192)
    assert torch.equal(p[0, 6], x[0, :, 8:16, 16:24].permute(1, 2, 0).reshape(-1))
    assert torch.equal(M.unpatchify(p, (4, 4)), x)
    target = M.PixelTarget(8, size=4)
    t = target(x)
    assert t.shape == (2, 16, 48) and target.dim == 48
    assert torch.allclose(t.mean(-1), torch.zeros(2, 16), atol=1e-5)
    assert torch.allclose(t.var(-1), torch.ones(2, 16), atol=1e-3)
    # Un-normalised, each target pixel is the mean of a 2 x 2 block.
    assert torch.allclose(target.pixels(x)[0, 0, :3], x[0, :, :2, :2].mean((1, 2)))
    # to_images puts the predicted structure back at each patch's own brightness and contrast.
    back = target.to_images(t, x, (4, 4))
    small = torch.nn.functional.avg_pool2d(x, 2)
    assert torch.allclose(back[:, :, ::2, ::2], small, atol=1e-4)


def test_the_loss_ignores_visible_patches():
    model = pretrainer()
    faces, m = smooth_faces(2), masks(2, seed=1)
    base = M.PixelTarget(8)
    visible, hidden = int((~m[0]).nonzero()[0]), int(m[0].nonzero()[0])

    def changed_at(k):
        def target(images):
            t = base(images).clone()
            t[0, k] += 5.0
            return t
        target.dim = base.dim
        return target

    with torch.no_grad():
        loss = model({"image": faces, "mask": m})
        model.target = changed_at(visible)
        assert torch.equal(model({"image": faces, "mask": m}), loss)
        model.target = changed_at(hidden)
        assert model({"image": faces, "mask": m})[0] > loss[0] and model({"image": faces, "mask": m})[1] == loss[1]
    pred, target = torch.randn(2, 16, 4), torch.randn(2, 16, 4)
    expected = (pred - target).pow(2).mean(-1)[m].view(2, 8).mean(1)
    assert torch.allclose(M.masked_loss(pred, target, m), expected)


def test_hidden_pixels_never_reach_the_predictions():
    """The input is blanked before the stem, so nothing hidden leaks through its receptive field."""
    model = pretrainer()
    faces, m = smooth_faces(2), masks(2, seed=2)
    other = faces.clone()
    pix = M.pixel_mask(m, (4, 4), 8).expand_as(faces)
    other[pix] = torch.rand(int(pix.sum()))
    with torch.no_grad():
        _, a, _ = model.predict({"image": faces, "mask": m})
        _, b, _ = model.predict({"image": other, "mask": m})
        assert torch.equal(a, b)
        # ... while the hidden tokens are the learned mask token: it changes what is predicted.
        model.mask_token.add_(1.0)
        _, c, _ = model.predict({"image": faces, "mask": m})
    assert not torch.allclose(a[m], c[m])


def test_token_fn_is_a_hook_and_none_changes_nothing():
    model = pretrainer()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = model.vim(x).tokens
        assert torch.equal(model.vim(x, token_fn=None).tokens, plain)
        assert torch.equal(model.vim(x, token_fn=lambda t: t).tokens, plain)
        assert not torch.equal(model.vim(x, token_fn=torch.zeros_like).tokens, plain)


def test_normalisation_is_mdnets():
    torch.manual_seed(0)
    mdnet = MDNet(get_config("micro"))
    model = M.MaskedVimPretrainer(mdnet.vim, mdnet.cfg.preprocess)
    faces = (torch.rand(2, 3, 64, 64) * 255).to(torch.uint8)
    assert torch.equal(model.normalise(faces), mdnet.preprocess(faces))


def test_the_stem_keeps_its_batchnorm_statistics_in_training():
    torch.manual_seed(0)
    cfg = get_config("tiny")
    model = M.MaskedVimPretrainer(VisionMamba(cfg.vim, 64), cfg.preprocess).train()
    norms = [m for m in model.vim.patch_embed.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(n.training for n in norms) and model.vim.blocks.training
    before = norms[0].running_mean.clone()
    model({"image": smooth_faces(2, 64), "mask": masks(2, (4, 4), 0.5, 2)}).sum().backward()
    assert torch.equal(norms[0].running_mean, before)
    assert model.mask_token.grad is not None and model.decoder.weight.grad is not None
