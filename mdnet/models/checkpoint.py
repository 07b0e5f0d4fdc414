"""Checkpoints: safetensors weights + a JSON config, saved atomically, loaded strictly.

A checkpoint is a folder::

    config.json         {"format": "mdnet", "format_version": 1,
                         "model": <MDNetConfig, incl. preprocessing>,
                         "weights": {"file": "model.safetensors", "sha256": ...},
                         "metadata": {...}}
    model.safetensors   every tensor of the model (for a prior loaded from a
                        pretrained pipeline, all but the prior's own weights,
                        which come back from that pipeline; its empty-prompt
                        embedding is kept, so no text encoder is needed)

Saving writes a complete new folder beside the target and swaps it in, so an
interrupted save leaves the old checkpoint (or none), never a half-written one.
Loading checks the config, the weights' checksum, and that every tensor's name
and shape match the model the config describes; any failure raises
:class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mdnet.models.config import ConfigError, MDNetConfig
from mdnet.models.files import CheckpointError, file_sha256
from mdnet.models.student import StudentConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "mdnet"
FORMAT_VERSION = 1
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# The checkpoint this repository ships (trained by this project; see its model card).
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "default"
# The fast student distilled from it (``mdnet distill``), for live scores and ``mdnet predict --fast``.
STUDENT_CHECKPOINT = DEFAULT_CHECKPOINT.parent / "student"
FAST_CHECKPOINT_ENV = "MDNET_FAST_CHECKPOINT"


def fast_checkpoint() -> str:
    """Where the fast student is: ``$MDNET_FAST_CHECKPOINT``, else :data:`STUDENT_CHECKPOINT`."""
    return os.environ.get(FAST_CHECKPOINT_ENV) or str(STUDENT_CHECKPOINT)


def default_device() -> torch.device:
    """The GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _external_prior(cfg: MDNetConfig) -> bool:
    return cfg.prior.source == "pretrained"


def _is_student(cfg) -> bool:
    return getattr(cfg, "kind", "mdnet") == "student"


def _kept(name: str, cfg) -> bool:
    """Whether tensor ``name`` is stored in the checkpoint."""
    if _is_student(cfg):
        return True
    return not (_external_prior(cfg) and name.startswith("prior.") and name != "prior.prompt_embeds")


# Frozen third-party weights stored in float16 (loaded back into the float32 model): the SFace copy behind the
# identity embedding, 9.6 M parameters that OpenCV Zoo ships as int8 (one scale per block), so half
# precision keeps what the int8 file holds to 2^-11 relative, and the checkpoint stays under 50 MB.
HALF_PRECISION = ("vim.identity.sface.",)


# A student's fitted linear head stays in float32 (0.6 MB): 50,176 weights on standardised features, whose
# rounding would add up in the score.
FULL_PRECISION = ("linear.", "feature_mean", "feature_scale")


def _stored(name: str, t: torch.Tensor, half: bool = False) -> torch.Tensor:
    t = t.detach().cpu().contiguous()
    if not t.is_floating_point() or name.startswith(FULL_PRECISION):
        return t
    return t.half() if half or name.startswith(HALF_PRECISION) else t


