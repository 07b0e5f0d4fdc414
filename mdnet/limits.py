"""Bounds on what a public server accepts: request bodies, uploads, jobs per client, and safe headers.

:class:`LimitsMiddleware` is plain ASGI (no web framework is imported here), so it wraps any ASGI
app: the Gradio app passes it to FastAPI's ``middleware=`` argument. For every HTTP request it

- adds the headers a public page should send (``X-Content-Type-Options: nosniff``, a
  ``frame-ancestors`` policy that lets the page be embedded where it is meant to be, e.g. by a
  Hugging Face Space, and nowhere else);
- refuses a JSON body over ``max_body_bytes`` (webcam frames arrive as data URLs inside JSON, where
  the upload size limit does not apply) before the app reads it;
- checks an upload against a per-client rate and against the space left in the (memory-backed)
  temporary folder, at request time, and refuses it politely when either is exhausted;
- asks ``job_gate(client, path, body, admitting)`` before a request that starts a job, so a caller can
  refuse a client that already has too many jobs waiting (HTTP 429 with a plain sentence and
  ``Retry-After``). ``admitting`` lists the job requests let through whose answer has not yet gone out:
  a job joins the app's queue only some awaits after the gate, so a flood of requests arriving together
  would otherwise all pass a gate that counts the queue alone.

Clients are told apart by :func:`client_key`: the peer address, or the address a proxy in front of
the server reports (only when the peer itself is a private or loopback address, as a Space's proxy
is), so that one visitor cannot pose as many by sending headers.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import threading
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Admitted = tuple[str, str, dict[str, Any]]  # (client, path, parsed body) of a job request let through
JobGate = Callable[[str, str, dict[str, Any], list[Admitted]], "str | None"]

# Who may embed the page in a frame: itself and Hugging Face (the Space page embeds the app's own host).
FRAME_ANCESTORS = "'self' https://huggingface.co https://*.hf.space"
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", f"frame-ancestors {FRAME_ANCESTORS}".encode()),
    (b"referrer-policy", b"strict-origin-when-cross-origin"),
)


def client_key(peer: str | None, headers: Iterable[tuple[bytes, bytes]] | dict[str, str]) -> str:
    """Who sent a request: the peer address, or the nearest proxy's ``X-Forwarded-For`` entry.

    The forwarded address is believed only when the peer is a private or loopback address (a proxy of
    the hosting platform, or a local reverse proxy); the rightmost entry is the one that proxy added.
    """
    peer = peer or "unknown"
    forwarded = None
    items = headers.items() if isinstance(headers, dict) else headers
    for name, value in items:
        name = name.decode("latin-1") if isinstance(name, bytes) else name
        if name.lower() == "x-forwarded-for":
            forwarded = value.decode("latin-1") if isinstance(value, bytes) else value
    if forwarded and _is_internal(peer):
        last = forwarded.split(",")[-1].strip()
        if last:
            return last
    return peer


def _is_internal(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address in ("testclient", "unknown")
    return ip.is_private or ip.is_loopback


class RateWindow:
    """At most ``limit`` events per ``seconds`` per key (a sliding window; thread-safe)."""

    def __init__(self, limit: int, seconds: float):
        self.limit, self.seconds = int(limit), float(seconds)
        self._events: dict[str, deque[tuple[float, float]]] = defaultdict(deque)
        self._lock = threading.Lock()

    def allow(self, key: str, amount: float = 1.0, now: float | None = None) -> bool:
        """Record ``amount`` for ``key`` if the window has room for it; whether it had."""
        now = time.monotonic() if now is None else now
        with self._lock:
            window = self._events[key]
            while window and now - window[0][0] > self.seconds:
                window.popleft()
            if sum(a for _, a in window) + amount > self.limit:
                return False
            window.append((now, amount))
            if len(self._events) > 10_000:  # forget idle clients
                for k in [k for k, w in self._events.items() if not w]:
                    del self._events[k]
            return True


def folder_bytes(folder: str | os.PathLike) -> int:
    """Total size of the files under ``folder`` (0 when it does not exist)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):  # deleted meanwhile
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def free_bytes(folder: str | os.PathLike) -> int:
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize


class UploadLimits:
    """How much may be uploaded: per client and minute, and in total in the temporary folder.

    Args:
        folder: returns the folder uploads go to (read at request time; None: not checked).
        max_total_bytes: the most the folder may hold.
        min_free_bytes: refuse when an upload would leave less free space than this.
        per_minute: uploads per client per minute.
        bytes_per_minute: bytes per client per minute.
    """

    def __init__(self, folder: Callable[[], str | None], max_total_bytes: int, min_free_bytes: int,
                 per_minute: int, bytes_per_minute: int):
        self.folder = folder
        self.max_total_bytes, self.min_free_bytes = int(max_total_bytes), int(min_free_bytes)
        self.count = RateWindow(per_minute, 60.0)
        self.volume = RateWindow(bytes_per_minute, 60.0)

    def check(self, client: str, length: int) -> tuple[int, str] | None:
        """``(status, message)`` when an upload of ``length`` bytes from ``client`` must be refused, else None."""
        folder = self.folder()
        full = folder and Path(folder).is_dir() and (
            free_bytes(folder) - length < self.min_free_bytes or folder_bytes(folder) + length > self.max_total_bytes)
        if full:
            return 503, "The server is busy with other people's photos right now. Please try again in a few minutes."
        if not self.count.allow(client) or not self.volume.allow(client, max(length, 1)):
            return 429, "You are uploading photos faster than this server allows. Please wait a minute and try again."
        return None


class LimitsMiddleware:
    """ASGI middleware: safe headers, body-size limits, upload limits and a per-client job gate.

    Args:
        app: the ASGI app to wrap.
        max_body_bytes: the largest JSON body accepted (uploads are bounded by the app's own file limit).
        uploads: limits for ``POST .../upload`` (None: not checked).
        job_gate: ``(client, path, body, admitting) -> message or None``, asked before ``POST`` to a path
            in ``job_paths``; a message refuses the request with HTTP 429. ``admitting``: the requests it
            let through that the app has not yet answered (each counts until then).
        job_paths: path fragments of the routes that start a job.
        upload_path: the path suffix of the upload route.
        headers: headers added to every HTTP response.
    """

    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        *,
        max_body_bytes: int,
        uploads: UploadLimits | None = None,
        job_gate: JobGate | None = None,
        job_paths: tuple[str, ...] = ("/queue/join", "/call/", "/run/", "/api/"),
        upload_path: str = "/upload",
        headers: tuple[tuple[bytes, bytes], ...] = SECURITY_HEADERS,
    ):
        self.app = app
        self.max_body_bytes = int(max_body_bytes)
        self.uploads = uploads
        self.job_gate = job_gate
        self.job_paths = job_paths
        self.upload_path = upload_path
        self.headers = headers
        self._admitting: dict[int, Admitted] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = self._with_headers(send)
        if scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        client = client_key((scope.get("client") or (None,))[0], scope.get("headers", []))
        length = _content_length(scope)
        if path.endswith(self.upload_path):
            refusal = self.uploads.check(client, length or 0) if self.uploads is not None else None
            if refusal is not None:
                await _refuse(send, *refusal)
                return
            await self.app(scope, receive, send)
            return
        if length is not None and length > self.max_body_bytes:
            await _refuse(send, 413, _too_large(self.max_body_bytes))
            return
        body, more = await _read_body(receive, self.max_body_bytes)
        if body is None:
            await _refuse(send, 413, _too_large(self.max_body_bytes))
            return
        if self.job_gate is not None and any(p in path for p in self.job_paths):
            try:
                parsed = json.loads(body or b"{}")
            except ValueError:
                parsed = {}
            parsed = parsed if isinstance(parsed, dict) else {}
            message = self.job_gate(client, path, parsed, list(self._admitting.values()))
            if message is not None:
                await _refuse(send, 429, message, retry_after=10)
                return
            # no await between the gate's answer and this entry: the check and the count are one step
            token = id(scope)
            self._admitting[token] = (client, path, parsed)
            try:
                await self.app(scope, _replay(body, more, receive), send)
            finally:
                del self._admitting[token]
            return
        await self.app(scope, _replay(body, more, receive), send)

    def _with_headers(self, send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in self.headers if k not in names]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        return wrapped


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _too_large(limit: int) -> str:
    return f"This request is larger than the server accepts ({limit // 2**20} MB)."


async def _read_body(receive: Receive, limit: int) -> tuple[bytes | None, bool]:
    """The whole body (None when it exceeds ``limit``), and whether the client has more messages to send."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False  # disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None, False
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), True


def _replay(body: bytes, connected: bool, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        if connected:
            return await receive()  # wait for the disconnect, as the app expects
        return {"type": "http.disconnect"}

    return replay


async def _refuse(send: Send, status: int, message: str, retry_after: int | None = None) -> None:
    body = json.dumps({"detail": message, "error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def release_memory_promptly(threshold_bytes: int = 1 << 20) -> bool:
    """Make freed photos leave the process: glibc serves allocations from ``threshold_bytes`` up with ``mmap``.

    glibc otherwise raises its mmap threshold after the first large free, so the next decoded photos come
    from heap arenas that are not returned to the system when freed: a server's memory would keep the
    high-water mark of every photo it ever decoded. Returns False where this is not glibc (nothing changes).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, int(threshold_bytes)))  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def trim_memory() -> None:
    """Hand freed heap memory back to the system now (glibc's ``malloc_trim``; a no-op elsewhere)."""
    import ctypes
    import ctypes.util

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
