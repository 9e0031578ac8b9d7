"""register_lm: log the pretrained language model to MLflow and register it with alias `base`.

    python -m tasks.register_lm       # after corpus, tokenize, pretrain; writes reports/registered_lm.json

The last step of the base-model flow (flows/base_model.py), not a DVC stage: the classifier
pipeline never registers its language models. The version carries what it was trained on
(DVC's hashes of the corpus and its tokens, the params dvc.lock recorded, the git commit),
tokens seen and validation loss; `pretrain.init_from: models:/<name>@<alias>` reuses it.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from models.inference import vector_columns
from tasks.lib import catalog
from tasks.lib.base_model import LM_FILES
from tasks.lib.common import StageError, read_json, run_stage, write_json_atomic
from tasks.lib.config import Params, load_params
from tasks.lib.lineage import git_commit, lineage_params, out_hash, params_digest
from tasks.lib.tracking import PARENT_ENV
from tasks.register import EXAMPLE, MODELS_PACKAGE, PARAMS_ARTIFACT, pip_requirements

PYFUNC_FILE = Path(__file__).with_name("lib") / "pyfunc_lm.py"


def register_lm(params: Params) -> dict:
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    missing = [name for name in LM_FILES.values() if not (catalog.PRETRAINED / name).exists()]
    if missing:
        raise StageError(f"{catalog.PRETRAINED} lacks {', '.join(missing)}: run corpus, tokenize and pretrain first")
    meta = read_json(catalog.PRETRAINED / catalog.META)
    width = meta["model_config"]["d_model"]
    output_example = pd.DataFrame([[0.0] * width] * len(EXAMPLE), columns=vector_columns(width))
    cfg = params.base_model
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*type hints.*")  # the signature is given explicitly
        info = mlflow.pyfunc.log_model(
            name="language_model",
            python_model=str(PYFUNC_FILE),
            # the folder's files but the optimizer state: downloaded, they are a language model folder
            artifacts={key: str(catalog.PRETRAINED / name) for key, name in LM_FILES.items()},
            code_paths=[str(MODELS_PACKAGE)],
            signature=infer_signature(EXAMPLE, output_example),
            input_example=EXAMPLE,
            pip_requirements=pip_requirements(),
            registered_model_name=cfg.name,
        )
    run_id = mlflow.active_run().info.run_id
    used = lineage_params(params)
    mlflow.log_dict(used, PARAMS_ARTIFACT)  # an artifact: a tag this long hides the others in the UI
    tags = {
        "model_kind": "language-model",
        "objective": meta["objective"],
        "arch": meta["model_config"]["arch"],
        "git_commit": git_commit(),
        "corpus_hash": out_hash(catalog.CORPUS),
        "corpus_tokens_hash": out_hash(catalog.TOKENIZED),
        "params_digest": params_digest(used),
        "params": f"runs:/{run_id}/{PARAMS_ARTIFACT}",
        "tokens_seen": str(meta["tokens_seen"]),
        "val_loss": f"{meta['val_loss']:.4f}",
        "init_from": json.dumps(meta.get("init_from")),
        "source_run_id": run_id,
        "pipeline_run_id": os.environ.get(PARENT_ENV, ""),
    }
    corpus = read_json(catalog.CORPUS_STATS) if catalog.CORPUS_STATS.exists() else {}
    mlflow.log_dict(corpus, "corpus_stats.json")
    client = mlflow.MlflowClient()
    version = str(info.registered_model_version)
    for key, value in tags.items():
        client.set_model_version_tag(cfg.name, version, key, value)
    client.update_model_version(cfg.name, version, description=description(meta, corpus, tags))
    client.set_registered_model_alias(cfg.name, cfg.alias, version)
    record = {"name": cfg.name, "version": version, "alias": cfg.alias, "model_uri": f"models:/{cfg.name}@{cfg.alias}",
              "run_id": run_id, "tokens_seen": meta["tokens_seen"], "val_loss": meta["val_loss"],
              "corpus_hash": tags["corpus_hash"], "git_commit": tags["git_commit"]}  # fmt: skip
    write_json_atomic(catalog.REGISTERED_LM, record)
    return record


def description(meta: dict, corpus: dict, tags: dict) -> str:
    """The registry page's text: what the model is, what it read, how to reuse it."""
    sources = ", ".join(s.get("source", "?") for s in corpus.get("sources", [])) or "unknown"
    return (
        f"{meta['model_config']['arch']} {meta['objective']} language model; corpus: {sources} "
        f"({corpus.get('documents', '?'):,} texts, DVC md5 {tags['corpus_hash']}); {meta['tokens_seen']:,} tokens seen; "
        f"validation loss {meta['val_loss']:.3f}. Reuse: pretrain.init_from: models:/<name>@<alias>."
    )


def main() -> None:
    from tasks.lib.tracking import stage_run

    params = load_params()
    with stage_run("register_lm", {"base_model": params.base_model.model_dump()}):
        record = register_lm(params)
    print(f"register_lm: {record['name']} version {record['version']} -> @{record['alias']} ({record['model_uri']})")


if __name__ == "__main__":
    run_stage(main)
