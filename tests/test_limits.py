"""The server's bounds (mdnet.limits): headers, body sizes, uploads, the job gate, who a client is."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from mdnet import limits


def make_client(**options) -> tuple[TestClient, list[bytes]]:
    """A tiny app behind the middleware; the list collects the bodies the app itself received."""
    seen: list[bytes] = []

    async def echo(request: Request):
        seen.append(await request.body())
        return JSONResponse({"ok": True})

    routes = [Route(path, echo, methods=["GET", "POST"]) for path in ("/", "/gradio_api/queue/join",
                                                                      "/gradio_api/upload", "/other")]
    app = Starlette(routes=routes, middleware=[Middleware(limits.LimitsMiddleware, **options)])
    return TestClient(app), seen


def test_every_response_carries_the_security_headers():
    client, _ = make_client(max_body_bytes=1000)
    response = client.get("/")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-security-policy"] == f"frame-ancestors {limits.FRAME_ANCESTORS}"


def test_a_large_body_is_refused_before_the_app_reads_it():
    client, seen = make_client(max_body_bytes=1000)
    assert client.post("/other", content=b"x" * 999).status_code == 200 and seen == [b"x" * 999]
    response = client.post("/other", content=b"x" * 1001)
    assert response.status_code == 413 and "larger than the server accepts" in response.json()["detail"]
    assert len(seen) == 1

    def chunks():  # no Content-Length: counted while it arrives
        for _ in range(5):
            yield b"y" * 300

    assert client.post("/other", content=chunks()).status_code == 413 and len(seen) == 1


def test_the_job_gate_refuses_with_429_and_passes_the_body_through_intact():
    calls = []

    def gate(client, path, body, admitting):
        calls.append((client, path, body))
        return "Too many requests from you at once" if body.get("n", 0) > 2 else None

    client, seen = make_client(max_body_bytes=10_000, job_gate=gate)
    assert client.post("/gradio_api/queue/join", json={"n": 1}).status_code == 200
    assert seen == [b'{"n":1}']
    response = client.post("/gradio_api/queue/join", json={"n": 3})
    assert response.status_code == 429 and response.headers["retry-after"] == "10"
    assert response.json()["detail"].startswith("Too many requests")
    assert client.post("/other", json={"n": 9}).status_code == 200  # not a job route: not asked
    assert [c[1] for c in calls] == ["/gradio_api/queue/join"] * 2


def test_requests_let_through_count_until_answered_so_a_flood_arriving_together_gets_its_share():
    """The app queues a job only after some awaits: the gate sees the requests it let through but not yet answered."""
    answer = asyncio.Event()
    reached = []

    async def slow_join(request: Request):
        reached.append(await request.json())
        await answer.wait()  # e.g. Gradio's join: parse, validate, take a lock, then queue
        return JSONResponse({"ok": True})

    seen_by_gate = []

    def gate(client, path, body, admitting):
        seen_by_gate.append([b["n"] for _, _, b in admitting])
        return "Too many requests from you at once" if len(admitting) >= 2 else None

    app = Starlette(routes=[Route("/gradio_api/queue/join", slow_join, methods=["POST"])],
                    middleware=[Middleware(limits.LimitsMiddleware, max_body_bytes=10_000, job_gate=gate)])

    async def flood():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            posts = [asyncio.create_task(client.post("/gradio_api/queue/join", json={"n": n})) for n in range(5)]
            while len(seen_by_gate) < 5:
                await asyncio.sleep(0.01)
            answer.set()
            codes = [(await post).status_code for post in posts]
            after = (await client.post("/gradio_api/queue/join", json={"n": 5})).status_code
        return codes, after

    codes, after = asyncio.run(flood())
    assert sorted(codes) == [200, 200, 429, 429, 429] and len(reached) == 3  # the two let through, then n=5
    assert sorted(map(len, seen_by_gate[:5])) == [0, 1, 2, 2, 2]
    assert after == 200 and seen_by_gate[5] == []  # answered requests no longer count


def test_uploads_are_bounded_per_client_and_by_the_space_left(tmp_path):
    folder = tmp_path / "uploads"
    folder.mkdir()
    uploads = limits.UploadLimits(lambda: str(folder), max_total_bytes=10_000, min_free_bytes=0, per_minute=3,
                                  bytes_per_minute=1_000_000)
    client, _ = make_client(max_body_bytes=1000, uploads=uploads)
    assert [client.post("/gradio_api/upload", content=b"z" * 100).status_code for _ in range(4)] == [200] * 3 + [429]
    other = {"x-forwarded-for": "198.51.100.1"}  # another visitor behind the same (local) proxy: own budget
    assert client.post("/gradio_api/upload", content=b"z", headers=other).status_code == 200
    (folder / "old-upload.bin").write_bytes(b"0" * 9_990)  # the folder fills up: checked at request time
    response = client.post("/gradio_api/upload", content=b"z" * 100, headers={"x-forwarded-for": "198.51.100.2"})
    assert response.status_code == 503 and "try again in a few minutes" in response.json()["detail"]


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("127.0.0.1", None, "127.0.0.1"),
        ("10.1.2.3", "203.0.113.5", "203.0.113.5"),  # a private proxy in front: believe it
        ("10.1.2.3", "1.1.1.1, 203.0.113.5", "203.0.113.5"),  # the entry the nearest proxy added
        ("8.8.4.4", "1.1.1.1", "8.8.4.4"),  # a public peer cannot pose as someone else
    ],
)
def test_client_key(peer, forwarded, expected):
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    assert limits.client_key(peer, headers) == expected


def test_rate_window_slides():
    window = limits.RateWindow(2, 60)
    assert window.allow("a", now=0) and window.allow("a", now=1) and not window.allow("a", now=2)
    assert window.allow("b", now=2)  # per key
    assert window.allow("a", now=61.5)  # the first event left the window
