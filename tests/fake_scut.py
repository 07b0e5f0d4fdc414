"""A miniature SCUT-FBP5500 folder in the official layout, built from a public-domain face.

The real list files are not all available here (test.txt and the 5-fold files are
held back), so the lists are small made-up copies with the official names and
format; every image is the astronaut's face (skimage, public domain) at 350 px,
except one blank image where no face can be found.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image

NO_FACE = "AM9999.jpg"


def astronaut_face(size: int = 350) -> Image.Image:
    from skimage import data

    rgb = data.astronaut()[20:240, 100:320]  # the face, centred like a SCUT image
    return Image.fromarray(np.ascontiguousarray(rgb)).resize((size, size), Image.BILINEAR)


def make_fake_scut(root: Path, per_group: int = 6, seed: int = 0) -> Path:
    rng = random.Random(seed)
    images = root / "Images"
    images.mkdir(parents=True)
    face = astronaut_face()
    names = [f"{g}{i}.jpg" for g in ("AF", "AM", "CF", "CM") for i in range(1, per_group + 1)]
    for i, name in enumerate(names):
        # Slightly different brightness per image, so scores can be told apart.
        arr = np.clip(np.asarray(face, dtype=np.float32) * (0.8 + 0.4 * i / len(names)), 0, 255)
        Image.fromarray(arr.astype(np.uint8)).save(images / name, quality=92)
    Image.new("RGB", (350, 350), (128, 128, 128)).save(images / NO_FACE)
    labels = {n: round(1.5 + 3 * i / len(names) + rng.uniform(-0.2, 0.2), 6) for i, n in enumerate(names)}
    labels[NO_FACE] = 2.5
    lists = root / "train_test_files"
    split = lists / "split_of_60%training and 40%testing"
    split.mkdir(parents=True)
    every = sorted(labels)
    test = every[::3]
    train = [n for n in every if n not in test]

    def write(path: Path, keys):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{k} {labels[k]}\n" for k in keys))

    write(lists / "All_labels.txt", every)
    write(split / "train.txt", train)
    write(split / "test.txt", test)
    for k in range(1, 6):
        fold = lists / "5_folders_cross_validations_files" / f"cross_validation_{k}"
        held = every[k - 1 :: 5]
        write(fold / f"test_{k}.txt", held)
        write(fold / f"train_{k}.txt", [n for n in every if n not in held])
    return root
