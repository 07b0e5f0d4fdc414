"""Evaluate a checkpoint on a SCUT-FBP5500 split: PC, MAE, RMSE, overall and per subgroup.

    mdnet evaluate --data-root DIR --split 60-40/test --checkpoint checkpoints/default --output test.json

``--split`` is an official split (``60-40/train``, ``60-40/test``, ``5fold-K/test``,
``all``, ...), a list file, or ``val`` / ``train-part`` for the project's fixed
validation part of ``60-40/train`` and the rest of it (``--val-fraction``,
``--seed``, as in training). Faces go through the same alignment and scoring as
the app (mirror-averaged). Images where no face is found are scored whole (SCUT
images are centred frontal faces), counted under ``unaligned`` and listed. Under
``accelerate launch -m mdnet evaluate ...`` the processes share the faces; the main
process prints and writes the result.
"""

from __future__ import annotations

import argparse
import json
from contextlib import nullcontext
from pathlib import Path

from accelerate import Accelerator

from mdnet.faces.scut import SPLIT_SEED, Sample, ScutFBP5500, aligned_faces, stratified_split
from mdnet.models.checkpoint import DEFAULT_CHECKPOINT, default_device
from mdnet.models.mdnet import score_aligned
from mdnet.training import distributed as dist
from mdnet.training.metrics import format_table, report


def resolve_split(ds: ScutFBP5500, split: str, val_fraction: float = 0.1, seed: int = 0) -> list[Sample]:
    if split in ("val", "train-part"):
        train, val = stratified_split(ds.split("60-40/train"), val_fraction, seed)
        return val if split == "val" else train
    return ds.split(split)


def evaluate(checkpoint: str, data_root: str, split: str, cache: str | None = "cache", tta: bool = True,
             val_fraction: float = 0.1, seed: int = 0, modes: tuple[str, ...] = ("full",),
             accelerator: Accelerator | None = None) -> dict:
    """The metrics of ``checkpoint`` on ``split``. With an ``accelerator`` of several processes, each
    scores its share of the faces (every face counted once) and all get the same result."""
    from mdnet.models.checkpoint import load_checkpoint

    samples = resolve_split(ScutFBP5500(data_root), split, val_fraction, seed)
    shared = dist.shared_work_first(accelerator) if accelerator is not None else nullcontext()
    with shared:  # a hub download and the alignment cache, once
        model = load_checkpoint(checkpoint, device=accelerator.device if accelerator else default_device())
        model = model.for_inference()  # what the app serves (BatchNorm folded): the same scores, faster
        faces, unaligned = aligned_faces(samples, model.cfg.preprocess.image_size, cache)
    targets, groups = [s.score for s in samples], [s.group for s in samples]
    result: dict = {}
    for mode in modes:
        if accelerator is None:
            scores = score_aligned(model, faces, tta=tta, mode=mode).tolist()
        else:
            scores = dist.sharded_map(accelerator, lambda idx, mode=mode: score_aligned(
                model, faces[idx.cpu()], tta=tta, mode=mode), len(faces), 32).tolist()
        result[mode] = report(scores, targets, groups)
    out = dict(result["full"] if "full" in result else result[modes[0]])
    out.update(split=split, checkpoint=str(checkpoint), tta=tta, unaligned=len(unaligned),
               unaligned_names=unaligned)
    if len(modes) > 1 or modes != ("full",):
        out["modes"] = result
    return out


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--split", required=True)
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--output", default=None, help="write the metrics here as JSON")
    parser.add_argument("--cache", default="cache", help="aligned-face cache folder ('' for none)")
    parser.add_argument("--no-tta", action="store_true", help="score each face once, without its mirror image")
    parser.add_argument("--ablation", action="store_true", help="also score with each stream switched off")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--split-seed", "--seed", dest="split_seed", type=int, default=SPLIT_SEED,
                        help="for val / train-part: the seed that carved them (`mdnet train --split-seed`)")
    args = parser.parse_args(argv)
    modes = ("full", "prior_only", "vim_only") if args.ablation else ("full",)
    accelerator = dist.make_accelerator() if dist.launched_processes() > 1 else None  # accelerate launch / torchrun
    result = evaluate(args.checkpoint, args.data_root, args.split, args.cache or None, not args.no_tta,
                      args.val_fraction, args.split_seed, modes, accelerator)
    if accelerator is not None and not accelerator.is_main_process:
        return result
    print(f"{args.split}: {result['n']} faces, {result['unaligned']} without a detected face (scored whole)\n")
    print(format_table(result))
    for mode, m in result.get("modes", {}).items():
        if mode != "full":
            print(f"\n{mode}: PC {m['pc']:.4f}, MAE {m['mae']:.4f}, RMSE {m['rmse']:.4f}")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    return result
