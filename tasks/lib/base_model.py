"""The language model a run starts from (`pretrain.init_from`): a folder pretrain wrote
(weights, checkpoint.json and the tokenizer its data was encoded with), or a registered one,
`models:/<name>@<alias>` or `models:/<name>/<version>`, whose artifacts are those files.
Tokenize reuses its tokenizer; pretrain checks it against params and loads it. Every way it
can be the wrong thing is a StageError that names which, before any training."""

from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from models.checksum import file_sha256
from tasks.lib import catalog
from tasks.lib.common import StageError, read_json
from tasks.lib.sources import expand_path

REGISTRY_PREFIX = "models:/"
# A language model's files, by the artifact names its registered version gives them.
LM_FILES = {
    "weights": catalog.WEIGHTS,
    "body": catalog.BODY_WEIGHTS,
    "meta": catalog.META,
    "tokenizer": catalog.LM_TOKENIZER,
    "held_out": catalog.LM_HELD_OUT,
}
# What must agree for the weights to fit: the rest of model_config (dropout, causal) may differ.
SHAPE_KEYS = ("arch", "vocab_size", "pad_id", "d_model", "n_layers", "n_heads", "d_ff", "max_positions", "d_hidden",
              "position")  # fmt: skip
# The parts of tokenizer.json that decide which ids a text gets (not truncation or padding).
TOKENIZER_KEYS = ("normalizer", "pre_tokenizer", "model", "added_tokens", "post_processor")
USAGE = "a language model folder that pretrain wrote, or models:/<name>@<alias> (python -m flows.base_model)"


@dataclass(frozen=True)
class BaseModel:
    source: str  # as params.yaml names it
    folder: Path
    meta: dict
    version: str | None = None  # the registry version the source resolved to

    @property
    def tokenizer_file(self) -> Path:
        return self.folder / catalog.LM_TOKENIZER

    def lineage(self) -> dict:
        """What a model trained from this one records about it."""
        return {"source": self.source, "version": self.version, "objective": self.meta["objective"],
                "tokens_seen": self.meta.get("tokens_seen"),
                "weights_sha256": file_sha256(self.folder / catalog.WEIGHTS)}  # fmt: skip

    def check_fits(self, tokenizer_file: Path, config: dict, theirs: dict) -> None:
        """Fail unless the data was encoded with this model's tokenizer and params describe its
        network; `theirs` is this model's network config with the defaults of keys added since it
        was trained filled in (models.build.model_config)."""
        if not same_tokenizer(self.tokenizer_file, tokenizer_file):
            raise StageError(
                f"pretrain.init_from: {self.source} was trained with a different tokenizer than the one the "
                f"data was encoded with ({tokenizer_file}): re-run tokenize, which reuses the base model's "
                "tokenizer when pretrain.init_from is set (dvc repro tokenize)"
            )
        diff = [f"{k} {theirs.get(k)} (params: {config.get(k)})" for k in SHAPE_KEYS if theirs.get(k) != config.get(k)]
        if diff:
            raise StageError(
                f"pretrain.init_from: {self.source} is a different network from the model section of "
                f"params.yaml: {', '.join(diff)}; set the model section to the base model's shape"
            )


def same_tokenizer(a: Path, b: Path) -> bool:
    ja, jb = json.loads(Path(a).read_text()), json.loads(Path(b).read_text())
    return all(ja.get(k) == jb.get(k) for k in TOKENIZER_KEYS)


@contextmanager
def opened(init_from: str):
    """The base model as a local folder for the duration of the block (a registered one is
    downloaded to a temporary folder)."""
    if init_from.startswith(REGISTRY_PREFIX):
        with tempfile.TemporaryDirectory() as tmp:
            folder, version = _download(init_from, Path(tmp))
            yield _checked(init_from, folder, version)
        return
    folder = Path(expand_path(init_from))
    if not folder.is_dir():
        raise StageError(f"pretrain.init_from: {init_from} is not a folder; it takes {USAGE}")
    yield _checked(init_from, folder, None)


def registry_version(uri: str) -> tuple[str, str]:
    """(name, version) of models:/<name>@<alias> or models:/<name>/<version>."""
    import mlflow

    ref = uri.removeprefix(REGISTRY_PREFIX)
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return name, str(mlflow.MlflowClient().get_model_version_by_alias(name, alias).version)
    name, _, version = ref.partition("/")
    return name, str(mlflow.MlflowClient().get_model_version(name, version).version)


def _download(uri: str, dst: Path) -> tuple[Path, str]:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        _, version = registry_version(uri)
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    except MlflowException as err:
        raise StageError(
            f"pretrain.init_from: {uri} is not in the model registry at {mlflow.get_tracking_uri()} "
            f"({err.message.splitlines()[0]}); it takes {USAGE}"
        ) from None
    folder = local / "artifacts"  # MLflow keeps each artifact's file name
    if not (folder / catalog.META).exists():
        classifier = any("labels" in read_json(f) for f in folder.glob("*.json"))
        what = "a text classifier (the register stage's)" if classifier else "not a language model"
        raise StageError(f"pretrain.init_from: {uri} is {what}; it takes {USAGE}")
    return folder, version


def _checked(source: str, folder: Path, version: str | None) -> BaseModel:
    if not (folder / catalog.META).exists():
        raise StageError(f"pretrain.init_from: {source} holds no {catalog.META}: not a model folder; it takes {USAGE}")
    meta = read_json(folder / catalog.META)
    if "labels" in meta or "objective" not in meta:
        what = f"a fine-tuned classifier (labels {meta['labels']})" if "labels" in meta else "not a language model"
        raise StageError(f"pretrain.init_from: {source} is {what}, not a language model; it takes {USAGE}")
    # A missing held-out record has its own message (leak_guard.check).
    missing = [name for name in LM_FILES.values() if not (folder / name).exists() and name != catalog.LM_HELD_OUT]
    if missing:
        raise StageError(f"pretrain.init_from: {source} lacks {', '.join(missing)}; it takes {USAGE}")
    return BaseModel(source, folder, meta, version)
