"""register: log the classifier as an MLflow pyfunc and register it as a new version.

    python -m tasks.register          # writes reports/registered.json

The version is tagged with the git commit, the hash DVC recorded for the validated data
and the params, and given the alias in params (`challenger`); promotion to `champion` is
a separate, gated step.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import subprocess
import tempfile
import warnings
from pathlib import Path

import yaml

from tasks.common import StageError, read_json, run_stage, write_json_atomic
from tasks.config import Params, load_params
from tasks.model_card import render_from_workspace
from tasks.tracking import PARENT_ENV

MODEL_DIR = Path("checkpoints/finetuned")
TOKENIZER_DIR = Path("checkpoints/tokenizer")
METRICS_FILE = Path("reports/metrics.json")
EVAL_DIR = Path("reports/evaluation")
OUT_FILE = Path("reports/registered.json")
LOCK_FILE = Path("dvc.lock")
# Absolute, so registering works from any working folder.
PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")
MODELS_PACKAGE = Path(__file__).resolve().parents[1] / "models"
RUNTIME_PACKAGES = ("mlflow", "torch", "tokenizers", "safetensors", "numpy", "pandas")
EXAMPLE = ["what a great flight", "lost my bag again"]


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        # dvc.lock changes with every run; the flag is about the code and params.
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!dvc.lock"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def _lock_stages(lock_file: Path) -> dict:
    return (yaml.safe_load(lock_file.read_text()) or {}).get("stages", {}) if lock_file.exists() else {}


def data_hash(lock_file: Path = LOCK_FILE) -> str:
    """The md5 DVC recorded for data/validated: the exact data this model was trained on."""
    for out in _lock_stages(lock_file).get("validate", {}).get("outs", []):
        if out.get("path") == "data/validated":
            return out.get("md5", "unknown")
    return "unknown"


def lineage_params(params: Params, lock_file: Path = LOCK_FILE) -> dict:
    """The params each stage was actually built with, as DVC recorded them; params.yaml may
    hold newer values for stages whose change did not alter their outputs."""
    used: dict = {}
    for stage in _lock_stages(lock_file).values():
        for key, value in stage.get("params", {}).get("params.yaml", {}).items():
            section, _, leaf = key.partition(".")
            if leaf:
                used.setdefault(section, {})[leaf] = value
            else:
                used[key] = value
    return used or params.model_dump(by_alias=True)


def restore_command(commit: str) -> str:
    """How to get this exact data back: the commit's dvc.lock names it, the remote holds it."""
    sha = commit.removesuffix("-dirty")
    return f"git checkout {sha} -- dvc.lock && dvc pull data/validated (or dvc checkout data/validated)"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pip_requirements() -> list[str]:
    return [f"{name}=={importlib.metadata.version(name)}" for name in RUNTIME_PACKAGES]


def register(params: Params) -> dict:
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    for needed in (MODEL_DIR / "model.safetensors", TOKENIZER_DIR / "tokenizer.json", METRICS_FILE):
        if not needed.exists():
            raise StageError(f"{needed} not found: run the stages before register (dvc repro)")
    meta = read_json(MODEL_DIR / "checkpoint.json")
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
                "weights_sha256": file_sha256(MODEL_DIR / "model.safetensors"),
                "max_texts_per_request": cfg.max_texts_per_request,
            },
        )
        artifacts = {
            "weights": str(MODEL_DIR / "model.safetensors"),
            "tokenizer": str(TOKENIZER_DIR / "tokenizer.json"),
            "config": str(config_file),
        }
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*type hints.*")  # the signature is given explicitly
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(PYFUNC_FILE),
                artifacts=artifacts,
                code_paths=[str(MODELS_PACKAGE)],
                signature=infer_signature(example, output_example),
                input_example=example,
                pip_requirements=pip_requirements(),
                registered_model_name=cfg.model_name,
            )
    metrics = read_json(METRICS_FILE)
    run_id = mlflow.active_run().info.run_id
    commit = git_commit()
    tags = {
        "git_commit": commit,
        "data_hash": data_hash(),
        "restore_data": restore_command(commit),
        "params": json.dumps(lineage_params(params), sort_keys=True),
        "test_accuracy": f"{metrics['test']['accuracy']:.4f}",
        "test_macro_f1": f"{metrics['test']['macro_f1']:.4f}",
        "baseline_macro_f1": f"{metrics['baseline']['macro_f1']:.4f}",
        "source_run_id": run_id,
        "pipeline_run_id": os.environ.get(PARENT_ENV, ""),
        "evaluation_report": f"runs:/{run_id}/evaluation/index.html",
        "model_card": f"runs:/{run_id}/model_card.md",
    }
    client = mlflow.MlflowClient()
    version = str(info.registered_model_version)
    if EVAL_DIR.exists():
        mlflow.log_artifacts(str(EVAL_DIR), "evaluation")
    card = render_from_workspace(cfg.model_name, version, tags, params.tokenize.max_length)
    mlflow.log_text(card, "model_card.md")
    client.update_model_version(cfg.model_name, version, description=card)
    for key, value in tags.items():
        client.set_model_version_tag(cfg.model_name, version, key, value)
    client.set_registered_model_alias(cfg.model_name, cfg.alias, version)
    record = {
        "name": cfg.model_name,
        "version": version,
        "alias": cfg.alias,
        "model_uri": f"models:/{cfg.model_name}@{cfg.alias}",
        "run_id": tags["source_run_id"],
        "git_commit": tags["git_commit"],
        "data_hash": tags["data_hash"],
    }
    write_json_atomic(OUT_FILE, record)
    return record


def main() -> None:
    from tasks.tracking import stage_run

    params = load_params()
    with stage_run("register", {"register": params.register_.model_dump()}):
        record = register(params)
    print(f"register: {record['name']} version {record['version']} -> @{record['alias']}")


if __name__ == "__main__":
    run_stage(main)
