import numpy as np
import pytest
import torch

from mdnet.training.latent_pack import pack_latents, unpack_latents


def latents(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(50, 4, 3, 3, generator=g) * torch.tensor([0.5, 1.0, 3.0, 7.0])[None, :, None, None]


def test_round_trip_error_is_at_most_half_a_step_per_channel():
    x = latents()
    packed = pack_latents(x, shift=0.1, scale=0.9)
    assert packed["q"].dtype == np.int8 and packed["q"].nbytes * 2 == x.half().numel() * 2
    err = (unpack_latents(packed) - x).abs().amax(dim=(0, 2, 3))
    assert (err <= torch.from_numpy(packed["step"]) / 2 + 1e-6).all()
    assert float(packed["shift"]) == 0.1 and float(packed["scale"]) == 0.9


def test_dither_is_seeded_within_a_step_and_unbiased():
    x = latents()
    packed = pack_latents(x)
    a, b = unpack_latents(packed, dither=True, seed=3), unpack_latents(packed, dither=True, seed=3)
    assert torch.equal(a, b)
    step = torch.from_numpy(packed["step"])[None, :, None, None]
    plain = unpack_latents(packed)
    assert ((a - plain).abs() <= step / 2 + 1e-6).all()
    assert not torch.equal(a, plain)
    assert abs(((a - plain) / step).mean().item()) < 0.05


def test_refuses_non_finite_or_wrong_shape():
    with pytest.raises(ValueError):
        pack_latents(torch.full((2, 1, 2, 2), float("nan")))
    with pytest.raises(ValueError):
        pack_latents(torch.zeros(2, 3))
