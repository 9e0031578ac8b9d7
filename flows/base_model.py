"""The base-model flow: a language model trained on unlabelled text and registered for reuse.

    python -m flows.base_model --profile base_tweets       # or: make base PROFILE=base_tweets

Stages corpus, tokenize and pretrain build the language model; `tasks.register_lm` then
registers it as `base_model.name` with alias `base_model.alias`, which a dataset's run adapts
with `pretrain.init_from: models:/<name>@<alias>`. ingest and validate run first only so
that the labelled dataset's validation and test text is kept out of the corpus (a base model
must not have read the test sets it will be scored on); no label reaches the model. With
`training_deployment` (the scheduled setup) pretrain runs on that deployment's work pool,
the GPU machine, exactly as in the classifier pipeline.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.states import Failed, State

from flows.pipeline import dvc_push, run_stages, stage_env, workspace_lock, workspace_params
from tasks.lib import catalog
from tasks.lib.common import read_json
from tasks.lib.tracking import configure, flatten

BASE_STAGES = ("ingest", "validate", "corpus", "tokenize", "pretrain")


@task
def register_language_model(root: str, parent_run_id: str) -> dict:
    """`python -m tasks.register_lm` in the workspace, its MLflow run nested under the flow's."""
    done = subprocess.run([sys.executable, "-m", "tasks.register_lm"], cwd=root,
                          env={**os.environ, **stage_env(parent_run_id)})  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(
            "registering the language model failed (its error is printed above: python -m tasks.register_lm)"
        )
    return read_json(catalog.at(root, catalog.REGISTERED_LM))


def summary_markdown(results: list[dict], record: dict, corpus: dict) -> str:
    lines = [f"# Base language model `{record['model_uri']}` (version {record['version']})", "",
             f"- tokens seen: {record['tokens_seen']:,}; validation loss {record['val_loss']:.3f}",
             f"- corpus: {corpus.get('documents', 0):,} texts, DVC md5 `{record['corpus_hash']}`",
             "", "| stage | ran | seconds | pool |", "|---|---|---|---|"]  # fmt: skip
    lines += [
        f"| {r['stage']} | {'yes' if r['ran'] else 'up to date'} | {r['seconds']} | {r['pool']} |" for r in results
    ]
    return "\n".join(lines) + "\n"


@flow(name="base-language-model")
def base_model(root: str = ".", profile: str | None = None, training_deployment: str | None = None):
    """Build and register a base language model from the corpus `params.yaml` (after
    `profile`) describes; every stage that is up to date is skipped, as in the pipeline."""
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
        with mlflow.start_run(run_name="base-model") as parent:
            mlflow.log_params(flatten(params.model_dump(by_alias=True)))
            results = run_stages(BASE_STAGES, root_path, parent.info.run_id, params, False, training_deployment)
            if isinstance(results, State):
                return results
            registered = register_language_model(str(root_path), parent.info.run_id, return_state=True)
            if registered.is_failed():
                mlflow.set_tag("failed_stage", "register_lm")
                mlflow.end_run(status="FAILED")
                return Failed(message=registered.message)
            record = registered.result()
            dvc_push(str(root_path))
            corpus = read_json(catalog.at(root_path, catalog.CORPUS_STATS))
            mlflow.set_tags(
                {"registered_lm": f"{record['name']}/{record['version']}", "corpus_hash": record["corpus_hash"]}
            )
            mlflow.log_dict(results, "stages.json")
            create_markdown_artifact(
                summary_markdown(results, record, corpus),
                key="base-model-summary",
                description="The registered base language model: tokens seen, validation loss, corpus, stages.",
            )
    return {"results": results, "registered": record, "run_id": parent.info.run_id}


if __name__ == "__main__":
    import argparse

    from flows.runtime import offline_defaults, reap_on_exit

    cli = argparse.ArgumentParser(description="Train and register a base language model (no labels used).")
    cli.add_argument("--profile", default=None, help="switch params.yaml to profiles/<name>.yaml first")
    args = cli.parse_args()
    reap_on_exit()
    with offline_defaults():
        final = base_model(profile=args.profile, return_state=True)
    if final.is_failed():
        print(f"error: {final.message}", file=sys.stderr)
        raise SystemExit(1)
    out = final.result()["registered"]
    print(f"\nbase model {out['model_uri']} = version {out['version']}: {out['tokens_seen']:,} tokens seen, "
          f"validation loss {out['val_loss']:.3f}\nadapt it: pretrain.init_from: {out['model_uri']}")  # fmt: skip
