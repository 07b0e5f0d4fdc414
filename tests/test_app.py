"""The app builds over mdnet.service, its handlers turn every problem into a message, and the page says what it must.

The handlers are plain methods (``app.Handlers``), called here without a server or a browser.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from gradio.utils import get_upload_folder
from PIL import Image
from test_service import astronaut, make_checkpoint

import app
from mdnet import service

EXAMPLES = Path(app.__file__).resolve().parent / "assets" / "examples"


def shown(image: Path) -> np.ndarray:
    """The pixels of a result image as the handlers hand it to Gradio: a PNG file in Gradio's cache."""
    assert image.suffix == ".png" and image.parent.parent == Path(get_upload_folder())
    return np.asarray(Image.open(image))


def payload(path: Path) -> dict:
    """What an image input hands a handler with ``preprocess=False``: Gradio's file payload."""
    return {"path": str(path), "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}


@pytest.fixture(scope="module")
def status(tmp_path_factory) -> service.ModelStatus:
    return service.load_model(make_checkpoint(tmp_path_factory.mktemp("ckpt") / "micro"))


@pytest.fixture(scope="module")
def handlers(status) -> app.Handlers:
    return app.Handlers(status)


def test_missing_checkpoint_is_a_status_not_an_error(tmp_path):
    status = service.load_model(tmp_path / "nothing-here")
    assert not status.ready and "could not be loaded" in status.message
    demo = app.build_demo(status)
    assert isinstance(demo, gr.Blocks)
    assert "The model is not available" in json.dumps(demo.config, default=str)
    with pytest.raises(gr.Error) as err:
        app.Handlers(status).api_score(payload(EXAMPLES / "astronaut.jpg"))
    assert "could not be loaded" in err.value.message
    message, *_ = app.Handlers(status).quick(payload(EXAMPLES / "astronaut.jpg"), 0, "crop")
    assert "could not be loaded" in message


def test_a_saved_checkpoint_loads_through_the_service(tmp_path, micro):
    micro.save_pretrained(tmp_path / "ckpt")
    status = service.load_model(tmp_path / "ckpt")
    assert status.ready and status.model.cfg.name == "micro"
    assert "loaded" in status.message


def test_app_talks_only_to_the_service():
    source = Path(app.__file__).read_text()
    imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    # the service, and the server's bounds (mdnet.limits: plain ASGI, no model)
    assert all("mdnet" not in line or line == "from mdnet import limits, service" for line in imports)


# --------------------------------------------------------------------------- the page
def test_the_page_states_privacy_honesty_limits_and_api(status):
    demo = app.build_demo(status)
    text = json.dumps(demo.config, default=str)
    for words in ("never stored, logged", "Asian and Caucasian adults", "not** an objective measure", "How sure it is",
                  f"at most {service.MAX_UPLOAD_MB} MB", "/score", "/analyze"):
        assert words in text, words
    endpoints = demo.get_api_info()["named_endpoints"]
    assert set(endpoints) == {"/score", "/analyze"}  # the UI's own events stay private
    assert all(e["description"] for e in endpoints.values())
    assert demo._queue.default_concurrency_limit == app.CONCURRENCY
    assert app.launch_kwargs()["max_file_size"] == service.MAX_UPLOAD_BYTES


def test_gradio_keeps_its_files_in_memory_when_it_can():
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm here")
    memory_backed = app._memory_cache()
    assert memory_backed is app.os.environ.get("GRADIO_TEMP_DIR", "").startswith("/dev/shm/")
    assert ("RAM, not disk" in app.privacy_text(memory_backed)) is memory_backed


# --------------------------------------------------------------------------- upload handlers
def test_upload_gives_a_quick_score_then_every_panel(handlers):
    quick = handlers.new_photo(payload(EXAMPLES / "astronaut.jpg"), "crop")
    message, dropdown, state, ok, score_md, face, *rest = quick
    assert ok and isinstance(state, service.PhotoScore) and "Scored" in message
    assert score_md.startswith("## ") and shown(face).shape == (service.CROP_DISPLAY, service.CROP_DISPLAY, 3)
    i = state.interval  # the calibrated interval, in the words of the page
    assert f"Likely between **{i.low:.1f}** and **{i.high:.1f}**" in score_md and "90 % range" in score_md
    assert (service.UNUSUAL_SENTENCE in score_md) is i.unusual
    assert 'src="data:image/svg+xml;base64,' in score_md  # the interval among the training faces' scores
    assert dropdown.visible is False  # one face: nothing to choose
    full = handlers.full(state, "crop", 4, ok, progress=lambda *a, **k: None)
    message, report, score_md, face, attention, ig, ablation, regions, text, numbers = full
    assert isinstance(report, service.PhotoAnalysis) and message == ""
    assert report.result.aligned is state.aligned  # the face the quick step found, not a second detection
    assert shown(attention).shape == shown(ig).shape == shown(face).shape
    assert ablation.axes and regions.axes and "alone" in text
    assert numbers["integrated_gradients"]["n_steps"] == 4
    # the overlays move to the photo and back without touching the model
    on_photo = handlers.change_view(report, "photo")
    assert all(shown(img).shape == (512, 512, 3) for img in on_photo)
    assert shown(handlers.change_view(report, "crop")[0]).shape == shown(face).shape
    assert all(v is gr.skip() or isinstance(v, dict) for v in handlers.change_view(None, "photo"))


def test_several_faces_offer_a_choice(handlers):
    message, dropdown, state, ok, *_ = handlers.new_photo(payload(EXAMPLES / "two_faces.jpg"), "crop")
    assert ok and "2 faces were found" in message and "Pick another face" in message
    assert dropdown.visible is True and [c[1] for c in dropdown.choices] == [0, 1] and dropdown.value == 0
    message, dropdown, state, ok, *_ = handlers.quick(payload(EXAMPLES / "two_faces.jpg"), 1, "photo")
    assert ok and state.face_index == 1 and "showing Face 2" in message


def test_another_face_is_scored_from_memory_after_the_upload_is_gone(handlers, tmp_path):
    """Gradio deletes uploads after a few minutes; picking Face 2 must not need the file any more."""
    upload = tmp_path / "group.jpg"
    upload.write_bytes((EXAMPLES / "two_faces.jpg").read_bytes())
    message, dropdown, first, ok, *_ = handlers.new_photo(payload(upload), "crop")
    assert ok and first.n_faces == 2
    direct = handlers.quick(payload(upload), 1, "crop")[2]
    upload.unlink()
    message, dropdown, second, ok, score_md, face, *_ = handlers.pick_face(first, 1, "photo")
    assert ok and second.face_index == 1 and "showing Face 2" in message and dropdown == gr.skip()
    assert second.score == pytest.approx(direct.score, abs=1e-5)  # the same crop as a fresh detection
    assert shown(face).shape[2] == 3
    # the report of the full analysis works as well as the quick result, and a missing face is a message
    message, *_ = handlers.pick_face(first, 5, "crop")
    assert "Face number 6" in message
    assert "expired" in handlers.pick_face(None, 1, "crop")[0]


def test_results_keep_a_display_copy_not_the_full_photo(handlers, tmp_path):
    big = np.ascontiguousarray(np.kron(astronaut(), np.ones((8, 8, 1), np.uint8)))  # 4096 x 4096
    result = handlers.quick(payload(save(tmp_path / "big.png", big)), 0, "crop")[2]
    assert max(result.photo.shape[:2]) == service.DISPLAY_MAX_SIDE
    assert result.nbytes < big.nbytes / 10
    assert result.photo_view().shape == (service.DISPLAY_MAX_SIDE, service.DISPLAY_MAX_SIDE, 3)


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda tmp: EXAMPLES / "coffee_no_face.jpg", "No face was found"),
        (lambda tmp: write(tmp / "notes.txt", b"hello, not a photo"), "not an image"),
        (lambda tmp: write(tmp / "huge.jpg", b"\xff" * (service.MAX_UPLOAD_BYTES + 1)),
         f"the limit is {service.MAX_UPLOAD_MB} MB"),
        (lambda tmp: save(tmp / "small.png", astronaut()[::4, ::4]), "too small"),
    ],
)
def test_bad_uploads_are_messages_on_the_page_and_errors_in_the_api(handlers, tmp_path, make, words):
    photo = payload(make(tmp_path))
    message, dropdown, state, ok, *panel = handlers.new_photo(photo, "crop")
    assert words in message and not ok and state is None and panel[0] == "" and panel[1] is None
    full = handlers.full(state, "crop", 16, ok)
    assert all(v is gr.skip() or isinstance(v, dict) for v in full)  # nothing more to do
    with pytest.raises(gr.Error) as err:
        handlers.api_score(photo)
    assert words in err.value.message and "Traceback" not in err.value.message
    with pytest.raises(gr.Error):
        handlers.api_analyze(photo, 0, 2, "crop")


