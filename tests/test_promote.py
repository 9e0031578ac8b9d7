"""Promotion through the real flow: gates, first promotion, a win, rollback, races, bad artifacts.

One tiny project is trained once; its registry holds three versions: v1 the trained model,
v2 a model that always says `negative`, v3 one that always says `positive`. The held-out
split is then relabelled with v1's own predictions, so v1 is exactly right on it and every
score below is known in advance.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from tasks.evaluate import evaluate
from tasks.finetune import finetune
from tasks.lib.config import load_params
from tasks.lib.registry import CHAMPION, LOG_PREFIX, alias_version, history, lineage
from tasks.lib.tracking import stage_run
from tasks.pretrain import pretrain
from tasks.register import register

from .conftest import ROOT, build_data, tiny_frame, tiny_params

pytestmark = pytest.mark.slow
NAME = "text-classifier"


def _register_constant(params, label_index: int) -> str:
    """A copy of the fine-tuned model whose head ignores the text and always picks one class."""
    weights = load_file("checkpoints/finetuned/model.safetensors")
    weights["head.weight"] = torch.zeros_like(weights["head.weight"])
    weights["head.bias"] = torch.tensor([10.0 if i == label_index else -10.0 for i in range(2)])
    save_file(weights, "checkpoints/finetuned/model.safetensors")
    with stage_run("register"):
        return register(params)["version"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("promote")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.setenv("PREFECT_HOME", str(root / ".prefect"))
        mp.delenv("PIPELINE_PARENT_RUN_ID", raising=False)
        tiny_frame().to_csv("tiny.csv", index=False)
        gates = {"min_accuracy": 0.0, "min_macro_f1": 0.0, "min_improvement": 0.0, "max_recall_drop": 0.05}
        raw = tiny_params(finetune={"max_steps": 64, "patience": 8, "lr": 0.002}, promote=gates)
        Path("params.yaml").write_text(yaml.safe_dump(raw))
        params = load_params()
        build_data(params)
        pretrain(params)
        finetune(params, params.ingest.labels)
        evaluate(params)
        with stage_run("register"):
            v1 = register(params)["version"]
        model = mlflow.pyfunc.load_model(f"models:/{NAME}/{v1}")
        pool = tiny_frame()["text"].tolist()
        predicted = model.predict(pool)["label"].tolist()
        assert set(predicted) == {"negative", "positive"}, "the tiny model must tell the classes apart"
        pd.DataFrame({"text": pool, "label": predicted}).to_parquet("data/validated/test.parquet")
        v2, v3 = _register_constant(params, 0), _register_constant(params, 1)
        yield {"root": root, "v1": v1, "v2": v2, "v3": v3, "share_negative": predicted.count("negative") / len(pool)}


@pytest.fixture
def registry(project):
    """Each test starts with no champion and no recorded moves, from the default gates."""
    client = mlflow.MlflowClient()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project["root"])
        if alias_version(client, NAME, CHAMPION):
            client.delete_registered_model_alias(NAME, CHAMPION)
        for key in client.get_registered_model(NAME).tags:
            if key.startswith(LOG_PREFIX):
                client.delete_registered_model_tag(NAME, key)
        _set_gates()
        yield client


def _set_gates(**gates) -> None:
    raw = yaml.safe_load(Path("params.yaml").read_text())
    raw["promote"].update({"min_accuracy": 0.0, "min_macro_f1": 0.0, "min_improvement": 0.0, "max_recall_drop": 0.05})
    raw["promote"].update(gates)
    Path("params.yaml").write_text(yaml.safe_dump(raw))


def _promote(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "flows.promote", *args], env=env, capture_output=True, text=True, timeout=300
    )


def _promote_ok(version: str) -> None:
    done = _promote("--version", version)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]


def test_first_promotion_needs_only_the_absolute_gates(registry, project):
    done = _promote("--version", project["v2"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert alias_version(registry, NAME, CHAMPION) == project["v2"]
    [event] = history(registry, NAME)
    assert (event["from_version"], event["to_version"], event["action"]) == (None, project["v2"], "promote")
    assert event["by"] and event["at"] and "every gate passed" in event["reason"]
    tags = registry.get_model_version(NAME, project["v2"]).tags
    assert tags["promotion.decision"] == "promoted" and tags["promotion.champion_at_evaluation"] == "none"
    assert {g["gate"] for g in json.loads(tags["promotion.gates"])} == {"min_accuracy", "min_macro_f1"}


def test_each_gate_blocks_and_says_by_how_much(registry, project):
    # Absolute gates: always-negative scores accuracy = the negative share, macro-F1 below 0.5.
    _set_gates(min_accuracy=round(project["share_negative"] + 0.1, 4))
    done = _promote("--version", project["v2"])
    assert done.returncode == 1 and "min_accuracy" in done.stdout and "short by 0.1000" in done.stdout
    assert alias_version(registry, NAME, CHAMPION) is None and history(registry, NAME) == []
    assert registry.get_model_version(NAME, project["v2"]).tags["promotion.decision"] == "rejected"

    _set_gates(min_macro_f1=0.9)
    done = _promote("--version", project["v2"])
    assert done.returncode == 1 and "min_macro_f1" in done.stdout and "FAIL" in done.stdout

    # Relative gates, against always-negative as champion.
    _set_gates()
    _promote_ok(project["v2"])
    _set_gates(min_improvement=0.05)
    done = _promote("--version", project["v3"])  # the same macro-F1: no improvement
    assert done.returncode == 1 and "min_improvement" in done.stdout
    _set_gates(min_improvement=-1.0)
    done = _promote("--version", project["v3"])  # recall of `negative` falls from 1 to 0
    assert done.returncode == 1 and "max_recall_drop (class 'negative'): 1.0000" in done.stdout
    assert alias_version(registry, NAME, CHAMPION) == project["v2"] and len(history(registry, NAME)) == 1


def test_a_better_challenger_wins_and_rollback_restores_the_old_champion(registry, project):
    _promote_ok(project["v2"])
    _promote_ok(project["v1"])  # exactly right on the held-out split: beats always-negative
    assert alias_version(registry, NAME, CHAMPION) == project["v1"]
    tags = registry.get_model_version(NAME, project["v1"]).tags
    assert tags["promotion.champion_at_evaluation"] == project["v2"]

    done = _promote("--rollback", "--reason", "complaints after release")
    assert done.returncode == 0, done.stderr[-2000:]
    assert alias_version(registry, NAME, CHAMPION) == project["v2"]
    last = history(registry, NAME)[-1]
    assert (last["action"], last["from_version"], last["to_version"]) == ("rollback", project["v1"], project["v2"])
    assert last["reason"] == "complaints after release"
    listing = subprocess.run(
        [sys.executable, "-m", "tasks.registry", "history"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert listing.count("| promote |") == 2 and "| rollback |" in listing

    done = _promote("--rollback")  # v2 was the first champion: nothing before it
    assert done.returncode == 1 and "no earlier champion" in done.stderr


def test_two_concurrent_promotions_cannot_both_move_the_alias(registry, project, tmp_path):
    """Both decide against "no champion" while the test holds the registry lock; released,
    one moves the alias and the other finds it moved and changes nothing."""
    import time

    from tasks.lib.registry import registry_lock

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    with registry_lock():
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "flows.promote", "--version", version],
                env=env,
                stdout=log.open("w"),
                stderr=subprocess.STDOUT,
            )
            for version, log in zip((project["v2"], project["v3"]), logs, strict=True)
        ]
        deadline = time.time() + 240  # both have scored their challenger and queue on the lock
        while time.time() < deadline and not all("waiting for the registry lock" in log.read_text() for log in logs):
            assert all(p.poll() is None for p in procs), [log.read_text()[-2000:] for log in logs]
            time.sleep(0.2)
    codes = [p.wait(timeout=120) for p in procs]
    out = [log.read_text() for log in logs]
    assert sorted(codes) == [0, 1], out
    assert "moved while this decision was made" in out[codes.index(1)]
    [event] = history(registry, NAME)
    assert alias_version(registry, NAME, CHAMPION) == event["to_version"]


def test_a_corrupted_version_fails_to_load_clearly_and_is_never_promoted(registry, project):
    stored = _stored_artifact(registry.get_model_version(NAME, project["v3"]), "model.safetensors")
    original = stored.read_bytes()
    try:
        corrupted = bytearray(original)
        corrupted[-100] ^= 0xFF  # one flipped byte inside the tensor data: still a loadable file
        stored.write_bytes(bytes(corrupted))
        done = _promote("--version", project["v3"])
        assert done.returncode == 1 and "cannot be loaded" in done.stdout and "checksum" in done.stdout
        assert "Traceback" not in done.stdout
        assert alias_version(registry, NAME, CHAMPION) is None
        stored.unlink()
        done = _promote("--version", project["v3"])
        assert done.returncode == 1 and "cannot be loaded" in done.stdout
        assert alias_version(registry, NAME, CHAMPION) is None
    finally:
        stored.write_bytes(original)


def _stored_artifact(version, filename: str) -> Path:
    """The registry's own copy of an artifact (not a download), to damage it in place."""
    from urllib.parse import urlparse

    model_id = version.source.removeprefix("models:/")
    location = mlflow.MlflowClient().get_logged_model(model_id).artifact_location
    [path] = Path(urlparse(location).path).rglob(filename)
    return path


