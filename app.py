"""MD-Net FBP web app (Gradio): a photo or the webcam in; the score and why, side by side.

Run ``python app.py``; it serves on 127.0.0.1:7860 (``GRADIO_SERVER_NAME`` and
``GRADIO_SERVER_PORT`` override; ``MDNET_CHECKPOINT`` picks another checkpoint). The UI only
talks to :mod:`mdnet.service`; the handlers are plain methods of :class:`Handlers`, so tests
call them without a browser.

Two documented API endpoints (see README.md, "API"): ``/score`` (photo, face_index) -> JSON,
and ``/analyze`` (photo, face_index, steps, view) -> JSON + aligned face + attention + IG.
User errors come back from both as ``gradio.Error`` with a plain-language message and, as its
title, the stable error code of :func:`mdnet.service.describe_error`.

Bounds for a public server (README.md, "Under load"): webcam streams have their own capacity and
lose it when they go quiet; each client may have only a few jobs waiting; request bodies, uploads
and the temporary folder are bounded (:mod:`mdnet.limits`); a closed page's photos leave memory.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import io
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from gradio import processing_utils
from gradio.utils import get_upload_folder
from PIL import Image
from starlette.middleware import Middleware

from mdnet import limits, service

LOG = logging.getLogger("mdnet.app")
ROOT = Path(__file__).resolve().parent
EXAMPLES = sorted((ROOT / "assets" / "examples").glob("*.jpg"))
LIVE_EVERY_S = 0.75  # webcam frames sent for scoring at most this often (a CPU keeps up with full MD-Net)
LIVE_EVERY_FAST_S = 0.05  # ... with the fast student (one frame in flight: about 10 a second)
# Ask the camera for VGA frames (Gradio asks for 1920 x 1440): enough for a face crop of 224 px, and a frame
# is then ~80 KB to send and ~6 ms to read instead of ~360 KB and ~90 ms (measured here, busy CPU)
WEBCAM = gr.WebcamOptions(mirror=True, constraints={"video": {"width": {"ideal": 640}, "height": {"ideal": 480}}})
LIVE_SEARCH_EVERY = 10  # a live face is followed from frame to frame; the whole frame is searched this often
CONCURRENCY = max(1, int(os.environ.get("MDNET_APP_CONCURRENCY", "2")))  # model calls at once, per kind
# Webcam streams: a capacity of their own (they never hold a photo-scoring slot), released when a stream
# sends no frame for LIVE_IDLE_S, and at the latest after LIVE_MAX_S; closing the tab releases it at once.
LIVE_STREAMS = max(1, int(os.environ.get("MDNET_LIVE_STREAMS", "2")))
LIVE_IDLE_S = float(os.environ.get("MDNET_LIVE_IDLE_S", "8"))
LIVE_MAX_S = float(os.environ.get("MDNET_LIVE_MAX_S", "300"))
QUEUE_MAX = 128  # requests waiting beyond this are refused ("queue full") rather than left to pile up
# Jobs one client may have waiting or running, per kind: per page (session) and per address.
PER_SESSION = {"live": 1, "score": 4, "analysis": 2}
PER_ADDRESS = {"live": 4, "score": 8, "analysis": 4}
MAX_BODY_BYTES = 12 * 1024 * 1024  # JSON bodies (a webcam frame as a data URL is the largest)
UPLOADS = {"max_total_bytes": 512 << 20, "min_free_bytes": 128 << 20, "per_minute": 30, "bytes_per_minute": 96 << 20}
UPLOAD_SEARCH = "thorough"  # uploads: find every face of a group photo; the webcam uses the fast search
CACHE_DELETE = (60, 180)  # every 60 s, delete uploads and shown images older than 180 s
SHM_MIN_FREE = 1 << 30  # use /dev/shm for Gradio's files only with at least 1 GiB free
STEPS_CHOICES = (8, 16, 32, 64)
assert max(STEPS_CHOICES) == service.MAX_STEPS  # the API accepts what the page offers, no more

# Every image decode in this process (ours, Gradio's, a library's) stops at our pixel limit.
Image.MAX_IMAGE_PIXELS = service.MAX_PIXELS
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
# A photo's memory goes back to the system when its result is dropped (see mdnet.limits).
limits.release_memory_promptly()
VIEW_CHOICES = [("the aligned face", "crop"), ("the original photo", "photo")]

try:  # Hugging Face ZeroGPU: borrow a GPU for each model call; a no-op everywhere else
    import spaces

    _ZERO_GPU = bool(os.environ.get("SPACES_ZERO_GPU"))
    gpu = spaces.GPU if _ZERO_GPU else (lambda fn: fn)
except ImportError:
    _ZERO_GPU = False

    def gpu(fn):
        return fn


def result_file(image: np.ndarray | None, fmt: str = "png") -> Path | None:
    """An image for an output component, written into Gradio's file cache whole: its path (None for None).

    Gradio names a result image by the hash of its bytes and rewrites that file in place on every request
    (truncate, then write), so two requests that draw the same image (the same photo twice, an example)
    can cut a download of it short: the client gets fewer bytes than the ``Content-Length`` it was
    promised. Here the image is encoded once, written under a temporary name and renamed into place
    only if absent (as Gradio already does for files it copies, and it finds this one in place: same
    folder, same name); an image already there is touched, so the cache's clean-up ages it from its
    latest use.
    """
    if image is None:
        return None
    picture = Image.fromarray(np.asarray(image, dtype=np.uint8))
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt)
    data = buffer.getvalue()
    folder = Path(get_upload_folder()) / processing_utils.hash_bytes(data)  # Gradio's own name for it
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"image.{fmt}"
    if path.exists():
        with contextlib.suppress(OSError):
            os.utime(path)
        return path
    fd, staging = tempfile.mkstemp(dir=folder, prefix=".image.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return path


def _free(folder: Path) -> int:
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize


def _memory_cache() -> bool:
    """Keep Gradio's temporary files (uploads, shown images) in RAM (``/dev/shm``) when we can.

    Gradio writes every upload and every image it sends to the browser into
    ``GRADIO_TEMP_DIR``; pointing that at a tmpfs keeps photos off the disk. Returns whether
    the folder in use is memory-backed. An explicit ``GRADIO_TEMP_DIR`` is respected, and a small
    ``/dev/shm`` (Docker's default is 64 MB) is not used: uploads would fail when it fills up.
    """
    shm = Path("/dev/shm")
    usable = shm.is_dir() and os.access(shm, os.W_OK) and _free(shm) >= SHM_MIN_FREE
    if not os.environ.get("GRADIO_TEMP_DIR") and usable:
        folder = tempfile.mkdtemp(prefix="mdnet-gradio-", dir=shm)
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        os.environ["GRADIO_TEMP_DIR"] = folder
    return os.environ.get("GRADIO_TEMP_DIR", "").startswith("/dev/shm/")


ABOUT = """
# MD-Net: facial beauty prediction, with its reasoning

A Mamba-Diffusion Network (a generative-prior stream and a Vision-Mamba stream joined by
cross-attention) predicts the **SCUT-FBP5500 beauty score, 1-5**, of the face in a photo, and
shows **why**: where the fusion looked, which pixels moved the score, and what each stream adds.
"""

HONESTY = """
**What the score is, and is not.** It is the model's estimate of the *mean rating* that the
SCUT-FBP5500 raters (60 people per face, on a 1-5 scale) gave to faces like this one. The dataset
holds photos of **Asian and Caucasian adults** only, so the score says little about anyone else, and
it reflects that panel's taste at that time. It is **not** an objective measure of beauty, of
attractiveness to anyone in particular, or of anyone's worth. Lighting, pose, expression, make-up and
the camera all move it. Please do not use it to judge or rank people.

**How sure it is.** The range under the score ("likely between ...") holds the raters' mean score for
about 9 in 10 faces like the SCUT-FBP5500 photos (measured on faces the model never trained on); it is
wider where the model is less sure. For a photo unlike those faces the page says so, the range widens,
and even that is only a rough guide.
"""


def privacy_text(memory_backed: bool) -> str:
    where = ("a temporary folder in the server's memory (RAM, not disk)" if memory_backed
             else "the server's temporary folder")
    return (
        "**Privacy.** Photos and webcam frames are processed in memory and are never stored, logged or used "
        f"for training. To show them in your browser, the web framework keeps uploads and result images in {where} "
        f"and deletes them within {sum(CACHE_DELETE) // 60} minutes. While this page is open the server keeps a "
        "copy of your photo reduced to at most "
        f"{service.DISPLAY_MAX_SIDE} pixels and the aligned faces (to redraw the results and score another face); "
        "they are deleted when you close the page, and after 30 minutes in any case. Webcam frames are sent for "
        "scoring only while the camera tab is streaming."
    )


API_DOC = f"""
**Use it from Python** (`pip install gradio_client`); both endpoints raise an error with a plain
message for a photo without a usable face:

```python
from gradio_client import Client, handle_file

client = Client("http://127.0.0.1:7860/")  # or the Space's name
result = client.predict(handle_file("photo.jpg"), 0, api_name="/score")
print(result["score"], result["percentile"], result["faces_found"])
numbers, face, attention, ig = client.predict(handle_file("photo.jpg"), 0, 16, "crop", api_name="/analyze")
```

`/score` (photo, face_index) returns the score, where it falls among the training faces and the
faces found; `/analyze` (photo, face_index, steps, view) adds the explanations as JSON plus three
images (aligned face with keypoints, cross-attention, Integrated Gradients; `view` is `crop` or
`photo`). Uploads are limited to {service.MAX_UPLOAD_MB} MB.
"""


# =========================================================================== handlers
def _photo_source(payload: Any) -> Any:
    """What the service reads from an image input: a Gradio file payload's path, or the value itself."""
    if isinstance(payload, dict):
        return payload.get("path")
    path = getattr(payload, "path", None)
    return path if isinstance(path, str) else payload


def _frame_source(payload: Any) -> Any:
    """What the service reads from a webcam payload: its data URL, else its file, else the value itself."""
    if isinstance(payload, dict):
        url = payload.get("url")
        return url if isinstance(url, str) and url.startswith("data:") else payload.get("path")
    return _photo_source(payload)


def _face_index(value: Any) -> int:
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


class BadRequest(service.ServiceError):
    """An API argument out of its range (the page cannot send one)."""

    kind = "bad_request"


def _api_face_index(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)) or str(value).strip() == "":
        raise BadRequest(f"face_index must be a whole number from 0 (the largest face), not {value!r}.")
    try:
        number = float(value)
    except ValueError:
        raise BadRequest(f"face_index must be a whole number from 0 (the largest face), not {value!r}.") from None
    if number != int(number) or number < 0:
        raise BadRequest(f"face_index must be a whole number from 0 (the largest face), not {value!r}.")
    return int(number)


