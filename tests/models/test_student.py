import json

import pytest
import torch

from mdnet.models.checkpoint import CheckpointError, load_checkpoint
from mdnet.models.config import ConfigError
from mdnet.models.mdnet import MDNet, score_faces
from mdnet.models.sface import SFaceNet
from mdnet.models.student import FBPStudent, StudentConfig


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    return FBPStudent().eval()


def crops(n=3, seed=0):
    return torch.randint(0, 256, (n, 3, 224, 224), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_scores_in_range_in_one_pass_and_refuses_streams(student):
    out = score_faces(student, crops())
    assert out.score.shape == (3,) and ((out.score >= 1) & (out.score <= 5)).all()
    assert out.embedding.shape == (3, student.embedding_dim) and (out.mirror_gap == 0).all()  # no mirror pass
    assert score_faces(student, crops(0)).embedding.shape == (0, student.embedding_dim)
    with pytest.raises(ValueError, match="no streams"):
        student(student.preprocess(crops(1)), mode="prior_only")


def test_sface_weights_are_copied_by_name():
    sface = SFaceNet()
    with torch.no_grad():
        for p in sface.parameters():
            p.normal_()
    state = {f"vim.identity.sface.{k}": v for k, v in sface.state_dict().items()}
    student = FBPStudent()
    assert student.load_sface(state, "vim.identity.sface.") > 100
    assert torch.equal(student.trunk.conv_5.conv.weight, sface.trunk.conv_5.conv.weight)
    assert torch.equal(student.head_convs.conv_14.bn.running_var, sface.head.conv_14.bn.running_var)
    with pytest.raises(KeyError):
        student.load_sface({}, "")


def test_train_mode_keeps_batchnorm_statistics_frozen_and_freeze_units_stops_gradients():
    student = FBPStudent().train()
    before = student.trunk.conv_1.bn.running_mean.clone()
    student(student.preprocess(crops(4))).score.sum().backward()
    assert torch.equal(before, student.trunk.conv_1.bn.running_mean) and student.hidden.training
    fresh = FBPStudent()
    assert fresh.freeze_units(11) > 0
    fresh(fresh.preprocess(crops(2))).score.sum().backward()
    assert fresh.trunk.conv_6.conv.weight.grad is None and fresh.trunk.conv_7.conv.weight.grad is not None
    with pytest.raises(ValueError):
        fresh.freeze_units(28)


def test_batchnorm_statistics_can_be_estimated_from_faces():
    student = FBPStudent()
    x = student.preprocess(crops(8))
    assert student.estimate_bn_statistics([x[:4], x[4:]]) == 8
    assert not torch.allclose(student.trunk.conv_1.bn.running_var, torch.ones(32))
    assert not student.trunk.conv_1.bn.training and student.trunk.conv_1.bn.momentum == 0.1


def test_checkpoint_round_trip_in_float16_under_10_mb(student, tmp_path):
    folder = student.save_pretrained(tmp_path / "student")
    assert (folder / "model.safetensors").stat().st_size < 10e6
    again = MDNet.from_pretrained(folder)  # the same loader as MD-Net's
    assert isinstance(again, FBPStudent)
    a, b = score_faces(student, crops()).score, score_faces(again, crops()).score
    assert torch.allclose(a, b, atol=2e-3)  # float16 storage
    raw = json.loads((folder / "config.json").read_text())
    raw["model"]["pool"] = 0
    (folder / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="pool"):
        load_checkpoint(folder)


def test_config_validation():
    assert StudentConfig.from_dict(StudentConfig().to_dict()) == StudentConfig()
    with pytest.raises(ConfigError):
        StudentConfig.from_dict({**StudentConfig().to_dict(), "kind": "mdnet"})
    with pytest.raises(ConfigError):
        StudentConfig.from_dict({**StudentConfig().to_dict(), "preprocess": {"image_size": 64}})


def test_the_copy_for_inference_scores_the_same_and_cannot_be_trained_or_saved(tmp_path):
    torch.manual_seed(1)
    student = FBPStudent()
    with torch.no_grad():  # BatchNorm that does something: statistics from faces, non-trivial scales and shifts
        student.estimate_bn_statistics([student.preprocess(crops(6, seed=2))])
        for m in student.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    fast = student.eval().for_inference()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in student.modules())  # the original is untouched
    ref, got = score_faces(student, crops(4, seed=3)), score_faces(fast, crops(4, seed=3))
    assert torch.allclose(ref.score, got.score, atol=1e-4)
    assert torch.allclose(ref.embedding, got.embedding, atol=1e-3)
    assert ref.score.std() > 1e-3  # the faces score differently: the comparison can fail
    with pytest.raises(RuntimeError, match="copy for inference"):
        fast.train()
    with pytest.raises(CheckpointError, match="copy for inference"):
        fast.save_pretrained(tmp_path / "fast")


def test_two_heads_score_the_average_of_the_mlp_and_the_linear_map_of_the_whole_map(tmp_path):
    torch.manual_seed(2)
    both = FBPStudent(StudentConfig(head="mlp+linear")).eval()
    x = both.preprocess(crops(3, seed=4))
    with torch.no_grad():
        feats = both.linear_features(x)
        assert feats.shape == (3, 1024 * 7 * 7)  # the whole map, whatever the MLP's pool
        weight = torch.randn(feats.shape[1]) * 1e-3
        mean, scale = feats.mean(0), 1 / feats.std(0).clamp_min(1e-3)
        both.set_linear_head(weight, 3.1, mean, scale)
        linear = (3.1 + ((feats - mean) * scale) @ weight).clamp(1, 5)
        out = both(x)
        torch.testing.assert_close(out.score, (both.mlp_score(x) + linear) / 2)
    assert not torch.allclose(out.score, linear)  # the MLP counts
    assert out.embedding.shape == (3, both.embedding_dim) == (3, 128)  # the MLP's hidden layer
    again = load_checkpoint(both.save_pretrained(tmp_path / "both"))
    assert again.cfg.head == "mlp+linear"
    torch.testing.assert_close(score_faces(again, crops(3, seed=4)).score, out.score, atol=3e-3, rtol=0)
    with pytest.raises(ValueError, match="no MLP head"):
        FBPStudent(StudentConfig(head="linear", pool=7)).mlp_score(x)
    with pytest.raises(ValueError, match="no linear one"):
        FBPStudent().set_linear_head(weight, 3.0, mean, scale)
