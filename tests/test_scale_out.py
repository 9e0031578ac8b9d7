"""Scheduled runs on work pools, on loopback: a real Prefect server, a `cpu` and a `gpu`
process worker, a real MLflow tracking server, a local-folder DVC remote, and a second
clone of the project standing in for the GPU machine."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from .conftest import make_project, run_ok, tiny_corpus_params

_run = run_ok

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while True:
        assert proc.poll() is None, log.read_text()[-4000:]
        try:
            urllib.request.urlopen(url, timeout=3)
            return
        except OSError:
            assert time.time() < deadline, f"{url} not up after {timeout} s:\n{log.read_text()[-4000:]}"
            time.sleep(1)


def _stop(proc: subprocess.Popen) -> None:
    """By process group, escalating: a Prefect worker ignores the first SIGTERM."""
    for sig in (signal.SIGTERM, signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        with_group = os.getpgid(proc.pid)
        os.killpg(with_group, sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture
def services(tmp_path):
    """Servers and workers started for one test, stopped by pid afterwards."""
    started: list[subprocess.Popen] = []

    def start(name: str, cmd: list[str], env: dict, cwd: Path) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"{name}.log"
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
        )
        started.append(proc)
        return proc, log

    yield start
    for proc in reversed(started):
        _stop(proc)


def _flow_runs(env: dict) -> list[dict]:
    code = (
        "import json\n"
        "from prefect.client.orchestration import get_client\n"
        "with get_client(sync_client=True) as c:\n"
        "    runs = c.read_flow_runs()\n"
        "    flows = {f.id: f.name for f in c.read_flows()}\n"
        "    print(json.dumps([{'flow': flows[r.flow_id], 'pool': r.work_pool_name, 'state': r.state_name,\n"
        "                       'deployment': str(r.deployment_id)} for r in runs]))\n"
    )

    return json.loads(_run([sys.executable, "-c", code], Path.cwd(), env).stdout)


def test_scheduled_pipeline_runs_data_work_on_cpu_and_training_on_gpu(tmp_path, services):
    import mlflow

    cpu_ws, gpu_ws, remote = tmp_path / "cpu-box", tmp_path / "gpu-box", tmp_path / "dvc-remote"
    prefect_port, mlflow_port = _free_port(), _free_port()
    tracking = f"http://127.0.0.1:{mlflow_port}"
    base = make_project(cpu_ws, tiny_corpus_params(ingest={"limit_rows": 300}, tokenize={"vocab_size": 400}))
    env = {
        **{k: v for k, v in base.items() if k not in ("PYTHONPATH", "PREFECT_HOME")},
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_TRACKING_URI": tracking,
        "PROMOTION_LOCK": str(tmp_path / "promotion.lock"),
    }
    _run(["git", "clone", "-q", str(cpu_ws), str(gpu_ws)], tmp_path, env)
    for ws in (cpu_ws, gpu_ws):  # one DVC remote both machines reach
        _run(["dvc", "remote", "add", "--local", "-f", "-d", "shared", str(remote)], ws, env)

    server, server_log = services(
        "prefect-server",
        ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
        env,
        tmp_path,
    )
    tracker, tracker_log = services(
        "mlflow-server",
        ["mlflow", "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'tracking.db'}",
         "--artifacts-destination", str(tmp_path / "tracking-artifacts")],
        env,
        tmp_path,
    )  # fmt: skip
    _wait_http(f"http://127.0.0.1:{prefect_port}/api/health", server, server_log)
    _wait_http(f"{tracking}/health", tracker, tracker_log)
    for pool in ("cpu", "gpu"):
        _run(["prefect", "work-pool", "create", pool, "--type", "process"], tmp_path, env)
    workers = {
        pool: services(f"worker-{pool}", ["prefect", "worker", "start", "--pool", pool, "--type", "process"], env, ws)
        for pool, ws in (("cpu", cpu_ws), ("gpu", gpu_ws))
    }
    deployed = _run(
        [sys.executable, "-m", "flows.deploy", "--cpu-workspace", str(cpu_ws), "--gpu-workspace", str(gpu_ws),
         "--gpu-env", "CUDA_VISIBLE_DEVICES=0"],
        cpu_ws,
        {**env, "PYTHONPATH": str(cpu_ws)},
    )  # fmt: skip
    assert "deployed text-classifier-pipeline/scheduled" in deployed.stdout

    def trigger() -> None:
        out = _run(
            ["prefect", "deployment", "run", "text-classifier-pipeline/scheduled", "--watch", "--watch-timeout", "900"],
            cpu_ws,
            env,
            timeout=960,
        )
        assert "Completed" in out.stdout + out.stderr, out.stdout[-3000:] + "\n".join(
            log.read_text()[-3000:] for _, log in workers.values()
        )

    trigger()
    runs = _flow_runs(env)
    upcoming = [r for r in runs if r["state"] == "Scheduled"]
    assert upcoming and all(r["flow"] == "text-classifier-pipeline" for r in upcoming)  # the cron schedule is live
    done = [r for r in runs if r["state"] != "Scheduled"]
    by_flow = {r["flow"]: r for r in done}
    assert by_flow["text-classifier-pipeline"]["pool"] == "cpu" and by_flow["train"]["pool"] == "gpu"
    assert all(r["state"] == "Completed" for r in done), done

    # Explicit URIs only: a global set_tracking_uri would outlive this test's servers.
    client = mlflow.MlflowClient(tracking_uri=tracking)

    def stages_of(run) -> list[dict]:
        path = mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path="stages.json", tracking_uri=tracking
        )
        return json.loads(Path(path).read_text())

    [parent] = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "tags.pipeline.parent = 'true'"
    )
    stages = {r["stage"]: r for r in stages_of(parent)}
    assert {s: stages[s]["pool"] for s in stages} == {
        "ingest": "cpu", "validate": "cpu", "corpus": "cpu", "tokenize": "cpu", "pretrain": "gpu", "finetune": "gpu",
        "evaluate": "cpu", "register": "cpu",
    }  # fmt: skip
    assert all(r["ran"] for r in stages.values())
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert {r.data.tags.get("pipeline.stage") for r in children} >= {"pretrain", "finetune", "evaluate"}
    version = client.get_model_version_by_alias("text-classifier", "challenger")
    assert version.version == "1" and version.tags["data_hash"] != "unknown"

    lock = yaml.safe_load((cpu_ws / "dvc.lock").read_text())["stages"]
    for stage, out in (("validate", "data/validated"), ("tokenize", "data/tokenized"),
                       ("pretrain", "checkpoints/pretrained"), ("finetune", "checkpoints/finetuned")):  # fmt: skip
        md5 = next(o["md5"] for o in lock[stage]["outs"] if o["path"] == out)
        assert (remote / "files" / "md5" / md5[:2] / md5[2:]).exists(), f"{out} is not on the DVC remote"
    assert not (gpu_ws / "data" / "raw").exists()  # the GPU machine never ran the data stages

    trigger()  # nothing changed: ingest re-reads the source (refresh_source), the rest is up to date
    [second, _] = client.search_runs(
        [parent.info.experiment_id], "tags.pipeline.parent = 'true'", order_by=["attributes.start_time DESC"]
    )
    again = stages_of(second)
    assert [r["stage"] for r in again if r["ran"]] == ["ingest"], again
    assert {r["stage"]: r["pool"] for r in again}["pretrain"] == "gpu"
    assert client.get_registered_model("text-classifier").latest_versions[0].version == "1"

    # The base-model flow's deployment: data work on cpu, pretraining through train/gpu.
    out = _run(["prefect", "deployment", "run", "base-language-model/on-demand", "--watch", "--watch-timeout", "600"],
               cpu_ws, env, timeout=660)  # fmt: skip
    assert "Completed" in out.stdout + out.stderr, out.stdout[-3000:]
    [base_run] = client.search_runs([parent.info.experiment_id], "tags.mlflow.runName = 'base-model'")
    assert {r["stage"]: r["pool"] for r in stages_of(base_run)}["pretrain"] == "gpu"
    lm = client.get_model_version_by_alias("text-lm", "base")
    assert lm.tags["model_kind"] == "language-model" and lm.tags["corpus_hash"] != "unknown"
    pools = {r["flow"]: r["pool"] for r in _flow_runs(env) if r["state"] == "Completed"}
    assert pools["base-language-model"] == "cpu" and pools["train"] == "gpu"
