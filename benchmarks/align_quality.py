"""Face-alignment quality on the SCUT-FBP5500 training images.

Reports, as markdown tables:

* detection rate of :func:`mdnet.faces.align` (target >= 99.5 %);
* eye error: the dataset's own eye centres (mean of each eye's 8 contour points in
  ``facial landmark/NAME.pts``: indices 42-49 = eye on the image left, 50-57 = eye on
  the image right; 58 / 59 are the pupils) against (a) the detector's eye keypoints
  and (b) the template eye positions after alignment, normalised by the
  inter-ocular distance (target mean <= 0.05);
* robustness: the same face rotated, scaled, translated and padded into a larger
  canvas must align to nearly the same crop: mean absolute pixel difference, SSIM
  and the shift of the dataset eye centres in the crop, against the unperturbed crop;
* ``--derive-template``: the mean detected keypoints (fractions of the 350x350
  frame) to paste into ``mdnet/faces/transform.py`` as ``TEMPLATE``.

Usage::

    python benchmarks/align_quality.py [--data ../shared/data/scut-fbp5500] [--limit N]
        [--robust-n 40] [--derive-template]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mdnet import faces as A  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "scut-fbp5500"


def read_pts(path: Path) -> np.ndarray:
    """Read a SCUT-FBP5500 ``.pts`` file: int32 count, then count (x, y) float32 pairs -> (86, 2)."""
    raw = path.read_bytes()
    n = int(np.frombuffer(raw[:4], "<i4")[0])
    return np.frombuffer(raw[4 : 4 + 8 * n], "<f4").reshape(n, 2).astype(np.float64)


def gt_eyes(pts: np.ndarray) -> np.ndarray:
    """(2, 2): eye on the image left (subject's right), eye on the image right, as contour means."""
    return np.stack([pts[42:50].mean(0), pts[50:58].mean(0)])


def pick(files: list[Path], limit: int | None) -> list[Path]:
    if not limit or limit >= len(files):
        return files
    idx = np.linspace(0, len(files) - 1, limit).round().astype(int)
    return [files[i] for i in idx]


def stats(x: np.ndarray) -> str:
    return f"{x.mean():.4f} | {np.percentile(x, 95):.4f} | {x.max():.4f}"


# ----------------------------------------------------------------------------- perturbations
def perturb(rgb: np.ndarray, kind: str, value: float) -> tuple[np.ndarray, np.ndarray]:
    """Return (perturbed image, (2, 3) map original -> perturbed), corner-origin coordinates."""
    h, w = rgb.shape[:2]
    fill = (127, 127, 127)
    if kind == "rotate":
        # rotate about the centre inside a canvas big enough to hold the whole rotated image
        side = int(np.ceil(np.hypot(h, w)))
        c = np.array([w / 2, h / 2])
        a = np.deg2rad(value)
        rot = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])  # counter-clockwise in the picture
        t = np.array([side / 2, side / 2]) - rot @ c
        m = np.hstack([rot, t[:, None]])
        return A.warp(rgb, m, side, border="constant", border_value=fill), m
    if kind == "scale":
        nw, nh = int(round(w * value)), int(round(h * value))
        interp = cv2.INTER_AREA if value < 1 else cv2.INTER_CUBIC
        out = cv2.resize(rgb, (nw, nh), interpolation=interp)
        return out, np.array([[nw / w, 0, 0], [0, nh / h, 0]], float)
    if kind == "pad":
        # place the photo off-centre in a canvas `value` times its size
        cw, ch = int(round(w * value)), int(round(h * value))
        x0, y0 = int(round((cw - w) * 0.8)), int(round((ch - h) * 0.25))
        canvas = np.full((ch, cw, 3), fill, np.uint8)
        canvas[y0 : y0 + h, x0 : x0 + w] = rgb
        return canvas, np.array([[1, 0, x0], [0, 1, y0]], float)
    if kind == "rotate+scale+pad":
        img, m1 = perturb(rgb, "rotate", value)
        img, m2 = perturb(img, "scale", 1.7)
        img, m3 = perturb(img, "pad", 1.8)
        return img, A._compose(m3, A._compose(m2, m1))
    raise ValueError(kind)


PERTURBATIONS = [
    ("rotate", -30.0),
    ("rotate", -15.0),
    ("rotate", 15.0),
    ("rotate", 30.0),
    ("scale", 0.3),
    ("scale", 0.5),
    ("scale", 2.0),
    ("scale", 3.0),
    ("pad", 2.0),
    ("pad", 3.0),
    ("pad", 5.0),
    ("rotate+scale+pad", 25.0),
]


def valid_mask(inverse: np.ndarray, size: int, h: int, w: int, margin: float = 2.0) -> np.ndarray:
    """(size, size) bool: crop pixels whose source lies inside the original photo."""
    ys, xs = np.mgrid[0:size, 0:size]
    pts = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], 1)
    src = A.apply_transform(inverse, pts)
    ok = (src[:, 0] > margin) & (src[:, 0] < w - margin) & (src[:, 1] > margin) & (src[:, 1] < h - margin)
    return ok.reshape(size, size)


