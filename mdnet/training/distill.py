"""``mdnet distill``: train the fast student (:mod:`mdnet.models.student`) on a teacher MD-Net's scores.

Targets (Hinton et al. 2015's knowledge distillation, as a regression):

- the unlabeled in-the-wild faces (``--unlabeled``, UTKFace by default): the teacher's
  mirror-averaged score, the faces' only label, and where distillation earns its keep;
- the SCUT-FBP5500 training faces (the official 60/40 training list minus the validation faces
  that ``stratified_split(train, 0.1, seed=0)`` keeps, as ``mdnet train`` does):
  ``--label-weight x label + (1 - --label-weight) x teacher``, drawn ``--labelled-repeat`` times
  per epoch so that they are not drowned by the unlabeled faces.

The teacher's scores are computed once and cached per face (:mod:`mdnet.training.score_store`,
shared with ``benchmarks/utk_groups.py``; resumable), on the main process. Every draw goes through
the teacher's training augmentations (:mod:`mdnet.training.camera`: CameraAugment with
``--camera-p``, mirror, shift) while its target is the teacher's score of the clean crop, so the
student also learns the teacher's robustness. ``--holdout`` unlabeled faces are never trained on:
they measure the teacher-student agreement.

``--head ridge`` keeps SFace's convolutions frozen and fits one linear map on the whole 7 x 7 map of
every draw (each row of the epoch drawn once, augmented) in closed form: ridge regression, its
strength chosen by 5-fold cross-validation over faces (:mod:`mdnet.training.ridge`); the features are
computed by every process on its share of the draws. No steps, no ``--resume``: minutes.
``--head mlp+ridge`` trains the MLP head by gradient (below), then fits the linear map on the whole
7 x 7 map of the same student (its convolutions as the MLP left them: ``--freeze-units 27`` keeps
SFace's own), each to the targets on its own; the student scores their average (an ensemble of two
heads on one pass).

The student starts from SFace's convolutions taken from the teacher's checkpoint (no other
download), or with ``--trunk-from`` from an earlier student's (e.g. a ridge head on an MLP student's
distilled convolutions). With ``--head mlp`` (the default): AdamW with a one-cycle schedule over ``--epochs``,
through Accelerate, each process training on its share of every global batch; the state is saved every few minutes under
``OUTPUT/state`` and ``--resume`` continues at the exact step. At the end the student is saved
with :func:`~mdnet.models.checkpoint.save_checkpoint` (float16 weights), reloaded, and measured
from the saved file: ``OUTPUT/summary.json``::

    mdnet distill --data-root ../shared/data/scut-fbp5500 --teacher checkpoints/default \\
        --output runs/student --checkpoint-out checkpoints/student
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mdnet.faces.augment import CameraAugment
from mdnet.faces.scut import ScutFBP5500, aligned_faces, stratified_split
from mdnet.faces.unlabeled import align_samples, read_folder, resolve_folder, select_faces
from mdnet.models.checkpoint import WEIGHTS_NAME, file_sha256, load_checkpoint, resolve_checkpoint, save_checkpoint
from mdnet.models.mdnet import score_faces
from mdnet.models.student import FBPStudent, StudentConfig
from mdnet.training import distributed as dist
from mdnet.training.camera import DrawRecipe, labelled_draws, labelled_faces
from mdnet.training.fit import fit
from mdnet.training.metrics import regression_metrics
from mdnet.training.ridge import RidgeFit, fit_ridge
from mdnet.training.score_store import cached_scores, score_cache

SFACE_PREFIX = "vim.identity.sface."


class DistillObjective(nn.Module):
    """Per-face squared error between the student's score of the augmented crop and its target."""

    def __init__(self, student: FBPStudent):
        super().__init__()
        self.student = student

    def forward(self, batch: dict) -> torch.Tensor:
        x = (batch["image"] - self.student.pixel_mean) / self.student.pixel_std
        return (self.student.mlp_score(x) - batch["target"].float()).pow(2)


