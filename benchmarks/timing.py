"""Interleaved wall-clock timing for the benchmark scripts (shared, noisy machines: compare in one run)."""

from __future__ import annotations

import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch


def measure(fns: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1) -> dict[str, dict[str, float]]:
    """Run every function ``warmup`` times, then ``repeats`` rounds in turn (A B C A B C ...).

    Returns seconds per call for each name: ``{"median", "min", "max"}``.
    Interleaving keeps ratios meaningful when the machine's speed drifts.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {
        name: {"median": statistics.median(t), "min": min(t), "max": max(t)} for name, t in times.items()
    }


def header(title: str) -> str:
    """A header naming the command, the machine and the library versions."""
    cmd = "python " + " ".join(sys.argv)
    return (
        f"## {title}\n\ncommand: `{cmd}`  \n"
        f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"python {platform.python_version()}\n"
    )


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"
