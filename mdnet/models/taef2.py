"""TAEF2: the pretrained tiny autoencoder of the FLUX.2 latent space, as a small PyTorch module.

TAEF2 is a tiny autoencoder distilled from the FLUX.2 autoencoder: images in [0, 1] RGB, latents with
32 channels at 1/8 of the image side. ``diffusers.AutoencoderTiny`` cannot load its files (some blocks
carry a GroupNorm branch that class does not have), so this module rebuilds the network from the
description in ``../shared/weights/taef2/README.md``. :class:`TAEF2Encoder` and :class:`TAEF2Decoder`
are ``nn.Sequential`` s whose positions are the state-dict keys of ``taef2_encoder.pth`` and
``taef2_decoder.pth`` (``0.weight``, ``1.conv.0.weight``, ``11.pool.0.weight``, ...), so both files load
with ``strict=True``. :class:`TAEF2` wraps the two, checks the files' sha256 and keeps the weights in
float32::

    from mdnet.models.taef2 import TAEF2
    tae = TAEF2.from_files()                  # ../shared/weights/taef2
    z = tae.encode(images)                    # (B, 3, H, W) in [0, 1] -> (B, 32, H/8, W/8)
    feats = tae.features(images)              # 64-channel maps at 1/2, 1/4, 1/8
    recon = tae.decode(z)                     # (B, 3, H, W) in [0, 1]

Credit: the architecture and the weights are TAESD / TAEF2 by Ollin Boer Bohan
(https://github.com/madebyollin/taesd), MIT licence; the licence text sits beside the weights in
``../shared/weights/taef2/LICENSE`` and must travel with any copy of them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mdnet.models.files import CheckpointError, file_sha256

# The weights live outside the repository, in the workspace's shared folder: <workspace>/shared/weights/taef2.
DEFAULT_TAEF2_DIR = Path(__file__).resolve().parents[3] / "shared" / "weights" / "taef2"
ENCODER_FILE = "taef2_encoder.pth"
DECODER_FILE = "taef2_decoder.pth"
SHA256 = {
    ENCODER_FILE: "10a4e1021e89d7551eaf161352da8dbd0b1aa83872ae28b150c1df1ce2f147b6",
    DECODER_FILE: "0a44a31e1ae59eb9dbf9359d24942fd3ef5928162c1800d97a28c61d51be0ab5",
}
LATENT_CHANNELS = 32
WIDTH = 64          # channels of every hidden feature map
DOWNSCALE = 8       # latent side = image side / 8
# The encoder downsamples at positions 2, 6 and 10 (stride-2 convs); features() reports the output of the
# blocks that follow each one (positions 5, 9, 13): 64 channels at 1/2, 1/4 and 1/8 of the side.
FEATURE_POSITIONS = (5, 9, 13)


class TAEF2WeightsError(CheckpointError):
    """A TAEF2 weight file is missing, is not the published file (sha256), or does not fit the module."""


def _conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class Clamp(nn.Module):
    """Soft clamp of the latents to about [-3, 3]: ``tanh(x / 3) * 3``. Shapes unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    """Residual block, 64 -> 64 channels, shapes unchanged: ``x: (B, C, H, W) -> (B, C, H, W)``.

    ``relu(conv(x) + x)`` with ``conv`` three 3x3 convolutions (ReLU between). With ``norm_branch``
    the block first adds ``pool(x)``: 1x1 conv to 4C, GroupNorm(4), ReLU, 1x1 conv back to C (the
    branch TAEF2 adds to its lowest-resolution blocks, and that ``AutoencoderTiny`` lacks).
    """

    def __init__(self, n_in: int, n_out: int, norm_branch: bool = False):
        super().__init__()
        self.conv = nn.Sequential(_conv(n_in, n_out), nn.ReLU(), _conv(n_out, n_out), nn.ReLU(), _conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()
        self.pool = None
        if norm_branch:
            n_gn = 4 * n_in
            self.pool = nn.Sequential(
                nn.Conv2d(n_in, n_gn, 1, bias=False),
                nn.GroupNorm(4, n_gn),
                nn.ReLU(),
                nn.Conv2d(n_gn, n_in, 1, bias=False),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + self.skip(x))


class TAEF2Encoder(nn.Sequential):
    """``x: (B, 3, H, W)`` in [0, 1] -> latents ``(B, 32, H/8, W/8)``; H and W multiples of 8.

    Positions: 0 conv 3->64 · 1 block · 2 stride-2 conv · 3-5 blocks · 6 stride-2 conv · 7-9 blocks ·
    10 stride-2 conv · 11-13 blocks with the norm branch · 14 conv 64->32.
    """

    def __init__(self, latent_channels: int = LATENT_CHANNELS):
        super().__init__(
            _conv(3, WIDTH), Block(WIDTH, WIDTH),
            _conv(WIDTH, WIDTH, stride=2, bias=False), Block(WIDTH, WIDTH), Block(WIDTH, WIDTH), Block(WIDTH, WIDTH),
            _conv(WIDTH, WIDTH, stride=2, bias=False), Block(WIDTH, WIDTH), Block(WIDTH, WIDTH), Block(WIDTH, WIDTH),
            _conv(WIDTH, WIDTH, stride=2, bias=False),
            Block(WIDTH, WIDTH, True), Block(WIDTH, WIDTH, True), Block(WIDTH, WIDTH, True),
            _conv(WIDTH, latent_channels),
        )  # fmt: skip


class TAEF2Decoder(nn.Sequential):
    """Latents ``z: (B, 32, h, w)`` -> images ``(B, 3, 8h, 8w)``, about [0, 1] (unclamped; see :meth:`TAEF2.decode`).

    Positions: 0 soft clamp · 1 conv 32->64 · 2 ReLU · 3-5 blocks with the norm branch · 6 upsample ·
    7 conv · 8-10 blocks · 11 upsample · 12 conv · 13-15 blocks · 16 upsample · 17 conv · 18 block ·
    19 conv 64->3.
    """

    def __init__(self, latent_channels: int = LATENT_CHANNELS):
        super().__init__(
            Clamp(), _conv(latent_channels, WIDTH), nn.ReLU(),
            Block(WIDTH, WIDTH, True), Block(WIDTH, WIDTH, True), Block(WIDTH, WIDTH, True),
            nn.Upsample(scale_factor=2), _conv(WIDTH, WIDTH, bias=False),
            Block(WIDTH, WIDTH), Block(WIDTH, WIDTH), Block(WIDTH, WIDTH),
            nn.Upsample(scale_factor=2), _conv(WIDTH, WIDTH, bias=False),
            Block(WIDTH, WIDTH), Block(WIDTH, WIDTH), Block(WIDTH, WIDTH),
            nn.Upsample(scale_factor=2), _conv(WIDTH, WIDTH, bias=False),
            Block(WIDTH, WIDTH),
            _conv(WIDTH, 3),
        )  # fmt: skip


def load_weights(module: nn.Module, path: str | Path, sha256: str | None = None) -> None:
    """Load one TAEF2 state dict into ``module`` strictly, as float32; raise :class:`TAEF2WeightsError` naming the file.

    ``sha256``: the expected checksum of the file (``None`` skips the check).
    """
    path = Path(path)
    if not path.is_file():
        raise TAEF2WeightsError(f"TAEF2 weight file {path} does not exist (expected the file {path.name} from "
                                "madebyollin/taesd in that folder)")
    if sha256 is not None:
        actual = file_sha256(path)
        if actual != sha256:
            raise TAEF2WeightsError(f"TAEF2 weight file {path} has sha256 {actual}, expected {sha256}: "
                                    f"it is not the published {path.name}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt pickle / zip raises many different types
        raise TAEF2WeightsError(f"TAEF2 weight file {path} cannot be read: {err}") from err
    if not isinstance(state, dict):
        raise TAEF2WeightsError(f"TAEF2 weight file {path} does not hold a state dict")
    try:
        module.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as err:
        raise TAEF2WeightsError(f"TAEF2 weight file {path} does not fit {type(module).__name__}: {err}") from err


class TAEF2(nn.Module):
    """Encoder + decoder of TAEF2, frozen in eval mode by :meth:`from_files`. Images in [0, 1], not [-1, 1]."""

    def __init__(self):
        super().__init__()
        self.encoder = TAEF2Encoder()
        self.decoder = TAEF2Decoder()

    @classmethod
    def from_files(cls, folder: str | Path = DEFAULT_TAEF2_DIR, check_sha256: bool = True) -> TAEF2:
        """Both published files from ``folder``, loaded strictly, float32, ``requires_grad`` off, eval mode.

        Raises :class:`TAEF2WeightsError` (a :class:`~mdnet.models.checkpoint.CheckpointError`) naming
        the file that is missing, has the wrong sha256 or does not fit.
        """
        folder = Path(folder).expanduser()
        model = cls()
        for module, name in ((model.encoder, ENCODER_FILE), (model.decoder, DECODER_FILE)):
            load_weights(module, folder / name, SHA256[name] if check_sha256 else None)
        return model.requires_grad_(False).eval()

    @staticmethod
    def _check_images(images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got {tuple(images.shape)}")
        if images.shape[-1] % DOWNSCALE or images.shape[-2] % DOWNSCALE:
            raise ValueError(f"image side must be a multiple of {DOWNSCALE}, got {tuple(images.shape[-2:])}")

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``images: (B, 3, H, W)`` float in [0, 1] -> latents ``(B, 32, H/8, W/8)``."""
        self._check_images(images)
        return self.encoder(images)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """``latents: (B, 32, h, w)`` -> images ``(B, 3, 8h, 8w)`` clamped to [0, 1]."""
        return self.decoder(latents).clamp(0, 1)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's feature pyramid, finest first, for ``images: (B, 3, H, W)`` in [0, 1].

        Returns the 64-channel maps after each downsampling stage (after its three blocks)
        and the latents: ``[(B, 64, H/2, W/2), (B, 64, H/4, W/4), (B, 64, H/8, W/8), (B, 32, H/8, W/8)]``.
        """
        self._check_images(images)
        out, x = [], images
        for i, layer in enumerate(self.encoder):
            x = layer(x)
            if i in FEATURE_POSITIONS:
                out.append(x)
        out.append(x)
        return out

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Round trip: ``images: (B, 3, H, W)`` in [0, 1] -> reconstruction ``(B, 3, H, W)`` in [0, 1]."""
        return self.decode(self.encode(images))
