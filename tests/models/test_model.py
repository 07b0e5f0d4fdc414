"""MDNet: scores on the 1-5 scale, stream ablation through stored references, gradients for attributions."""

from __future__ import annotations

import pytest
import torch
from conftest import build_model, faces

from mdnet.models.config import get_config
from mdnet.models.mdnet import MDNet


def test_scores_are_on_the_scale(micro):
    out = micro(faces(micro, 3))
    assert out.score.shape == (3,)
    low, high = micro.cfg.score_range
    assert ((out.score > low) & (out.score < high)).all()


def test_attention_maps_back_onto_both_grids(micro):
    out = micro(faces(micro), return_attention=True)
    rows, cols = out.vim_grid
    assert len(out.attention) == micro.cfg.fusion.layers
    w = out.attention[0]
    assert w.shape[2] == rows * cols + 1                      # every Vim patch + the class token
    assert w.shape[3] == sum(h * w_ for h, w_ in out.prior_shapes)
    assert out.prior_shapes == micro.prior.feature_shapes


def test_ablation_needs_references(micro):
    with pytest.raises(RuntimeError, match="calibrate_references"):
        micro(faces(micro), mode="prior_only")
    with pytest.raises(ValueError, match="unknown mode"):
        micro(faces(micro), mode="both")


def test_ablation_changes_the_score_and_is_deterministic(calibrated):
    x = faces(calibrated, 3, seed=9)
    with torch.no_grad():
        scores = {m: calibrated(x, mode=m).score for m in ("full", "prior_only", "vim_only")}
        again = {m: calibrated(x, mode=m).score for m in scores}
    for m in scores:
        assert torch.equal(scores[m], again[m])
    assert not torch.allclose(scores["full"], scores["prior_only"])
    assert not torch.allclose(scores["full"], scores["vim_only"])
    assert not torch.allclose(scores["prior_only"], scores["vim_only"])


def test_switched_off_stream_uses_the_reference_not_the_input(calibrated):
    a, b = faces(calibrated, 1, seed=3), faces(calibrated, 1, seed=4)
    with torch.no_grad():
        # prior_only: the Vim stream is the reference, so only the prior sees the input.
        mixed = calibrated(a, mode="prior_only", prior_features=calibrated.prior_features(a)).score
        assert torch.equal(mixed, calibrated(a, mode="prior_only").score)
        # vim_only ignores the prior entirely: fake prior features change nothing.
        junk = [torch.randn_like(f) for f in calibrated.prior_features(b)]
        plain = calibrated(a, mode="vim_only").score
        assert torch.equal(plain, calibrated(a, mode="vim_only", prior_features=junk).score)


def test_references_are_means_over_the_calibration_faces():
    model = build_model()
    batches = [faces(model, 2, seed=s) for s in range(2)]
    n = model.calibrate_references(batches)
    assert n == 4
    x = torch.cat(batches)
    with torch.no_grad():
        assert torch.allclose(model.vim_reference, model.vim(x).tokens.mean(0), atol=1e-5)
        assert torch.allclose(model.prior_reference_0, model.prior_features(x)[0].mean(0), atol=1e-5)


def test_cached_prior_features_give_the_same_score(micro):
    x = faces(micro)
    with torch.no_grad():
        assert torch.equal(micro(x).score, micro(x, prior_features=micro.prior_features(x)).score)


def test_training_step_leaves_the_prior_untouched(micro):
    micro.train()
    assert not micro.prior.training
    before = {k: v.clone() for k, v in micro.prior.state_dict().items()}
    opt = torch.optim.AdamW(micro.trainable_parameters(), lr=1e-2)
    loss = (micro(faces(micro)).score - 3.5).pow(2).mean()
    loss.backward()
    assert all(p.grad is None for p in micro.prior.parameters())
    assert all(p.grad is not None for p in micro.trainable_parameters())
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in micro.prior.state_dict().items())


def test_input_gradients_flow_through_both_streams(micro):
    x = faces(micro, 1).requires_grad_()
    micro(x).score.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # Through the prior alone too (Integrated Gradients needs it).
    y = faces(micro, 1).requires_grad_()
    sum(f.sum() for f in micro.prior_features(y)).backward()
    assert y.grad.abs().sum() > 0