def _api_steps(value: Any) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or number != number or number != int(number) or not 1 <= number <= service.MAX_STEPS:
        raise BadRequest(f"steps must be a whole number from 1 to {service.MAX_STEPS}, not {value!r}.")
    return int(number)


def _api_view(value: Any) -> str:
    if value not in service.VIEWS:
        raise BadRequest(f"view must be one of {', '.join(repr(v) for v in service.VIEWS)}, not {value!r}.")
    return str(value)


def _api_error(exc: BaseException) -> gr.Error:
    """A ``gradio.Error`` whose message is the plain sentence and whose title is the stable error code."""
    kind = exc.kind if isinstance(exc, BadRequest) else service.describe_error(exc)[0]
    return gr.Error(str(exc) if isinstance(exc, BadRequest) else _message(exc), title=kind, print_exception=False)


def _message(exc: BaseException) -> str:
    """The friendly message for ``exc``; unexpected errors are logged by type only (never the photo)."""
    if not service.is_user_error(exc):
        LOG.error("unexpected %s while processing a photo", type(exc).__name__, exc_info=exc)
    return service.friendly_error(exc)


def _steps(value: Any) -> int:
    """Integrated Gradients steps from the page: an integer in 1-MAX_STEPS (16 when missing or not a number)."""
    try:
        return min(service.MAX_STEPS, max(1, int(value)))
    except (TypeError, ValueError):
        return 16