def init_student(teacher_dir: Path, cfg: StudentConfig | None = None, trunk_from: Path | None = None) -> FBPStudent:
    """A student whose SFace convolutions are the teacher checkpoint's copy of SFace, or those of the
    student checkpoint ``trunk_from`` (a trunk already distilled: e.g. a ridge head on an MLP student's
    fine-tuned convolutions)."""
    from safetensors.torch import load_file

    student = FBPStudent(cfg)
    if trunk_from is not None:
        earlier = load_checkpoint(trunk_from)
        if not isinstance(earlier, FBPStudent):
            raise ValueError(f"--trunk-from {trunk_from} is not a student checkpoint")
        student.trunk.load_state_dict(earlier.trunk.state_dict())
        student.head_convs.load_state_dict(earlier.head_convs.state_dict())
        return student
    state = load_file(str(teacher_dir / WEIGHTS_NAME))
    try:
        student.load_sface(state, SFACE_PREFIX)
    except KeyError as err:
        raise ValueError(f"{teacher_dir} holds no SFace weights ({err}): the student needs a teacher with an "
                         "SFace identity embedding (preset tiny-sface-id)") from err
    return student


def teacher_targets(teacher, store: Path, items: list, align, name: str, progress: bool) -> dict[str, float]:
    """The teacher's mirror-averaged score of every item that aligns, cached per face in ``store``
    (:func:`~mdnet.training.score_store.score_cache`)."""
    scores, _ = cached_scores(teacher, items, align, store / f"{name}.tsv", desc=f"teacher scores ({name})",
                              progress=progress)
    return scores


def fit_linear_head(accelerator, student: FBPStudent, data, rows: torch.Tensor, recipe: DrawRecipe, seed: int,
                    quiet: bool) -> RidgeFit:
    """``--head ridge`` (and the ridge half of ``mlp+ridge``): one augmented draw of every row of ``data``, its
    frozen features (computed by every process on its share), a ridge fit with the strength cross-validated
    over faces, installed in ``student``."""
    augs = labelled_draws(recipe)(torch.arange(len(rows)), torch.Generator().manual_seed(seed))
    student.eval()

    def features(idx: torch.Tensor) -> list[torch.Tensor]:
        items = [data[dist.Draw(int(i), 1.0, 1, tuple(augs[int(i)]))] for i in idx]
        x = (torch.stack([it["image"] for it in items]) - student.pixel_mean) / student.pixel_std
        with torch.no_grad():
            return [student.linear_features(x), torch.stack([it["target"] for it in items]).float()]

    feats, targets = dist.sharded_map(accelerator, features, len(rows), batch_size=32,
                                      desc=None if quiet else "features of the draws")
    fit = fit_ridge(feats, targets, rows.numpy(), seed=seed, log=None if quiet else accelerator.print)
    student.set_linear_head(fit.weight, fit.bias, fit.mean, fit.scale)
    return fit


def unlabeled_subset(folder: str, per_group: int | None, limit: int | None, seed: int) -> list:
    """The unlabeled photos of a recipe: ``per_group`` per race x gender, or ``limit`` of them (seeded), or all.

    Drawn from every photo in the folder, never from "those the cache has not rejected yet": the faces
    and the holdout of a recipe must not depend on what earlier runs left in the cache (photos without
    a usable face are dropped afterwards, by the alignment).
    """
    if per_group:
        return select_faces(resolve_folder(folder), per_group, seed, set())
    return read_folder(resolve_folder(folder), limit=limit, seed=seed)


def evaluate(model, faces: torch.Tensor, labels: np.ndarray, teacher: np.ndarray | None = None) -> dict:
    """PC / MAE / RMSE of the (single-pass) scores against the labels, and the correlation with the teacher."""
    pred = score_faces(model, faces, tta=False).score.numpy().astype(np.float64)
    out = regression_metrics(pred, labels) if labels is not None else {}
    if teacher is not None:
        out["teacher_corr"] = float(np.corrcoef(pred, teacher)[0, 1])
        out["teacher_mae"] = float(np.mean(np.abs(pred - teacher)))
    return out


