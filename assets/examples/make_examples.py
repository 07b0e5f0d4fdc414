"""Write the app's example photos from scikit-image's bundled public-domain / CC0 images.

    python assets/examples/make_examples.py

Sources (licences as scikit-image states them; see LICENSE.md beside this script):

- ``skimage.data.astronaut()``: NASA photograph of astronaut Eileen Collins, public domain.
- ``skimage.data.coffee()``: a coffee cup, CC0 by the photographer (Rachel Michetti).

The outputs are deterministic (fixed sizes, angles and JPEG quality) so rerunning the
script reproduces the committed files.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent


def _canvas(height: int, width: int, top: tuple[int, int, int], bottom: tuple[int, int, int]) -> np.ndarray:
    """A smooth vertical colour gradient, (height, width, 3) uint8."""
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    rows = (1 - t) * np.array(top, np.float32) + t * np.array(bottom, np.float32)
    return np.repeat(rows, width, axis=1).astype(np.uint8)


def _paste(canvas: np.ndarray, image: np.ndarray, x: int, y: int) -> None:
    h, w = image.shape[:2]
    canvas[y : y + h, x : x + w] = image


def tilted(src: np.ndarray, angle: float = 18.0) -> np.ndarray:
    """The photo rotated by ``angle`` degrees inside a larger canvas (alignment has to undo it)."""
    h, w = src.shape[:2]
    canvas = _canvas(720, 720, (40, 60, 90), (150, 160, 170))
    _paste(canvas, src, (720 - w) // 2, (720 - h) // 2)
    m = cv2.getRotationMatrix2D((360, 360), angle, 1.0)
    return cv2.warpAffine(canvas, m, (720, 720), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)


def two_faces(src: np.ndarray) -> np.ndarray:
    """Two copies of the photo side by side, the second mirrored and smaller: a photo with two faces."""
    big = src
    small = cv2.resize(src[:, ::-1], (360, 360), interpolation=cv2.INTER_AREA)
    canvas = _canvas(560, 960, (230, 225, 215), (180, 175, 165))
    _paste(canvas, big, 24, 24)
    _paste(canvas, small, 960 - 360 - 40, 560 - 360 - 60)
    return canvas


def main() -> list[Path]:
    from skimage import data

    astronaut = data.astronaut()
    outputs = {
        "astronaut.jpg": astronaut,
        "astronaut_tilted.jpg": tilted(astronaut),
        "two_faces.jpg": two_faces(astronaut),
        "coffee_no_face.jpg": data.coffee(),
    }
    written = []
    for name, rgb in outputs.items():
        path = HERE / name
        Image.fromarray(rgb).save(path, format="JPEG", quality=88, optimize=True)
        written.append(path)
        print(f"wrote {path.relative_to(HERE.parent.parent)} ({path.stat().st_size // 1024} KiB)")
    return written


if __name__ == "__main__":
    main()
