"""The corpus stage and what follows from it: shards, their token files, memory-mapped pretraining."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from tasks.corpus import TRAIN_TEXT, corpus
from tasks.ingest import ingest
from tasks.lib.common import StageError, read_json
from tasks.lib.config import load_params
from tasks.lib.shards import TokenShards
from tasks.pretrain import pretrain
from tasks.tokenize import tokenize
from tasks.validate import validate

from .conftest import tiny_params

EXTRA = [f"the crew on flight {i} was friendly and the landing was smooth" for i in range(40)]


def _data(sources: list[dict], **corpus_knobs):
    Path("params.yaml").write_text(yaml.safe_dump(tiny_params(corpus={"sources": sources, **corpus_knobs})))
    params = load_params()
    ingest(params.ingest, params.seed)
    validate(params)
    return params


def test_sources_join_the_training_text_and_are_tokenized_untruncated(workdir):
    Path("wiki.txt").write_text(" = Heading = \n" + "".join(f" {t} @-@ long \n" for t in EXTRA))
    params = _data([{"path": "wiki.txt", "markup": "wikitext"}], shard_docs=16)
    stats = corpus(params)
    by_source = {s["source"]: s for s in stats["sources"]}
    assert by_source[TRAIN_TEXT]["kept"] == by_source[TRAIN_TEXT]["read"] > 0
    assert by_source["wiki.txt"]["kept"] == 40 and by_source["wiki.txt"]["empty after cleaning"] == 1
    assert stats["shards"] == -(-stats["documents"] // 16) > 1
    first = pd.read_parquet("data/corpus/shard-00000.parquet")["text"].tolist()
    assert (
        "the crew on flight 0 was friendly and the landing was smooth-long"
        in pd.concat(pd.read_parquet(p)["text"] for p in sorted(Path("data/corpus").glob("*.parquet"))).tolist()
    )
    assert first and read_json("data/corpus/stats.json") == stats
    token_stats = tokenize(params.tokenize.model_copy(update={"max_length": 8}), params.ingest.labels)
    assert token_stats["corpus_documents"] == stats["documents"]
    assert token_stats["corpus_tokens"] / stats["documents"] > 8  # pretraining text is never truncated
    assert len(list(Path("data/tokenized/corpus").glob("*.npy"))) == stats["shards"]
    # The corpus report: every source with its counts, and tokens per source that add up.
    by_source_tokens = token_stats["corpus_tokens_by_source"]
    assert len(by_source_tokens) == 2 and sum(by_source_tokens) == token_stats["corpus_tokens"]
    assert all(t > 0 for t in by_source_tokens)
    page = Path("reports/corpus/index.html").read_text()
    assert "wiki.txt" in page and TRAIN_TEXT in page and "empty after cleaning: 1" in page
    assert f"{by_source_tokens[1]:,}" in page and f"{token_stats['corpus_tokens']:,} tokens" in page


def test_held_out_text_never_reaches_the_corpus(workdir):
    _data([])
    held = pd.read_parquet("data/validated/test.parquet")["text"].tolist()
    Path("leaky.txt").write_text("\n".join([held[0].upper(), f"so they said {held[1]} and left"] + EXTRA) + "\n")
    params = _data([{"path": "leaky.txt"}], min_leak_words=3)
    stats = corpus(params)
    leaky = next(s for s in stats["sources"] if s["source"] == "leaky.txt")
    assert leaky["equal to a validation/test text"] == 1 and leaky["contains a validation/test text"] == 1
    assert leaky["kept"] == 40


def test_a_bad_source_fails_the_stage_and_keeps_the_previous_corpus(workdir):
    params = _data([])
    corpus(params)
    before = sorted(p.read_bytes() for p in Path("data/corpus").iterdir())
    Path("empty.txt").write_text("")
    Path("binary.txt").write_bytes(b"\x00\x01 binary")
    held = pd.read_parquet("data/validated/validation.parquet")["text"].tolist()
    Path("only_held_out.txt").write_text("\n".join(held) + "\n")
    for name, why in (("missing.txt", "not an existing file"), ("empty.txt", "has no texts"),
                      ("binary.txt", "binary"), ("only_held_out.txt", "none of its")):  # fmt: skip
        with pytest.raises(StageError, match=why):
            corpus(_data([{"path": name}]))
        assert sorted(p.read_bytes() for p in Path("data/corpus").iterdir()) == before


def test_pretraining_samples_memory_mapped_shards(workdir):
    params = _data([])
    corpus(params)
    tokenize(params.tokenize, params.ingest.labels)
    shards = TokenShards(Path("data/tokenized/corpus"))
    assert all(isinstance(a, np.memmap) for a in shards.arrays)  # on disk, not in memory
    gen = torch.Generator().manual_seed(0)
    rows = shards.sample(5, 16, gen)
    assert rows.shape == (5, 16) and rows.dtype == torch.long
    stream = np.concatenate([np.asarray(a) for a in shards.arrays])
    for row in rows.tolist():  # every row is a window of the token stream
        starts = np.flatnonzero(stream[: len(stream) - 15] == row[0])
        assert any((stream[s : s + 16] == row).all() for s in starts)
    again = shards.sample(5, 16, torch.Generator().manual_seed(0))
    assert torch.equal(rows, again)
    with pytest.raises(StageError, match="fewer than one block"):
        shards.sample(1, shards.tokens + 1, gen)
    summary = pretrain(params)
    assert summary["tokens_seen"] == 6 * 4 * 16


@pytest.mark.slow
def test_adding_a_source_reruns_the_corpus_and_what_follows_but_nothing_before(tmp_path):
    from .conftest import make_project, run_ok, tiny_frame

    env = make_project(tmp_path, tiny_params())
    tiny_frame().to_csv(tmp_path / "tiny.csv", index=False)
    run_ok(["dvc", "repro", "tokenize"], tmp_path, env)
    (tmp_path / "more.txt").write_text("\n".join(EXTRA) + "\n")
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["corpus"]["sources"] = [{"path": "more.txt"}]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run_ok(["dvc", "repro", "tokenize"], tmp_path, env).stdout
    assert "Stage 'ingest' didn't change" in out and "Stage 'validate' didn't change" in out
    assert "Running stage 'corpus'" in out and "Running stage 'tokenize'" in out


def test_an_interrupted_tokenize_leaves_the_last_shards_and_a_rerun_writes_the_same(workdir, monkeypatch):
    import tasks.tokenize as tok_stage

    params = _data([{"path": "more.txt"}], shard_docs=10)
    Path("more.txt").write_text("\n".join(EXTRA) + "\n")
    corpus(params)
    first = tokenize(params.tokenize, params.ingest.labels)
    shards = {p.name: p.read_bytes() for p in Path("data/tokenized/corpus").glob("*.npy")}
    assert len(shards) > 1

    def killed(tok, corpus_dir, out_dir):
        out_dir.mkdir()
        (out_dir / "shard-00000.npy").write_bytes(b"half a shard")
        raise KeyboardInterrupt  # as a kill would, half-way through the shards

    with monkeypatch.context() as patched, pytest.raises(KeyboardInterrupt):
        patched.setattr(tok_stage, "encode_corpus", killed)
        tokenize(params.tokenize, params.ingest.labels)
    assert {p.name: p.read_bytes() for p in Path("data/tokenized/corpus").glob("*.npy")} == shards
    again = tokenize(params.tokenize, params.ingest.labels)
    assert again == first
    assert {p.name: p.read_bytes() for p in Path("data/tokenized/corpus").glob("*.npy")} == shards


def _digests(folder: Path, pattern: str) -> dict:
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob(pattern))}


def _kill_when(cmd: list[str], ready, timeout_s: float = 120) -> None:
    """Start `cmd` in its own process group and SIGKILL the whole group once `ready()` holds."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from .conftest import ROOT

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, *cmd], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert proc.poll() is None, f"{cmd} finished before it could be killed: make its input larger"
        assert time.monotonic() < deadline, f"{cmd} never reached the point to kill it at"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_killed_corpus_and_tokenize_rerun_to_the_same_shards(workdir):
    """SIGKILL in the middle of each stage, then a re-run: the same shards as a run that was
    never interrupted, the previous good output in place meanwhile, no scratch left behind."""
    import subprocess
    import sys

    lines = [f"passenger {i} wrote that flight {i % 977} from gate {i % 53} was {'late' if i % 3 else 'early'}"
             for i in range(60_000)]  # fmt: skip
    Path("big.txt").write_text("\n".join(lines) + "\n")
    params = _data([{"path": "big.txt"}], shard_docs=5_000)
    corpus(params)
    tokenize(params.tokenize, params.ingest.labels)
    shards, tokens = _digests(Path("data/corpus"), "*"), _digests(Path("data/tokenized/corpus"), "*.npy")
    assert len(tokens) == 13  # 64 training texts + 60,000 lines, 5,000 a shard

    # A corpus run killed after its second shard: the finished corpus stays as it was.
    scratch = lambda name: list(Path(name).parent.glob(f".{Path(name).name}.tmp-*"))  # noqa: E731
    _kill_when(["-m", "tasks.corpus"], lambda: any(len(list(d.glob("shard-*"))) >= 2 for d in scratch("data/corpus")))
    assert _digests(Path("data/corpus"), "*") == shards and scratch("data/corpus")
    subprocess.run([sys.executable, "-m", "tasks.corpus"], check=True, capture_output=True)
    assert _digests(Path("data/corpus"), "*") == shards and not scratch("data/corpus")

    # A tokenize run (and its worker processes) killed after its second token file.
    _kill_when(["-m", "tasks.tokenize"],
               lambda: any(len(list(d.glob("corpus/*.npy"))) >= 2 for d in scratch("data/tokenized")))  # fmt: skip
    assert _digests(Path("data/tokenized/corpus"), "*.npy") == tokens
    subprocess.run([sys.executable, "-m", "tasks.tokenize"], check=True, capture_output=True)
    assert _digests(Path("data/tokenized/corpus"), "*.npy") == tokens and not scratch("data/tokenized")