def test_clearing_the_photo_clears_the_page(handlers):
    message, dropdown, state, ok, *panel = handlers.new_photo(None, "crop")
    assert message == "" and state is None and not ok and panel[0] == "" and panel[1] is None


# --------------------------------------------------------------------------- webcam handlers
def test_live_scoring_and_freezing_a_frame(handlers):
    frame = astronaut()
    overlay, text, kept = handlers.live(frame)
    assert "Live score" in text and overlay.shape[2] == 3 and np.array_equal(kept, frame)
    assert "Likely between" in text  # the live score carries its interval too
    overlay, text, kept = handlers.live(np.full((240, 320, 3), 90, np.uint8))
    assert "No face was found" in text and overlay.shape == (240, 320, 3)
    assert all(v is gr.skip() or isinstance(v, dict) for v in handlers.live(None))
    huge = f"data:image/png;base64,{'A' * (service.MAX_FRAME_BYTES * 4 // 3 + 8)}"
    overlay, text, kept = handlers.live({"url": huge})
    assert "larger than a webcam sends" in text and kept == gr.skip()
    tall = np.zeros((5000, 3000, 3), np.uint8)
    assert "larger than a webcam sends" in handlers.live(tall)[1]
    message, report, *panel = handlers.freeze(None, "crop", 16)
    assert "Start the camera" in message and report is None
    message, report, score_md, face, attention, ig, *_ = handlers.freeze(frame, "crop", 4,
                                                                          progress=lambda *a, **k: None)
    assert isinstance(report, service.PhotoAnalysis) and shown(ig).shape == shown(face).shape