def _warning(text: str) -> str:
    return f"⚠️ {text}" if text else ""


def score_markdown(result: service.PhotoScore) -> str:
    low, high = result.score_range
    lines = [f"## {result.score:.2f} <small>on {low:g}-{high:g}</small>"]
    if result.interval is not None:
        lines.append(interval_text(result) + "\n\n" + result.interval_figure())
    if result.unusual_note:
        lines.append(_warning(result.unusual_note))
    if result.percentile is not None:
        lines.append(percentile_text(result) + f" (<small>{result.reference_source}</small>).")
    lines.append(f"<small>Model `{result.model_name}`, mirror-averaged; "
                 f"{face_label_text(result)}.</small>")
    return "\n\n".join(lines)


def interval_text(result: service.PhotoScore) -> str:
    i = result.interval
    return f"Likely between **{i.low:.1f}** and **{i.high:.1f}** <small>({i.level * 100:.0f} % range)</small>"


def percentile_text(result: service.PhotoScore) -> str:
    return f"Higher than **{result.percentile:.0f}%** of the training faces' scores"


def live_model_text(result: service.PhotoScore, fast: bool) -> str:
    """Which model gave the live score (the analysis of a frozen frame always comes from full MD-Net)."""
    if fast:
        return (f"<small>Scored by the fast student `{result.model_name}` (distilled from MD-Net, one pass); "
                "**Analyse this frame** gives full MD-Net's score and its explanations.</small>")
    return f"<small>Scored by MD-Net `{result.model_name}`, mirror-averaged.</small>"


def face_label_text(result: service.PhotoScore) -> str:
    return (service.face_label(result.face_index, result.n_faces).lower() + f" of {result.n_faces}"
            if result.n_faces > 1 else "one face found")


