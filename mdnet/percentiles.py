"""Where a score falls among the training faces: :class:`ScoreReference` (quantiles of their scores).

It comes from ``score_distribution.json`` beside the checkpoint (``mdnet score-distribution LABELS
CHECKPOINT_DIR`` writes it from a SCUT-FBP5500 list file), else from ``metadata.score_quantiles`` in
its ``config.json``, else from the SCUT-FBP5500 training list when the dataset is on this machine
(``$MDNET_SCUT_DIR``); without any of them there is no reference and the app shows the score alone.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mdnet.faces.scut import SPLIT_6040

SCORE_DISTRIBUTION_NAME = "score_distribution.json"
_SCUT_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "scut-fbp5500"
_TRAIN_LIST = Path("train_test_files") / SPLIT_6040 / "train.txt"
@dataclass(frozen=True)
class ScoreReference:
    """The distribution of the training faces' scores, as quantiles.

    Attributes:
        levels: percent levels ``(k,)``, increasing from 0 to 100.
        values: the score at each level ``(k,)``, non-decreasing.
        count: how many training faces it summarises.
        source: where it came from (for the page and the JSON).
    """

    levels: tuple[float, ...]
    values: tuple[float, ...]
    count: int
    source: str

    @classmethod
    def from_scores(cls, scores: np.ndarray, source: str, points: int = 101) -> ScoreReference:
        scores = np.asarray(scores, dtype=np.float64)
        if scores.size == 0:
            raise ValueError("no scores to summarise")
        levels = np.linspace(0, 100, points)
        return cls(tuple(levels.tolist()), tuple(np.percentile(scores, levels).round(4).tolist()), int(scores.size),
                   source)

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str) -> ScoreReference:
        levels, values = [float(x) for x in data["levels"]], [float(x) for x in data["values"]]
        if len(levels) != len(values) or len(levels) < 2 or np.any(np.diff(levels) <= 0) or np.any(np.diff(values) < 0):
            raise ValueError("levels and values must be equally long, levels increasing and values non-decreasing")
        return cls(tuple(levels), tuple(values), int(data.get("count", 0)), str(data.get("source", source)))

    def to_json(self) -> dict[str, Any]:
        return {"levels": list(self.levels), "values": list(self.values), "count": self.count, "source": self.source}

    def shares(self, edges: np.ndarray) -> np.ndarray:
        """Fraction of the training faces in each bin ``[edges[i], edges[i+1])`` (``(len(edges) - 1,)``)."""
        values, levels = np.asarray(self.values), np.asarray(self.levels)
        below = np.interp(np.asarray(edges, dtype=np.float64), values, levels, left=0.0, right=100.0)
        return np.diff(below) / 100.0

    def percentile(self, score: float) -> float:
        """Percent of the training faces whose score is below ``score`` (0-100, interpolated)."""
        values, levels = np.asarray(self.values), np.asarray(self.levels)
        # a score equal to quantiles (repeated scores): the middle of the tied levels
        lo, hi = np.searchsorted(values, score, side="left"), np.searchsorted(values, score, side="right")
        if lo < hi:
            return float((levels[lo] + levels[hi - 1]) / 2)
        return float(np.interp(score, values, levels, left=0.0, right=100.0))


_REFERENCES: dict[str, ScoreReference | None] = {}


def _scut_train_list() -> Path | None:
    root = Path(os.environ.get("MDNET_SCUT_DIR", _SCUT_DEFAULT))
    path = root / _TRAIN_LIST
    return path if path.is_file() else None


def read_label_scores(labels_file: str | os.PathLike) -> np.ndarray:
    """The scores of a SCUT-FBP5500 ``NAME SCORE`` list file."""
    from mdnet.faces.scut import read_list

    return np.array([s for _, s in read_list(labels_file)], dtype=np.float64)



def reference_for(checkpoint_dir: str | os.PathLike) -> ScoreReference | None:
    """The training faces' score distribution for the checkpoint in ``checkpoint_dir`` (cached), or None."""
    key = str(checkpoint_dir)
    if key in _REFERENCES:
        return _REFERENCES[key]
    ref: ScoreReference | None = None
    folder = Path(checkpoint_dir)
    try:
        if (folder / SCORE_DISTRIBUTION_NAME).is_file():
            ref = ScoreReference.from_json(json.loads((folder / SCORE_DISTRIBUTION_NAME).read_text()),
                                           SCORE_DISTRIBUTION_NAME)
        elif (folder / "config.json").is_file():
            meta = json.loads((folder / "config.json").read_text()).get("metadata", {})
            if isinstance(meta.get("score_quantiles"), dict):
                ref = ScoreReference.from_json(meta["score_quantiles"], "checkpoint metadata")
    except (OSError, ValueError, KeyError, TypeError):
        ref = None
    if ref is None and (labels := _scut_train_list()) is not None:
        try:
            ref = ScoreReference.from_scores(read_label_scores(labels),
                                             "SCUT-FBP5500 60/40 training list (mean ratings)")
        except (OSError, ValueError):
            ref = None
    _REFERENCES[key] = ref
    return ref


def write_score_distribution(labels_file: str | os.PathLike, checkpoint_dir: str | os.PathLike) -> Path:
    """Write ``score_distribution.json`` (101 quantiles of the list's scores) into ``checkpoint_dir``."""
    scores = read_label_scores(labels_file)
    ref = ScoreReference.from_scores(scores, f"mean ratings of the {scores.size} faces of {Path(labels_file).name}")
    out = Path(checkpoint_dir) / SCORE_DISTRIBUTION_NAME
    out.write_text(json.dumps(ref.to_json(), indent=1) + "\n")
    _REFERENCES.clear()
    return out


def main(argv: list[str] | None = None, prog: str | None = None) -> Path:
    """``mdnet score-distribution LABELS CHECKPOINT_DIR``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Write score_distribution.json (101 quantiles of a SCUT-FBP5500 list file's scores) into a "
                    "checkpoint folder; the app shows where a score falls among them.",
    )
    parser.add_argument("labels", help="a SCUT-FBP5500 list file of NAME SCORE lines (e.g. the 60/40 train.txt)")
    parser.add_argument("checkpoint_dir", help="the checkpoint folder to write into")
    args = parser.parse_args(argv)
    if not Path(args.checkpoint_dir).is_dir():
        parser.exit(2, f"error: {args.checkpoint_dir} is not a folder\n")
    try:
        out = write_score_distribution(args.labels, args.checkpoint_dir)
    except (OSError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")
    print(f"wrote {out}")
    return out
