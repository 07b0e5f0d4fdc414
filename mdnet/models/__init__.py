"""Everything that defines and stores the network.

``config`` (dataclass configs and the ``tiny`` / ``paper`` / ``micro`` presets), ``prior`` (the
frozen generative-prior stream), ``vim`` and ``ssm`` (Vision Mamba and its selective scan:
reference and fast paths), ``fusion`` (cross-attention), ``mdnet`` (:class:`MDNet`: prior + Vim +
fusion + head), ``taef2`` (the pretrained TAEF2 autoencoder, weights from ../shared) and
``checkpoint`` (safetensors + config, from a folder or a hub id).

    from mdnet.models import MDNet
    model = MDNet.from_pretrained("checkpoints/default")
"""

from mdnet.models.checkpoint import (
    DEFAULT_CHECKPOINT,
    CheckpointError,
    default_device,
    load_checkpoint,
    save_checkpoint,
)
from mdnet.models.config import ConfigError, MDNetConfig, get_config
from mdnet.models.mdnet import MODES, MDNet, MDNetOutput, score_aligned
from mdnet.models.taef2 import TAEF2, TAEF2WeightsError

__all__ = [
    "DEFAULT_CHECKPOINT",
    "MODES",
    "TAEF2",
    "CheckpointError",
    "ConfigError",
    "MDNet",
    "MDNetConfig",
    "MDNetOutput",
    "TAEF2WeightsError",
    "default_device",
    "get_config",
    "load_checkpoint",
    "save_checkpoint",
    "score_aligned",
]
