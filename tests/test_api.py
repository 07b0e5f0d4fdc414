"""The documented API, through ``gradio_client``, against the app served on a free local port.

The server runs in this process (``launch(prevent_thread_lock=True)``) over a calibrated
micro checkpoint, so the round trips are quick; what is tested is the HTTP/queue layer:
named endpoints, file uploads, JSON and images back, errors as messages, the upload limit,
concurrent requests, and a server that keeps answering after bad input.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from test_service import running_app

import app
from mdnet import service

EXAMPLES = Path(app.__file__).resolve().parent / "assets" / "examples"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("ckpt") / "micro") as url:
        yield url


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


def test_analyze_returns_json_and_three_images(client):
    numbers, face, attention, ig = client.predict(handle_file(EXAMPLES / "astronaut.jpg"), 0, 2, "photo",
                                                  api_name="/analyze")
    assert numbers["integrated_gradients"]["n_steps"] == 2 and numbers["ablation"]["full"] > 1
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


def test_concurrent_requests_all_complete_and_the_server_survives(client):
    photos = [EXAMPLES / "astronaut.jpg", EXAMPLES / "coffee_no_face.jpg"] * 3

    def call(path):
        try:
            return client.predict(handle_file(path), 0, api_name="/score")["score"]
        except Exception as err:  # the no-face photos
            return str(err)

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(call, photos))
    assert all(isinstance(r, float) for r in results[::2])
    assert all("No face" in r for r in results[1::2])
    assert client.predict(handle_file(EXAMPLES / "astronaut.jpg"), 0, api_name="/score")["faces_found"] == 1
