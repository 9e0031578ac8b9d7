import json
import re

import pandas as pd
import pytest

from tasks.ingest import ingest
from tasks.lib.common import StageError
from tasks.lib.config import parse_params
from tasks.lib.contract import quarantine, snapshot, snapshot_checks
from tasks.validate import validate

from .conftest import tiny_frame, tiny_params


@pytest.fixture
def raw(workdir):
    params = parse_params(tiny_params())
    ingest(params.ingest, seed=0, out_dir=workdir / "raw")
    return params, workdir


def _run(params, workdir):
    return validate(params, workdir / "raw", workdir / "validated", workdir / "report")


def _results(workdir):
    return json.loads((workdir / "report" / "results.json").read_text())


def test_good_splits_pass_and_are_published(raw):
    params, workdir = raw
    checks = _run(params, workdir)
    assert checks and all(c.success for c in checks)
    assert {c.split for c in checks} == {"train", "validation", "test"}
    for name in ("train.parquet", "quarantine.parquet", "snapshot.json"):
        assert (workdir / "validated" / name).exists()
    assert _results(workdir)["success"] is True


def test_report_is_self_contained(raw):
    params, workdir = raw
    _run(params, workdir)
    page = (workdir / "report" / "index.html").read_text()
    assert "PASSED" in page
    assert not re.search(r"(src|href|url)\s*[=(]\s*[\"']?(https?:)?//", page)
    assert "http://" not in page and "https://" not in page


def test_report_reads_like_a_report(raw):
    """Words in pipeline order, counts in tables, each expectation with its limit, and the
    first version of a source said to be one."""
    params, workdir = raw
    _run(params, workdir)
    page = (workdir / "report" / "index.html").read_text()
    assert "rows_read" not in page and "{'" not in page and " | " not in page
    assert page.index("rows read from the source") < page.index("repeats collapsed") < page.index("rows kept")
    v = params.validate_
    assert f"<td>text: length in characters</td><td>between {v.min_chars} and {v.max_chars}</td>" in page
    assert "<th>negative</th><th>positive</th>" in page  # per-label counts as columns
    assert "first version of this source" in page
    _run(params, workdir)  # the same source again: now there is a previous version to compare with
    assert "first version of this source" not in (workdir / "report" / "index.html").read_text()


def test_a_few_bad_rows_are_quarantined_with_reasons(raw):
    params, workdir = raw
    test = pd.read_parquet(workdir / "raw" / "test.parquet")
    train = pd.read_parquet(workdir / "raw" / "train.parquet")
    extra = pd.DataFrame(
        {
            "text": [train["text"][0], "caf\ufffd bad bytes here", "x" * 500],
            "label": ["positive", "negative", "negative"],
        }
    )
    pd.concat([test, extra], ignore_index=True).to_parquet(workdir / "raw" / "test.parquet", index=False)
    params = parse_params(tiny_params(validate={"max_quarantine_share": 0.1}))
    _run(params, workdir)
    reasons = {q["reason"]: q["rows"] for q in _results(workdir)["quarantine"]}
    assert reasons["also in the test split"] == 1
    assert reasons["undecodable bytes (U+FFFD)"] == 1
    assert reasons[f"longer than validate.max_chars={params.validate_.max_chars}"] == 1
    assert len(pd.read_parquet(workdir / "validated" / "quarantine.parquet")) == 3
    assert train["text"][0] not in set(pd.read_parquet(workdir / "validated" / "train.parquet")["text"])


def test_too_many_bad_rows_fail_and_touch_nothing(raw):
    params, workdir = raw
    _run(params, workdir)
    before = (workdir / "validated" / "train.parquet").read_bytes()
    train = pd.read_parquet(workdir / "raw" / "train.parquet")
    train.assign(label=train["label"].str.replace("positive", "postive")).to_parquet(workdir / "raw" / "train.parquet")
    with pytest.raises(StageError) as err:
        _run(params, workdir)
    message = str(err.value)
    assert "quarantined rows share" in message and "label not in ingest.labels: postive" in message
    assert str(workdir / "report" / "index.html") in message
    assert (workdir / "validated" / "train.parquet").read_bytes() == before
    assert "FAIL" in (workdir / "report" / "index.html").read_text()


def test_drift_against_the_previous_version_fails_with_both_side_by_side(raw):
    params, workdir = raw
    _run(params, workdir)
    train = pd.read_parquet(workdir / "raw" / "train.parquet")
    skewed = pd.concat([train, train[train["label"] == "positive"].assign(text=lambda d: d["text"] + " again")])
    skewed.to_parquet(workdir / "raw" / "train.parquet", index=False)
    with pytest.raises(StageError, match="label distribution shift"):
        _run(params, workdir)
    contract = {c["check"]: c for c in _results(workdir)["contract"]}
    shift = contract["label distribution shift (total variation)"]
    assert shift["previous"] != shift["current"] and not shift["success"]


def test_vanished_class_fails(raw):
    params, workdir = raw
    for split in ("train", "validation", "test"):
        df = pd.read_parquet(workdir / "raw" / f"{split}.parquet")
        df[df["label"] != "positive"].to_parquet(workdir / "raw" / f"{split}.parquet", index=False)
    with pytest.raises(StageError, match=r"expect_column_distinct_values_to_equal_set\(label\)"):
        _run(params, workdir)


def test_drift_is_only_measured_between_versions_of_one_source():
    cfg = parse_params(tiny_params()).validate_
    old = snapshot({"train": tiny_frame()}, "a.csv")
    new = snapshot({"train": tiny_frame().iloc[:10]}, "b.csv")
    assert [c["check"] for c in snapshot_checks(new, old, cfg, ["negative", "positive"])] == ["smallest class share"]
    same = snapshot_checks({**new, "source": "a.csv"}, old, cfg, ["negative", "positive"])
    assert len(same) == 6


def test_quarantine_rules_and_conflicts():
    cfg = parse_params(tiny_params()).validate_
    splits = {
        "train": pd.DataFrame(
            {
                "text": ["fine text", "Same words", "same words!", "  ", "ctrl\x07char", "cafÃ© menu"],
                "label": ["positive", "positive", "negative", "negative", "negative", "positive"],
            }
        )
    }
    accepted, bad = quarantine(splits, cfg, ["negative", "positive"])
    assert accepted["train"]["text"].tolist() == ["fine text"]
    assert set(bad["reason"]) == {
        "same text carries labels negative, positive",
        "empty text",
        "control characters",
        "mojibake",
    }


def test_missing_split_is_a_clear_error(raw):
    params, workdir = raw
    (workdir / "raw" / "validation.parquet").unlink()
    with pytest.raises(StageError, match="run the ingest stage"):
        _run(params, workdir)