def test_lineage_reaches_run_params_commit_data_and_report(registry, project):
    info = lineage(registry, NAME, project["v1"])
    assert info["registering_run"] and info["params"]["finetune"]["max_steps"] == 64
    assert info["git_commit"] and info["data_hash"] and info["restore"] == f"python -m tasks.registry restore {project['v1']}"
    assert info["evaluation_report"].endswith("evaluation/index.html")
    report = mlflow.artifacts.download_artifacts(info["evaluation_report"])
    page = Path(report).read_text()
    assert page.startswith("<!doctype html>") and f"version {project['v1']}</td>" in page
    assert 'src="data:image/png;base64,' in page and "baseline" in page.split("</h1>")[1].split("</p>")[0]
    version = registry.get_model_version(NAME, project["v1"])
    card = version.description
    assert card.startswith(f"# Model card: {NAME} version {project['v1']}") and "## Known limits" in card
    assert "| " not in card  # lists, not tables: the registry UI renders no tables
    lineage_tags = {k: v for k, v in version.tags.items() if not k.startswith("promotion.")}
    assert all(len(v) <= 120 for v in lineage_tags.values()), lineage_tags  # short: the lineage stays in view
    model = registry.get_registered_model(NAME)
    assert model.description and {"task", "labels", "source"} <= set(model.tags)


