"""The camera recipe in parts: seeded draws, cached photo variants, stream dropout, unlabeled losses, teacher cache."""

from __future__ import annotations

import pytest
import torch
from conftest import build_model, faces
from fake_scut import NO_FACE, make_fake_scut

from mdnet.faces.augment import CameraAugment
from mdnet.faces.scut import ScutFBP5500, aligned_faces
from mdnet.models.checkpoint import save_checkpoint
from mdnet.models.mdnet import score_aligned
from mdnet.training import camera, photo_variants, stream_dropout, teacher_scores
from mdnet.training import distributed as dist
from mdnet.training import unlabeled_loss as unl

RECIPE = camera.DrawRecipe(variants=2, camera_p=0.8, max_shift=4, stream_dropout=0.2)


def crops(n: int = 6, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Smooth random uint8 'faces' (n, 3, size, size)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, size // 8, size // 8, generator=g)
    return (torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear") * 255).to(torch.uint8)


def items(dataset: dist.DrawDataset, sampler: dist.GlobalBatches) -> list[dict]:
    return [dataset[d] for d in sampler]


def test_draws_are_seeded_and_a_sample_is_augmented_the_same_whatever_the_shards():
    faces_, variants = crops(10), crops(20, seed=1).view(10, 2, 3, 64, 64)
    data = camera.labelled_faces(faces_, variants, torch.arange(10.0), RECIPE, CameraAugment(p=0.5))
    draw = camera.labelled_draws(RECIPE)
    one = list(dist.GlobalBatches(10, 4, seed=3, draw=draw, drop_last=False))
    two = list(dist.GlobalBatches(10, 4, seed=3, draw=draw, drop_last=False, shards=2))
    assert two[: len(one)] == one and one == list(dist.GlobalBatches(10, 4, seed=3, draw=draw, drop_last=False))
    assert [d.aug for d in dist.GlobalBatches(10, 4, seed=4, draw=draw)] != [d.aug for d in one[:8]]
    # Every tuple holds integers only, and every kind of choice occurs.
    sampler, augs = dist.GlobalBatches(10, 4, 3, draw), []
    for epoch in range(5):
        sampler.set_epoch(epoch)
        augs += [d.aug for d in sampler]
    assert all(isinstance(v, int) for a in augs for v in a)
    assert {a[0] for a in augs} <= {0, 1, 2} and camera.NO_CAMERA in {a[1] for a in augs}
    # A sample's tensors depend on its draw only: the same on a "second process", bit for bit.
    again = camera.labelled_faces(faces_, variants, torch.arange(10.0), RECIPE, CameraAugment(p=0.5))
    for d in one:
        a, b = data[d], again[d]
        assert torch.equal(a["image"], b["image"]) and a["stream"] == b["stream"] == d.aug[5]
    camera_drawn = next(d for d in one if d.aug[1] != camera.NO_CAMERA)
    plain = camera_drawn._replace(aug=(camera_drawn.aug[0], camera.NO_CAMERA, *camera_drawn.aug[2:]))
    assert not torch.equal(data[camera_drawn]["image"], data[plain]["image"])


def test_unlabeled_views_are_independent_draws_and_batches_fill_every_step():
    draw = camera.view_draws(RECIPE)
    sampler = unl.UnlabeledBatches(5, 4, steps=3, seed=0, draw=draw)
    first = list(sampler)
    assert len(first) == len(sampler) == 12 and first == list(sampler)
    assert sorted(d.index for d in first[:5]) == list(range(5))  # a whole permutation before any face recurs
    assert all(len(d.aug) == 8 and d.aug[:4] != d.aug[4:] for d in first)
    assert [d.index for d in first] != [d.index for d in dist.GlobalBatches(5, 4, 0, draw)][:12]
    sampler.set_epoch(1)
    assert list(sampler) != first
    data = camera.unlabeled_views(crops(5), torch.arange(5.0), RECIPE, CameraAugment())
    item = data[first[0]]
    assert item["views"].shape == (2, 3, 64, 64) and item["teacher"] == first[0].index
    assert not torch.equal(item["views"][0], item["views"][1])


def test_stream_codes_are_exclusive_with_the_asked_rates():
    codes = camera.stream_codes(20000, 0.15, torch.Generator().manual_seed(0))
    rates = [(codes == c).float().mean().item() for c in (camera.DROP_PRIOR, camera.DROP_VIM)]
    assert rates == pytest.approx([0.15, 0.15], abs=0.01)
    prior, vim = stream_dropout.masks(codes, len(codes) + 5)
    assert not (prior & vim).any() and not prior[-5:].any() and not vim[-5:].any()
    assert (camera.stream_codes(100, 0.0, torch.Generator()) == camera.KEEP).all()
    with pytest.raises(ValueError):
        camera.DrawRecipe(stream_dropout=0.6)


def test_stream_dropout_replaces_what_it_says(calibrated):
    model = calibrated
    x = faces(model, 4)
    codes = torch.tensor([camera.KEEP, camera.DROP_PRIOR, camera.DROP_VIM, camera.KEEP])
    prior_mask, vim_mask = stream_dropout.masks(codes, 4)
    feats = model.prior_features(x)
    dropped = stream_dropout.drop_prior(feats, model.prior_references, prior_mask)
    for f, d, r in zip(feats, dropped, model.prior_references, strict=True):
        assert torch.equal(d[[0, 2, 3]], f[[0, 2, 3]]) and torch.equal(d[1], r)
    with torch.no_grad():
        mixed = model(x, prior_features=dropped, vim_mask=vim_mask).score
        full = model(x).score
        assert torch.equal(model(x, prior_features=feats, vim_mask=None).score, full)
        vim_only, prior_only = model(x, mode="vim_only").score, model(x, mode="prior_only").score
    assert torch.allclose(mixed[[0, 3]], full[[0, 3]], atol=1e-6)
    assert torch.allclose(mixed[1], vim_only[1], atol=1e-6) and torch.allclose(mixed[2], prior_only[2], atol=1e-6)


def test_the_vim_reference_is_a_running_mean_of_the_tokens(calibrated):
    model, accelerator = calibrated, dist.make_accelerator()
    before = model.vim_reference.clone()
    running = stream_dropout.VimTokenMean(model, momentum=0.75)
    x = faces(model, 3)
    with torch.no_grad():
        tokens = model.vim(x).tokens
        model(torch.cat([x, faces(model, 2, seed=5)]))  # labelled rows first, then unlabeled views
    running.add(3, torch.tensor([1.0, 1.0, 0.0]))  # zero weight: padding
    running.update(accelerator)
    assert torch.allclose(model.vim_reference, 0.75 * before + 0.25 * tokens[:2].mean(0), atol=1e-6)
    running.close()
    assert not model.vim._forward_hooks


def test_consistency_is_zero_for_identical_views_and_positive_otherwise(micro):
    face = crops(1)[0]
    view = camera.augment_crop(face, 7, 1, 2, 3, 4, CameraAugment(p=0.5))
    other = camera.augment_crop(face, 8, 0, 4, 1, 4, CameraAugment(p=0.5))
    same = camera.augment_crop(face, 7, 1, 2, 3, 4, CameraAugment(p=0.5))
    with torch.no_grad():
        s = micro(micro.preprocess(torch.stack([view, same, other]))).score
    assert unl.consistency(s[:1], s[1:2]).item() == 0
    assert unl.consistency(s[:1], s[2:]).item() > 0
    assert unl.distillation(s[:1], s[:1], s[:1]).item() == 0
    assert unl.distillation(s[:1], s[2:], torch.tensor([5.0])).item() > 0


@pytest.fixture(scope="module")
def scut(tmp_path_factory):
    root = make_fake_scut(tmp_path_factory.mktemp("scut"), per_group=1)
    samples = ScutFBP5500(root).split("all")
    return samples, aligned_faces(samples, 64, tmp_path_factory.mktemp("aligned"))[0]


def test_photo_variants_are_cached_and_reused_and_rejects_fall_back(scut, tmp_path, monkeypatch):
    samples, originals = scut
    calls, align = [], photo_variants.align

    def counting_align(*args, **kwargs):
        calls.append(1)
        return align(*args, **kwargs)

    monkeypatch.setattr(photo_variants, "align", counting_align)
    recipe = photo_variants.VariantRecipe()
    first = photo_variants.photo_variants(samples, originals, 2, tmp_path, recipe)
    assert len(calls) == 2 * len(samples)
    assert first.fallbacks == [f"{NO_FACE}#0", f"{NO_FACE}#1"]  # the blank photo has no face to find
    blank = [s.name for s in samples].index(NO_FACE)
    assert torch.equal(first.crops[blank, 0], originals[blank]) and torch.equal(first.crops[blank, 1], originals[blank])
    kept = [i for i in range(len(samples)) if i != blank]
    assert not any(torch.equal(first.crops[i, k], originals[i]) for i in kept for k in (0, 1))
    assert not torch.equal(first.crops[kept[0], 0], first.crops[kept[0], 1])

    calls.clear()
    again = photo_variants.photo_variants(samples, originals, 2, tmp_path, recipe)
    assert calls == [] and torch.equal(again.crops, first.crops) and again.fallbacks == first.fallbacks
    other = photo_variants.VariantRecipe(quality=(50, 95))  # other parameters: another folder, aligned afresh
    assert photo_variants.variant_folder(tmp_path, 64, other) != photo_variants.variant_folder(tmp_path, 64, recipe)
    photo_variants.photo_variants(samples[:1], originals[:1], 1, tmp_path, other)
    assert len(calls) == 1


def test_teacher_scores_are_cached_by_weights_and_faces(tmp_path, monkeypatch):
    teacher = build_model("micro")
    save_checkpoint(teacher, tmp_path / "teacher")
    accelerator = dist.make_accelerator()
    data, names = crops(5, seed=3), [f"face{i}.jpg" for i in range(5)]
    scores, cached = teacher_scores.teacher_scores(accelerator, tmp_path / "teacher", data, names, tmp_path / "cache")
    assert not cached and torch.allclose(scores, score_aligned(teacher, data), atol=1e-6)
    assert teacher_scores.teacher_size(tmp_path / "teacher") == 64

    def refuse(*args, **kwargs):
        raise AssertionError("the teacher ran again")

    monkeypatch.setattr(teacher_scores, "score_aligned", refuse)
    again, cached = teacher_scores.teacher_scores(accelerator, tmp_path / "teacher", data, names, tmp_path / "cache")
    assert cached and torch.equal(again, scores)
    monkeypatch.undo()
    monkeypatch.setattr(teacher_scores, "score_aligned", refuse)
    part, cached = teacher_scores.teacher_scores(accelerator, tmp_path / "teacher", data[:4], names[:4],
                                                 tmp_path / "cache")
    assert cached and torch.equal(part, scores[:4])  # a subset: scored per face, so already known
    monkeypatch.undo()
    more = torch.cat([data, crops(2, seed=4)])
    grown, cached = teacher_scores.teacher_scores(accelerator, tmp_path / "teacher", more, names + ["x.jpg", "y.jpg"],
                                                  tmp_path / "cache")
    assert not cached and torch.equal(grown[:5], scores)  # only the two new faces were scored
    assert torch.allclose(grown[5:], score_aligned(teacher, more[5:]), atol=1e-6)
    save_checkpoint(build_model("micro", seed=1), tmp_path / "teacher")
    other, cached = teacher_scores.teacher_scores(accelerator, tmp_path / "teacher", data, names, tmp_path / "cache")
    assert not cached and not torch.equal(other, scores)  # other weights
    assert len(list((tmp_path / "cache").glob("group-scores-*/unlabeled.tsv"))) == 2  # the store distill shares

