"""Pretrain the prior's U-Net longer on a lent GPU, from the TAEF2 latents cached here.

The GPU machine cannot read ``../shared`` and takes at most 64 MiB of files, so the latents of
``mdnet pretrain-prior`` travel packed (:mod:`mdnet.training.latent_pack`: int8 per channel, half
the size of the fp16 cache). Three steps::

    python benchmarks/device_prior.py pack --latents cache/taef2-latents-64-<key> --prior runs/prior-taef2 \\
        --output .devdata/latents.npz                       # here
    python3 benchmarks/device_prior.py train --packed .devdata/latents.npz --minutes 5 --output $OUT   # on the GPU
    python benchmarks/device_prior.py finish --trained <files from the GPU> --prior runs/prior-taef2 \\
        --output runs/prior-taef2-gpu                       # here: a prior folder like pretrain-prior's

The U-Net is the preset's (same architecture, so it drops into ``tiny-sface-id``), trained from
scratch with the same objective, schedule shape and data as on the CPU; only the number of steps
(sized to ``--minutes`` by a short speed probe) and the batch differ. Mixed precision bf16.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from mdnet.models.config import get_config
from mdnet.training.latent_pack import pack_latents, unpack_latents

UNET_FILE = "unet-fp16.safetensors"


def pack(args) -> None:
    chunks = sorted(Path(args.latents).glob("chunk-*.npy"))
    latents = torch.from_numpy(np.concatenate([np.load(p) for p in chunks])).float()
    info = json.loads((Path(args.prior) / "prior.json").read_text())
    packed = pack_latents(latents, shift=info["latent_shift"], scale=info["latent_scale"])
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.output, **packed)
    err = (unpack_latents(packed, dither=False) - latents).abs().max().item()
    print(f"packed {tuple(latents.shape)} from {len(chunks)} chunks -> {args.output} "
          f"({Path(args.output).stat().st_size / 2**20:.1f} MiB, max abs error {err:.4f})")


def train(args) -> None:
    from accelerate import Accelerator
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    from mdnet.training.diffusion import train_unet

    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    packed = dict(np.load(args.packed))
    shift, scale = float(packed["shift"]), float(packed["scale"])
    latents = (unpack_latents(packed, dither=True, seed=args.seed) - shift) * scale
    cfg = get_config(args.preset).prior
    context = torch.zeros(1, cfg.prompt_length, cfg.unet["cross_attention_dim"])
    print(f"{accelerator.device}: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}, "
          f"latents {tuple(latents.shape)}, batch {args.batch_size}")

    torch.manual_seed(args.seed + 1)
    t0 = time.time()
    train_unet(accelerator, UNet2DConditionModel(**cfg.unet), latents, context.to(accelerator.device),
               args.probe_steps, args.batch_size, args.lr, args.seed)
    rate = args.probe_steps / (time.time() - t0)
    steps = max(args.probe_steps, int(rate * args.minutes * 60))
    print(f"probe: {rate:.1f} steps/s (start-up included) -> {steps} steps")

    torch.manual_seed(args.seed)
    unet = UNet2DConditionModel(**cfg.unet)
    t0 = time.time()
    losses = train_unet(accelerator, unet, latents, context.to(accelerator.device), steps, args.batch_size,
                        args.lr, args.seed * 1000 + 1)
    minutes = (time.time() - t0) / 60
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    unet = accelerator.unwrap_model(unet).cpu()
    save_file({k: v.half().contiguous() for k, v in unet.state_dict().items()}, str(out / UNET_FILE))
    summary = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__, "unet_steps": steps, "batch_size": args.batch_size, "lr": args.lr,
        "mixed_precision": args.mixed_precision, "seed": args.seed, "unet_minutes_this_run": minutes,
        "unet_final_loss": float(np.mean(losses[-100:])), "latents": "int8-packed (benchmarks/device_prior.py)",
    }
    (out / "losses.json").write_text(json.dumps({**summary, "unet": losses}) + "\n")
    print(json.dumps(summary, indent=2))


def finish(args) -> None:
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    from mdnet.models.taef2 import DEFAULT_TAEF2_DIR, TAEF2
    from mdnet.training.diffusion import plot_losses, sample_faces, save_grid
    from mdnet.training.latent_prior import PRIOR_FILE

    trained, prior, out = Path(args.trained), Path(args.prior), Path(args.output)
    cfg = get_config(args.preset).prior
    unet = UNet2DConditionModel(**cfg.unet)
    unet.load_state_dict({k: v.float() for k, v in load_file(str(trained / UNET_FILE)).items()}, strict=True)
    run = json.loads((trained / "losses.json").read_text())
    info = {**json.loads((prior / PRIOR_FILE).read_text()), **{k: v for k, v in run.items() if k != "unet"}}
    info["processes"] = 1
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    unet.save_pretrained(tmp / "unet")
    tae = TAEF2.from_files(DEFAULT_TAEF2_DIR)
    context = torch.zeros(1, cfg.prompt_length, unet.config.cross_attention_dim)
    shift, scale = info["latent_shift"], info["latent_scale"]
    save_grid(sample_faces(unet, lambda z: tae.decode(z / scale + shift), context, seed=0), tmp / "samples.png")
    plot_losses({"U-Net": run["unet"]}, tmp / "losses.png")
    (tmp / "losses.json").write_text(json.dumps({**info, "unet": run["unet"]}) + "\n")
    (tmp / PRIOR_FILE).write_text(json.dumps(info, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    print(f"wrote {out} (unet, samples.png, losses.png, {PRIOR_FILE})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="pack the cached TAEF2 latents for the GPU machine")
    p.add_argument("--latents", required=True, help="a cache/taef2-latents-* folder")
    p.add_argument("--prior", required=True, help="the CPU prior run whose latent shift and scale to keep")
    p.add_argument("--output", required=True)
    t = sub.add_parser("train", help="train the U-Net on the packed latents (on the GPU)")
    t.add_argument("--packed", required=True)
    t.add_argument("--output", required=True)
    t.add_argument("--preset", default="tiny-sface-id")
    t.add_argument("--minutes", type=float, default=5.0)
    t.add_argument("--probe-steps", type=int, default=60)
    t.add_argument("--batch-size", type=int, default=512)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--mixed-precision", default="bf16", choices=["no", "fp16", "bf16"])
    f = sub.add_parser("finish", help="turn the GPU run's files into a prior folder (here)")
    f.add_argument("--trained", required=True)
    f.add_argument("--prior", required=True)
    f.add_argument("--output", required=True)
    f.add_argument("--preset", default="tiny-sface-id")
    args = parser.parse_args()
    {"pack": pack, "train": train, "finish": finish}[args.cmd](args)


if __name__ == "__main__":
    main()
