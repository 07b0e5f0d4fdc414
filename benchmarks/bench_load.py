"""Many users at once against the local app: a mixed load, and one client flooding while another scores.

Starts ``python app.py`` on a free local port (a separate process, as a user would run it) and
waits until it answers. Every simulated visitor is its own ``gradio_client`` session with its own
address (sent as ``X-Forwarded-For``, which the app believes from a loopback peer, as it does from a
Space's proxy), so the per-client bounds apply to each visitor as they would in the wild.

``--scenario mixed`` (default): at once, ``--uploaders`` visitors each score a photo and then ask for its
full analysis (what the page does after an upload), ``--scorers`` API clients each call ``/score``
twice, and ``--streams`` webcam streams send a frame every 0.75 s for the whole run (raw stream
connections, as the browser makes them). Reports, per kind: completed / failed, latency p50 / p95 /
max; whether the streams stayed live; and the server's resident memory before the load, at its peak
(``VmHWM``) and after the load (streams stopped, 10 s later).

``--scenario flood``: one visitor scores a photo ``--repeats`` times on a quiet server, then again while
another client fires ``--flood`` fire-and-forget ``/analyze`` calls (64 Integrated Gradients steps each,
the most the API accepts). Reports the flooder's accepted / refused calls and the other visitor's
latency, quiet vs during the flood.

Usage::

    python benchmarks/bench_load.py [--scenario mixed|flood] [--checkpoint PATH] [--photo PATH] ...
"""

from __future__ import annotations

