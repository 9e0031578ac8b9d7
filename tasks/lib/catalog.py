"""Every path the pipeline reads or writes, relative to the workspace root: each is written
here once, and stages, flows, benchmarks and tests import it (a Kedro-style catalog).
`dvc.yaml` names the same paths; a test holds the two in step."""

from __future__ import annotations

from pathlib import Path

PARAMS = Path("params.yaml")
PROFILES = Path("profiles")
DVC_LOCK = Path("dvc.lock")
WORKSPACE_LOCK = Path(".dvc/tmp/pipeline.lock")  # one pipeline run per workspace at a time

SPLITS = ("train", "validation", "test")

# ingest -> validate -> tokenize
RAW = Path("data/raw")
INGEST_STATS = RAW / "ingest_stats.json"
VALIDATED = Path("data/validated")
QUARANTINE = VALIDATED / "quarantine.parquet"
SNAPSHOT = VALIDATED / "snapshot.json"  # what drift compares the next version with
VALIDATION_REPORT = Path("reports/validation")
CORPUS_REPORT = Path("reports/corpus")  # the corpus section: sources, kept, dropped, tokens (by tokenize)

# corpus -> tokenize: unlabelled text, in shards, and its token ids, one memory-mappable file a shard
CORPUS = Path("data/corpus")
CORPUS_STATS = CORPUS / "stats.json"
TOKENIZED = Path("data/tokenized")
TOKEN_STATS = TOKENIZED / "stats.json"
CORPUS_TOKENS = TOKENIZED / "corpus"  # pretraining text only
TOKENIZER = Path("checkpoints/tokenizer")
TOKENIZER_FILE = TOKENIZER / "tokenizer.json"
LABELS_FILE = TOKENIZER / "labels.json"

# pretrain -> finetune: a checkpoint folder holds WEIGHTS and META (and OPTIMIZER)
PRETRAINED = Path("checkpoints/pretrained")
FINETUNED = Path("checkpoints/finetuned")
PRETRAIN_RESUME = Path("checkpoints/.pretrain-resume")  # scratch state of an unfinished run, not DVC's
FINETUNE_RESUME = Path("checkpoints/.finetune-resume")
WEIGHTS = "model.safetensors"
BODY_WEIGHTS = "body.safetensors"  # a language model's body alone: what fine-tuning starts from
META = "checkpoint.json"
OPTIMIZER = "optimizer.safetensors"
LM_TOKENIZER = TOKENIZER_FILE.name  # a language model folder carries the tokenizer its data was encoded with
LM_HELD_OUT = "held_out.npy"  # ... and the digests of the texts its corpus held out (tasks/lib/leak_guard.py)

# evaluate -> register
EVALUATION_REPORT = Path("reports/evaluation")
PREDICTIONS = "predictions.csv"  # inside EVALUATION_REPORT
METRICS = Path("reports/metrics.json")
REGISTERED = Path("reports/registered.json")
REGISTERED_LM = Path("reports/registered_lm.json")  # the base-model flow's registration
HPO = Path("reports/hpo")
REPORT_PAGE = "index.html"  # the HTML page inside each report folder


def split_file(split: str, folder: Path = VALIDATED) -> Path:
    return folder / f"{split}.parquet"


def at(root: Path | str, path: Path) -> Path:
    """A catalog path inside the workspace `root` (flows and tests that do not run there)."""
    return Path(root) / path
