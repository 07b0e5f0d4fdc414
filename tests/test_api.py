"""The documented API, through ``gradio_client``, against the app served on a free local port.

The server runs in this process (``launch(prevent_thread_lock=True)``) over a calibrated
micro checkpoint, so the round trips are quick; what is tested is the HTTP/queue layer:
named endpoints, file uploads, JSON and images back, errors as messages, the upload limit,
concurrent requests, and a server that keeps answering after bad input.
"""

from __future__ import annotations

import base64
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file
from test_service import serving

import app
from mdnet import service

EXAMPLES = Path(app.__file__).resolve().parent / "assets" / "examples"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with serving(tmp_path_factory.mktemp("ckpt") / "micro") as (url, demo):
        yield url, demo


@pytest.fixture(scope="module")
def server(served):
    return served[0]


@pytest.fixture(scope="module")
def client(server, tmp_path_factory) -> Client:
    return Client(server, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))


def test_the_two_endpoints_are_named_and_documented(client):
    api = client.view_api(print_info=False, return_format="dict")
    assert set(api["named_endpoints"]) == {"/score", "/analyze"}
    score = api["named_endpoints"]["/score"]
    assert [p["parameter_name"] for p in score["parameters"]] == ["photo", "face_index"]
    analyze = api["named_endpoints"]["/analyze"]
    assert [p["parameter_name"] for p in analyze["parameters"]] == ["photo", "face_index", "steps", "view"]
    assert len(analyze["returns"]) == 4


def test_score_returns_the_score_and_where_it_falls(client):
    result = client.predict(handle_file(EXAMPLES / "two_faces.jpg"), 1, api_name="/score")
    assert 1 <= result["score"] <= 5 and 0 <= result["percentile"] <= 100
    assert result["faces_found"] == 2 and result["face_index"] == 1 and len(result["faces"]) == 2
    interval = result["interval"]  # the test checkpoint is calibrated (tests/test_service.make_checkpoint)
    assert 1 <= interval["low"] <= result["score"] <= interval["high"] <= 5 and interval["level"] == 0.9
    assert isinstance(interval["unusual"], bool) and isinstance(result["unusual_photo_note"], str)


def test_analyze_returns_json_and_three_images(client):
    numbers, face, attention, ig = client.predict(handle_file(EXAMPLES / "astronaut.jpg"), 0, 2, "photo",
                                                  api_name="/analyze")
    assert numbers["integrated_gradients"]["n_steps"] == 2 and numbers["ablation"]["full"] > 1
    assert numbers["interval"]["low"] <= numbers["score"] <= numbers["interval"]["high"]
    for path in (face, attention, ig):
        assert Path(path).is_file() and Path(path).stat().st_size > 1000


@pytest.mark.parametrize(
    ("path", "words"),
    [(EXAMPLES / "coffee_no_face.jpg", "No face was found"), (Path(app.__file__), "not an image")],
    ids=["no-face", "not-an-image"],
)
def test_bad_input_is_an_error_with_a_plain_message(client, path, words):
    with pytest.raises(Exception) as err:
        client.predict(handle_file(path), 0, api_name="/score")
    assert words in str(err.value) and "Traceback" not in str(err.value)


def test_uploads_over_the_limit_are_refused(client, tmp_path):
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff" * (service.MAX_UPLOAD_BYTES + 1024))
    with pytest.raises(Exception) as err:
        client.predict(handle_file(big), 0, api_name="/score")
    assert "size" in str(err.value).lower() or "large" in str(err.value).lower(), str(err.value)
    print(f"oversized upload: {err.value!r}")


def test_concurrent_requests_all_complete_and_the_server_survives(server, client, tmp_path):
    """Three clients, two requests each, at once: all complete (within every client's bounds)."""
    clients = [Client(server, verbose=False, download_files=str(tmp_path)) for _ in range(3)]
    jobs = [(c, p) for c in clients for p in (EXAMPLES / "astronaut.jpg", EXAMPLES / "coffee_no_face.jpg")]

    def call(job):
        c, path = job
        try:
            return c.predict(handle_file(path), 0, api_name="/score")["score"]
        except Exception as err:  # the no-face photos
            return str(err)

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(call, jobs))
    assert all(isinstance(r, float) for r in results[::2])
    assert all("No face" in r for r in results[1::2])
    assert client.predict(handle_file(EXAMPLES / "astronaut.jpg"), 0, api_name="/score")["faces_found"] == 1