def test_the_live_score_comes_from_the_student_and_the_analysis_from_md_net(status, tmp_path):
    import torch

    from mdnet.models.student import FBPStudent

    torch.manual_seed(0)
    fast = service.load_model(FBPStudent().save_pretrained(tmp_path / "student"))
    h = app.Handlers(status, fast)
    assert h.live_status is fast and app.Handlers(status, service.load_fast_model(tmp_path / "none")).fast is None
    frame = astronaut()
    _, text, _ = h.live(frame)
    expected = service.score_frame(frame, status=fast).score
    assert f"Live score: {expected:.2f}" in text and "fast student `student-sface`" in text
    message, report, score_md, *_ = h.freeze(frame, "crop", 2, progress=lambda *a, **k: None)
    assert report.result.model_name == status.model.cfg.name and f"`{status.model.cfg.name}`" in score_md
    assert "mirror-averaged" in app.Handlers(status).live(frame)[1]  # no student: MD-Net scores live


def test_a_live_face_is_followed_from_frame_to_frame_and_searched_for_again(status, monkeypatch):
    from types import SimpleNamespace

    h = app.Handlers(status)
    calls = []
    real = service.score_frame

    def spy(frame, *, status=None, track=None):
        calls.append(track)
        return real(frame, status=status, track=track)

    monkeypatch.setattr(service, "score_frame", spy)
    me, other = SimpleNamespace(session_hash="me"), SimpleNamespace(session_hash="other")
    frame = astronaut()
    for _ in range(app.LIVE_SEARCH_EVERY + 2):
        h.live(frame, me)
    h.live(frame, other)
    assert calls[0] is None and all(c is not None for c in calls[1 : app.LIVE_SEARCH_EVERY + 1])
    assert calls[app.LIVE_SEARCH_EVERY + 1] is None  # the whole frame, once in a while (a larger face came in?)
    assert calls[-1] is None  # another page: its own first frame
    assert np.allclose(calls[1].keypoints, real(frame, status=status).aligned.keypoints)
    h.live(np.full((240, 320, 3), 90, np.uint8), me)  # the face left: searched for again next time
    h.live(frame, me)
    assert calls[-1] is None
    h.forget(me)
    assert "me" not in h.live_tracks and "other" in h.live_tracks


