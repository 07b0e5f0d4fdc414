"""Typed input problems of the face pipeline: each ``str(error)`` is a message for an app user.

:class:`AlignError` and its subclasses come from :func:`mdnet.faces.load_rgb` (decoding, input
limits) and :func:`mdnet.faces.align` (no face, face too small, no such face).
:class:`DetectorModelError` is an installation problem, not a user's.
"""

from __future__ import annotations


class AlignError(ValueError):
    """Base class of every input problem found by :func:`load_rgb` / :func:`align`.

    ``str(error)`` is a plain-language message meant to be shown to an app user.
    """


class ImageDecodeError(AlignError):
    """The input is not a readable image (wrong type, missing file, corrupt data)."""


class EmptyImageError(AlignError):
    """The input is empty (zero bytes, or zero width/height)."""


class ImageTooLargeError(AlignError):
    """The image has more pixels than allowed (decompression-bomb guard)."""


class AspectRatioError(AlignError):
    """The image is far too wide or too tall to hold a portrait."""


class NoFaceError(AlignError):
    """No face was found."""


class FaceTooSmallError(AlignError):
    """Faces were found but all are smaller than the minimum face size."""


class FaceIndexError(AlignError, IndexError):
    """A face number was asked for that does not exist."""


class DetectorModelError(RuntimeError):
    """The face-detector model file is missing or corrupt (an installation problem)."""
