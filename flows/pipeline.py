"""The whole pipeline as one Prefect flow: each stage is a task that runs through DVC.

    python -m flows.pipeline          # from the project root

Each task asks DVC to reproduce one stage, so a flow run and `dvc repro` are the same
computation and both keep dvc.lock as the single record of what was built from what.
The flow run is one MLflow parent run; every stage that runs logs a child run under it.

With `training_deployment` set (scheduled runs; see flows/deploy.py) pretrain and finetune
run elsewhere, as the `train` flow of that deployment, on the machine its work pool
places it. The two sides exchange data and checkpoints only through the DVC remote: this
side pushes, hands over its dvc.lock and params, the training side pulls its inputs, runs
the stages, pushes their outputs and logs its dvc.lock to the shared MLflow parent run,
and this side pulls the checkpoints and carries on. One workspace runs one pipeline at a
time: a run waits for the workspace lock while another holds it.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.states import Failed, State

from tasks.lib import catalog, params_file
from tasks.lib.common import excerpt, file_lock, read_json
from tasks.lib.lineage import data_hash, git_commit, restore_command
from tasks.lib.summary import parent_run_name
from tasks.lib.tracking import PARENT_ENV, PARENT_TAG, configure, fail_abandoned_runs, flatten, log_metrics, owner_tags

STAGES = ("ingest", "validate", "corpus", "tokenize", "pretrain", "finetune", "evaluate", "register")
TRAINING = ("pretrain", "finetune")
# The stages whose outputs the training stages read: the tokenized data, and the validated
# splits (pretrain records the validation/test texts its corpus held out: the leak guard).
TRAINING_INPUTS = ("validate", "tokenize")
LOCK_ARTIFACT = "training/dvc.lock"


def workspace_lock(root: Path, say=print):
    """One pipeline at a time per workspace: DVC's own lock fails a second run outright."""
    waiting = f"another pipeline run holds this workspace ({root}); waiting for it to finish"
    return file_lock(catalog.at(root, catalog.WORKSPACE_LOCK), waiting, say=say)


