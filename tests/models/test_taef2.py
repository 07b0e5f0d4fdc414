"""TAEF2: the module matches the published files key for key, round-trips a face, and refuses bad files by name."""

from __future__ import annotations

import shutil

import pytest
import torch

from mdnet.models.checkpoint import CheckpointError
from mdnet.models.taef2 import (
    DECODER_FILE,
    DEFAULT_TAEF2_DIR,
    ENCODER_FILE,
    TAEF2,
    TAEF2Decoder,
    TAEF2Encoder,
    TAEF2WeightsError,
)

needs_weights = pytest.mark.skipif(
    not (DEFAULT_TAEF2_DIR / ENCODER_FILE).is_file() or not (DEFAULT_TAEF2_DIR / DECODER_FILE).is_file(),
    reason=f"TAEF2 weights not found in {DEFAULT_TAEF2_DIR} (the workspace's shared/weights/taef2)",
)


@pytest.fixture(scope="module")
def tae() -> TAEF2:
    return TAEF2.from_files()


@pytest.fixture(scope="module")
def face() -> torch.Tensor:
    """skimage's astronaut, aligned like a SCUT-FBP5500 image: (1, 3, 224, 224) in [0, 1]."""
    skimage_data = pytest.importorskip("skimage.data")
    from mdnet.faces import align

    crop = align(skimage_data.astronaut(), size=224).image
    return torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255


def test_shapes_without_weights():
    tae = TAEF2()
    x = torch.rand(2, 3, 16, 24)
    with torch.no_grad():
        z = tae.encode(x)
        assert z.shape == (2, 32, 2, 3)
        assert tae.decode(z).shape == x.shape
        feats = tae.features(x)
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 8, 12), (64, 4, 6), (64, 2, 3), (32, 2, 3)]
    assert torch.equal(feats[-1], z)


def test_encode_refuses_sides_not_a_multiple_of_8():
    with pytest.raises(ValueError, match="multiple of 8"):
        TAEF2().encode(torch.rand(1, 3, 30, 32))


@needs_weights
@pytest.mark.parametrize(("module", "name"), [(TAEF2Encoder, ENCODER_FILE), (TAEF2Decoder, DECODER_FILE)])
def test_state_dict_matches_the_file_exactly(module, name):
    saved = torch.load(DEFAULT_TAEF2_DIR / name, map_location="cpu", weights_only=True)
    ours = module().state_dict()
    assert list(ours) == list(saved)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in saved.items()}


@needs_weights
def test_loaded_weights_are_float32_frozen_and_equal_to_the_file(tae):
    saved = torch.load(DEFAULT_TAEF2_DIR / ENCODER_FILE, map_location="cpu", weights_only=True)
    params = list(tae.parameters())
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in params)
    assert not tae.training
    assert torch.equal(tae.encoder.state_dict()["11.pool.0.weight"], saved["11.pool.0.weight"].float())


@pytest.fixture(scope="module")
def face_features(tae, face) -> list[torch.Tensor]:
    """One encoder pass over the face (the last map is the latent), shared by the tests below."""
    with torch.no_grad():
        return tae.features(face)


@needs_weights
def test_round_trip_of_an_aligned_face_is_above_30_db(tae, face, face_features):
    z = face_features[-1]
    assert z.shape == (1, 32, 28, 28)
    with torch.no_grad():
        recon = tae.decode(z)
    assert recon.shape == face.shape and recon.min() >= 0 and recon.max() <= 1
    psnr = 10 * torch.log10(1 / ((recon - face) ** 2).mean())
    assert psnr > 30, f"round-trip PSNR {psnr:.1f} dB"


@needs_weights
def test_features_of_a_face(tae, face, face_features):
    assert [tuple(f.shape) for f in face_features] == [
        (1, 64, 112, 112), (1, 64, 56, 56), (1, 64, 28, 28), (1, 32, 28, 28)
    ]  # fmt: skip
    with torch.no_grad():
        z = tae.encoder(face[..., :64, :64])  # the features are the encoder's own layers: same latent on a crop
        torch.testing.assert_close(tae.features(face[..., :64, :64])[-1], z)
    assert torch.isfinite(face_features[1]).all() and face_features[1].min() >= 0  # after a block's ReLU


def test_missing_file_names_it(tmp_path):
    with pytest.raises(TAEF2WeightsError, match=ENCODER_FILE) as info:
        TAEF2.from_files(tmp_path)
    assert isinstance(info.value, CheckpointError)
    assert "does not exist" in str(info.value)


@needs_weights
def test_wrong_file_names_it(tmp_path):
    shutil.copy(DEFAULT_TAEF2_DIR / ENCODER_FILE, tmp_path / ENCODER_FILE)
    (tmp_path / DECODER_FILE).write_bytes(b"not a state dict")
    with pytest.raises(TAEF2WeightsError, match=f"{DECODER_FILE}.*sha256"):
        TAEF2.from_files(tmp_path)


def test_unchecked_file_that_does_not_fit_names_it(tmp_path):
    torch.save(TAEF2Decoder().state_dict(), tmp_path / ENCODER_FILE)  # a decoder where the encoder belongs
    with pytest.raises(TAEF2WeightsError, match=f"{ENCODER_FILE}.*does not fit TAEF2Encoder"):
        TAEF2.from_files(tmp_path, check_sha256=False)
