"""The guarded server (`python -m tasks.serve`) against `mlflow models serve`: the same
registered model, the same concurrent load, one after the other in one run, on loopback.

    python bench/serve_load.py                                   # after `make run`
    python bench/serve_load.py --model "models:/text-classifier@challenger" --clients 16 --seconds 20

Each client keeps one connection open and sends valid requests (`--texts` short texts each)
back to back for `--seconds`, at most `--max-requests` in all; the table gives requests/s,
texts/s, p50/p99 latency and errors (any non-200 or dropped connection) for each server,
then each server is asked a set of malformed requests and the table counts 5xx answers and
crashes.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["what a great flight", "lost my bag again", "the crew was friendly", "delayed for three hours"]
MALFORMED = {
    "invalid UTF-8": b'{"inputs": ["\xff\xfe"]}',
    "nested 5,000 deep": b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    "5,000-digit number": b'{"inputs": [' + b"9" * 5000 + b"]}",
    "empty text": b'{"inputs": [""]}',
    "a number as text": b'{"inputs": [3]}',
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(cmd: list[str], port: int, log: Path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[:3]} exited: {log.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/ping")
                if c.getresponse().status == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[:3]} did not answer /ping: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield proc
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if proc.poll() is None:
                os.killpg(proc.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=15)


def load(port: int, clients: int, seconds: float, max_requests: int, n_texts: int) -> dict:
    body = json.dumps({"inputs": (TEXTS * n_texts)[:n_texts]}).encode()
    latencies: list[float] = []
    errors, sent, lock = [0], [0], threading.Lock()
    stop_at = time.monotonic() + seconds

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.monotonic() < stop_at:
            with lock:
                if sent[0] >= max_requests:
                    return
                sent[0] += 1
            start = time.perf_counter()
            try:
                conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            with lock:
                latencies.append(time.perf_counter() - start)
                errors[0] += not ok

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ordered = sorted(latencies)
    return {
        "requests": len(ordered),
        "requests_per_s": len(ordered) / wall,
        "texts_per_s": len(ordered) * n_texts / wall,
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "errors": errors[0],
    }


def malformed(port: int, proc: subprocess.Popen) -> dict:
    answers = {}
    for name, body in MALFORMED.items():
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
            answers[name] = conn.getresponse().status
        except (OSError, http.client.HTTPException):
            answers[name] = "no answer"
    return {"answers": answers, "5xx": sum(1 for s in answers.values() if s == "no answer" or s >= 500),
            "alive_after": proc.poll() is None}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="models:/text-classifier@challenger")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--max-requests", type=int, default=20_000)
    ap.add_argument("--texts", type=int, default=4, help="texts per request")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "serve_load.json")
    args = ap.parse_args()
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{ROOT / 'mlflow.db'}")
    servers = {
        "guarded (python -m tasks.serve)": lambda p: [sys.executable, "-m", "tasks.serve", "-m", args.model, "-p", str(p)],
        "mlflow models serve": lambda p: ["mlflow", "models", "serve", "-m", args.model, "--env-manager", "local",
                                          "-h", "127.0.0.1", "-p", str(p)],  # fmt: skip
    }
    results = {}
    for name, cmd in servers.items():
        port = free_port()
        with server(cmd(port), port, Path(tempfile.gettempdir()) / f"serve_load-{port}.log") as proc:
            results[name] = load(port, args.clients, args.seconds, args.max_requests, args.texts)
            results[name]["malformed"] = malformed(port, proc)
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    setup = {"model": args.model, "clients": args.clients, "seconds": args.seconds, "texts_per_request": args.texts,
             "cpus": os.cpu_count()}  # fmt: skip
    args.out.write_text(json.dumps({"setup": setup, "results": results}, indent=2) + "\n")
    print("\n| server | requests | requests/s | texts/s | p50 ms | p99 ms | errors | malformed: 5xx or no answer |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['requests']:,} | {r['requests_per_s']:.1f} | {r['texts_per_s']:.1f} | {r['p50_ms']:.1f} | "
              f"{r['p99_ms']:.1f} | {r['errors']} | {r['malformed']['5xx']} of {len(MALFORMED)} |")  # fmt: skip


if __name__ == "__main__":
    main()
