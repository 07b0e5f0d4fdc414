"""Live webcam latency: one 640 x 480 frame -> aligned face -> score, full MD-Net vs the fast student.

Times :func:`mdnet.service.score_frame`, the webcam's own path (the frame decoded within camera
limits, the fast face search, the crop, the model's own scoring: MD-Net mirror-averaged, the
student one pass), and, separately, the alignment alone and each model's score of an aligned crop. The
live webcam's fast paths are timed beside their references: the face followed from the previous frame
(:func:`mdnet.faces.track_face`) beside the face search, and the service's student (BatchNorm folded
into its convolutions, channels-last weights: :mod:`mdnet.models.inference_copy`) beside the saved one,
and MD-Net's copy likewise.
The checkpoints alternate (A B A B ...) so that a busy machine slows both alike: read the ratio.

Usage::

    python benchmarks/bench_live.py [--teacher checkpoints/default] [--student checkpoints/student]
        [--repeats 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from timing import header, measure, ms

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mdnet import service  # noqa: E402
from mdnet.faces import align, load_rgb  # noqa: E402
from mdnet.models.checkpoint import load_checkpoint  # noqa: E402
from mdnet.models.mdnet import score_faces  # noqa: E402


def frame(width: int = 640, height: int = 480) -> np.ndarray:
    """A webcam-sized frame: the example astronaut photo, its face about a third of the frame's height."""
    import cv2

    photo = load_rgb(ROOT / "assets" / "examples" / "astronaut.jpg")
    scale = height / photo.shape[0]
    small = cv2.resize(photo, (round(photo.shape[1] * scale), height), interpolation=cv2.INTER_AREA)
    canvas = np.full((height, width, 3), 90, np.uint8)
    w = min(width, small.shape[1])
    canvas[:, :w] = small[:, :w]
    return canvas


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default=str(ROOT / "checkpoints" / "default"))
    ap.add_argument("--student", default=str(ROOT / "checkpoints" / "student"))
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = {"MD-Net": service.load_model(args.teacher), "student": service.load_model(args.student)}
    for name, status in models.items():
        if not status.ready:
            ap.error(f"{name}: {status.message}")
    rgb = frame()
    first = align(rgb, size=224)
    crop = torch.from_numpy(first.image).permute(2, 0, 1)[None].contiguous()
    fns = {"align (face search)": lambda: align(rgb, size=224),
           "align (face followed)": lambda: align(rgb, size=224, track=first.face)}
    for name, status in models.items():
        fns[f"{name} score"] = lambda m=status.model: score_faces(m, crop)
        fns[f"{name} frame"] = lambda s=status: service.score_frame(rgb, status=s)
    for name, path in (("MD-Net", args.teacher), ("student", args.student)):
        saved = load_checkpoint(path)  # what the service's copy is folded from
        fns[f"{name} score (BatchNorm not folded)"] = lambda m=saved: score_faces(m, crop)
    fns["student frame (face followed)"] = lambda: service.score_frame(rgb, status=models["student"],
                                                                       track=first.face)
    with torch.inference_mode():
        r = measure(fns, repeats=args.repeats, warmup=2)
    print(header("Live webcam latency (one 640 x 480 frame)"))
    print("| step | median ms | min-max ms |\n|---|---:|---|")
    for name, t in r.items():
        print(f"| {name} | {ms(t['median'])} | {ms(t['min'])}-{ms(t['max'])} |")
    ratio = r["MD-Net frame"]["median"] / r["student frame"]["median"]
    live = r["student frame (face followed)"]["median"]
    print(f"\nframe to score: the student is {ratio:.1f}x faster than MD-Net (medians); "
          f"{ratio * r['student frame']['median'] / live:.1f}x with the face followed from the previous frame "
          f"(the live webcam), at most {1 / live:.1f} student scores a second on this machine")
    return {name: t["median"] for name, t in r.items()} | {"ratio": ratio}


if __name__ == "__main__":
    main()
