"""register: log the classifier as an MLflow pyfunc and register it as a new version.

    python -m tasks.register          # writes reports/registered.json

The version is tagged with the git commit, the hash DVC recorded for the validated data
and the params, and given the alias in params (`challenger`); promotion to `champion` is
a separate, gated step.
"""

from __future__ import annotations

import importlib.metadata
import os
import tempfile
import warnings
from pathlib import Path

from models.checksum import code_sha256, file_sha256
from tasks.lib import catalog
from tasks.lib.common import StageError, read_json, run_stage, write_json_atomic
from tasks.lib.config import Params, load_params
from tasks.lib.lineage import data_hash, git_commit, params_digest, restore_command
from tasks.lib.model_card import render_from_workspace
from tasks.lib.registry import COMPLETE, REGISTRATION_TAG, give_up_interrupted, registry_lock, version_problem
from tasks.lib.tracking import PARENT_ENV

# Absolute, so registering works from any working folder.
PYFUNC_FILE = Path(__file__).with_name("lib") / "pyfunc_model.py"
MODELS_PACKAGE = Path(__file__).resolve().parents[1] / "models"
RUNTIME_PACKAGES = ("mlflow", "torch", "tokenizers", "safetensors", "numpy", "pandas")
EXAMPLE = ["what a great flight", "lost my bag again"]
PARAMS_ARTIFACT = "params.json"  # the params the run loaded; `params_digest` is their digest


def pip_requirements() -> list[str]:
    return [f"{name}=={importlib.metadata.version(name)}" for name in RUNTIME_PACKAGES]


def describe_model(client, name: str, labels: list[str], source: str) -> None:
    """The registered model's own description and tags: what it is, before any version."""
    client.update_registered_model(
        name,
        description=f"Text classifier over {len(labels)} labels ({', '.join(labels)}), trained on `{source}` "
        "by this project's pipeline: pretrained language model, fine-tuned, evaluated against a TF-IDF "
        "baseline. Each version's description is its model card; `@champion` is the promoted one.",
    )
    for key, value in {"task": "text-classification", "labels": ",".join(labels), "source": source}.items():
        client.set_registered_model_tag(name, key, value)


def base_model_tag(base: dict | None) -> str:
    """The language model the classifier's pretraining started from ("none": random weights)."""
    if not base:
        return "none"
    return (
        base["source"]
        + (f" (version {base['version']})" if base.get("version") else "")
        + f" sha256 {base['weights_sha256'][:12]}"
    )


def register(params: Params) -> dict:
    """Register the fine-tuned model as a new version, under the registry lock: a version is
    usable only once its last tag (the completion marker) is set, and versions that an
    interrupted registration left without one are marked unusable first."""
    import mlflow

    weights = catalog.FINETUNED / catalog.WEIGHTS
    for needed in (weights, catalog.TOKENIZER_FILE, catalog.METRICS):
        if not needed.exists():
            raise StageError(f"{needed} not found: run the stages before register (dvc repro)")
    with registry_lock():
        give_up_interrupted(mlflow.MlflowClient(), params.register_.model_name)
        return _register(params, weights)


def registry_holds(name: str, root: Path = Path(".")) -> bool:
    """Whether the registry holds a complete version of exactly the workspace's fine-tuned
    weights, as reports/registered.json says (the file alone can outlive the registry)."""
    import mlflow

    record_file, weights = catalog.at(root, catalog.REGISTERED), catalog.at(root, catalog.FINETUNED / catalog.WEIGHTS)
    if not (record_file.exists() and weights.exists()):
        return False
    record, client = read_json(record_file), mlflow.MlflowClient()
    if record.get("name") != name or version_problem(client, name, record["version"]):
        return False
    return client.get_model_version(name, record["version"]).tags.get("weights_sha256") == file_sha256(weights)


