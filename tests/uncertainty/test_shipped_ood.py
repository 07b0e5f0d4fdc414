"""The shipped checkpoint's unusual-photo warning on real inputs: it fires on obviously foreign faces
(a cartoon, a heavily blurred face) and stays quiet on the example photos."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from mdnet import service
from mdnet.faces import align, load_rgb
from mdnet.faces.transform import TEMPLATE
from mdnet.models import DEFAULT_CHECKPOINT
from mdnet.models.mdnet import score_faces

EXAMPLES = DEFAULT_CHECKPOINT.parents[1] / "assets" / "examples"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shipped():
    status = service.load_model(DEFAULT_CHECKPOINT)
    assert status.ready, status.message
    if status.uncertainty is None:
        pytest.fail(f"{DEFAULT_CHECKPOINT} is not calibrated: run `mdnet calibrate` (it ships calibrated)")
    return status


def describe(status, crop: np.ndarray):
    import torch

    scored = score_faces(status.model, torch.from_numpy(crop).permute(2, 0, 1)[None].contiguous())
    return status.uncertainty.describe_scores(scored)


def cartoon_face(size: int = 224) -> np.ndarray:
    """A flat-colour cartoon face drawn where the alignment template puts eyes, nose and mouth."""
    img = np.full((size, size, 3), (120, 190, 235), np.uint8)
    (rx, ry), (lx, ly), (nx, ny), (mx, my) = (TEMPLATE * size).astype(int)
    cv2.ellipse(img, (size // 2, int(size * 0.55)), (int(size * 0.33), int(size * 0.42)), 0, 0, 360,
                (255, 214, 170), -1)
    for x, y in ((rx, ry), (lx, ly)):
        cv2.ellipse(img, (x, y), (14, 18), 0, 0, 360, (255, 255, 255), -1)
        cv2.circle(img, (x, y + 3), 8, (20, 20, 20), -1)
    cv2.line(img, (nx, ny - 20), (nx - 6, ny), (200, 140, 110), 3)
    cv2.ellipse(img, (mx, my - 6), (26, 14), 0, 10, 170, (200, 30, 40), 5)
    return img


def test_a_cartoon_face_is_flagged(shipped):
    got = describe(shipped, cartoon_face())
    assert got.unusual and got.distance > got.threshold


def test_a_heavily_blurred_face_is_flagged_a_sharp_one_is_not(shipped):
    crop = align(load_rgb(EXAMPLES / "astronaut.jpg"), size=224).image
    assert not describe(shipped, crop).unusual
    blurred = describe(shipped, cv2.GaussianBlur(crop, (0, 0), 8))
    assert blurred.unusual


def test_the_example_photos_are_not_flagged(shipped):
    for name in ("astronaut.jpg", "astronaut_tilted.jpg", "two_faces.jpg"):
        result = service.score_photo((EXAMPLES / name).read_bytes(), status=shipped)
        assert result.interval is not None and not result.interval.unusual, name
        assert result.unusual_note == ""
