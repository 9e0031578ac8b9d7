"""The MLflow UI and the Prefect UI over this workspace's local state, on loopback.

    python -m tasks.ui              # or: make ui; Ctrl-C stops both
    python -m tasks.ui --check      # start both, wait until they answer, print the URLs, stop

MLflow reads `mlflow.db` and `mlartifacts/`; Prefect reads the flow runs in PREFECT_HOME.
Both listen on 127.0.0.1 only. Prefect's UI is told where its API is (otherwise, on any port
but 4200, every page is empty), and Prefect serves its first UI, which, unlike the newer one,
sends no request to an analytics host: nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from tasks.lib.common import StageError, apply_env_defaults, run_stage
from tasks.lib.summary import MLFLOW_UI, PREFECT_UI, experiment_url

HOST = "127.0.0.1"
READY_TIMEOUT_S = 120  # a fresh Prefect database takes ~20 s to migrate


def prefect_env(port: int) -> dict[str, str]:
    """Prefect's settings for a UI that works on any port and calls nothing outside loopback."""
    return {
        "PREFECT_UI_API_URL": f"http://{HOST}:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_V2_ENABLED": "false",  # the newer UI calls an analytics host on every page
        "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
    }


def commands(root: Path, mlflow_port: int, prefect_port: int) -> dict[str, tuple[list[str], dict, str]]:
    """name -> (command, extra environment, the URL that answers once it is up)."""
    bin_dir = Path(sys.executable).parent
    db = (root / "mlflow.db").resolve()
    return {
        "MLflow": (
            [str(bin_dir / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{db}", "--host", HOST,
             "--port", str(mlflow_port), "--workers", "1"],
            {},
            f"http://{HOST}:{mlflow_port}/health",
        ),
        "Prefect": (
            [str(bin_dir / "prefect"), "server", "start", "--host", HOST, "--port", str(prefect_port)],
            prefect_env(prefect_port),
            f"http://{HOST}:{prefect_port}/api/health",
        ),
    }  # fmt: skip


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((HOST, port)) != 0


def wait_until_up(name: str, url: str, proc: subprocess.Popen, timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StageError(f"the {name} UI exited with status {proc.returncode} before it answered; its log is above")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise StageError(f"the {name} UI did not answer at {url} within {timeout:.0f} s")


def start(root: Path, mlflow_port: int, prefect_port: int) -> list[subprocess.Popen]:
    """Start both UIs and wait until each answers; stop them all if one fails."""
    if not (root / "mlflow.db").exists():
        raise StageError(f"no MLflow store in {root.resolve()} (mlflow.db): run the pipeline first (make run)")
    busy = [str(p) for p in (mlflow_port, prefect_port) if not port_free(p)]
    if busy:
        raise StageError(f"port(s) {', '.join(busy)} on {HOST} are in use: stop what uses them or pass other ports")
    procs = []
    try:
        for name, (cmd, env, health) in commands(root, mlflow_port, prefect_port).items():
            # Their logs go to stderr: stdout carries only the URLs.
            procs.append(subprocess.Popen(cmd, cwd=root, env={**os.environ, **env}, stdout=sys.stderr))
            wait_until_up(name, health, procs[-1])
    except BaseException:
        stop(procs)
        raise
    return procs


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def runs_table(root: Path, port: int) -> str:
    """The pipeline experiment's runs table (the UI's front page lists experiments only)."""
    import mlflow

    from tasks.lib.tracking import DEFAULT_EXPERIMENT, EXPERIMENT_ENV

    base = f"http://{HOST}:{port}"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{(root / 'mlflow.db').resolve()}")
    exp = client.get_experiment_by_name(os.environ.get(EXPERIMENT_ENV, DEFAULT_EXPERIMENT))
    return experiment_url(base, exp.experiment_id) if exp else base


def _interrupted(*_) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Serve the MLflow and Prefect UIs over this workspace, on loopback.")
    ap.add_argument("--mlflow-port", type=int, default=urlparse(MLFLOW_UI).port)
    ap.add_argument("--prefect-port", type=int, default=urlparse(PREFECT_UI).port)
    ap.add_argument("--check", action="store_true", help="start, wait until both answer, print the URLs, stop")
    args = ap.parse_args(argv)
    apply_env_defaults()
    procs = start(Path("."), args.mlflow_port, args.prefect_port)
    # Ctrl-C and `kill` stop both. SIGINT's handler is set too: a process started as a background
    # job of a script inherits SIGINT ignored, and Python then installs no handler of its own.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupted)
    print(f"MLflow UI:  {runs_table(Path('.'), args.mlflow_port)}   (runs, metrics, reports, the model registry)")
    print(f"Prefect UI: http://{HOST}:{args.prefect_port}   (flow runs, task runs, artifacts)", flush=True)
    try:
        if not args.check:
            print("Ctrl-C stops both.", flush=True)
            while all(p.poll() is None for p in procs):
                time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        stop(procs)


if __name__ == "__main__":
    run_stage(main)