PANEL_CAPTION = """<small>**Aligned face**: the crop the model sees (the same alignment as in training), with the
detector's keypoints. **Cross-attention**: where the Vision-Mamba stream's class token looked in the
generative prior's feature maps (what it read, not what moved the score). **Integrated Gradients**: what
moved the score, against a blurred copy of the face; red raised it, blue lowered it.</small>"""

PANEL_SIZE = 8  # score, face, attention, ig, ablation plot, regions plot, explanation text, numbers


def _panel(report: service.PhotoAnalysis | service.PhotoScore | None, view: str) -> list[Any]:
    """The values of a results panel, in :meth:`ResultsPanel.outputs` order."""
    if report is None:
        return ["", None, None, None, None, None, "", None]
    if isinstance(report, service.PhotoScore):
        face = report.face_view() if view == "crop" else report.photo_view()
        return [score_markdown(report), result_file(face), None, None, None, None, "", report.to_json()]
    views = {name: result_file(image) for name, image in report.views(view).items()}
    text = f"{report.ablation_text()}\n\n{report.regions_text()}"
    return [score_markdown(report.result), views["face"], views["attention"], views["ig"], report.ablation_figure(),
            report.regions_figure(), text, report.to_json()]


class Handlers:
    """The app's event handlers over one model status (plain methods: tests call them directly)."""

    def __init__(self, status: service.ModelStatus, fast: service.ModelStatus | None = None):
        self.status = status
        self.fast = fast if fast is not None and fast.ready else None  # the student, for live scores
        self.live_seen: dict[str, float] = {}  # session -> when its webcam stream last delivered a frame
        self.live_tracks: dict[str, tuple[Any, int]] = {}  # session -> (face of its last frame, frames tracked)
        self.state_holder_of: Any = lambda: None  # set by build_demo: the sessions' state (to clear on close)

    # ------------------------------------------------------------- model calls
    @gpu
    def _score(self, source: Any, face_index: int, search: str) -> service.PhotoScore:
        return service.score_photo(source, face_index, status=self.status, search=search)

    @gpu
    def _score_face(self, result: service.PhotoScore, face_index: int) -> service.PhotoScore:
        return service.score_face(result, face_index, status=self.status)

    @property
    def live_status(self) -> service.ModelStatus:
        """What scores the live webcam: the fast student when there is one, else the full model."""
        return self.fast or self.status

    @gpu
    def _score_frame(self, frame: Any, track: Any = None) -> service.PhotoScore:
        return service.score_frame(frame, status=self.live_status, track=track)

    @gpu
    def _explain(self, result: service.PhotoScore, steps: int, progress: Any = None) -> service.PhotoAnalysis:
        return service.explain_result(result, steps, None if _ZERO_GPU else progress, status=self.status)

    @gpu
    def _analyze(self, source: Any, face_index: int, steps: int, progress: Any = None) -> service.PhotoAnalysis:
        return service.analyze_photo(source, face_index, steps, None if _ZERO_GPU else progress,
                                     status=self.status, search=UPLOAD_SEARCH)

    # ------------------------------------------------------------- upload tab
    def quick(self, payload: Any, face: Any, view: str):
        """Fast step: align + score. -> (message, face dropdown, report state, ok, *panel)."""
        if payload is None:
            return ("", gr.Dropdown(choices=[], value=None, visible=False), None, False, *_panel(None, view))
        try:
            result = self._score(_photo_source(payload), _face_index(face), UPLOAD_SEARCH)
        except Exception as exc:  # every error becomes a message on the page
            return (_warning(_message(exc)), gr.Dropdown(choices=[], value=None, visible=False), None, False,
                    *_panel(None, view))
        choices = [(label, i) for i, label in enumerate(result.face_choices)]
        dropdown = gr.Dropdown(choices=choices, value=result.face_index, visible=result.n_faces > 1)
        note = result.faces_note or "Scored. Working out the explanations..."
        return (note, dropdown, result, True, *_panel(result, view))

    def new_photo(self, payload: Any, view: str):
        """A new photo (upload, example, paste, clear): the largest face first."""
        return self.quick(payload, 0, view)

    def pick_face(self, report: Any, face: Any, view: str):
        """Another face of the photo already scored, from the faces kept in memory (the upload may be gone).

        ``report``: the session's :class:`service.PhotoScore` or :class:`service.PhotoAnalysis`.
        -> (message, face dropdown, report state, ok, *panel), like :meth:`quick`.
        """
        result = report.result if isinstance(report, service.PhotoAnalysis) else report
        if not isinstance(result, service.PhotoScore):
            return ("Upload the photo again: this page's results have expired.", gr.skip(), None, False,
                    *_panel(None, view))
        try:
            chosen = self._score_face(result, _face_index(face))
        except Exception as exc:
            return (_warning(_message(exc)), gr.skip(), report, False, *_panel(None, view))
        note = chosen.faces_note or "Scored. Working out the explanations..."
        return (note, gr.skip(), chosen, True, *_panel(chosen, view))

    def full(self, quick: Any, view: str, steps: Any, ok: bool, progress=gr.Progress()):  # noqa: B008
        """Slow step, after :meth:`quick` succeeded: the explanations of the face it found.

        ``quick``: the :class:`service.PhotoScore` that :meth:`quick` kept. -> (message, report state, *panel).
        """
        if not ok or not isinstance(quick, service.PhotoScore):
            return (gr.skip(), gr.skip(), *[gr.skip()] * PANEL_SIZE)
        try:
            report = self._explain(quick, _steps(steps), lambda f: progress(f, desc="Integrated Gradients"))
        except Exception as exc:
            return (_warning(_message(exc)), None, *_panel(None, view))
        return (report.result.faces_note, report, *_panel(report, view))

    def change_view(self, report: Any, view: str):
        """Redraw the three image panels on the crop or on the photo (no model call)."""
        if report is None:
            return gr.skip(), gr.skip(), gr.skip()
        values = _panel(report, view)
        return values[1], values[2], values[3]

    # ------------------------------------------------------------- webcam tab
    def live(self, frame: Any, request: gr.Request | None = None):
        """One webcam frame -> (light overlay, live score text, the frame kept for 'analyse').

        ``frame``: the browser's payload (a data URL, unprocessed: decoding happens in the service, within
        the limits of a camera) or an RGB array. The kept frame is the result's display-size copy.
        """
        if frame is None:
            return gr.skip(), gr.skip(), gr.skip()
        session = request.session_hash if request is not None else None
        if session:
            self.live_seen[session] = time.monotonic()
        # the face of the previous frame is followed into this one; the whole frame is searched every
        # LIVE_SEARCH_EVERY frames (a larger face that came in is then picked up) and when it is lost
        face, tracked = self.live_tracks.pop(session, (None, 0)) if session else (None, 0)
        if tracked >= LIVE_SEARCH_EVERY:
            face, tracked = None, 0
        rgb = None
        try:
            rgb = service.read_frame(_frame_source(frame))
            result = self._score_frame(rgb, face)
        except Exception as exc:  # the frame as it is (no overlay), and the message
            return (gr.skip() if rgb is None else service.thumbnail(rgb)), _warning(_message(exc)), gr.skip()
        if session:
            self.live_tracks[session] = (result.aligned.face, tracked + 1 if face is not None else 0)
        low, high = result.score_range
        text = f"### Live score: {result.score:.2f} <small>on {low:g}-{high:g}</small>"
        if result.interval is not None:
            text += "\n\n" + interval_text(result)
        if result.unusual_note:
            text += "  \n" + _warning(result.unusual_note)
        if result.percentile is not None:
            text += "\n\n" + percentile_text(result) + "."
        text += "\n\n" + live_model_text(result, self.fast is not None)
        return result.live_view(), text, result.photo

    def freeze(self, frame: Any, view: str, steps: Any, progress=gr.Progress()):  # noqa: B008
        """Analyse the last webcam frame. -> (message, report state, *panel)."""
        if frame is None:
            return ("Start the camera first: no frame has been received yet.", None, *_panel(None, view))
        try:
            report = self._analyze_frame(frame, _steps(steps), lambda f: progress(f, desc="Integrated Gradients"))
        except Exception as exc:
            return (_warning(_message(exc)), None, *_panel(None, view))
        return (report.result.faces_note, report, *_panel(report, view))

    @gpu
    def _analyze_frame(self, frame: Any, steps: int, progress: Any = None) -> service.PhotoAnalysis:
        return service.analyze_photo(frame, 0, steps, None if _ZERO_GPU else progress, status=self.status,
                                     frame=True)

    def forget(self, request: gr.Request | None = None) -> None:
        """The page was closed: drop its state now (Gradio would keep it for an hour)."""
        session = getattr(request, "session_hash", None)
        if not session:
            return
        self.live_seen.pop(session, None)
        self.live_tracks.pop(session, None)
        holder = self.state_holder_of()
        if holder is not None:
            holder.delete_state(session)
        limits.trim_memory()

    # ------------------------------------------------------------- API
    def api_score(self, photo: Any, face_index: Any = 0) -> dict[str, Any]:
        """Score one face of a photo: JSON with score, interval, percentile, faces found (largest first)."""
        try:
            return self._score(_photo_source(photo), _api_face_index(face_index), UPLOAD_SEARCH).to_json()
        except Exception as exc:
            raise _api_error(exc) from None

    def api_analyze(self, photo: Any, face_index: Any = 0, steps: Any = 16, view: Any = "crop"):
        """Score and explain one face: (JSON, aligned face, cross-attention overlay, IG overlay)."""
        try:
            index, steps, view = _api_face_index(face_index), _api_steps(steps), _api_view(view)
            report = self._analyze(_photo_source(photo), index, steps)
        except Exception as exc:
            raise _api_error(exc) from None
        images = {name: result_file(image) for name, image in report.views(view).items()}
        return report.to_json(), images["face"], images["attention"], images["ig"]


