"""A training run's per-epoch log: ``history.json``, ``history.csv`` and ``history.png``."""

from __future__ import annotations

import csv
import json
from pathlib import Path


def plot_history(history: list[dict], path: Path) -> None:
    """Training loss(es) and validation MSE, and the validation Pearson correlation, per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.2))
    a.plot(epochs, [h["train_loss"] for h in history], "o-", label="train MSE")
    for key, label in (("consistency", "consistency (unlabeled)"), ("distill", "distillation (unlabeled)")):
        if all(key in h for h in history):
            a.plot(epochs, [h[key] for h in history], "o--", label=label)
    a.plot(epochs, [h["val_rmse"] ** 2 for h in history], "o-", label="validation MSE")
    a.set_xlabel("epoch")
    a.legend()
    b.plot(epochs, [h["val_pc"] for h in history], "o-")
    b.set_xlabel("epoch")
    b.set_title("validation Pearson correlation")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_history(history: list[dict], out: Path) -> list[str]:
    """Write the three files into ``out``; returns their paths. (Columns: every key any epoch has.)"""
    (out / "history.json").write_text(json.dumps(history, indent=2) + "\n")
    fields = list(dict.fromkeys(key for h in history for key in h))
    with open(out / "history.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(history)
    plot_history(history, out / "history.png")
    return [str(out / name) for name in ("history.json", "history.csv", "history.png")]
