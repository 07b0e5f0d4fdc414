"""Load test: N concurrent scoring requests to the local app through ``gradio_client``.

Starts ``python app.py`` on a free local port (a separate process, as a user would run it),
waits until it answers, sends one warm-up request, then submits ``--requests`` requests at
once to an endpoint (``/score`` by default) and waits for all of them. The app queues them
and runs at most ``MDNET_APP_CONCURRENCY`` model calls of a kind at a time (``--concurrency``).

Reports completed / failed, latency per request (submit to result: p50, p95, max), the
throughput, and the server's resident memory: before the load, and its peak (Linux's
``VmHWM``, the high-water mark over the whole process life, plus the peak of 20 Hz sampling
during the load).

Usage::

    python benchmarks/bench_load.py [--requests 50] [--concurrency 2] [--endpoint score|analyze]
                                    [--checkpoint PATH] [--photo assets/examples/astronaut.jpg]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vm_kib(pid: int, field: str) -> int | None:
    """A ``/proc/PID/status`` memory field (``VmRSS``, ``VmHWM``) in KiB; None off Linux."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class RssSampler(threading.Thread):
    """Polls a process's resident set size while the load runs."""

    def __init__(self, pid: int, every: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.every, self.peak_kib = pid, every, 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak_kib = max(self.peak_kib, vm_kib(self.pid, "VmRSS") or 0)
            time.sleep(self.every)

    def stop(self) -> int:
        self._halt.set()
        self.join()
        return self.peak_kib


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0-100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def start_server(port: int, checkpoint: str | None, concurrency: int, log) -> subprocess.Popen:
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port),
               MDNET_APP_CONCURRENCY=str(concurrency), GRADIO_ANALYTICS_ENABLED="False")
    if checkpoint:
        env["MDNET_CHECKPOINT"] = checkpoint
    return subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_for(url: str, server: subprocess.Popen, timeout: float = 300.0):
    from gradio_client import Client

    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the app exited with code {server.returncode} before answering")
        try:
            return Client(url, verbose=False, max_workers=256, download_files=False)
        except Exception:
            time.sleep(1.0)
    raise TimeoutError(f"the app did not answer at {url} within {timeout:.0f} s")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--concurrency", type=int, default=2, help="the app's MDNET_APP_CONCURRENCY")
    ap.add_argument("--endpoint", choices=("score", "analyze"), default="score")
    ap.add_argument("--steps", type=int, default=16, help="IG steps for --endpoint analyze")
    ap.add_argument("--checkpoint", default=os.environ.get("MDNET_CHECKPOINT"),
                    help="checkpoint folder (default: $MDNET_CHECKPOINT, else the shipped checkpoints/default)")
    ap.add_argument("--photo", default=str(ROOT / "assets" / "examples" / "astronaut.jpg"))
    args = ap.parse_args(argv)
    from gradio_client import handle_file

    command = "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryFile(mode="w+") as log:
        server = start_server(port, args.checkpoint, args.concurrency, log)
        try:
            client = wait_for(url, server)
            call = ((handle_file(args.photo), 0) if args.endpoint == "score"
                    else (handle_file(args.photo), 0, args.steps, "crop"))
            warm = client.predict(*call, api_name=f"/{args.endpoint}")  # loads the detector, warms the model
            model = warm["model"] if args.endpoint == "score" else warm[0]["model"]
            rss_before = vm_kib(server.pid, "VmRSS")
            sampler = RssSampler(server.pid)
            sampler.start()
            latencies: list[float] = []
            errors: list[str] = []
            lock = threading.Lock()
            done = threading.Event()

            def finished(start: float):
                def callback(job):
                    elapsed = time.perf_counter() - start
                    with lock:
                        try:
                            job.result()
                            latencies.append(elapsed)
                        except Exception as err:  # report, do not stop
                            errors.append(f"{type(err).__name__}: {err}")
                        if len(latencies) + len(errors) == args.requests:
                            done.set()
                return callback

            t0 = time.perf_counter()
            for _ in range(args.requests):
                start = time.perf_counter()
                client.submit(*call, api_name=f"/{args.endpoint}").add_done_callback(finished(start))
            done.wait(timeout=1800)
            wall = time.perf_counter() - t0
            peak_sampled = sampler.stop()
            peak_hwm = vm_kib(server.pid, "VmHWM")
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

    def mib(kib: int | None) -> str:
        return f"{kib / 1024:.0f}" if kib else "n/a"

    report = {
        "completed": len(latencies), "failed": len(errors), "p50_s": percentile(latencies, 50) if latencies else None,
        "p95_s": percentile(latencies, 95) if latencies else None, "max_s": max(latencies) if latencies else None,
        "wall_s": wall, "rss_before_mib": mib(rss_before), "rss_peak_mib": mib(peak_hwm),
        "rss_peak_sampled_mib": mib(peak_sampled), "errors": errors[:5],
    }
    print(f"## App under load: {args.requests} concurrent /{args.endpoint} requests\n")
    print(f"command: `{command}`  ")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}; "
          f"model `{model}`; app concurrency {args.concurrency} per kind of call; photo {Path(args.photo).name}\n")
    print("| requests | completed | failed | p50 s | p95 s | max s | wall s | throughput req/s "
          "| server RSS before MiB | server peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    def fmt(v: float | None) -> str:
        return f"{v:.2f}" if isinstance(v, float) else "n/a"

    print(f"| {args.requests} | {report['completed']} | {report['failed']} | {fmt(report['p50_s'])} | "
          f"{fmt(report['p95_s'])} | {fmt(report['max_s'])} | {wall:.1f} | {len(latencies) / wall:.2f} | "
          f"{report['rss_before_mib']} | {report['rss_peak_mib']} (sampled during load: "
          f"{report['rss_peak_sampled_mib']}) |")
    if errors:
        print("\nfirst errors:\n" + "\n".join(f"- {e}" for e in errors[:5]))
    return report


if __name__ == "__main__":
    main()