# =========================================================================== layout
class ResultsPanel:
    """The side-by-side results: score, aligned face, attention, IG, ablation, regions, numbers."""

    def __init__(self, prefix: str):
        self.score = gr.Markdown(elem_id=f"{prefix}-score")
        with gr.Row(equal_height=True):
            self.face = gr.Image(label="Aligned face, keypoints", elem_id=f"{prefix}-face", interactive=False,
                                 format="png", height=300)
            self.attention = gr.Image(label="Cross-attention", elem_id=f"{prefix}-attention", interactive=False,
                                      format="png", height=300)
            self.ig = gr.Image(label="Integrated Gradients", elem_id=f"{prefix}-ig", interactive=False,
                               format="png", height=300)
        gr.Markdown(PANEL_CAPTION)
        with gr.Row(equal_height=True):
            self.ablation = gr.Plot(label="Stream ablation", elem_id=f"{prefix}-ablation", format="png")
            self.regions = gr.Plot(label="Facial regions", elem_id=f"{prefix}-regions", format="png")
        self.text = gr.Markdown(elem_id=f"{prefix}-explanation")
        with gr.Accordion("All the numbers (JSON)", open=False):
            self.numbers = gr.JSON(elem_id=f"{prefix}-json", show_label=False)

    def outputs(self) -> list[gr.components.Component]:
        return [self.score, self.face, self.attention, self.ig, self.ablation, self.regions, self.text, self.numbers]