# --- serving the champion through real servers on loopback ---------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _server(cmd: list[str], port: int, log: Path):
    """Start a server process, wait for /ping, and stop it by pid (escalating) afterwards."""
    import signal
    import time
    import urllib.request

    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert time.time() < deadline, log.read_text()[-3000:]
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if proc.poll() is None:
                os.killpg(proc.pid, sig)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    continue


def _post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, dict | str]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        text = err.read().decode()
        try:
            return err.code, json.loads(text)
        except ValueError:
            return err.code, text


def test_mlflow_models_serve_answers_with_labels_and_probabilities(registry, project, tmp_path):
    _promote_ok(project["v1"])
    port = _free_port()
    cmd = ["mlflow", "models", "serve", "-m", f"models:/{NAME}@champion", "--env-manager", "local",
           "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
    with _server(cmd, port, tmp_path / "mlflow-serve.log") as url:
        status, out = _post(url, json.dumps({"inputs": ["what a great flight", "lost my bag again"]}).encode())
        empty = _post(url, json.dumps({"inputs": ["what a great flight", " "]}).encode())
    assert 400 <= empty[0] < 500 and "item 1 is empty" in json.dumps(empty[1]), empty  # the model's own rule
    assert status == 200, out
    rows = out["predictions"]
    assert [set(r) for r in rows] == [{"label", "proba_negative", "proba_positive"}] * 2
    assert all(r["label"] in ("negative", "positive") for r in rows)
    assert all(abs(r["proba_negative"] + r["proba_positive"] - 1) < 1e-5 for r in rows)


def test_the_guarded_server_refuses_malformed_requests_cleanly(registry, project, tmp_path):
    _promote_ok(project["v1"])
    port = _free_port()
    cmd = [sys.executable, "-m", "tasks.serve", "-m", f"models:/{NAME}@champion", "-p", str(port),
           "--max-bytes", "20000"]  # fmt: skip
    bad = {
        "wrong column": json.dumps({"dataframe_records": [{"txt": "hi"}]}),
        "number": json.dumps({"inputs": ["ok", 3]}),
        "null": json.dumps({"inputs": ["ok", None]}),
        "empty list": json.dumps({"inputs": []}),
        "not JSON": "{inputs: [",
        "oversized": json.dumps({"inputs": ["word " * 50] * 100}),
        "too many texts": json.dumps({"inputs": ["hi"] * 1001}),
        "invalid UTF-8": b'{"inputs": ["\xff\xfe"]}',
        "nested 5,000 deep": '{"inputs": ' + "[" * 5000 + "]" * 5000 + "}",
        "5,000-digit number": '{"inputs": [' + "9" * 5000 + "]}",
        "empty text": json.dumps({"inputs": ["fine", ""]}),
        "whitespace text": json.dumps({"inputs": [" \n "]}),
    }
    with _server(cmd, port, tmp_path / "serve.log") as url:
        status, out = _post(url, json.dumps({"dataframe_records": [{"text": "what a great flight"}]}).encode())
        assert status == 200 and out["predictions"][0]["label"] in ("negative", "positive")
        answers = {name: _post(url, body if isinstance(body, bytes) else body.encode()) for name, body in bad.items()}
        answers["wrong content type"] = _post(url, b"text\nhi\n", "text/csv")
        status, out = _post(url, json.dumps({"inputs": ["still alive?"]}).encode())
        assert status == 200  # no bad request took the server down
    for name, (status, out) in answers.items():
        assert 400 <= status < 500, (name, status, out)
        text = json.dumps(out)
        assert out["message"] and "Traceback" not in text and "stack_trace" not in text, (name, out)
        assert str(ROOT) not in text and "site-packages" not in text, (name, out)
    assert answers["oversized"][0] == answers["too many texts"][0] == 413
    assert "item 1 is null" in answers["null"][1]["message"]
    assert "item 1 is empty" in answers["empty text"][1]["message"]
    assert answers["nested 5,000 deep"][0] == answers["invalid UTF-8"][0] == 400
    assert "only input column is 'text'" in answers["wrong column"][1]["message"]
