"""Shared fixtures: small models built from presets, seeded, on the CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mdnet.models.config import get_config
from mdnet.models.mdnet import MDNet

CUDA = torch.cuda.is_available()
# The shared SCUT-FBP5500 copy sits beside the repository (../shared); MDNET_SCUT_DIR overrides.
SCUT_ROOT = Path(os.environ.get("MDNET_SCUT_DIR", Path(__file__).resolve().parents[2] / "shared/data/scut-fbp5500"))


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device (none here); run on a GPU machine")
    for item in items:
        if "gpu" in item.keywords and not CUDA:
            item.add_marker(skip_gpu)


def build_model(preset: str = "micro", seed: int = 0, **overrides) -> MDNet:
    torch.manual_seed(seed)
    return MDNet(get_config(preset, **overrides)).eval()


def faces(model: MDNet, batch: int = 2, seed: int = 1) -> torch.Tensor:
    """Random normalised 'faces' of the model's input size (smooth, image-like)."""
    g = torch.Generator().manual_seed(seed)
    size = model.cfg.preprocess.image_size
    coarse = torch.rand(batch, 3, size // 8, size // 8, generator=g)
    pixels = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return (pixels - model.pixel_mean) / model.pixel_std


@pytest.fixture
def micro() -> MDNet:
    return build_model("micro")


@pytest.fixture
def calibrated() -> MDNet:
    model = build_model("micro")
    model.calibrate_references([faces(model, 4, seed=s) for s in range(3)])
    return model


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module, as in each launched process (torchrun's default): the same arithmetic as
    the multi-process runs it is compared with, and no oversubscription when two processes share two cores.
    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
