"""Alignment time of a 1-megapixel and a 12-megapixel photo on this CPU.

The photos are built from ``skimage.data.astronaut()`` (public domain, 512x512):
upscaled and placed in a larger canvas of the target size, so the face is a
realistic fraction of the frame (20 % of the width; 5 % for the small-face case). Reports the
median (and min / p90) over repeats, after warm-up, of

* ``align(array)``: detection + refinement + crop from an RGB array (the app's path
  once the upload is decoded), and
* ``align(jpeg bytes)``: the same plus decoding the JPEG (quality 90).

Usage::

    python benchmarks/bench_align.py [--repeats 30] [--size 224]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mdnet import faces as A  # noqa: E402


def make_photo(width: int, height: int, face_frac: float) -> np.ndarray:
    """Astronaut scaled so its face is ``face_frac`` of ``width``, centred on a plain canvas: ``(height, width, 3)``."""
    from skimage import data

    src = data.astronaut()
    face_px = A.align(src).face.width  # ~101 px in the 512x512 original
    scale = face_frac * width / face_px
    big = cv2.resize(src, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA)
    # background: smooth colour gradient plus fine noise (no face-like structure)
    rng = np.random.default_rng(0)
    gx = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    gy = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    base = 60 + 120 * gx * np.array([1.0, 0.6, 0.3], np.float32) + 60 * gy * np.array([0.2, 0.5, 1.0], np.float32)
    noise = rng.normal(0, 6, (height, width, 1)).astype(np.float32)
    canvas = np.clip(base + noise, 0, 255).astype(np.uint8)
    bh, bw = big.shape[:2]
    x0, y0 = (width - bw) // 2, (height - bh) // 2
    sx0, sy0 = max(-x0, 0), max(-y0, 0)
    dx0, dy0 = max(x0, 0), max(y0, 0)
    w, h = min(bw - sx0, width - dx0), min(bh - sy0, height - dy0)
    canvas[dy0 : dy0 + h, dx0 : dx0 + w] = big[sy0 : sy0 + h, sx0 : sx0 + w]
    return canvas


def timeit(fn, repeats: int) -> np.ndarray:
    fn()  # warm-up
    fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return np.array(out) * 1000


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--size", type=int, default=A.DEFAULT_SIZE)
    args = ap.parse_args(argv)
    print("$ python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]))
    print()
    print(f"CPU cores available: {len(os.sched_getaffinity(0))}; cv2 threads: {cv2.getNumThreads()}")
    print()
    cases = [
        ("1 MP", 1155, 866, 0.2),
        ("12 MP", 4000, 3000, 0.2),
        ("12 MP, small face (5 % of width)", 4000, 3000, 0.05),
    ]
    print("| photo | pixels | face px | input | median ms | min ms | p90 ms | detector runs | crop |")
    print("|---|---|---:|---|---:|---:|---:|---|---|")
    for label, w, h, frac in cases:
        photo = make_photo(w, h, frac)
        buf = io.BytesIO()
        Image.fromarray(photo).save(buf, "JPEG", quality=90)
        jpeg = buf.getvalue()
        det = A.get_detector()
        calls = []
        det.detect = lambda x, _orig=det.detect, _calls=calls: _calls.append(1) or _orig(x)  # count runs
        res = A.align(photo, size=args.size)
        del det.detect
        runs = len(calls)
        for kind, arg in (("RGB array", photo), ("JPEG bytes", jpeg)):
            t = timeit(lambda arg=arg: A.align(arg, size=args.size), args.repeats)
            print(
                f"| {label} | {w}x{h} | {res.face.width:.0f} | {kind} | {np.median(t):.1f} | {t.min():.1f} | "
                f"{np.percentile(t, 90):.1f} | {runs} | {args.size}x{args.size} |"
            )
    t = timeit(lambda: A.load_rgb(jpeg), max(args.repeats // 3, 5))
    print()
    print(f"Decoding the 12 MP JPEG alone (load_rgb): median {np.median(t):.1f} ms.")
    A.close_detector()


if __name__ == "__main__":
    main()