import argparse
import base64
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STREAM_EVERY_S = 0.75


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vm_mib(pid: int, field: str) -> float | None:
    """A ``/proc/PID/status`` memory field (``VmRSS``, ``VmHWM``) in MiB; None off Linux."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0-100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def start_server(port: int, checkpoint: str | None, log) -> subprocess.Popen:
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port),
               GRADIO_ANALYTICS_ENABLED="False")
    if checkpoint:
        env["MDNET_CHECKPOINT"] = checkpoint
    return subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def visitor(url: str, n: int, tmp: str):
    """A ``gradio_client`` session of its own, from its own (simulated) address."""
    from gradio_client import Client

    return Client(url, verbose=False, headers={"X-Forwarded-For": f"10.77.{n // 250}.{n % 250 + 1}"},
                  download_files=tmp)


def wait_for(url: str, server: subprocess.Popen, tmp: str, timeout: float = 300.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the app exited with code {server.returncode} before answering")
        try:
            return visitor(url, 0, tmp)
        except Exception:
            time.sleep(1.0)
    raise TimeoutError(f"the app did not answer at {url} within {timeout:.0f} s")


class Stream(threading.Thread):
    """A webcam stream as the browser makes it: join the live event, then post a frame every 0.75 s."""

    def __init__(self, url: str, photo: Path, n: int, halt: threading.Event):
        super().__init__(daemon=True)
        self.url, self.halt, self.n = url.rstrip("/"), halt, n
        self.frame = {"url": "data:image/jpeg;base64," + base64.b64encode(photo.read_bytes()).decode(),
                      "meta": {"_type": "gradio.FileData"}}
        self.sent = self.refused = 0
        self.error = ""

    def run(self) -> None:
        import httpx

        config = httpx.get(f"{self.url}/config", timeout=30).json()
        dep = next(d for d in config["dependencies"] if any(t[1] == "stream" for t in d["targets"]))
        session = uuid.uuid4().hex
        body = {"data": [self.frame], "fn_index": dep["id"], "session_hash": session,
                "trigger_id": dep["targets"][0][0], "event_data": None}
        headers = {"X-Forwarded-For": f"10.88.0.{self.n + 1}"}
        with httpx.Client(timeout=30, headers=headers) as http:
            joined = http.post(f"{self.url}/gradio_api/queue/join", json=body)
            if joined.status_code != 200:
                self.error = f"join refused: {joined.status_code} {joined.text[:100]}"
                return
            event = joined.json()["event_id"]
            while not self.halt.wait(STREAM_EVERY_S):
                ok = http.post(f"{self.url}/gradio_api/stream/{event}", json=body).status_code == 200
                self.sent += ok
                self.refused += not ok
            http.post(f"{self.url}/gradio_api/stream/{event}/close")


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    try:
        result = fn(*args, **kwargs)
    except Exception as err:  # report, do not stop
        result = err
    return time.perf_counter() - start, result


def summarize(name: str, results: list[tuple[float, object]]) -> str:
    ok = [t for t, r in results if not isinstance(r, Exception)]
    failed = [r for _, r in results if isinstance(r, Exception)]
    stats = (f"{percentile(ok, 50):.2f} | {percentile(ok, 95):.2f} | {max(ok):.2f}" if ok else "n/a | n/a | n/a")
    line = f"| {name} | {len(results)} | {len(ok)} | {len(failed)} | {stats} |"
    if failed:
        line += f" first error: {type(failed[0]).__name__}: {str(failed[0])[:120]}"
    return line


def mixed(url: str, server: subprocess.Popen, args, tmp: str) -> None:
    from gradio_client import handle_file

    photo = handle_file(args.photo)
    warm = visitor(url, 1000, tmp)
    warm.predict(photo, 0, 16, "crop", api_name="/analyze")  # loads the detector, warms the model and plots
    before = vm_mib(server.pid, "VmRSS")
    halt = threading.Event()
    streams = [Stream(url, Path(args.photo), i, halt) for i in range(args.streams)]
    for s in streams:
        s.start()
    time.sleep(2 * STREAM_EVERY_S)

    def upload_then_analyze(n: int) -> list[tuple[str, tuple[float, object]]]:
        client = visitor(url, n, tmp)
        return [("upload: /score", timed(client.predict, photo, 0, api_name="/score")),
                ("upload: /analyze (16 steps)", timed(client.predict, photo, 0, 16, "crop", api_name="/analyze"))]

    def api_scores(n: int) -> list[tuple[str, tuple[float, object]]]:
        client = visitor(url, n, tmp)
        return [("API: /score", timed(client.predict, photo, 0, api_name="/score")) for _ in range(2)]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.uploaders + args.scorers) as pool:
        futures = [pool.submit(upload_then_analyze, 1 + i) for i in range(args.uploaders)]
        futures += [pool.submit(api_scores, 100 + i) for i in range(args.scorers)]
        rows = [row for f in futures for row in f.result()]
    wall = time.perf_counter() - t0
    halt.set()
    for s in streams:
        s.join(30)
    peak = vm_mib(server.pid, "VmHWM")
    time.sleep(10)
    after = vm_mib(server.pid, "VmRSS")
    print(f"### Mixed load: {args.uploaders} uploads + analyses, {args.scorers} x 2 /score, "
          f"{args.streams} webcam streams, all at once ({wall:.1f} s)\n")
    print("| requests | sent | completed | failed | p50 s | p95 s | max s |")
    print("|---|---|---|---|---|---|---|")
    for name in dict.fromkeys(n for n, _ in rows):
        print(summarize(name, [r for n, r in rows if n == name]))
    for s in streams:
        state = s.error or f"live throughout: {s.sent} frames delivered, {s.refused} refused"
        print(f"| webcam stream {s.n + 1} ({STREAM_EVERY_S} s per frame) | {s.sent + s.refused} | {state} | | | | |")
    print(f"\nserver memory (RSS MiB): before {before:.0f}, peak {peak:.0f}, 10 s after the load {after:.0f}")


def flood(url: str, server: subprocess.Popen, args, tmp: str) -> None:
    from gradio_client import handle_file

    photo = handle_file(args.photo)
    other = visitor(url, 1, tmp)
    other.predict(photo, 0, 16, "crop", api_name="/analyze")  # warm up
    quiet = [timed(other.predict, photo, 0, api_name="/score")[0] for _ in range(args.repeats)]
    flooder = visitor(url, 2, tmp)
    jobs = [flooder.submit(photo, 0, 64, "crop", api_name="/analyze") for _ in range(args.flood)]
    time.sleep(1.0)
    loaded = [timed(other.predict, photo, 0, api_name="/score")[0] for _ in range(args.repeats)]
    accepted = refused = 0
    for job in jobs:
        try:
            job.result(timeout=1800)
            accepted += 1
        except Exception:
            refused += 1
    print(f"### One client floods /analyze ({args.flood} calls, 64 steps) while another scores a photo\n")
    print("| the other client's /score | median s | max s |")
    print("|---|---|---|")
    print(f"| quiet server | {statistics.median(quiet):.2f} | {max(quiet):.2f} |")
    print(f"| during the flood | {statistics.median(loaded):.2f} | {max(loaded):.2f} |")
    print(f"\nthe flood: {accepted} calls accepted, {refused} refused with 'too many requests' "
          f"(ratio of medians {statistics.median(loaded) / statistics.median(quiet):.1f}x)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", choices=("mixed", "flood"), default="mixed")
    ap.add_argument("--uploaders", type=int, default=8, help="mixed: visitors who upload and get the analysis")
    ap.add_argument("--scorers", type=int, default=8, help="mixed: API clients calling /score twice")
    ap.add_argument("--streams", type=int, default=2, help="mixed: webcam streams")
    ap.add_argument("--flood", type=int, default=130, help="flood: fire-and-forget /analyze calls")
    ap.add_argument("--repeats", type=int, default=5, help="flood: /score calls of the other client, each phase")
    ap.add_argument("--checkpoint", default=os.environ.get("MDNET_CHECKPOINT"),
                    help="checkpoint folder (default: $MDNET_CHECKPOINT, else the shipped checkpoints/default)")
    ap.add_argument("--photo", default=str(ROOT / "assets" / "examples" / "astronaut.jpg"))
    args = ap.parse_args(argv)
    command = "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryFile(mode="w+") as log, tempfile.TemporaryDirectory() as tmp:
        server = start_server(port, args.checkpoint, log)
        try:
            wait_for(url, server, tmp)
            print(f"command: `{command}`  ")
            print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}; "
                  f"photo {Path(args.photo).name}\n")
            (mixed if args.scenario == "mixed" else flood)(url, server, args, tmp)
        except BaseException:
            log.seek(0)
            sys.stderr.write(log.read()[-4000:])
            raise
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()


if __name__ == "__main__":
    main()