def build_demo(status: service.ModelStatus | None = None, fast: service.ModelStatus | None = None) -> gr.Blocks:
    """The whole page over ``status`` (default: the shipped checkpoint, or ``$MDNET_CHECKPOINT``) and, for
    live webcam scores, ``fast`` (default: the shipped student, ``$MDNET_FAST_CHECKPOINT``; none: ``status``)."""
    memory_backed = _memory_cache()
    status = status or service.get_status()
    h = Handlers(status, fast or service.get_fast_status())
    live_every = LIVE_EVERY_FAST_S if h.fast is not None else LIVE_EVERY_S
    state_ttl = 30 * 60
    with gr.Blocks(title="MD-Net facial beauty prediction", analytics_enabled=False,
                   delete_cache=CACHE_DELETE) as demo:
        gr.Markdown(ABOUT)
        if status.ready:
            banner = f"**Model:** MD-Net `{status.model.cfg.name}`, on the {service.default_device().type.upper()}."
        else:
            banner = f"⚠️ **The model is not available.** {status.message} Photos cannot be scored until it is."
        gr.Markdown(banner, elem_id="model-status")
        with gr.Accordion("What the score means, and privacy", open=True):
            gr.Markdown(HONESTY, elem_id="honesty")
            gr.Markdown(privacy_text(memory_backed), elem_id="privacy")
        with gr.Row():
            view = gr.Radio(VIEW_CHOICES, value="crop", label="Draw the overlays on", elem_id="view")
            steps = gr.Dropdown(list(STEPS_CHOICES), value=16, label="Integrated Gradients steps (more: slower, "
                                "more exact)", elem_id="steps")

        with gr.Tabs():
            with gr.Tab("Photo", id="upload"), gr.Row():
                with gr.Column(scale=1):
                    photo = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"],
                                     label="Your photo", elem_id="photo", height=320)
                    gr.Markdown(f"<small>JPEG, PNG, WebP, BMP or GIF, at most {service.MAX_UPLOAD_MB} MB. "
                                "One face is scored at a time (the largest first).</small>")
                    face = gr.Dropdown(choices=[], label="Face to score (largest first)", visible=False,
                                       interactive=True, elem_id="face-choice")
                    if EXAMPLES:
                        gr.Examples([[str(p)] for p in EXAMPLES], inputs=[photo], cache_examples=False,
                                    label="Example photos (public domain / CC0; see assets/examples/LICENSE.md)")
                with gr.Column(scale=3):
                    message = gr.Markdown(elem_id="upload-message")
                    upload_panel = ResultsPanel("upload")
            with gr.Tab("Webcam", id="webcam"):
                live_model = (f"the fast student `{h.fast.model.cfg.name}`" if h.fast is not None
                              else "MD-Net (no fast student is installed)")
                pace = ("as often as the server keeps up (one frame at a time, at most "
                        f"{1 / live_every:.0f} a second)" if h.fast is not None else f"about every {live_every:g} s")
                gr.Markdown(f"Allow the camera: a frame is scored {pace} by {live_model} (the largest face, "
                            "followed from frame to frame). **Analyse this frame** runs full MD-Net's score and "
                            "analysis on the last frame.")
                with gr.Row():
                    camera = gr.Image(sources=["webcam"], streaming=True, type="numpy", label="Camera",
                                      elem_id="camera", height=320, webcam_options=WEBCAM)
                    live_view = gr.Image(label="Live", elem_id="live-view", interactive=False, height=320,
                                         format="jpeg")  # ~1 ms to encode a frame; WebP, the default, ~40 ms
                live_text = gr.Markdown(elem_id="live-score")
                freeze = gr.Button("Analyse this frame", variant="primary", elem_id="freeze")
                cam_message = gr.Markdown(elem_id="webcam-message")
                webcam_panel = ResultsPanel("webcam")
        with gr.Accordion("API", open=False):
            gr.Markdown(API_DOC, elem_id="api-doc")

        upload_state = gr.State(None, time_to_live=state_ttl)
        webcam_state = gr.State(None, time_to_live=state_ttl)
        last_frame = gr.State(None, time_to_live=state_ttl)
        ok = gr.State(False)

        # -- upload: a fast score first, then the explanations
        quick_out = [message, face, upload_state, ok, *upload_panel.outputs()]
        full_out = [message, upload_state, *upload_panel.outputs()]
        common = {"api_visibility": "private", "preprocess": False}
        photo.change(h.new_photo, [photo, view], quick_out, concurrency_id="score", concurrency_limit=CONCURRENCY,
                     **common).then(
            h.full, [upload_state, view, steps, ok], full_out, concurrency_id="analysis", concurrency_limit=1,
            show_progress_on=[upload_panel.attention, upload_panel.ig], **common)
        face.input(h.pick_face, [upload_state, face, view], quick_out, concurrency_id="score", **common).then(
            h.full, [upload_state, view, steps, ok], full_out, concurrency_id="analysis",
            show_progress_on=[upload_panel.attention, upload_panel.ig], **common)
        view.change(h.change_view, [upload_state, view], upload_panel.outputs()[1:4], api_visibility="private")
        view.change(h.change_view, [webcam_state, view], webcam_panel.outputs()[1:4], api_visibility="private")

        # -- webcam: throttled live score, and a full analysis of a frozen frame
        camera.stream(h.live, [camera], [live_view, live_text, last_frame], stream_every=live_every,
                      time_limit=LIVE_MAX_S, concurrency_id="live", concurrency_limit=LIVE_STREAMS,
                      api_visibility="private", show_progress="hidden", preprocess=False)
        freeze.click(h.freeze, [last_frame, view, steps], [cam_message, webcam_state, *webcam_panel.outputs()],
                     concurrency_id="analysis", api_visibility="private",
                     show_progress_on=[webcam_panel.attention, webcam_panel.ig])

        # -- the documented API: hidden components, one button each
        with gr.Row(visible=False):
            api_photo = gr.Image(type="filepath", image_mode=None, label="photo")
            api_face = gr.Number(0, precision=0, label="face_index")
            api_steps = gr.Number(16, precision=0, label="steps")
            api_view = gr.Textbox("crop", label="view")
            api_json = gr.JSON(label="result")
            api_analysis = gr.JSON(label="analysis")
            api_face_img = gr.Image(label="aligned_face", format="png")
            api_att_img = gr.Image(label="attention_overlay", format="png")
            api_ig_img = gr.Image(label="ig_overlay", format="png")
            api_score_btn, api_analyze_btn = gr.Button("score"), gr.Button("analyze")
        api_score_btn.click(
            h.api_score, [api_photo, api_face], [api_json], api_name="score", preprocess=False,
            concurrency_id="score",
            api_description="Score one face of a photo (face_index 0 = largest). Returns JSON: score (1-5), its "
                            "calibrated interval (low, high, level, unusual), percentile among the training faces, "
                            "faces found with boxes, keypoints, model.")
        api_analyze_btn.click(
            h.api_analyze, [api_photo, api_face, api_steps, api_view],
            [api_analysis, api_face_img, api_att_img, api_ig_img], api_name="analyze", preprocess=False,
            concurrency_id="analysis",
            api_description="Score and explain one face: JSON (score, interval, percentile, IG, attention, "
                            "stream ablation, region shares) and three images (aligned face with keypoints, "
                            "cross-attention overlay, Integrated Gradients overlay) drawn on the crop or the photo "
                            "(view).")
        demo.unload(h.forget)
    # api_open=False: the REST routes cannot skip the queue (and with it every limit above)
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_MAX, api_open=False)
    demo.handlers = h
    h.state_holder_of = lambda: getattr(demo, "state_holder", None)
    return demo