def _row(name: str, m: dict) -> str:
    return f"| {name} | {m['pc']:.4f} | {m['mae']:.4f} | {m['rmse']:.4f} |"


def student_card(summary: dict, recipe: dict, name: str) -> str:
    """The student's model card (README.md beside its weights), from :func:`main`'s summary."""
    v, t, h, f = summary["validation"], summary["teacher_validation"], summary["holdout_agreement"], summary["faces"]
    command = "mdnet distill " + " ".join(
        f"--{k.replace('_', '-')} {val}" for k, val in recipe.items() if val is not None and val is not False)
    ridge = summary.get("ridge")
    mlp_design = ("SFace's face-recognition convolutions on the face re-aligned\nto 112 px, pooled onto 2 x 2 "
                  "cells, and an MLP; 3.75 M parameters stored in float16")
    ridge_design = ("SFace's face-recognition convolutions, frozen, on the face re-aligned to 112 px, and one\n"
                    "linear map of their whole 1024 x 7 x 7 map (ridge regression in closed form); 3.3 M parameters,\n"
                    "the convolutions stored in float16, the linear map in float32")
    ridge_fit = (f"A ridge fit on {ridge['draws']} draws (one each), strength {ridge['alpha']:g} chosen by 5-fold "
                 f"cross-validation over faces (held-out mean squared error "
                 f"{ridge['cv_mse'][format(ridge['alpha'], 'g')]:.4f}),") if ridge else ""
    mlp_fit = f"{summary['steps']} steps of {recipe['batch_size']}, final training loss {summary['final_loss']:.4f},"
    if ridge and summary["steps"]:
        design = ("SFace's face-recognition convolutions on the face re-aligned to 112 px, read by two heads whose\n"
                  "scores are averaged: an MLP on the map pooled onto 2 x 2 cells and one linear map of the whole\n"
                  "1024 x 7 x 7 map (ridge regression in closed form); 3.8 M parameters, the convolutions and\n"
                  "the MLP stored in float16, the linear map in float32")
        training = f"The MLP: {mlp_fit} then the linear map: {ridge_fit[0].lower()}{ridge_fit[1:]}"
    elif ridge:
        design, training = ridge_design, ridge_fit
    else:
        design, training = mlp_design, mlp_fit
    agreement = (f"On {f['holdout']} unlabeled in-the-wild faces it never trained on, its scores correlate "
                 f"{h['teacher_corr']:.3f} with the teacher's (mean absolute difference {h['teacher_mae']:.3f})."
                 if h else "")
    return f"""---
license: other
license_name: scut-fbp5500-non-commercial
tags: [facial-beauty-prediction, knowledge-distillation, scut-fbp5500, utkface]
---

# `{name}`: the fast student of MD-Net

A small network (`mdnet.models.student`: {design}) distilled from the
MD-Net checkpoint `{recipe['teacher']}` by `mdnet distill`. It scores an aligned 224 px face in one
pass, for the live webcam score and `mdnet predict --fast`; full MD-Net gives the score people read
with its interval and explanations. Input and output as MD-Net's (1-5, the SCUT-FBP5500 raters' mean).

## Data

- {f['labelled']} SCUT-FBP5500 training faces (the official 60/40 training list minus {f['validation']} validation
  faces, `stratified_split(train, 0.1, seed=0)` as MD-Net's training), target
  {recipe['label_weight']:g} x label + {1 - recipe['label_weight']:g} x the teacher's mirror-averaged score,
  drawn {recipe['labelled_repeat']} times per epoch;
- {f['unlabeled_trained']} unlabeled UTKFace faces, target the teacher's score; {f['holdout']} more kept out to
  measure agreement ({f['unlabeled_rejected']} photos without a usable face dropped);
- every draw through the teacher's camera augmentations (CameraAugment p={recipe['camera_p']:g}, mirror,
  shift), the target always the teacher's score of the clean crop.

## Results (the saved float16 weights)

Validation faces ({f['validation']}, never trained on; the student one pass, the teacher mirror-averaged):

| model | PC | MAE | RMSE |
|---|---|---|---|
{_row("teacher (MD-Net)", t)}
{_row("student", v)}

Student-teacher correlation on the validation faces {v['teacher_corr']:.3f}. {agreement}
{training} {summary['train_minutes_this_run']:.0f} min on {summary['processes']} process(es) (the teacher's scores:
{summary['teacher_minutes']:.0f} min, cached per face). Latency: `python benchmarks/bench_live.py` (README).

## Reproduce

```bash
{command}
```

## Licence and limits

- SCUT-FBP5500 (Liang et al., ICPR 2018) and UTKFace (Zhang, Song and Qi, CVPR 2017): non-commercial
  research only; so is this checkpoint.
- SFace face recognizer (Zhong et al., 2021; OpenCV Zoo, Apache-2.0): the starting weights of the
  convolutions, taken from the teacher checkpoint's copy.

It inherits the teacher's limits (the taste of SCUT-FBP5500's raters on Asian and Caucasian adults), and
adds its own error on top of the teacher's.
"""


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True, help="SCUT-FBP5500 root (official layout)")
    parser.add_argument("--teacher", default="checkpoints/default", help="the MD-Net checkpoint to distil")
    parser.add_argument("--unlabeled", default="utkface", help="folder of unlabeled face photos ('utkface': ../shared)")
    subset = parser.add_mutually_exclusive_group()
    subset.add_argument("--unlabeled-limit", type=int, default=None, help="a seeded subset of that many photos")
    subset.add_argument("--unlabeled-per-group", type=int, default=None,
                        help="a seeded subset of that many photos per race x gender (UTKFace names), drawn from "
                             "every photo; those without a usable face are then dropped")
    parser.add_argument("--holdout", type=int, default=500, help="unlabeled faces kept out to measure agreement")
    parser.add_argument("--output", default="runs/student")
    parser.add_argument("--checkpoint-out", default=None, help="also save the student here (e.g. checkpoints/student)")
    parser.add_argument("--epochs", type=float, default=4.0)
    parser.add_argument("--batch-size", type=int, default=64, help="global batch")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--label-weight", type=float, default=0.5, help="labelled faces: weight of the true label")
    parser.add_argument("--labelled-repeat", type=int, default=3, help="draws of each labelled face per epoch")
    parser.add_argument("--camera-p", type=float, default=0.8, help="probability of CameraAugment on a draw")
    parser.add_argument("--max-shift", type=int, default=8)
    parser.add_argument("--freeze-units", type=int, default=11,
                        help="SFace conv units kept as initialised, from the input (11: up to 28 x 28 px, where "
                             "most of the backward time goes on a CPU); 0 trains all 27")
    parser.add_argument("--head", choices=("mlp", "ridge", "mlp+ridge"), default="mlp",
                        help="mlp: SFace's last units and an MLP trained by gradient (--epochs, --lr, ...); ridge: "
                             "SFace frozen, one linear map of its whole 7 x 7 map fitted in closed form; mlp+ridge: "
                             "both on the same map, their scores averaged (--freeze-units 27: on SFace's own map)")
    parser.add_argument("--trunk-from", default=None,
                        help="start SFace's convolutions from this student checkpoint instead of the teacher's "
                             "copy (e.g. a ridge head on an MLP student's distilled convolutions; overrides --init)")
    parser.add_argument("--init", choices=("teacher", "random"), default="teacher",
                        help="the student's SFace convolutions: the teacher checkpoint's copy, or random (tests)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default="cache")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--save-every-minutes", type=float, default=5.0)
    args = parser.parse_args(argv)
    if not 0 <= args.label_weight <= 1:
        parser.error(f"--label-weight must be in [0, 1], got {args.label_weight}")
    if args.epochs <= 0 or args.labelled_repeat < 0 or args.holdout < 0:
        parser.error("--epochs must be positive; --labelled-repeat and --holdout non-negative")

    accelerator = dist.make_accelerator()
    if (err := dist.check_batch_size(accelerator, args.batch_size)) is not None:
        parser.error(err)
    quiet = not accelerator.is_local_main_process
    out = Path(args.output)
    teacher_dir = resolve_checkpoint(args.teacher)
    teacher = load_checkpoint(teacher_dir)
    size = teacher.cfg.preprocess.image_size
    if size != StudentConfig().preprocess.image_size:
        parser.error(f"the student scores 224 px crops; teacher {args.teacher} scores {size} px crops")
    cache = Path(args.cache)

    # labelled faces: the training part of the official training list, and the validation faces
    train, val = stratified_split(ScutFBP5500(args.data_root).split("60-40/train"), 0.1, seed=0)
    faces_tr, _ = aligned_faces(train, size, cache)
    faces_va, _ = aligned_faces(val, size, cache)
    by_name = {s.name: i for i, s in enumerate(train + val)}
    all_faces = torch.cat([faces_tr, faces_va])

    def align_scut(part):
        rows = [by_name[s.name] for s in part]
        return all_faces[rows], [s.name for s in part], []

    # unlabeled faces: aligned through the shared cache (rejects dropped), a seeded holdout kept apart
    samples = unlabeled_subset(args.unlabeled, args.unlabeled_per_group, args.unlabeled_limit, args.seed)
    unl = align_samples(samples, size, cache)
    order = np.random.default_rng(args.seed).permutation(len(unl.names))
    held = set(order[: args.holdout].tolist())

    def align_unl(part):
        rows = [unl_row[s.name] for s in part]
        return unl.faces[rows], [s.name for s in part], []

    unl_row = {n: i for i, n in enumerate(unl.names)}
    kept = [s for s in samples if s.name in unl_row]
    t0 = time.time()
    teacher_sha = file_sha256(teacher_dir / WEIGHTS_NAME)
    store = score_cache(cache, teacher_sha, size)
    if accelerator.is_main_process:  # scores what the store lacks; the others then read it
        teacher_targets(teacher, store, train + val, align_scut, "scut-fbp5500", not quiet)
        teacher_targets(teacher, store, kept, align_unl, "unlabeled", not quiet)
    accelerator.wait_for_everyone()
    scut_t = teacher_targets(teacher, store, train + val, align_scut, "scut-fbp5500", False)
    unl_t = teacher_targets(teacher, store, kept, align_unl, "unlabeled", False)
    teacher_minutes = (time.time() - t0) / 60
    del teacher

    y_tr = torch.tensor([s.score for s in train], dtype=torch.float32)
    t_tr = torch.tensor([scut_t[s.name] for s in train], dtype=torch.float32)
    t_unl = torch.tensor([unl_t[n] for n in unl.names], dtype=torch.float32)
    faces = torch.cat([faces_tr, unl.faces])
    targets = torch.cat([args.label_weight * y_tr + (1 - args.label_weight) * t_tr, t_unl])
    train_unl = torch.tensor([len(train) + i for i in range(len(unl.names)) if i not in held], dtype=torch.long)
    rows = torch.cat([torch.arange(len(train)).repeat(args.labelled_repeat), train_unl])

    recipe = DrawRecipe(camera_p=args.camera_p, max_shift=args.max_shift)
    data = labelled_faces(faces, None, targets, recipe, CameraAugment(), rows)
    sampler = dist.GlobalBatches(len(rows), args.batch_size, args.seed, labelled_draws(recipe), drop_last=True,
                                 shards=dist.shards(accelerator))
    steps = 0 if args.head == "ridge" else max(1, round(args.epochs * sampler.batches_per_epoch()))
    with_ridge = args.head in ("ridge", "mlp+ridge")
    accelerator.print(f"distilling on {len(rows)} draws per epoch ({len(train)} labelled faces x "
                      f"{args.labelled_repeat}, {len(train_unl)} unlabeled), "
                      + ("a ridge fit" if steps == 0 else f"{steps} steps of {args.batch_size}")
                      + (" and a ridge fit" if steps and with_ridge else ""))
    torch.manual_seed(args.seed)
    cfg = {"ridge": StudentConfig(head="linear", pool=7), "mlp+ridge": StudentConfig(head="mlp+linear")}.get(
        args.head, StudentConfig())
    try:
        if args.trunk_from:
            student = init_student(teacher_dir, cfg, resolve_checkpoint(args.trunk_from))
        else:
            student = init_student(teacher_dir, cfg) if args.init == "teacher" else FBPStudent(cfg)
    except ValueError as err:
        parser.error(str(err))
    try:
        student.freeze_units(27 if args.head == "ridge" else args.freeze_units)
    except ValueError as err:
        parser.error(f"--freeze-units: {err}")
    # BatchNorm statistics of these faces, not of an untrained network's defaults
    if args.init == "random" and not args.trunk_from:
        first = rows[: min(256, len(rows))]
        student.estimate_bn_statistics(student.preprocess(faces[first[i:i + 32]]) for i in range(0, len(first), 32))
    if not args.resume and accelerator.is_main_process:
        import shutil

        shutil.rmtree(out / "state", ignore_errors=True)
    accelerator.wait_for_everyone()
    dist.seed_per_process(accelerator, args.seed)
    t1 = time.time()
    ridge, losses = None, []
    if steps:
        losses, objective = fit(accelerator, "student", DistillObjective(student), data, sampler, steps, args.lr,
                                args.weight_decay, 0.1, clip=1.0, state_dir=out / "state",
                                save_every_s=args.save_every_minutes * 60)
        student = objective.student
    if with_ridge:
        ridge = fit_linear_head(accelerator, student, data, rows, recipe, args.seed, quiet)
        losses = losses or [ridge.cv_mse[ridge.alpha]]
    train_minutes = (time.time() - t1) / 60
    summary: dict = {}
    if accelerator.is_main_process:
        student = student.cpu().eval()
        metadata = {"teacher": str(args.teacher), "teacher_weights_sha256": teacher_sha,
                    "recipe": {k: v for k, v in vars(args).items() if k not in ("resume",)}}
        saved = save_checkpoint(student, args.checkpoint_out or out / "checkpoint", metadata)
        reloaded = load_checkpoint(saved)  # measure what was saved (float16 weights)
        held_rows = sorted(held)
        summary = {
            "validation": evaluate(reloaded, faces_va, np.array([s.score for s in val]),
                                   np.array([scut_t[s.name] for s in val])),
            "teacher_validation": regression_metrics(np.array([scut_t[s.name] for s in val]),
                                                     np.array([s.score for s in val])),
            "holdout_agreement": evaluate(reloaded, unl.faces[held_rows], None,
                                          np.array([unl_t[unl.names[i]] for i in held_rows])) if held_rows else {},
            "faces": {"labelled": len(train), "validation": len(val), "unlabeled_trained": len(train_unl),
                      "holdout": len(held_rows), "unlabeled_rejected": len(unl.rejected)},
            "steps": steps, "final_loss": float(np.mean(losses[-50:])), "teacher_minutes": teacher_minutes,
            "ridge": {"alpha": ridge.alpha, "cv_mse": {f"{a:g}": m for a, m in ridge.cv_mse.items()},
                      "draws": len(rows)} if ridge else None,
            "train_minutes_this_run": train_minutes, "processes": accelerator.num_processes,
            "checkpoint": str(saved), "size_mb": (saved / WEIGHTS_NAME).stat().st_size / 1e6,
        }
        (saved / "README.md").write_text(student_card(summary, metadata["recipe"], reloaded.cfg.name))
        out.mkdir(parents=True, exist_ok=True)
        (out / "losses.json").write_text(json.dumps(losses) + "\n")
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        accelerator.print(json.dumps(summary, indent=2))
    accelerator.wait_for_everyone()
    return summary
