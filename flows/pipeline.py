"""The whole pipeline as one Prefect flow: each stage is a task that runs through DVC.

    python -m flows.pipeline          # from the project root

Each task asks DVC to reproduce one stage, so a flow run and `dvc repro` are the same
computation and both keep dvc.lock as the single record of what was built from what.
The flow run is one MLflow parent run; every stage that runs logs a child run under it.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from tasks.common import apply_env_defaults

apply_env_defaults()

from prefect import flow, get_run_logger, task  # noqa: E402  (env must be set before import)
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.states import Failed  # noqa: E402

from tasks.common import read_json  # noqa: E402
from tasks.register import data_hash  # noqa: E402
from tasks.tracking import PARENT_ENV, configure, flatten  # noqa: E402

STAGES = ("ingest", "validate", "tokenize", "pretrain", "finetune", "evaluate", "register")


@task(task_run_name="{stage}")
def dvc_stage(stage: str, root: str, parent_run_id: str, force: bool = False):
    """Reproduce one DVC stage; report whether it ran or was up to date.

    A stage that fails ends the task in a Failed state carrying a one-line message (the
    stage itself has already printed the full explanation): bad data is not a bug, so
    no traceback.
    """
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    # The stage process must use this interpreter and nest its MLflow run under ours.
    env = {PARENT_ENV: parent_run_id, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    if os.environ.get("MLFLOW_TRACKING_URI") is None:
        import mlflow

        env["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
    start = time.perf_counter()
    try:
        with Repo(root) as repo:
            ran = repo.reproduce(stage, single_item=True, force=force, run_env=env)
    except DvcException:
        return Failed(message=f"stage '{stage}' failed; its error is printed above (python -m tasks.{stage})")
    return {"stage": stage, "ran": bool(ran), "seconds": round(time.perf_counter() - start, 1)}


@task(retries=2, retry_delay_seconds=5)
def dvc_push(root: str) -> int:
    """Copy every output in dvc.lock to the default DVC remote, so another clone can
    `dvc pull` exactly this run's data and checkpoints. Returns the files transferred."""
    from dvc.repo import Repo

    with Repo(root) as repo:
        if not repo.config["core"].get("remote"):
            return 0
        return repo.push()


def publish_validation(root: Path) -> None:
    """The validation verdict as a Prefect artifact and in the MLflow parent run, pass or fail."""
    import mlflow

    from tasks.validate import REPORT_DIR, markdown_summary

    report_dir = root / REPORT_DIR
    if not (report_dir / "results.json").exists():
        return
    results = read_json(report_dir / "results.json")
    create_markdown_artifact(markdown_summary(results, report_dir / "index.html"), key="data-validation")
    mlflow.log_artifacts(str(report_dir), "validation")
    mlflow.set_tag("validation", "passed" if results["success"] else "failed")


def summary_markdown(results: list[dict], metrics: dict, registered: dict, run_id: str) -> str:
    rows = "\n".join(f"| {r['stage']} | {'ran' if r['ran'] else 'up to date'} | {r['seconds']} |" for r in results)
    t, b = metrics["test"], metrics["baseline"]
    return (
        "## Pipeline run\n\n| stage | status | seconds |\n|---|---|---|\n" + rows + "\n\n"
        "| model | accuracy | macro-F1 |\n|---|---|---|\n"
        f"| fine-tuned | {t['accuracy']:.4f} | {t['macro_f1']:.4f} |\n"
        f"| TF-IDF baseline | {b['accuracy']:.4f} | {b['macro_f1']:.4f} |\n\n"
        f"Registered `{registered['name']}` version {registered['version']} as `@{registered['alias']}`; "
        f"MLflow parent run `{run_id}`.\n"
    )


@flow(name="text-classifier-pipeline")
def pipeline(root: str = ".", refresh_source: bool = False):
    """Run every stage that is out of date.

    DVC cannot see inside the source (a bundled file, a folder, a hub dataset), so with
    `refresh_source` ingest always re-reads it; its output is deterministic, so when the
    source has not changed nothing downstream re-runs. Scheduled runs should set it.
    """
    import mlflow

    from tasks.config import ParamsError, load_params

    logger = get_run_logger()
    root_path = Path(root).resolve()
    if not (root_path / "dvc.yaml").exists():
        return Failed(message=f"{root_path} has no dvc.yaml: run the flow from the project root")
    os.chdir(root_path)  # DVC resolves stage names against the working folder
    try:
        params = load_params(root_path / "params.yaml")
    except ParamsError as err:
        return Failed(message=str(err))
    configure(root_path)
    with mlflow.start_run(run_name="pipeline") as parent:
        mlflow.log_params(flatten(params.model_dump(by_alias=True)))
        results = []
        for stage in STAGES:
            force = refresh_source and stage == "ingest"
            state = dvc_stage(stage, str(root_path), parent.info.run_id, force, return_state=True)
            if stage == "validate":
                publish_validation(root_path)
            if state.is_failed():
                mlflow.set_tag("failed_stage", stage)
                mlflow.end_run(status="FAILED")
                return Failed(message=state.message)
            result = state.result()
            logger.info("%s: %s in %.1f s", stage, "ran" if result["ran"] else "up to date", result["seconds"])
            results.append(result)
        pushed = dvc_push(str(root_path))
        logger.info("pushed %d file(s) to the DVC remote", pushed)
        mlflow.set_tags({"data_hash": data_hash(root_path / "dvc.lock"), "data_restore": "dvc pull data/validated"})
        metrics = read_json(root_path / "reports/metrics.json")
        registered = read_json(root_path / "reports/registered.json")
        mlflow.log_metrics({k: v for k, v in flatten(metrics).items() if isinstance(v, (int, float))})
        mlflow.log_artifact(str(root_path / "reports/metrics.json"))
        mlflow.log_artifacts(str(root_path / "reports/evaluation"), "evaluation")
        mlflow.set_tags(
            {
                "stages_ran": ",".join(r["stage"] for r in results if r["ran"]) or "none",
                "registered_version": registered["version"],
            }
        )
        create_markdown_artifact(
            summary_markdown(results, metrics, registered, parent.info.run_id), key="pipeline-summary"
        )
    init = read_json(root_path / "checkpoints/finetuned/checkpoint.json")["init"]
    return {
        "results": results,
        "metrics": metrics,
        "registered": registered,
        "run_id": parent.info.run_id,
        "init": init,
    }


def print_summary(out: dict) -> None:
    t, b, reg = out["metrics"]["test"], out["metrics"]["baseline"], out["registered"]
    print()
    kind = "pretrained + fine-tuned" if out["init"] == "pretrained" else "trained from scratch"
    print(f"test accuracy  {t['accuracy']:.4f}   macro-F1 {t['macro_f1']:.4f}   ({kind})")
    print(f"test accuracy  {b['accuracy']:.4f}   macro-F1 {b['macro_f1']:.4f}   (TF-IDF + logistic regression)")
    print(f"report         {Path('reports/evaluation/index.html').resolve()}")
    print(f"registered     {reg['name']} version {reg['version']} alias @{reg['alias']}  ({reg['model_uri']})")


if __name__ == "__main__":
    import argparse

    cli = argparse.ArgumentParser(description="Run the pipeline as one Prefect flow.")
    cli.add_argument("--refresh-source", action="store_true", help="re-read the source even if params did not change")
    final = pipeline(refresh_source=cli.parse_args().refresh_source, return_state=True)
    if final.is_failed():
        print(f"error: {final.message}", file=sys.stderr)
        raise SystemExit(1)
    print_summary(final.result())
