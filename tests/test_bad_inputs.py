"""Every kind of bad input ends in a clear error or a quarantine count, never a traceback,
and leaves the previous good outputs in data/ byte-for-byte as they were."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tasks.ingest import ingest
from tasks.lib.common import StageError, read_json
from tasks.lib.config import ParamsError, load_params
from tasks.validate import validate

from .conftest import tiny_frame, tiny_params


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _data_stages(workdir: Path, **overrides) -> dict:
    """ingest then validate, as `dvc repro` runs them, with params from params.yaml."""
    (workdir / "params.yaml").write_text(yaml.safe_dump(tiny_params(**overrides)))
    params = load_params()
    ingest(params.ingest, params.seed)
    validate(params)
    return read_json("reports/validation/results.json")


@pytest.fixture
def good(workdir):
    """A first accepted version, whose files every bad input must leave alone."""
    _data_stages(workdir)
    return workdir, _snapshot(workdir / "data")


def _write(workdir: Path, name: str, content) -> str:
    path = workdir / name
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return name


def _csv(df: pd.DataFrame) -> str:
    return df.to_csv(index=False)


BASE = tiny_frame(copies=10)
ERRORS = {
    "empty file": (b"", {}, "could not be read"),
    "header only": ("text,label\n", {}, "no rows"),
    "missing text column": (_csv(BASE.rename(columns={"text": "body"})), {}, r"\['text'\] not found"),
    "missing label column": (_csv(BASE.drop(columns="label")), {}, r"\['label'\] not found"),
    "params name a column that does not exist": (_csv(BASE), {"text_column": "tweet"}, r"\['tweet'\] not found"),
    "binary file": (bytes(range(256)) * 400, {}, "could not be read|not found"),
    "typo'd class everywhere": (_csv(BASE.replace("positive", "postive")), {}, "label not in ingest.labels: postive"),
    "windows-1252 file": (
        _csv(BASE.assign(text=BASE["text"] + " \u2019quoted\u2019 caf\u00e9")).encode("cp1252"),
        {},
        "undecodable bytes.*set ingest.encoding",
    ),
    "latin-1 file": (_csv(BASE.assign(text=BASE["text"] + " na\u00efve")).encode("latin-1"), {}, "undecodable bytes"),
    "a class that vanished": (_csv(BASE[BASE["label"] == "negative"]), {}, r"distinct_values_to_equal_set\(label\)"),
    "30% duplicates without dedupe": (
        _csv(pd.concat([BASE, BASE.sample(frac=0.43, random_state=0)])),
        {"dedupe": False},
        r"proportion_of_unique_values",
    ),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_bad_input_is_a_clear_error_and_changes_nothing(good, case):
    workdir, before = good
    content, ingest_overrides, message = ERRORS[case]
    source = _write(workdir, "bad.csv", content)
    with pytest.raises(StageError, match=message):
        _data_stages(workdir, ingest={"source": source, **ingest_overrides})
    # Where ingest succeeded and validate refused, data/raw holds the rejected candidate;
    # the accepted version, data/validated, is what must not move.
    now = _snapshot(workdir / "data")
    assert {k: v for k, v in now.items() if k.startswith("validated/")} == {
        k: v for k, v in before.items() if k.startswith("validated/")
    }


def test_ingest_errors_leave_even_the_raw_splits_alone(good):
    workdir, before = good
    _write(workdir, "bad.csv", "text,label\n")
    with pytest.raises(StageError):
        _data_stages(workdir, ingest={"source": "bad.csv"})
    assert _snapshot(workdir / "data") == before


QUARANTINED = {
    "a 1 MB single line": (
        _csv(pd.concat([BASE, pd.DataFrame({"text": ["word " * 200_000], "label": ["positive"]})])),
        "longer than validate.max_chars",
    ),
    "a few typo'd labels": (
        _csv(pd.concat([BASE, BASE.head(2).assign(label="postive", text=lambda d: d["text"] + "!?")])),
        "label not in",
    ),
    "a few undecodable bytes": (
        _csv(BASE).encode() + b"caf\xe9 au lait tasted fine,positive\n",
        "undecodable bytes",
    ),
}


@pytest.mark.parametrize("case", list(QUARANTINED))
def test_a_few_bad_rows_are_quarantined_and_counted(good, case):
    workdir, _ = good
    content, reason = QUARANTINED[case]
    source = _write(workdir, "few.csv", content)
    results = _data_stages(workdir, ingest={"source": source}, validate={"max_quarantine_share": 0.05})
    assert results["success"]
    counts = {q["reason"]: q["rows"] for q in results["quarantine"]}
    assert sum(n for r, n in counts.items() if r.startswith(reason)) >= 1
    assert results["quarantined_rows"] == len(pd.read_parquet(workdir / "data/validated/quarantine.parquet"))


def test_thirty_percent_duplicates_are_collapsed_and_counted(good):
    workdir, _ = good
    source = _write(workdir, "dups.csv", _csv(pd.concat([BASE, BASE.sample(frac=0.43, random_state=0)])))
    _data_stages(workdir, ingest={"source": source})
    stats = read_json(workdir / "data/raw/ingest_stats.json")
    assert stats["repeats_collapsed"] == round(len(BASE) * 0.43)


def test_train_and_test_sharing_rows_are_quarantined_from_train(good):
    workdir, _ = good
    _write(workdir, "train.csv", _csv(BASE.iloc[:150]))
    _write(workdir, "test.csv", _csv(pd.concat([BASE.iloc[150:], BASE.iloc[:3]])))
    results = _data_stages(
        workdir,
        ingest={"splits": {"train": {"path": "train.csv"}, "test": {"path": "test.csv"}}},
        validate={"max_quarantine_share": 0.05},
    )
    counts = {q["reason"]: q for q in results["quarantine"]}
    assert counts["also in the test split"]["rows"] == 3
    assert set(counts["also in the test split"]["splits"]) <= {"train", "validation"}


def test_bad_params_name_the_key(workdir):
    raw = tiny_params(ingest={"text_colum": "text"})
    (workdir / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"ingest\.text_colum: unknown key"):
        load_params()