def robustness(images: list[tuple[str, np.ndarray, np.ndarray | None]], size: int) -> list[dict]:
    from skimage.metrics import structural_similarity

    rows = []
    for kind, value in PERTURBATIONS:
        mad, ssim, shift, fails, n = [], [], [], [], 0
        for _name, rgb, eyes in images:
            base = A.align(rgb, size=size)
            mask = valid_mask(base.inverse_transform, size, *rgb.shape[:2])
            img, p = perturb(rgb, kind, value)
            n += 1
            try:
                out = A.align(img, size=size)
            except A.AlignError as e:
                fails.append(f"{_name}: {type(e).__name__}")
                continue
            diff = np.abs(out.image.astype(np.float32) - base.image.astype(np.float32)).mean(2)
            mad.append(float(diff[mask].mean()))
            _, smap = structural_similarity(
                base.image, out.image, channel_axis=2, data_range=255, full=True, gaussian_weights=True
            )
            ssim.append(float(smap.mean(2)[mask].mean()))
            ref = eyes if eyes is not None else base.keypoints[:2]
            composite = A._compose(out.transform, p)  # original -> perturbed -> crop
            d = np.linalg.norm(A.apply_transform(composite, ref) - A.apply_transform(base.transform, ref), axis=1)
            shift.append(float(d.mean()))
        rows.append(
            dict(
                kind=kind,
                value=value,
                n=n,
                fails=fails,
                mad=np.array(mad),
                ssim=np.array(ssim),
                shift=np.array(shift),
            )
        )
    return rows


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--limit", type=int, default=None, help="evenly spaced subset of N images")
    ap.add_argument("--robust-n", type=int, default=40, help="images used for the robustness table")
    ap.add_argument("--size", type=int, default=A.DEFAULT_SIZE)
    ap.add_argument("--derive-template", action="store_true", help="print the mean keypoints as TEMPLATE")
    args = ap.parse_args(argv)
    print("$ python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]))
    print()

    size = args.size
    files = sorted((args.data / "Images").glob("*.jpg"))
    if not files:
        sys.exit(f"no images under {args.data / 'Images'}")
    files = pick(files, args.limit)
    lm_dir = args.data / "facial landmark"

    t0 = time.perf_counter()
    found, missed, norm_kps = 0, [], []
    det_err, place_err, place_vec, worst = [], [], [], []
    t_eye = A.TEMPLATE[:2] * size
    t_iod = float(np.linalg.norm(t_eye[1] - t_eye[0]))
    for f in files:
        rgb = A.load_rgb(f)
        h, w = rgb.shape[:2]
        try:
            r = A.align(rgb, size=size)
        except A.AlignError as e:
            missed.append(f"{f.name} ({type(e).__name__})")
            continue
        found += 1
        norm_kps.append(r.keypoints / [w, h])
        pts_file = lm_dir / (f.stem + ".pts")
        if not pts_file.exists():
            continue
        eyes = gt_eyes(read_pts(pts_file))
        iod = float(np.linalg.norm(eyes[1] - eyes[0]))
        e_det = float(np.linalg.norm(r.keypoints[:2] - eyes, axis=1).mean() / iod)
        in_crop = A.apply_transform(r.transform, eyes)
        e_place = float(np.linalg.norm(in_crop - t_eye, axis=1).mean() / t_iod)
        det_err.append(e_det)
        place_err.append(e_place)
        place_vec.append((in_crop - t_eye) / t_iod)
        worst.append((e_det, f.name))
    elapsed = time.perf_counter() - t0
    n = len(files)

    print(f"## Detection on SCUT-FBP5500 training images ({args.data / 'Images'})")
    print()
    print("| images | faces found | detection rate | missed | seconds per image |")
    print("|---:|---:|---:|---:|---:|")
    print(f"| {n} | {found} | {100 * found / n:.2f} % | {len(missed)} | {elapsed / n:.4f} |")
    if missed:
        print()
        print("Missed: " + ", ".join(missed[:20]) + (" ..." if len(missed) > 20 else ""))
    print()

    if det_err:
        det_err_a, place_err_a = np.array(det_err), np.array(place_err)
        bias = np.mean(place_vec, axis=0)  # (2, 2) mean offset of dataset eyes from the template, in IOD
        unbiased = np.array([np.linalg.norm(v - bias, axis=1).mean() for v in place_vec])
        print("## Eye error, normalised by inter-ocular distance (dataset landmarks 42-49 / 50-57)")
        print()
        print("| measure | faces | mean | p95 | max |")
        print("|---|---:|---:|---:|---:|")
        print(f"| detector eye keypoints vs dataset eye centres | {len(det_err_a)} | {stats(det_err_a)} |")
        print(f"| aligned dataset eye centres vs template eyes | {len(place_err_a)} | {stats(place_err_a)} |")
        print(f"| same, less the mean offset (template convention) | {len(unbiased)} | {stats(unbiased)} |")
        print()
        print(
            "Mean offset of the dataset eye centres from the template eyes in the crop (x, y in IOD): "
            f"image-left eye ({bias[0, 0]:+.3f}, {bias[0, 1]:+.3f}), "
            f"image-right eye ({bias[1, 0]:+.3f}, {bias[1, 1]:+.3f})."
        )
        worst.sort(reverse=True)
        print("Largest detector eye errors: " + ", ".join(f"{nm} {e:.2f}" for e, nm in worst[:5]))
        print()

    if norm_kps:
        k = np.array(norm_kps)  # (N, 6, 2)
        mean = k.mean(0)
        half = (mean[1, 0] - mean[0, 0]) / 2
        eye_y = (mean[0, 1] + mean[1, 1]) / 2
        sym = np.array([[0.5 - half, eye_y], [0.5 + half, eye_y], [0.5, mean[2, 1]], [0.5, mean[3, 1]]])
        print("## Keypoints as fractions of the image (mean over detected faces; current template)")
        print()
        print("| keypoint | mean x | mean y | std x | std y | template x | template y |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for i, name in enumerate(A.KEYPOINT_NAMES):
            tx, ty = (f"{A.TEMPLATE[i, 0]:.4f}", f"{A.TEMPLATE[i, 1]:.4f}") if i < len(A.TEMPLATE) else ("", "")
            s = k[:, i].std(0)
            print(f"| {name} | {mean[i, 0]:.4f} | {mean[i, 1]:.4f} | {s[0]:.4f} | {s[1]:.4f} | {tx} | {ty} |")
        print()
        print(
            f"Mean eye midpoint x = {(mean[0, 0] + mean[1, 0]) / 2:.4f} (template symmetrised about 0.5); "
            f"the crop of an average image is shifted by {((mean[0, 0] + mean[1, 0]) / 2 - 0.5) * size:+.1f} px."
        )
        if args.derive_template:
            print()
            print("Derived template (eyes symmetrised about x = 0.5; nose and mouth on the midline):")
            print()
            print("```python")
            print("TEMPLATE = np.array(")
            print("    [")
            names = ["right eye (image left)", "left eye (image right)", "nose tip", "mouth centre"]
            for row, name in zip(sym, names, strict=True):
                print(f"        [{row[0]:.4f}, {row[1]:.4f}],  # {name}")
            print("    ],")
            print("    dtype=np.float64,")
            print(")")
            print("```")
        print()

    # robustness
    robust: list[tuple[str, np.ndarray, np.ndarray | None]] = []
    for f in pick(sorted((args.data / "Images").glob("*.jpg")), args.robust_n):
        pts_file = lm_dir / (f.stem + ".pts")
        eyes = gt_eyes(read_pts(pts_file)) if pts_file.exists() else None
        robust.append((f.name, A.load_rgb(f), eyes))
    from skimage import data as skdata

    robust.append(("astronaut", skdata.astronaut(), None))
    rows = robustness(robust, size)
    print(
        f"## Robustness: perturbed copies vs the unperturbed crop ({len(robust) - 1} SCUT images + astronaut, "
        f"{size}x{size} crops; pixels outside the original photo are masked out)"
    )
    print()
    print("| perturbation | faces | not aligned | mean abs diff (0-255) | SSIM mean | SSIM min | eye shift px | p95 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    all_mad, all_ssim, all_shift = [], [], []
    for r in rows:
        label = {
            "rotate": f"rotate {r['value']:+.0f} deg",
            "scale": f"scale {r['value']:g}x",
            "pad": f"pad into {r['value']:g}x canvas, off-centre",
            "rotate+scale+pad": f"rotate {r['value']:+.0f} deg, scale 1.7x, pad 1.8x",
        }[r["kind"]]
        all_mad += list(r["mad"])
        all_ssim += list(r["ssim"])
        all_shift += list(r["shift"])
        if len(r["mad"]):
            print(
                f"| {label} | {r['n']} | {len(r['fails'])} | {r['mad'].mean():.2f} | {r['ssim'].mean():.3f} | "
                f"{r['ssim'].min():.3f} | {r['shift'].mean():.2f} | {np.percentile(r['shift'], 95):.2f} |"
            )
        else:
            print(f"| {label} | {r['n']} | {len(r['fails'])} | | | | | |")
    if all_mad:
        a_mad, a_ssim, a_shift = np.array(all_mad), np.array(all_ssim), np.array(all_shift)
        print(
            f"| **all** | {sum(r['n'] for r in rows)} | {sum(len(r['fails']) for r in rows)} | {a_mad.mean():.2f} | "
            f"{a_ssim.mean():.3f} | {a_ssim.min():.3f} | {a_shift.mean():.2f} | {np.percentile(a_shift, 95):.2f} |"
        )
    failures = [f"{r['kind']} {r['value']:g}: {x}" for r in rows for x in r["fails"]]
    if failures:
        print()
        print("Not aligned: " + "; ".join(failures) + f" (faces must be at least {A.MIN_FACE_SIZE} px wide)")
    print()
    print(f"Total time {time.perf_counter() - t0:.1f} s.")
    A.close_detector()


if __name__ == "__main__":
    main()
