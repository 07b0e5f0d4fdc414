"""Weight files: their checksum and the error every loader raises for a file it cannot use.

A leaf module (it imports nothing of the package), so the loaders of third-party weights (TAEF2, SFace)
and of our checkpoints share it without importing each other.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


class CheckpointError(RuntimeError):
    """A checkpoint (or weight file) that cannot be read or does not describe a consistent model."""


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
