"""MD-Net forward latency per face on this machine, with the cost of each stream.

Builds the preset (random weights: latency does not depend on the values) or
loads ``--checkpoint``, then times the whole forward and its parts at each batch
size, interleaved. One forward per face; the app and ``mdnet evaluate`` also
score the mirror image (twice this). Beside the model, its copy for inference (what the service
loads: BatchNorm folded into the SFace convolutions, channels-last weights;
:mod:`mdnet.models.inference_copy`), in the same interleaved runs: read the ratio.
"""

from __future__ import annotations

import argparse

import torch
from timing import header, measure, ms

from mdnet.models.config import get_config
from mdnet.models.mdnet import MDNet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--checkpoint", default=None, help="time this checkpoint instead of a fresh preset")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.checkpoint:
        model = MDNet.from_pretrained(args.checkpoint, device=args.device)
        args.preset = f"{model.cfg.name}' from '{args.checkpoint}"
    else:
        model = MDNet(get_config(args.preset)).eval().to(args.device)
    fast = model.for_inference()
    size = model.cfg.preprocess.image_size
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def timed(fn, *args):
        def run():
            fn(*args)
            sync()
        return run

    def fusion_and_head(vim, feats):
        fused = model.fusion(vim.tokens, feats)
        return model.head(model.head.features(fused.tokens, vim.cls_index, fused.prior_summary))

    print(header(f"MD-Net '{args.preset}' forward latency ({args.device})"))
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.trainable_parameters())
    print(f"parameters: {params / 1e6:.2f} M ({trainable / 1e6:.2f} M trainable)\n")
    print("| batch | full ms/face | prior stream | Vim stream | fusion + head | full ms/batch (min-max) "
          "| copy for inference ms/batch (min-max) | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    with torch.inference_mode():
        for batch in args.batch:
            x = torch.randn(batch, 3, size, size, device=args.device)
            feats = model.prior_features(x)
            vim = model.vim(x)
            r = measure(
                {
                    "full": timed(model, x),
                    "fast": timed(fast, x),
                    "prior": timed(model.prior_features, x),
                    "vim": timed(model.vim, x),
                    "fusion": timed(fusion_and_head, vim, feats),
                },
                repeats=args.repeats,
            )
            full, quick = r["full"], r["fast"]
            print(
                f"| {batch} | {ms(full['median'] / batch)} | {ms(r['prior']['median'] / batch)} "
                f"| {ms(r['vim']['median'] / batch)} | {ms(r['fusion']['median'] / batch)} "
                f"| {ms(full['median'])} ({ms(full['min'])}-{ms(full['max'])}) "
                f"| {ms(quick['median'])} ({ms(quick['min'])}-{ms(quick['max'])}) "
                f"| {quick['median'] / full['median']:.2f} |"
            )


if __name__ == "__main__":
    main()