def test_step_counts_from_the_page_are_clamped_to_what_it_offers():
    assert (app._steps(0), app._steps(1000), app._steps("x"), app._steps(None), app._steps(8.0)) == (1, 64, 16, 16, 8)
    assert max(app.STEPS_CHOICES) == service.MAX_STEPS


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ((-1, 16, "crop"), "face_index"),
        ((1.5, 16, "crop"), "face_index"),
        (("two", 16, "crop"), "face_index"),
        ((None, 16, "crop"), "face_index"),
        ((0, 0, "crop"), "steps"),
        ((0, 65, "crop"), "steps"),
        ((0, 1000, "crop"), "steps"),
        ((0, "x", "crop"), "steps"),
        ((0, 16, "xyz"), "view"),
    ],
)
def test_the_api_refuses_out_of_range_arguments_with_a_code(handlers, args, words):
    with pytest.raises(gr.Error) as err:
        handlers.api_analyze(payload(EXAMPLES / "astronaut.jpg"), *args)
    assert err.value.title == "bad_request" and words in err.value.message
    if args[0] != 0:
        with pytest.raises(gr.Error) as err:
            handlers.api_score(payload(EXAMPLES / "astronaut.jpg"), args[0])
        assert err.value.title == "bad_request"


def test_api_errors_carry_the_stable_code(handlers):
    with pytest.raises(gr.Error) as err:
        handlers.api_score(payload(EXAMPLES / "coffee_no_face.jpg"), 0)
    assert err.value.title == "no_face" and "No face was found" in err.value.message
    with pytest.raises(gr.Error) as err:
        handlers.api_score(payload(EXAMPLES / "two_faces.jpg"), 7)
    assert err.value.title == "face_index"


def test_the_api_handlers_return_json_and_images(handlers):
    result = handlers.api_score(payload(EXAMPLES / "two_faces.jpg"), 1)
    assert result["face_index"] == 1 and result["faces_found"] == 2 and 0 <= result["percentile"] <= 100
    numbers, face, attention, ig = handlers.api_analyze(payload(EXAMPLES / "astronaut.jpg"), 0, 2, "photo")
    assert numbers["integrated_gradients"]["n_steps"] == 2
    assert shown(face).shape == shown(attention).shape == shown(ig).shape
    json.dumps(numbers)


# --------------------------------------------------------------------------- helpers
def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def save(path: Path, rgb: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(rgb)).save(path)
    return path


def test_closing_the_page_drops_its_state_at_once(status):
    """Gradio keeps a closed session's state for an hour; the app's unload handler deletes it now."""
    from types import SimpleNamespace

    demo = app.build_demo(status)
    holder = demo.state_holder
    state = next(b for b in demo.blocks.values() if isinstance(b, gr.State))
    holder["page-1"][state._id] = np.zeros((1024, 1024, 3), np.uint8)
    holder["page-2"][state._id] = "another page's results"
    demo.handlers.live_seen["page-1"] = 0.0
    demo.handlers.forget(SimpleNamespace(session_hash="page-1"))
    assert state._id not in holder.session_data["page-1"].state_data and "page-1" not in demo.handlers.live_seen
    assert holder.session_data["page-2"].state_data[state._id] == "another page's results"
    assert any(t[1] == "unload" for fn in demo.fns.values() for t in fn.targets)  # wired to the page's close


def test_result_images_reach_the_cache_whole_while_the_same_image_is_drawn_again(tmp_path, monkeypatch):
    """Two requests that draw the same image must not cut a download of it short (a flaky API test saw it:
    Gradio rewrites a result image in place; with its save_img_array_to_cache here, this test fails)."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    pixels = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)  # ~270 kB of PNG
    path = app.result_file(pixels)
    whole = path.read_bytes()
    assert path.parent.parent == tmp_path and np.array_equal(np.asarray(Image.open(path)), pixels)
    stop, short_reads = threading.Event(), []

    def draw_again():
        while not stop.is_set():
            assert app.result_file(pixels) == path

    writers = [threading.Thread(target=draw_again) for _ in range(4)]
    for w in writers:
        w.start()
    try:
        for _ in range(3000):
            read = path.read_bytes()
            if read != whole:
                short_reads.append(len(read))
    finally:
        stop.set()
        for w in writers:
            w.join()
    assert not short_reads, f"{len(short_reads)} of 3000 reads saw a partial file (sizes {short_reads[:5]})"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no staging file left behind
    assert app.result_file(None) is None
