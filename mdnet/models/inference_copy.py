"""Copies of a trained network for scoring only: the fast path the service loads, beside its reference.

Every SFace conv unit (:class:`~mdnet.models.sface.ConvUnit`: conv -> BatchNorm -> PReLU) in MD-Net
(the Vim's stem, the identity embedding) and in the student scores with frozen BatchNorm
statistics, so each BatchNorm is an affine map that can be folded into the convolution before it
(``torch.nn.utils.fusion.fuse_conv_bn_eval``); the weights then go to channels-last memory, the
layout oneDNN's CPU convolutions run fastest on. The scores are the same to float precision
(``tests/models/test_inference_copy.py``); the model it came from is untouched. A copy cannot be
trained (its BatchNorms are gone) or saved (:func:`~mdnet.models.checkpoint.save_checkpoint` refuses
it): train and save the original.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from mdnet.models.sface import ConvUnit


def fold_batchnorm(module: nn.Module) -> int:
    """Fold each :class:`ConvUnit`'s BatchNorm into its convolution, in place (``module`` in eval mode);
    returns how many were folded."""
    folded = 0
    for unit in module.modules():
        if isinstance(unit, ConvUnit) and isinstance(unit.bn, nn.BatchNorm2d):
            unit.conv, unit.bn = fuse_conv_bn_eval(unit.conv, unit.bn), nn.Identity()
            folded += 1
    return folded


class InferenceCopy:
    """Mixin for a model (an ``nn.Module``) with a :meth:`for_inference` copy."""

    inference_only = False  # True on for_inference's copies

    def for_inference(self):
        """A copy for scoring only: BatchNorm folded, channels-last weights (module docstring)."""
        fast = copy.deepcopy(self).eval()
        fold_batchnorm(fast)
        fast.inference_only = True
        return fast.to(memory_format=torch.channels_last)

    def train(self, mode: bool = True):
        if mode and self.inference_only:
            raise RuntimeError("this model is a copy for inference (BatchNorm folded): train the model it came from")
        return super().train(mode)