# =========================================================================== bounds for a public server
def _pending_jobs(demo: gr.Blocks) -> list[Any]:
    """The jobs waiting or running (Gradio's queue keeps each until it finishes)."""
    queue = getattr(demo, "_queue", None)
    return list(getattr(queue, "event_ids_to_events", {}).values())


def _job_kind(demo: gr.Blocks, path: str, body: dict[str, Any]) -> str | None:
    """The concurrency group (``score``, ``analysis``, ``live``) of the job a request would start."""
    fn = None
    if isinstance(body.get("fn_index"), int):
        fn = demo.fns.get(body["fn_index"])
    else:
        name = path.rstrip("/").rsplit("/", 1)[-1]
        fn = next((f for f in demo.fns.values() if f.api_name == name), None)
    return None if fn is None else fn.concurrency_id


def job_gate(demo: gr.Blocks):
    """``(client, path, body, admitting) -> refusal or None``: a client may have only a few jobs of a kind at once.

    A client's jobs are those in the queue (waiting or running) and those let through but not yet queued
    (``admitting``, see :class:`mdnet.limits.LimitsMiddleware`).
    """

    def gate(client: str, path: str, body: dict[str, Any], admitting: list[limits.Admitted]) -> str | None:
        kind = _job_kind(demo, path, body)
        if kind not in PER_SESSION:
            return None
        session = body.get("session_hash")
        jobs = []  # (session, client) of each job of this kind
        for event in _pending_jobs(demo):
            if event.concurrency_id == kind:
                request = getattr(event, "request", None)
                peer = getattr(getattr(request, "client", None), "host", None)
                headers = dict(getattr(request, "headers", {}) or {})
                jobs.append((event.session_hash, limits.client_key(peer, headers)))
        jobs += [(b.get("session_hash"), c) for c, p, b in admitting if _job_kind(demo, p, b) == kind]
        same_page = sum(bool(session) and s == session for s, _ in jobs)
        same_address = sum(c == client for _, c in jobs)
        if same_page >= PER_SESSION[kind] or same_address >= PER_ADDRESS[kind]:
            what = "webcam streams" if kind == "live" else "requests"
            return (f"Too many {what} from you at once: please wait for the earlier ones to finish, then try "
                    "again.")
        return None

    return gate