def _register(params: Params, weights: Path) -> dict:
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    from tasks.lib.evaluation_report import log_versioned_report

    meta = read_json(catalog.FINETUNED / catalog.META)
    weights_sha256 = file_sha256(weights)  # in the config (checked at load) and a tag (checked by the flow)
    example = list(EXAMPLE)
    output_example = pd.DataFrame(
        {"label": [meta["labels"][0]] * 2, **{f"proba_{c}": [0.5, 0.5] for c in meta["labels"]}}
    )
    cfg = params.register_
    # The pyfunc's config is written to scratch space: finetune's output folder is DVC's, not ours.
    with tempfile.TemporaryDirectory() as scratch:
        config_file = Path(scratch) / "config.json"
        write_json_atomic(
            config_file,
            {
                "labels": meta["labels"],
                "model_config": meta["model_config"],
                "weights_sha256": weights_sha256,
                "tokenizer_sha256": file_sha256(catalog.TOKENIZER_FILE),
                "max_texts_per_request": cfg.max_texts_per_request,
            },
        )
        artifacts = {
            "weights": str(weights),
            "tokenizer": str(catalog.TOKENIZER_FILE),
            "config": str(config_file),
        }
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*type hints.*")  # the signature is given explicitly
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(PYFUNC_FILE),
                artifacts=artifacts,
                code_paths=[str(MODELS_PACKAGE)],
                # Checked at load (pyfunc_model.py): the config (labels included) and the shipped code.
                model_config={"config_sha256": file_sha256(config_file), "code_sha256": code_sha256(MODELS_PACKAGE)},
                signature=infer_signature(example, output_example),
                input_example=example,
                pip_requirements=pip_requirements(),
                registered_model_name=cfg.model_name,
            )
    metrics = read_json(catalog.METRICS)
    run_id = mlflow.active_run().info.run_id
    version = str(info.registered_model_version)
    used = params.model_dump(by_alias=True)  # what each stage was built with: the dvc.lock artifact
    # Long records are artifacts, so the version's tags stay short enough to read in the UI.
    mlflow.log_dict(used, PARAMS_ARTIFACT)
    if catalog.DVC_LOCK.exists():  # what `tasks.registry restore` brings back (none outside DVC)
        mlflow.log_artifact(str(catalog.DVC_LOCK))
    tags = {
        "git_commit": git_commit(),
        "data_hash": data_hash(),
        "restore": restore_command(version),
        "params_digest": params_digest(used),
        "params": f"runs:/{run_id}/{PARAMS_ARTIFACT}",
        "dvc_lock": f"runs:/{run_id}/{catalog.DVC_LOCK.name}" if catalog.DVC_LOCK.exists() else "none",
        "test_accuracy": f"{metrics['test']['accuracy']:.4f}",
        "test_macro_f1": f"{metrics['test']['macro_f1']:.4f}",
        "baseline_macro_f1": f"{metrics['baseline']['macro_f1']:.4f}",
        "source_run_id": run_id,
        "pipeline_run_id": os.environ.get(PARENT_ENV, ""),
        "evaluation_report": f"runs:/{run_id}/evaluation/{catalog.REPORT_PAGE}",
        "model_card": f"runs:/{run_id}/model_card.md",
        "base_model": base_model_tag(meta.get("base_model")),
        # the label budget: how many labelled training rows fine-tuning (and the baseline) saw
        "labelled_rows": str(metrics["labelled_rows"]),
        "weights_sha256": weights_sha256,
    }
    client = mlflow.MlflowClient()
    if catalog.EVALUATION_REPORT.exists():
        log_versioned_report(params, version, {"register": run_id, "pipeline": tags["pipeline_run_id"]})
    card = render_from_workspace(cfg.model_name, version, tags, params.tokenize.max_length)
    mlflow.log_text(card, "model_card.md")
    describe_model(client, cfg.model_name, meta["labels"], params.ingest.source)
    client.update_model_version(cfg.model_name, version, description=card)
    for key, value in tags.items():
        client.set_model_version_tag(cfg.model_name, version, key, value)
    client.set_model_version_tag(cfg.model_name, version, REGISTRATION_TAG, COMPLETE)  # last: the version is whole
    client.set_registered_model_alias(cfg.model_name, cfg.alias, version)
    record = {
        "name": cfg.model_name,
        "version": version,
        "alias": cfg.alias,
        "model_uri": f"models:/{cfg.model_name}@{cfg.alias}",
        "run_id": tags["source_run_id"],
        "git_commit": tags["git_commit"],
        "data_hash": tags["data_hash"],
        "base_model": tags["base_model"],
    }
    write_json_atomic(catalog.REGISTERED, record)
    return record


def main() -> None:
    from tasks.lib.tracking import stage_run

    params = load_params()
    with stage_run("register", {"register": params.register_.model_dump()}):
        record = register(params)
    print(f"register: {record['name']} version {record['version']} -> @{record['alias']}")


if __name__ == "__main__":
    run_stage(main)