def test_presets_build():
    assert isinstance(MDNet("micro"), MDNet)
    tiny = build_model("tiny")
    assert tiny.vim.num_patches == 196 and tiny.cfg.preprocess.image_size == 224


def test_scoring_with_cached_prior_features_matches_recomputing_them(micro):
    from mdnet.models.mdnet import score_aligned

    faces_u8 = (torch.rand(5, 3, 64, 64) * 255).to(torch.uint8)
    with torch.no_grad():
        x = micro.preprocess(faces_u8)
        cache = {m: [f.half() for f in micro.prior_features(x.flip(-1) if m else x)] for m in (False, True)}
    plain = score_aligned(micro, faces_u8, batch_size=2)
    cached = score_aligned(micro, faces_u8, batch_size=2, prior_features=cache)
    assert plain.shape == (5,)
    assert torch.allclose(plain, cached, atol=2e-3)          # float16 storage of the cache
    assert not torch.equal(plain, score_aligned(micro, faces_u8, tta=False))


def test_score_faces_gives_the_mirror_average_its_gap_and_what_the_head_read(micro):
    from mdnet.models.mdnet import score_aligned, score_faces

    gen = torch.Generator().manual_seed(3)
    size = micro.cfg.preprocess.image_size
    crops = torch.randint(0, 256, (3, 3, size, size), dtype=torch.uint8, generator=gen)
    out = score_faces(micro, crops, batch_size=2)
    with torch.no_grad():
        x = micro.preprocess(crops)
        a, b = micro(x), micro(x.flip(-1))
    torch.testing.assert_close(out.score, (a.score + b.score) / 2)
    torch.testing.assert_close(out.mirror_gap, (a.score - b.score).abs())
    torch.testing.assert_close(out.embedding, (a.embedding + b.embedding) / 2)
    assert out.embedding.shape == (3, 2 * micro.cfg.fusion.dim)
    torch.testing.assert_close(score_aligned(micro, crops), out.score)
    single = score_faces(micro, crops, tta=False)
    torch.testing.assert_close(single.score, a.score)
    assert torch.all(single.mirror_gap == 0)
    # what the head reads is the input of its MLP: the same score from the embedding alone
    low, high = micro.cfg.score_range
    torch.testing.assert_close(low + (high - low) * torch.sigmoid(micro.head(a.embedding)), a.score)


def test_a_grown_prior_summary_scores_as_before_until_it_learns(calibrated):
    grown = calibrated.grow_prior_summary().eval()
    assert grown.cfg.fusion.prior_summary and not calibrated.cfg.fusion.prior_summary
    assert torch.count_nonzero(grown.head.summary.weight) == 0
    x = faces(calibrated, 3, seed=4)
    with torch.no_grad():
        for mode in ("full", "prior_only", "vim_only"):
            torch.testing.assert_close(grown(x, mode=mode).score, calibrated(x, mode=mode).score)
        out = grown(x)
    assert out.embedding.shape == (3, grown.embedding_dim) == (3, 3 * grown.cfg.fusion.dim)
    with pytest.raises(ValueError, match="already"):
        grown.grow_prior_summary()


def test_the_prior_summary_tells_faces_apart_only_from_the_prior():
    cfg = get_config("micro")
    cfg.fusion.prior_summary = True
    torch.manual_seed(0)
    model = MDNet(cfg)
    model.calibrate_references([faces(model, 4, seed=s) for s in range(3)])
    x, dim = faces(model, 3, seed=5), model.cfg.fusion.dim
    summary = {mode: model(x, mode=mode).embedding[:, 2 * dim :].detach() for mode in ("prior_only", "vim_only")}
    assert (summary["prior_only"] - summary["prior_only"][0]).abs().amax() > 1e-3  # the prior differs per face
    torch.testing.assert_close(summary["vim_only"], summary["vim_only"][:1].expand(3, -1))  # its reference does not
    model(x, mode="prior_only").score.sum().backward()
    assert model.head.summary.weight.grad.abs().sum() > 0  # from zero, the head can learn to read it