async def watch_streams(demo: gr.Blocks, every: float = 1.0) -> None:
    """End webcam streams that sent no frame for LIVE_IDLE_S, or ran LIVE_MAX_S: their slot goes to others.

    A stream holds its slot while it waits for the next frame; a browser that stops sending (a frozen tab, a
    client that sent one frame) would otherwise hold it until the time limit. Ending it is what Gradio's own
    "close stream" route does.
    """
    handlers: Handlers = demo.handlers
    started: dict[str, float] = {}
    while True:
        await asyncio.sleep(every)
        now = time.monotonic()
        live = [e for e in _pending_jobs(demo) if e.concurrency_id == "live" and not e.closed]
        for event in live:
            seen = handlers.live_seen.get(event.session_hash)
            if seen is None:
                continue  # still waiting for a slot: not idle, just queued
            first = started.setdefault(event._id, now)
            if now - seen > LIVE_IDLE_S or now - first > LIVE_MAX_S:
                event.run_time = float("inf")
                event.closed = True
                event.signal.set()
        alive = {e._id for e in live}
        for key in [k for k in started if k not in alive]:
            del started[key]


def _temp_folder() -> str | None:
    return os.environ.get("GRADIO_TEMP_DIR") or None


def launch_kwargs(demo: gr.Blocks | None = None) -> dict[str, Any]:
    """What ``launch()`` needs beyond Gradio's defaults (the server name/port come from the environment).

    With ``demo``: the bounds of :mod:`mdnet.limits` as middleware, and the idle-stream watcher.
    """
    kwargs: dict[str, Any] = {"max_file_size": service.MAX_UPLOAD_BYTES, "show_error": False}
    if demo is None:
        return kwargs

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        task = asyncio.create_task(watch_streams(demo))
        try:
            yield
        finally:
            task.cancel()

    uploads = limits.UploadLimits(_temp_folder, **UPLOADS)
    middleware = Middleware(limits.LimitsMiddleware, max_body_bytes=MAX_BODY_BYTES, uploads=uploads,
                            job_gate=job_gate(demo))
    kwargs["app_kwargs"] = {"middleware": [middleware], "lifespan": lifespan}
    return kwargs


if __name__ == "__main__":
    import signal
    import sys

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a stopped server still removes its temporary folder
    demo = build_demo()
    demo.launch(**launch_kwargs(demo))