def checkpoint_state(model) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint stores, contiguous on the CPU (:data:`HALF_PRECISION` ones in float16; a
    student's all in float16, which keeps it under 10 MB)."""
    half = _is_student(model.cfg)
    return {name: _stored(name, t, half) for name, t in model.state_dict().items() if _kept(name, model.cfg)}


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(model, directory: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Save ``model`` to ``directory`` atomically; other files already there (a model card) are kept."""
    directory = Path(directory)
    if getattr(model, "inference_only", False):
        raise CheckpointError("this model is a copy for inference (BatchNorm folded): save the model it came from")
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"cannot save a checkpoint to {directory}: it is a file")
    if directory.is_dir() and any(directory.iterdir()) and not (directory / CONFIG_NAME).exists():
        raise CheckpointError(f"refusing to replace {directory}: it is not empty and holds no {CONFIG_NAME}")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.saving-", dir=directory.parent))
    try:
        if directory.is_dir():
            for extra in directory.iterdir():
                if extra.is_file() and extra.name not in (CONFIG_NAME, WEIGHTS_NAME):
                    shutil.copy2(extra, tmp / extra.name)
        state = checkpoint_state(model)
        save_file(state, tmp / WEIGHTS_NAME, metadata={"format": "pt"})
        config = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": model.cfg.to_dict(),
            "weights": {"file": WEIGHTS_NAME, "sha256": file_sha256(tmp / WEIGHTS_NAME), "tensors": len(state)},
            "metadata": metadata or {},
        }
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a checkpoint is meant to be shared
        for name in (WEIGHTS_NAME, CONFIG_NAME):
            os.chmod(tmp / name, 0o666 & ~umask)
            _fsync(tmp / name)
        old = None
        if directory.exists():
            old = directory.parent / f".{directory.name}.old-{os.getpid()}"
            os.replace(directory, old)
        os.replace(tmp, directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


# what a checkpoint folder holds: config + weights, the model card and its figures, and the companions that
# `mdnet score-distribution` and `mdnet calibrate` write beside them (score_distribution.json, uncertainty.safetensors)
HUB_FILES = ["*.json", "*.safetensors", "*.md", "*.png"]


def resolve_checkpoint(path_or_hub_id: str | Path, revision: str | None = None) -> Path:
    """A local checkpoint folder for a path (folder or one of its files) or a hub id."""
    path = Path(path_or_hub_id).expanduser()
    if path.is_file():
        if path.name not in (CONFIG_NAME, WEIGHTS_NAME):
            raise CheckpointError(f"{path} is not an MD-Net checkpoint: expected a folder with {CONFIG_NAME}")
        path = path.parent
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file():
            raise CheckpointError(f"{path / CONFIG_NAME} is missing: {path} is not an MD-Net checkpoint folder")
        return path
    text = str(path_or_hub_id)
    if not _HUB_ID.match(text):
        raise CheckpointError(f"no checkpoint at {text}: no such folder, and it is not a hub id (owner/name)")
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(text, revision=revision, allow_patterns=HUB_FILES)
    except Exception as err:
        raise CheckpointError(f"could not fetch checkpoint {text!r} from the Hugging Face hub: {err}") from err
    return resolve_checkpoint(local)


def read_config(directory: Path) -> tuple[MDNetConfig | StudentConfig, dict[str, Any]]:
    """Parse and validate ``config.json``; returns the model config and the whole file."""
    path = directory / CONFIG_NAME
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err})") from err
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"cannot read {path}: {err}") from err
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an MD-Net checkpoint config (no \"format\": \"{FORMAT}\")")
    if raw.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {raw.get('format_version')!r}; this code reads version {FORMAT_VERSION}"
        )
    try:
        model = raw["model"]
        is_student = isinstance(model, dict) and model.get("kind") == "student"
        cfg = StudentConfig.from_dict(model) if is_student else MDNetConfig.from_dict(model)
    except (KeyError, TypeError, ConfigError) as err:
        raise CheckpointError(f"{path} has an invalid model config: {err}") from err
    return cfg, raw


def read_weights(directory: Path, raw_config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Load the safetensors file after checking it against the checksum in the config."""
    weights = raw_config.get("weights", {})
    path = directory / weights.get("file", WEIGHTS_NAME)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the checkpoint in {directory} has no weights")
    expected = weights.get("sha256")
    if expected and file_sha256(path) != expected:
        raise CheckpointError(
            f"{path} is corrupt or truncated: its sha256 does not match the one in {directory / CONFIG_NAME}"
        )
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from err


def load_checkpoint(path_or_hub_id: str | Path, device: str | torch.device = "cpu", revision: str | None = None):
    """Rebuild the exact saved model (eval mode) from a folder or a hub id."""
    from mdnet.models.mdnet import MDNet
    from mdnet.models.prior import DiffusionPrior
    from mdnet.models.student import FBPStudent

    directory = resolve_checkpoint(path_or_hub_id, revision)
    cfg, raw = read_config(directory)
    state = read_weights(directory, raw)
    weights_path = directory / raw.get("weights", {}).get("file", WEIGHTS_NAME)
    try:
        if _is_student(cfg):
            model = FBPStudent(cfg)
        else:
            prior = DiffusionPrior.from_config(cfg.prior, prompt_embeds=state.get("prior.prompt_embeds"))
            model = MDNet(cfg, prior=prior)
    except Exception as err:
        raise CheckpointError(f"{directory / CONFIG_NAME} describes a model that cannot be built: {err}") from err
    expected = {name: t.shape for name, t in model.state_dict().items() if _kept(name, cfg)}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(n for n in set(expected) & set(state) if tuple(state[n].shape) != tuple(expected[n]))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensors (e.g. {missing[:3]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[:3]})")
    if wrong:
        n = wrong[0]
        problems.append(f"{len(wrong)} shape mismatches (e.g. {n}: {tuple(state[n].shape)} vs {tuple(expected[n])})")
    if problems:
        raise CheckpointError(f"{weights_path} does not match its config: " + "; ".join(problems))
    model.load_state_dict(state, strict=False)  # copies cast float16 tensors to the model's float32
    return model.to(device).eval()
