"""Every kind of corpus source streams through the same reader, a chunk at a time."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tasks.lib.common import StageError
from tasks.lib.corpus_sources import read_texts
from tasks.lib.sources import ReadSpec

TEXTS = ["the first document", "a second one, with a comma", "third"]


def spec(path, **layout) -> ReadSpec:
    base = {"format": "auto", "header": True, "columns": None, "quoting": "minimal", "encoding": "utf-8",
            "text_column": "text", "label_column": "label", "label_map": None, "cast_text": False}  # fmt: skip
    return ReadSpec(path=str(path), **{**base, **layout})


def texts(path, chunk_rows=2, **layout) -> list[str]:
    chunks = list(read_texts(spec(path, **layout), chunk_rows=chunk_rows))
    assert all(len(c) <= chunk_rows for c in chunks)
    return [t for c in chunks for t in c]


def test_a_text_file_is_one_document_per_line(tmp_path):
    f = tmp_path / "docs.txt"
    f.write_bytes(("\r\n".join(TEXTS) + "\n").encode())
    assert texts(f) == TEXTS


@pytest.mark.parametrize("suffix", ["csv", "tsv", "jsonl", "parquet"])
def test_a_table_column(tmp_path, suffix):
    frame = pd.DataFrame({"id": [1, 2, 3], "body": TEXTS})
    f = tmp_path / f"docs.{suffix}"
    if suffix == "csv":
        frame.to_csv(f, index=False)
    elif suffix == "tsv":
        frame.to_csv(f, sep="\t", index=False)
    elif suffix == "jsonl":
        f.write_text("".join(json.dumps(r) + "\n" for r in frame.to_dict("records")))
    else:
        frame.to_parquet(f)
    assert texts(f, text_column="body") == TEXTS


def test_a_folder_of_files_and_a_hub_dataset_from_a_local_folder(tmp_path):
    (tmp_path / "a.txt").write_text("one\ntwo\n")
    pd.DataFrame({"text": ["three"]}).to_csv(tmp_path / "b.csv", index=False)
    assert texts(tmp_path) == ["one", "two", "three"]
    hub = tmp_path / "hub"
    hub.mkdir()
    pd.DataFrame({"text": TEXTS}).to_csv(hub / "train.csv", index=False)
    assert texts(f"hf:{hub}") == TEXTS


def test_bad_sources_are_one_clear_error(tmp_path):
    with pytest.raises(StageError, match="not an existing file or folder"):
        texts(tmp_path / "missing.txt")
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"\x00\x01\x02 not text")
    with pytest.raises(StageError, match="binary"):
        texts(binary)
    pd.DataFrame({"body": TEXTS}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(StageError, match="no column 'text'"):
        texts(tmp_path / "t.csv")
    pd.DataFrame({"text": [1, 2]}).to_parquet(tmp_path / "n.parquet")
    with pytest.raises(StageError, match="holds int values"):
        texts(tmp_path / "n.parquet")


def test_undecodable_bytes_become_replacement_characters(tmp_path):
    f = tmp_path / "latin.txt"
    f.write_bytes("caf\xe9 ok\nplain\n".encode("latin-1"))
    assert texts(f) == ["caf\ufffd ok", "plain"]
    g = tmp_path / "latin.jsonl"
    g.write_bytes('{"text": "caf\xe9 ok"}\n{"text": "plain"}\n'.encode("latin-1"))
    assert texts(g) == ["caf\ufffd ok", "plain"]
