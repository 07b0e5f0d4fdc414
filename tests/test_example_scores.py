"""The shipped checkpoint scores the example photos exactly as recorded (tests/data/example_scores.json).

Guards moves and refactors of the preprocessing and the model: the same photo through the same
weights must give the same number. When the checkpoint is replaced on purpose, re-record with
``python tests/test_example_scores.py --record`` (the file names the weights it was recorded with).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from mdnet import service
from mdnet.models import DEFAULT_CHECKPOINT

RECORD = Path(__file__).resolve().parent / "data" / "example_scores.json"
EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "examples"


def score_examples(status: service.ModelStatus) -> dict[str, list[float] | str]:
    """Every face of every example photo, largest first; an error kind where there is no score."""
    out: dict[str, list[float] | str] = {}
    for photo in sorted(EXAMPLES.glob("*.jpg")):
        data = photo.read_bytes()
        try:
            first = service.score_photo(data, 0, status=status, search="thorough")
        except Exception as exc:  # noqa: BLE001 - the recorded outcome is the error kind
            out[photo.name] = service.describe_error(exc)[0]
            continue
        n = len(first.aligned.faces)
        out[photo.name] = [first.score] + [
            service.score_photo(data, i, status=status, search="thorough").score for i in range(1, n)
        ]
    return out


def weights_sha256() -> str:
    return json.loads((DEFAULT_CHECKPOINT / "config.json").read_text())["weights"]["sha256"]


@pytest.fixture(scope="module")
def shipped():
    status = service.load_model(DEFAULT_CHECKPOINT)
    assert status.ready, status.message
    return status


def test_the_shipped_checkpoint_scores_the_examples_as_recorded(shipped):
    record = json.loads(RECORD.read_text())
    assert record["weights_sha256"] == weights_sha256(), (
        "checkpoints/default changed since the scores were recorded; if on purpose, re-record: "
        "python tests/test_example_scores.py --record"
    )
    expected = {k: v for k, v in record.items() if k.endswith(".jpg")}
    got = score_examples(shipped)
    assert set(got) == set(expected)
    for name, scores in expected.items():
        if isinstance(scores, str):
            assert got[name] == scores, name
        else:
            assert got[name] == pytest.approx(scores, abs=1e-5), name


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    record = json.loads(RECORD.read_text())
    record.update(weights_sha256=weights_sha256(), **score_examples(service.load_model(DEFAULT_CHECKPOINT)))
    RECORD.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {RECORD}")
