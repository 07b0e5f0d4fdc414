"""Images in, aligned faces out; datasets of faces.

The data flow of the package starts here: :func:`load_rgb` (``io``) decodes any photo,
:func:`detect_faces` (``detect``) finds the faces with MediaPipe, and :func:`align`
(``aligner``) warps one onto the template (``transform``). Training, evaluation and the app all
preprocess through these same functions. ``scut`` reads SCUT-FBP5500 in its official layout,
``unlabeled`` any folder of face photos (UTKFace by default), both through the same cache;
``augment`` perturbs photos and crops the way a snapshot differs from a lab photo.

    from mdnet.faces import align, load_rgb, NoFaceError
"""

from mdnet.faces.aligner import MIN_FACE_SIZE, AlignedFace, align, align_face
from mdnet.faces.augment import ROBUSTNESS_TRANSFORMS, CameraAugment, perturb_photo
from mdnet.faces.detect import (
    DETECTOR_MODEL_PATH,
    KEYPOINT_NAMES,
    Face,
    FaceDetector,
    close_detector,
    detect_faces,
    get_detector,
    track_face,
)
from mdnet.faces.errors import (
    AlignError,
    AspectRatioError,
    DetectorModelError,
    EmptyImageError,
    FaceIndexError,
    FaceTooSmallError,
    ImageDecodeError,
    ImageTooLargeError,
    NoFaceError,
)
from mdnet.faces.io import MAX_ASPECT_RATIO, MAX_PIXELS, ImageInput, load_rgb
from mdnet.faces.transform import (
    DEFAULT_SIZE,
    TEMPLATE,
    TEMPLATE_WEIGHTS,
    apply_transform,
    estimate_transform,
    invert_transform,
    warp,
)

__all__ = [
    "DEFAULT_SIZE",
    "DETECTOR_MODEL_PATH",
    "KEYPOINT_NAMES",
    "MAX_ASPECT_RATIO",
    "MAX_PIXELS",
    "MIN_FACE_SIZE",
    "TEMPLATE",
    "ROBUSTNESS_TRANSFORMS",
    "TEMPLATE_WEIGHTS",
    "AlignError",
    "AlignedFace",
    "AspectRatioError",
    "CameraAugment",
    "DetectorModelError",
    "EmptyImageError",
    "Face",
    "FaceDetector",
    "FaceIndexError",
    "FaceTooSmallError",
    "ImageDecodeError",
    "ImageInput",
    "ImageTooLargeError",
    "NoFaceError",
    "align",
    "align_face",
    "apply_transform",
    "close_detector",
    "detect_faces",
    "estimate_transform",
    "get_detector",
    "invert_transform",
    "load_rgb",
    "perturb_photo",
    "track_face",
    "warp",
]