def stage_env(parent_run_id: str) -> dict:
    """What a stage process needs on top of the environment: this interpreter first on PATH,
    and the parent run to nest its MLflow run under, in this flow's tracking store."""
    env = {PARENT_ENV: parent_run_id, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    if os.environ.get("MLFLOW_TRACKING_URI") is None:
        import mlflow

        env["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
    return env


@task(task_run_name="{stage}")
def dvc_stage(stage: str, root: str, parent_run_id: str, force: bool = False):
    """Reproduce one DVC stage; report whether it ran or was up to date.

    A stage that fails ends the task in a Failed state carrying DVC's own message (and,
    when the stage's command failed, a pointer to the explanation it printed): bad data is
    not a bug, so no traceback.
    """
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    env = stage_env(parent_run_id)
    start = time.perf_counter()
    try:
        with Repo(root) as repo:  # the target names its dvc.yaml: no change of working folder
            ran = repo.reproduce(f"{Path(root) / 'dvc.yaml'}:{stage}", single_item=True, force=force, run_env=env)
    except DvcException as err:
        return Failed(message=failure_message(stage, err))
    return {"stage": stage, "ran": bool(ran), "seconds": round(time.perf_counter() - start, 1)}


def failure_message(stage: str, err: BaseException) -> str:
    """DVC's whole chain of messages, cut to a screen. "Its error is printed above" is said only
    when the stage's own command failed and nothing else did: DVC's lock error (another `dvc`
    in this workspace) replaces the command's failure in the chain and is the real cause."""
    from dvc.lock import LockError
    from dvc.stage.exceptions import StageCmdFailedError

    chain = [err, *_causes(err)]
    why = ": ".join(dict.fromkeys(" ".join(str(e).split()) for e in chain if str(e)))
    if any(isinstance(e, LockError) for e in chain):
        why += " (another DVC command is using this workspace, e.g. `dvc repro` in another shell: let it finish, then run again)"
    elif any(isinstance(e, StageCmdFailedError) for e in chain):
        why += f" (its error is printed above: python -m tasks.{stage})"
    return f"stage '{stage}' failed: {excerpt(why)}"


def _causes(err: BaseException) -> list[BaseException]:
    """The exceptions behind `err`: raised from it, or being handled when it was raised."""
    out: list[BaseException] = []
    while len(out) < 8:
        err = err.__cause__ or err.__context__
        if err is None or err in out:
            break
        out.append(err)
    return out


@task(retries=2, retry_delay_seconds=10)
def dvc_pull(root: str, targets: list[str], allow_missing: bool = False) -> int:
    """Fetch recorded outputs from the DVC remote into this workspace (network: retried).
    With `allow_missing`, outputs the remote lacks are skipped: their stages will re-run."""
    from dvc.repo import Repo

    if not targets:
        return 0
    # force: dvc.lock is the record; whatever an earlier run left in these paths is in the cache.
    with Repo(root) as repo:
        paths = [str(Path(root) / t) for t in targets]
        result = repo.pull(targets=paths, force=True, allow_missing=allow_missing)
    return int(result["stats"].get("fetched", 0))


def recorded_outs(lock_text: str, stages) -> list[str]:
    """The outputs dvc.lock records for these stages (the ones that can be pulled)."""
    import yaml

    lock = yaml.safe_load(lock_text) or {}
    return [o["path"] for s in stages for o in lock.get("stages", {}).get(s, {}).get("outs", [])]


@task(retries=2, retry_delay_seconds=10)
def dvc_push(root: str) -> int:
    """Copy every output in dvc.lock to the default DVC remote, so another clone can
    `dvc pull` exactly this run's data and checkpoints. Returns the files transferred."""
    from dvc.repo import Repo

    with Repo(root) as repo:
        if not repo.config["core"].get("remote"):
            return 0
        return repo.push()


def report_link(folder: str) -> str:
    """A markdown link to a report the parent run holds, in the MLflow UI's artifact viewer."""
    import mlflow

    from tasks.lib.summary import run_link

    run = mlflow.active_run()
    page = f"{folder}/{catalog.REPORT_PAGE}"
    return run_link(mlflow.get_tracking_uri(), run.info.experiment_id, run.info.run_id, page, f"{folder} report")


def publish_validation(root: Path) -> None:
    """The validation verdict as a Prefect artifact and in the MLflow parent run, pass or fail."""
    import mlflow

    from tasks.validate import RESULTS, markdown_summary

    report_dir = catalog.at(root, catalog.VALIDATION_REPORT)
    if not (report_dir / RESULTS).exists():
        return
    results = read_json(report_dir / RESULTS)
    mlflow.log_artifacts(str(report_dir), "validation")
    create_markdown_artifact(
        markdown_summary(results, report_link("validation")),
        key="data-validation",
        description="Data validation: the verdict, the contract and drift checks, and the quarantined rows by reason.",
    )
    mlflow.set_tag("validation", "passed" if results["success"] else "failed")


def publish_corpus(root: Path) -> None:
    """The corpus section (sources, kept, dropped by reason, tokens) beside the validation
    verdict: a Prefect artifact and the MLflow parent run's `corpus/` artifacts."""
    import mlflow

    from tasks.lib.corpus_report import markdown

    stats = [catalog.at(root, p) for p in (catalog.CORPUS_STATS, catalog.TOKEN_STATS)]
    if not all(p.exists() for p in stats):
        return
    create_markdown_artifact(
        markdown(*(read_json(p) for p in stats)),
        key="data-corpus",
        description="The unlabelled text pretraining reads: sources, texts kept and dropped by reason, tokens.",
    )
    mlflow.log_artifacts(str(catalog.at(root, catalog.CORPUS_REPORT)), "corpus")


def stage_timeout(stage: str) -> float | None:
    """Seconds a stage may run before it is stopped (env PIPELINE_TIMEOUT_<STAGE>); none by default."""
    value = os.environ.get(f"PIPELINE_TIMEOUT_{stage.upper()}")
    return float(value) if value else None


def stage_task(stage: str, root: Path, parent_run_id: str, force: bool, source: str):
    """One stage as a task. A hub source is fetched over the network: ingest retries it. No
    other stage retries: their failures (bad data, a bug) repeat identically."""
    options = {"timeout_seconds": stage_timeout(stage)}
    if stage == "ingest" and source.startswith("hf:"):
        options |= {"retries": 2, "retry_delay_seconds": 30}
    return dvc_stage.with_options(**options)(stage, str(root), parent_run_id, force, return_state=True)


def pool_of_this_run() -> str:
    """The work pool this flow run was placed on ("local" when run by hand)."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    if flow_run.id is None:
        return "local"
    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run.id).work_pool_name or "local"


def train_remotely(deployment: str, root: Path, parent_run_id: str, stages=TRAINING):
    """Run the training `stages` as the `train` flow of `deployment` (another work pool),
    exchanging everything through the DVC remote and the MLflow parent run. Returns the
    stage results, or a Failed state."""
    import mlflow
    from prefect.deployments import run_deployment

    dvc_push(str(root))  # the training side pulls its inputs (TRAINING_INPUTS) from the remote
    parameters = {
        "lock": catalog.at(root, catalog.DVC_LOCK).read_text(),
        "params": catalog.at(root, catalog.PARAMS).read_text(),
        "parent_run_id": parent_run_id,
        "commit": git_commit(root),
        "stages": list(stages),
    }
    child = run_deployment(deployment, parameters=parameters, timeout=stage_timeout("train"), poll_interval=5)
    if not child.state or not child.state.is_completed():
        name = child.state.name if child.state else "unknown"
        why = child.state.message if child.state else ""
        return Failed(message=f"training deployment '{deployment}' ended {name}: {why}")
    lock = Path(mlflow.artifacts.download_artifacts(run_id=parent_run_id, artifact_path=LOCK_ARTIFACT))
    catalog.at(root, catalog.DVC_LOCK).write_text(lock.read_text())
    dvc_pull(str(root), recorded_outs(lock.read_text(), stages))
    return mlflow.artifacts.load_dict(f"runs:/{parent_run_id}/training/results.json")


@flow(name="train")
def train(lock: str, params: str, parent_run_id: str, commit: str = "", root: str = ".", stages: list[str] = TRAINING):
    """The training stages (pretrain and finetune, or pretrain alone for a base model) for a
    pipeline run on another machine: take its dvc.lock and params, pull the inputs from the
    DVC remote, run what is out of date, push the outputs, and log the updated dvc.lock and
    the stage results to the pipeline's MLflow run."""
    import mlflow

    logger = get_run_logger()
    root_path = Path(root).resolve()
    here = git_commit(root_path).removesuffix("-dirty")
    if commit and here != "unknown" and here != commit.removesuffix("-dirty"):
        return Failed(message=f"this workspace is at commit {here}, the pipeline at {commit}: update its code first")
    with workspace_lock(root_path, say=logger.info):
        params_file.write(params, catalog.at(root_path, catalog.PARAMS))
        catalog.at(root_path, catalog.DVC_LOCK).write_text(lock)
        dvc_pull(str(root_path), recorded_outs(lock, TRAINING_INPUTS))
        dvc_pull(str(root_path), recorded_outs(lock, stages), allow_missing=True)  # earlier checkpoints, if any
        configure(root_path)
        pool = pool_of_this_run()
        results = []
        for stage in stages:
            state = stage_task(stage, root_path, parent_run_id, False, "")
            if state.is_failed():
                return Failed(message=state.message)
            results.append({**state.result(), "pool": pool})
            verb = "ran" if results[-1]["ran"] else "up to date"
            logger.info("%s: %s in %.1f s on pool %s", stage, verb, results[-1]["seconds"], pool)
        dvc_push(str(root_path))
        # Through the client: start_run(run_id=...) would end the pipeline's run on exit.
        client = mlflow.MlflowClient()
        client.log_artifact(
            parent_run_id, str(catalog.at(root_path, catalog.DVC_LOCK)), Path(LOCK_ARTIFACT).parent.as_posix()
        )
        client.log_dict(parent_run_id, results, "training/results.json")
    return results


def workspace_params(root: Path, profile: str | None):
    """params.yaml of the workspace, switched to `profile` first if one is given; or a Failed
    state saying what is wrong with it."""
    from tasks.lib.common import StageError
    from tasks.lib.config import ParamsError, load_params
    from tasks.profile import apply_profile

    try:
        if profile:
            apply_profile(profile, catalog.at(root, catalog.PARAMS), catalog.at(root, catalog.PROFILES))
        return load_params(catalog.at(root, catalog.PARAMS))
    except (ParamsError, StageError) as err:
        return Failed(message=str(err))


def registered(root: Path, params) -> bool:
    from tasks.register import registry_holds

    held = registry_holds(params.register_.model_name, root)
    if not held and catalog.at(root, catalog.REGISTERED).exists():
        get_run_logger().info("register: the registry holds no complete version of these outputs; registering again")
    return held


def finish_parent_run(root: Path, params, results: list[dict]) -> tuple[dict, dict]:
    """What the parent run shows once every stage is done: its name says what ran; the headline
    metrics, the dvc.lock, the versioned evaluation report; and the Prefect summary artifact.
    Returns the metrics and the registration record."""
    import mlflow

    from tasks.lib.evaluation_report import headline, log_versioned_report
    from tasks.lib.summary import champion_scores, run_link, summary_markdown

    lock = catalog.at(root, catalog.DVC_LOCK)
    metrics = read_json(catalog.at(root, catalog.METRICS))
    registered = read_json(catalog.at(root, catalog.REGISTERED))
    run = mlflow.active_run()
    log_metrics(headline(metrics))
    mlflow.log_artifact(str(catalog.at(root, catalog.METRICS)))
    mlflow.log_artifact(str(lock))
    log_versioned_report(params, registered["version"], {"pipeline": run.info.run_id}, root)
    mlflow.log_dict(results, "stages.json")
    mlflow.set_tags(
        {
            "mlflow.runName": parent_run_name(params.ingest.source, results),
            "stages_ran": ",".join(r["stage"] for r in results if r["ran"]) or "none",
            "registered_version": registered["version"],
            "data_hash": data_hash(lock),
            "data_restore": restore_command(registered["version"]),
        }
    )
    links = {
        "run": run_link(mlflow.get_tracking_uri(), run.info.experiment_id, run.info.run_id, text="this run"),
        "evaluation": report_link("evaluation"),
        "validation": report_link("validation"),
    }
    champion = champion_scores(mlflow.MlflowClient(), params.register_.model_name)
    create_markdown_artifact(
        summary_markdown(results, metrics, registered, links, champion),
        key="pipeline-summary",
        description="What ran, the test scores beside the champion's and the baseline's, and the registered version.",
    )
    return metrics, registered


def fail_parent_run(params, stage: str) -> None:
    import mlflow

    mlflow.set_tags({"failed_stage": stage, "mlflow.runName": parent_run_name(params.ingest.source, None, stage)})
    mlflow.end_run(status="FAILED")


def run_stages(stages, root: Path, parent_run_id: str, params, refresh_source: bool, training_deployment: str | None):
    """Run `stages` in order inside the open MLflow parent run, the training ones through
    `training_deployment` when it is set; their results, or a Failed state (the parent run
    marked failed, with the stage that failed)."""

    logger = get_run_logger()
    remote = [s for s in stages if s in TRAINING] if training_deployment else []
    pool, results = pool_of_this_run(), []
    for stage in stages:
        if stage in remote:
            if stage == remote[0]:
                done = train_remotely(training_deployment, root, parent_run_id, remote)
                if isinstance(done, State):
                    fail_parent_run(params, "train")
                    return done
                results += done
            continue
        # The registry, not reports/registered.json, says whether register is done: a lost
        # database or a killed registration leaves the file but no complete version.
        force = (refresh_source and stage == "ingest") or (stage == "register" and not registered(root, params))
        state = stage_task(stage, root, parent_run_id, force, params.ingest.source)
        if stage == "validate":
            publish_validation(root)
        if stage == "tokenize" and not state.is_failed():
            publish_corpus(root)
        if state.is_failed():
            fail_parent_run(params, stage)
            return Failed(message=state.message)
        result = {**state.result(), "pool": pool}
        logger.info("%s: %s in %.1f s", stage, "ran" if result["ran"] else "up to date", result["seconds"])
        results.append(result)
    return results


def flow_run_name() -> str:
    """Prefect lists a pipeline run as its dataset and start time, not a random name."""
    import datetime

    from prefect.runtime import flow_run

    from tasks.lib.summary import dataset_name

    given = flow_run.parameters
    name = given.get("profile")
    if not name:
        try:
            name = dataset_name(
                params_file.read(catalog.at(given.get("root", "."), catalog.PARAMS))["ingest"]["source"]
            )
        except (OSError, KeyError, TypeError, ValueError):
            name = "pipeline"
    return f"{name} · {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC"


@flow(name="text-classifier-pipeline", flow_run_name=flow_run_name)
def pipeline(
    root: str = ".", refresh_source: bool = False, profile: str | None = None, training_deployment: str | None = None
):
    """Run every stage that is out of date.

    DVC cannot see inside the source (a bundled file, a folder, a hub dataset), so with
    `refresh_source` ingest always re-reads it; its output is deterministic, so when the
    source has not changed nothing downstream re-runs. Scheduled runs should set it.
    `profile` first switches params.yaml to profiles/<profile>.yaml (the dataset).
    `training_deployment` (e.g. "train/gpu") runs pretrain and finetune through it.
    """
    import mlflow

    logger = get_run_logger()
    root_path = Path(root).resolve()
    if not (root_path / "dvc.yaml").exists():
        return Failed(message=f"{root_path} has no dvc.yaml: run the flow from the project root")
    with workspace_lock(root_path, say=logger.info):
        params = workspace_params(root_path, profile)
        if isinstance(params, State):
            return params
        configure(root_path)
        for run_id in fail_abandoned_runs(mlflow.MlflowClient()):
            logger.info("MLflow run %s was left RUNNING by a pipeline process that died: marked FAILED", run_id)
        pool = pool_of_this_run()
        name = parent_run_name(params.ingest.source, None)
        with mlflow.start_run(run_name=name, tags={**owner_tags(), PARENT_TAG: "true"}) as parent:
            mlflow.log_params(flatten(params.model_dump(by_alias=True)))
            mlflow.set_tag("work_pool", pool)
            results = run_stages(STAGES, root_path, parent.info.run_id, params, refresh_source, training_deployment)
            if isinstance(results, State):
                return results
            pushed = dvc_push(str(root_path))
            logger.info("pushed %d file(s) to the DVC remote", pushed)
            metrics, registered = finish_parent_run(root_path, params, results)
        init = read_json(catalog.at(root_path, catalog.FINETUNED / catalog.META))["init"]
    return {
        "results": results,
        "metrics": metrics,
        "registered": registered,
        "run_id": parent.info.run_id,
        "init": init,
    }


if __name__ == "__main__":
    import argparse

    from flows.runtime import offline_defaults, reap_on_exit
    from tasks.lib.summary import terminal_lines

    cli = argparse.ArgumentParser(description="Run the pipeline as one Prefect flow.")
    cli.add_argument("--refresh-source", action="store_true", help="re-read the source even if params did not change")
    refresh = cli.parse_args().refresh_source
    reap_on_exit()
    with offline_defaults():
        final = pipeline(refresh_source=refresh, return_state=True)
    if final.is_failed():
        print(f"error: {final.message}", file=sys.stderr)
        raise SystemExit(1)
    out = final.result()
    print("\n" + "\n".join(terminal_lines(out["metrics"], out["registered"], out["init"], Path("."))))