# --------------------------------------------------------------------------- bounds for many users
def test_the_api_says_what_it_refuses_with_a_stable_code(client):
    from gradio_client.exceptions import AppError

    for args, words in [((-1, 16, "crop"), "face_index"), ((0, 1000, "crop"), "steps"), ((0, 16, "xyz"), "view")]:
        with pytest.raises(AppError) as err:
            client.predict(handle_file(EXAMPLES / "astronaut.jpg"), *args, api_name="/analyze")
        assert err.value.title == "bad_request" and words in err.value.message
    with pytest.raises(AppError) as err:
        client.predict(handle_file(EXAMPLES / "coffee_no_face.jpg"), 0, api_name="/score")
    assert err.value.title == "no_face"


def test_one_client_cannot_fill_the_queue(served, tmp_path, monkeypatch):
    """A flood of /analyze calls from one address gets only its share of the queue; another client still scores.

    The flood's jobs are held until every request has been answered, so the count does not depend on how
    fast this machine runs them; the 16 requests arrive together, as a flood does.
    """
    server, demo = served
    release = threading.Event()
    analyze = demo.handlers._analyze

    def held(*args, **kwargs):
        release.wait(120)
        return analyze(*args, **kwargs)

    monkeypatch.setattr(demo.handlers, "_analyze", held)
    flooder = Client(server, verbose=False, headers={"X-Forwarded-For": "203.0.113.7"},
                     download_files=str(tmp_path))
    other = Client(server, verbose=False, headers={"X-Forwarded-For": "198.51.100.9"},
                   download_files=str(tmp_path))
    photo = handle_file(EXAMPLES / "astronaut.jpg")
    jobs = [flooder.submit(photo, 0, 2, "crop", api_name="/analyze") for _ in range(16)]
    share = min(app.PER_SESSION["analysis"], app.PER_ADDRESS["analysis"])
    try:
        deadline = time.monotonic() + 120
        while sum(job.done() for job in jobs) < len(jobs) - share and time.monotonic() < deadline:
            time.sleep(0.1)
        start = time.perf_counter()
        assert 1 <= other.predict(photo, 0, api_name="/score")["score"] <= 5
        other_latency = time.perf_counter() - start
        refused = [job for job in jobs if job.done()]
    finally:
        release.set()
    for job in refused:
        with pytest.raises(Exception) as err:
            job.result(timeout=0)
        assert "Too many requests from you" in str(getattr(getattr(err.value, "response", None), "text", err.value))
    accepted = [job.result(timeout=120) for job in jobs if job not in refused]
    assert len(refused) == len(jobs) - share and len(accepted) == share
    assert all(numbers["score"] > 1 for numbers, *_ in accepted)
    assert other_latency < 20, other_latency


def test_pages_send_safe_headers(server):
    response = httpx.get(server)
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors" in response.headers["content-security-policy"]
    assert "huggingface.co" in response.headers["content-security-policy"]


def test_request_bodies_over_the_limit_are_refused_before_they_are_read(server):
    body = b"{" + b" " * (app.MAX_BODY_BYTES + 10) + b"}"
    response = httpx.post(f"{server.rstrip('/')}/gradio_api/queue/join", content=body,
                          headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == 413 and "larger than the server accepts" in response.json()["detail"]


def _frame_url() -> str:
    return "data:image/jpeg;base64," + base64.b64encode((EXAMPLES / "astronaut.jpg").read_bytes()).decode()


def test_a_webcam_stream_that_goes_quiet_gives_back_its_slot(served, monkeypatch):
    """Two raw connections that send one frame each and then nothing: their slots come back."""
    url, demo = served
    monkeypatch.setattr(app, "LIVE_IDLE_S", 1.0)
    live = next(fn for fn in demo.fns.values() if fn.concurrency_id == "live")
    camera = live.inputs[0]
    sessions = [uuid.uuid4().hex for _ in range(2)]
    for session in sessions:
        body = {"data": [{"url": _frame_url(), "meta": {"_type": "gradio.FileData"}}], "fn_index": live._id,
                "session_hash": session, "trigger_id": camera._id, "event_data": None}
        assert httpx.post(f"{url.rstrip('/')}/gradio_api/queue/join", json=body, timeout=30).status_code == 200

    def live_jobs():
        return [e for e in demo._queue.event_ids_to_events.values() if e.concurrency_id == "live"]

    deadline = time.monotonic() + 30
    while not all(s in demo.handlers.live_seen for s in sessions) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(s in demo.handlers.live_seen for s in sessions), "the streams never got their first frame scored"
    while live_jobs() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not live_jobs(), "quiet streams still hold their slots"
