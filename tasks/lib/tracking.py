"""MLflow wiring: one experiment, an artifact folder in the repo, child runs under a parent.

The pipeline flow opens the parent run and hands its id to each stage process through
PIPELINE_PARENT_RUN_ID (not MLFLOW_RUN_ID, which would make the stage resume the parent
instead of nesting under it). A stage run from plain `dvc repro` gets a top-level run.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

PARENT_ENV = "PIPELINE_PARENT_RUN_ID"
EXPERIMENT_ENV = "PIPELINE_EXPERIMENT"
DEFAULT_EXPERIMENT = "text-classifier-pipeline"
# What the experiment holds, for MLflow's UI (3.17 also needs the page to ask for its training
# view: tasks/lib/summary.py, TRAINING_VIEW).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
PARENT_TAG = "pipeline.parent"  # on a pipeline flow's parent run: its name says what ran, this finds it
DIGITS = 4  # metrics are logged rounded: 0.7597, not 0.7597402597402597


def configure(root: Path | None = None) -> str:
    """Point MLflow at the embedded store unless the user set a tracking URI; return the experiment id."""
    import mlflow

    root = Path(root or Path.cwd()).resolve()
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    name = os.environ.get(EXPERIMENT_ENV, DEFAULT_EXPERIMENT)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is None:
        # The default artifact root is ./mlruns under whatever folder first creates the
        # experiment; pin it so artifacts always land beside the database.
        location = _local_artifact_root(root)
        exp_id = client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
    else:
        exp_id = exp.experiment_id
        for key, value in EXPERIMENT_KIND.items():
            if exp.tags.get(key) != value:
                client.set_experiment_tag(exp_id, key, value)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def _local_artifact_root(root: Path) -> str | None:
    """mlartifacts/ beside a SQLite database; a tracking server chooses its own root."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def rounded(metrics: dict) -> dict:
    """Metrics as they are logged: floats to DIGITS decimals, counts as they are."""
    return {k: round(v, DIGITS) if isinstance(v, float) else v for k, v in metrics.items()}


def log_metrics(metrics: dict, step: int | None = None) -> None:
    import mlflow

    mlflow.log_metrics(rounded(metrics), step=step)


@contextlib.contextmanager
def stage_run(stage: str, params: dict | None = None, run_id: str | None = None) -> Iterator[object]:
    """Open this stage's MLflow run (a child of the pipeline's run when there is one), or
    reopen `run_id`, so a resumed stage continues its own curves instead of starting anew."""
    import mlflow

    configure()
    parent = os.environ.get(PARENT_ENV) or None
    opened = (
        mlflow.start_run(run_id=run_id)
        if run_id
        else mlflow.start_run(run_name=stage, parent_run_id=parent, tags={"pipeline.stage": stage})
    )
    with opened as run:
        if params:
            mlflow.log_params(flatten(params))
        yield run


OWNER_PID, OWNER_HOST = "pipeline.pid", "pipeline.host"


def owner_tags() -> dict[str, str]:
    """Which process owns a parent run, so a later run can tell it was abandoned."""
    import socket

    return {OWNER_PID: str(os.getpid()), OWNER_HOST: socket.gethostname()}


def fail_abandoned_runs(client) -> list[str]:
    """Mark FAILED the RUNNING parent runs (and their RUNNING children) whose owning process on
    this host is gone: a killed flow cannot end its own run."""
    import socket

    from mlflow.entities import ViewType

    from tasks.lib.common import pid_alive

    experiment = client.get_experiment_by_name(os.environ.get(EXPERIMENT_ENV, DEFAULT_EXPERIMENT))
    if experiment is None:
        return []
    host, failed = socket.gethostname(), []
    running = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'", ViewType.ACTIVE_ONLY)
    for run in running:
        tags = run.data.tags
        if tags.get(OWNER_HOST) != host or not tags.get(OWNER_PID, "").isdigit() or pid_alive(int(tags[OWNER_PID])):
            continue
        children = [r for r in running if r.data.tags.get("mlflow.parentRunId") == run.info.run_id]
        for r in (run, *children):
            client.set_tag(r.info.run_id, "ended_by", "its pipeline process died; marked failed by the next run")
            client.set_terminated(r.info.run_id, status="FAILED")
            failed.append(r.info.run_id)
    return failed
