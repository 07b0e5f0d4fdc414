"""Selective scan: the fast pure-PyTorch path against the sequential reference.

Default shapes are the Vim-small setting: batch 8, d=384 channels, l=197 tokens, n=16.
Prints a markdown table (forward, and with --backward forward+backward) and the
largest difference between the two paths' outputs.
"""

from __future__ import annotations

import argparse

import torch
from timing import header, measure, ms

from mdnet.models.ssm import selective_scan_chunked, selective_scan_ref


def inputs(batch: int, dim: int, length: int, nstate: int, grad: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    t = {
        "u": torch.randn(batch, dim, length, generator=g),
        "delta": torch.randn(batch, dim, length, generator=g) * 0.5 - 2.0,
        "A": -torch.arange(1, nstate + 1, dtype=torch.float32).repeat(dim, 1),
        "B": torch.randn(batch, nstate, length, generator=g),
        "C": torch.randn(batch, nstate, length, generator=g),
        "D": torch.ones(dim),
        "z": torch.randn(batch, dim, length, generator=g),
        "delta_bias": torch.randn(dim, generator=g) * 0.1,
    }
    return {k: v.requires_grad_(grad) for k, v in t.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--length", type=int, default=197)
    parser.add_argument("--nstate", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--backward", action="store_true", help="also time forward+backward (slow for the reference)")
    args = parser.parse_args()
    shape = (args.batch, args.dim, args.length, args.nstate)

    x = inputs(*shape)
    with torch.no_grad():
        diff = (selective_scan_chunked(**x, delta_softplus=True) - selective_scan_ref(**x, delta_softplus=True))
        fwd = measure(
            {
                "reference": lambda: selective_scan_ref(**x, delta_softplus=True),
                "fast": lambda: selective_scan_chunked(**x, delta_softplus=True),
            },
            repeats=args.repeats,
        )
    rows = [("forward", fwd)]
    if args.backward:
        xg = inputs(*shape, grad=True)

        def step(fn):
            return lambda: fn(**xg, delta_softplus=True).square().mean().backward()

        rows.append(("forward + backward", measure(
            {"reference": step(selective_scan_ref), "fast": step(selective_scan_chunked)}, repeats=3)))

    print(header(f"Selective scan, batch {shape[0]}, d={shape[1]}, l={shape[2]}, n={shape[3]}"))
    print("| pass | reference ms (min-max) | fast ms (min-max) | speed-up (median) |")
    print("|---|---|---|---|")
    for name, r in rows:
        ref, fast = r["reference"], r["fast"]
        print(
            f"| {name} | {ms(ref['median'])} ({ms(ref['min'])}-{ms(ref['max'])}) "
            f"| {ms(fast['median'])} ({ms(fast['min'])}-{ms(fast['max'])}) "
            f"| {ref['median'] / fast['median']:.1f}x |"
        )
    print(f"\nlargest |fast - reference| on the output: {diff.abs().max().item():.2e}")


if __name__ == "__main__":
    main()
