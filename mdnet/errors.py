"""The one place where errors become words for the user: typed service errors and their messages.

:func:`describe_error` maps any exception to ``(kind, message)``: a stable code for API clients
and one plain sentence for the page (never a traceback or a server path). The face pipeline's
own errors (:class:`mdnet.faces.AlignError` and subclasses) are typed in :mod:`mdnet.faces.errors`.
"""

from __future__ import annotations

from mdnet.models.checkpoint import CheckpointError

# Uploads larger than this are refused (the app also gives it to Gradio's ``max_file_size``).
MAX_UPLOAD_MB = 15
MAX_UPLOAD_BYTES = MAX_UPLOAD_MB * 1024 * 1024


class ServiceError(Exception):
    """A problem a user can cause or must know about, other than a bad photo (those are ``AlignError``)."""


class UploadTooLargeError(ServiceError):
    """The upload is bigger than :data:`MAX_UPLOAD_MB`."""


class ModelUnavailableError(ServiceError):
    """The model is not loaded (no checkpoint, or a broken one); the message says why."""


def describe_error(exc: BaseException) -> tuple[str, str]:
    """``(kind, message)`` for any exception: the one place errors become words for the user.

    ``kind`` is a short stable code for API clients (``no_face``, ``face_too_small``,
    ``face_index``, ``not_an_image``, ``empty_image``, ``image_too_large``, ``aspect_ratio``,
    ``upload_too_large``, ``model_unavailable``, ``install``, ``out_of_memory``, ``internal``).
    The message never contains a traceback or a file path of the server.
    """
    from mdnet import faces as A

    kinds = [
        (A.NoFaceError, "no_face"),
        (A.FaceTooSmallError, "face_too_small"),
        (A.FaceIndexError, "face_index"),
        (A.EmptyImageError, "empty_image"),
        (A.ImageTooLargeError, "image_too_large"),
        (A.AspectRatioError, "aspect_ratio"),
        (A.ImageDecodeError, "not_an_image"),
    ]
    for cls, kind in kinds:
        if isinstance(exc, cls):
            return kind, str(exc)
    if isinstance(exc, A.AlignError):
        return "bad_image", str(exc)
    if isinstance(exc, UploadTooLargeError):
        return "upload_too_large", str(exc)
    if isinstance(exc, ModelUnavailableError):
        return "model_unavailable", str(exc)
    if isinstance(exc, CheckpointError):
        return "model_unavailable", f"The model could not be loaded: {exc}"
    if isinstance(exc, A.DetectorModelError):
        return "install", "The face detector is not installed correctly on this server, so no photo can be processed."
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()):
        return "out_of_memory", "The server ran out of memory on this photo. Please try a smaller photo or try later."
    return "internal", "Something went wrong while processing this photo. Please try another photo."


def friendly_error(exc: BaseException) -> str:
    """One plain-language message for any exception (see :func:`describe_error`)."""
    return describe_error(exc)[1]


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is expected (bad input, no model) rather than a bug worth logging."""
    return describe_error(exc)[0] != "internal"
