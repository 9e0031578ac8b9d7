import json
import re

import pandas as pd
import pytest

from tasks.common import StageError
from tasks.config import parse_params
from tasks.ingest import ingest
from tasks.validate import validate

from .conftest import tiny_params


@pytest.fixture
def raw(workdir):
    params = parse_params(tiny_params())
    ingest(params.ingest, seed=0, out_dir=workdir / "raw")
    return params, workdir


def _run(params, workdir):
    return validate(params, workdir / "raw", workdir / "validated", workdir / "report")


def test_good_splits_pass_and_are_published(raw):
    params, workdir = raw
    checks = _run(params, workdir)
    assert checks and all(c.success for c in checks)
    assert {c.split for c in checks} == {"train", "validation", "test"}
    assert (workdir / "validated" / "train.parquet").exists()
    assert json.loads((workdir / "report" / "results.json").read_text())["success"] is True


def test_report_is_self_contained(raw):
    params, workdir = raw
    _run(params, workdir)
    page = (workdir / "report" / "index.html").read_text()
    assert "PASSED" in page and "rows_read" in page
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", page)


def test_leakage_and_unknown_labels_fail_without_touching_outputs(raw):
    params, workdir = raw
    _run(params, workdir)
    before = (workdir / "validated" / "train.parquet").read_bytes()
    train = pd.read_parquet(workdir / "raw" / "train.parquet")
    test = pd.read_parquet(workdir / "raw" / "test.parquet")
    leaked = pd.concat([test, train.head(3).assign(label="postive")], ignore_index=True)
    leaked.to_parquet(workdir / "raw" / "test.parquet", index=False)
    with pytest.raises(StageError) as err:
        _run(params, workdir)
    message = str(err.value)
    assert "in_other_split" in message and "expect_column_values_to_be_in_set(label)" in message
    assert str(workdir / "report" / "index.html") in message
    assert (workdir / "validated" / "train.parquet").read_bytes() == before
    assert "FAIL" in (workdir / "report" / "index.html").read_text()


def test_missing_split_is_a_clear_error(raw):
    params, workdir = raw
    (workdir / "raw" / "validation.parquet").unlink()
    with pytest.raises(StageError, match="run the ingest stage"):
        _run(params, workdir)
