"""Alignment: the chosen face warped onto the template, framed like a SCUT-FBP5500 image.

:func:`align` is the single preprocessing entry point of training, evaluation and the app: it
decodes the input (:func:`~mdnet.faces.io.load_rgb`), finds the faces
(:func:`~mdnet.faces.detect.detect_faces`) and warps the chosen one with a similarity transform
(rotation + uniform scale + translation) onto :data:`~mdnet.faces.transform.TEMPLATE`, giving a
``(size, size, 3)`` crop. :func:`align_face` crops a face that was already detected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mdnet.faces.detect import Face, FaceDetector, SearchMode, detect_faces, track_face
from mdnet.faces.errors import FaceIndexError, FaceTooSmallError, NoFaceError
from mdnet.faces.io import ImageInput, load_rgb
from mdnet.faces.transform import DEFAULT_SIZE, BorderMode, apply_transform, warp

MIN_FACE_SIZE = 40  # faces whose box is narrower than this (original pixels) are refused


@dataclass(frozen=True)
class AlignedFace:
    """Result of :func:`align`.

    Attributes:
        image: ``(size, size, 3)`` uint8 RGB aligned crop.
        box: ``(4,)`` ``[x0, y0, x1, y1]`` of the chosen face in the original photo.
        keypoints: ``(6, 2)`` keypoints of the chosen face in the original photo.
        transform: ``(2, 3)`` original -> crop.
        inverse_transform: ``(2, 3)`` crop -> original.
        score: detector confidence of the chosen face.
        face_index: index of the chosen face in ``faces``.
        faces: every face found (those at least ``min_face_size`` wide), largest first.
        source_shape: ``(H, W)`` of the decoded original photo.
    """

    image: np.ndarray
    box: np.ndarray
    keypoints: np.ndarray
    transform: np.ndarray
    inverse_transform: np.ndarray
    score: float
    face_index: int
    faces: tuple[Face, ...]
    source_shape: tuple[int, int]

    @property
    def face(self) -> Face:
        """The chosen :class:`Face`."""
        return self.faces[self.face_index]

    @property
    def size(self) -> int:
        return int(self.image.shape[0])

    @property
    def crop_keypoints(self) -> np.ndarray:
        """``(6, 2)`` keypoints mapped into the crop."""
        return apply_transform(self.transform, self.keypoints)


def align_face(
    rgb: np.ndarray,
    face: Face,
    *,
    size: int | None = None,
    border: BorderMode = "replicate",
    faces: Sequence[Face] | None = None,
) -> AlignedFace:
    """Crop one already-detected face.

    Args:
        rgb: ``(H, W, 3)`` uint8, the image ``face`` was detected in (from :func:`load_rgb`).
        face: one of :func:`detect_faces`' results (or ``AlignedFace.faces``).
        size: crop side; default ``face.size``.
        border: how pixels outside the photo are filled: ``"replicate"`` or ``"constant"`` (black).
        faces: the full list to keep in the result (default ``[face]``).

    Returns:
        :class:`AlignedFace` with a ``(size, size, 3)`` crop.
    """
    face = face.for_size(int(size or face.size))
    crop = warp(rgb, face.transform, face.size, border=border)
    all_faces = tuple(f.for_size(face.size) for f in faces) if faces else (face,)
    index = next((i for i, f in enumerate(all_faces) if np.allclose(f.keypoints, face.keypoints)), 0)
    return AlignedFace(
        image=crop,
        box=face.box,
        keypoints=face.keypoints,
        transform=face.transform,
        inverse_transform=face.inverse_transform,
        score=face.score,
        face_index=index,
        faces=all_faces,
        source_shape=(int(rgb.shape[0]), int(rgb.shape[1])),
    )


def align(
    image: ImageInput,
    *,
    size: int = DEFAULT_SIZE,
    face_index: int = 0,
    min_face_size: int = MIN_FACE_SIZE,
    min_confidence: float = 0.5,
    search: SearchMode = "auto",
    border: BorderMode = "replicate",
    detector: FaceDetector | None = None,
    track: Face | None = None,
) -> AlignedFace:
    """Detect the faces in ``image`` and return the aligned crop of one of them.

    Args:
        image: file path, bytes, binary file object, PIL image or numpy array
            (``(H, W, 3)`` RGB uint8, or anything :func:`load_rgb` accepts).
        size: side of the square output crop.
        face_index: which face, in the largest-first order of ``faces``.
        min_face_size: faces narrower than this many original pixels are ignored;
            if all are, :class:`FaceTooSmallError` is raised.
        min_confidence: detector confidence threshold.
        search: see :func:`detect_faces`.
        border: fill for crop pixels outside the photo (``"replicate"`` / ``"constant"``).
        detector: a :class:`FaceDetector`; default the shared one.
        track: the face found in the previous frame of a video (:func:`track_face`): where it is found
            again, it is the only face returned (``face_index`` must be 0); where not, the frame is
            searched as usual.

    Returns:
        :class:`AlignedFace`: ``image`` is ``(size, size, 3)`` uint8 RGB.

    Raises:
        ImageDecodeError, EmptyImageError, ImageTooLargeError, AspectRatioError
        (from :func:`load_rgb`), NoFaceError, FaceTooSmallError, FaceIndexError.
    """
    rgb = load_rgb(image)
    h, w = rgb.shape[:2]
    if min(h, w) < min_face_size:
        raise FaceTooSmallError(
            f"This image is only {w}x{h} pixels, too small to hold a usable face. The face must be at least "
            f"{min_face_size} pixels wide; please use a larger photo."
        )
    tracked = None
    if track is not None and face_index == 0:
        tracked = track_face(rgb, track, size=size, min_confidence=min_confidence, detector=detector)
    all_faces = [tracked] if tracked is not None else detect_faces(
        rgb, size=size, search=search, min_confidence=min_confidence, detector=detector)
    if not all_faces:
        raise NoFaceError(
            "No face was found in this image. Please use a clear, well-lit photo of a face looking towards the camera."
        )
    faces = [f for f in all_faces if f.width >= min_face_size]
    if not faces:
        biggest = all_faces[0].width
        raise FaceTooSmallError(
            f"The face in this photo is too small ({biggest:.0f} pixels wide; it must be at least "
            f"{min_face_size} pixels wide). Please use a closer or higher-resolution photo."
        )
    if not -len(faces) <= face_index < len(faces):
        raise FaceIndexError(
            f"Face number {face_index + 1} was asked for, but only {len(faces)} "
            f"face{'s were' if len(faces) > 1 else ' was'} found in this image."
        )
    return align_face(rgb, faces[face_index], size=size, border=border, faces=faces)
