"""Reusable language models: pretrain.init_from from a folder or the registry, the tokenizer
reused by tokenize, and each wrong kind of base model refused before training."""

import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from safetensors.numpy import load_file

from tasks.finetune import finetune
from tasks.lib import catalog
from tasks.lib.common import StageError, read_json
from tasks.lib.config import load_params
from tasks.lib.tracking import stage_run
from tasks.pretrain import pretrain
from tasks.register import register
from tasks.register_lm import register_lm

from .conftest import build_data


def with_params(**sections) -> object:
    """params.yaml of the working folder with these sections' keys changed."""
    raw = yaml.safe_load(Path("params.yaml").read_text())
    for section, values in sections.items():
        raw[section].update(values)
    Path("params.yaml").write_text(yaml.safe_dump(raw))
    return load_params()


@pytest.fixture
def base_folder(tokenized, tmp_path_factory) -> Path:
    """A language model pretrained on the tiny corpus, copied out of the workspace."""
    pretrain(tokenized)
    folder = tmp_path_factory.mktemp("lm") / "base"
    shutil.copytree(catalog.PRETRAINED, folder)
    return folder


def weights(folder: Path) -> dict:
    return load_file(str(folder / catalog.WEIGHTS))


def test_a_language_model_folder_is_self_contained(base_folder):
    assert {catalog.WEIGHTS, catalog.BODY_WEIGHTS, catalog.META, catalog.LM_TOKENIZER} <= {
        p.name for p in base_folder.iterdir()
    }
    assert read_json(base_folder / catalog.META)["init_from"] is None


def test_init_from_a_folder_continues_from_its_weights_and_tokenizer(base_folder):
    # Another vocabulary size: with init_from, tokenize must not train a tokenizer at all.
    params = with_params(pretrain={"init_from": str(base_folder), "lr": 1e-9}, tokenize={"vocab_size": 200})
    build_data(params)
    assert Path(catalog.TOKENIZER_FILE).read_text() != ""  # written
    base_vocab = read_json(base_folder / catalog.LM_TOKENIZER)["model"]["vocab"]
    assert read_json(catalog.TOKENIZER_FILE)["model"]["vocab"] == base_vocab
    pretrain(params)
    # At a learning rate of 1e-9 the continued model is the base model, not a random one.
    before, after = weights(base_folder), weights(catalog.PRETRAINED)
    assert before.keys() == after.keys()
    for name in before:
        np.testing.assert_allclose(after[name], before[name], atol=1e-5, err_msg=name)
    meta = read_json(catalog.PRETRAINED / catalog.META)
    assert meta["init_from"]["source"] == str(base_folder) and meta["init_from"]["objective"] == "mlm"
    # The classifier names the base model it came from.
    finetune(params, params.ingest.labels)
    assert read_json(catalog.FINETUNED / catalog.META)["base_model"]["source"] == str(base_folder)


def test_a_base_model_with_another_tokenizer_is_refused_before_training(base_folder):
    # The data is encoded with a tokenizer of its own (tokenize ran without init_from) ...
    params = with_params(tokenize={"vocab_size": 250})
    build_data(params)
    params = with_params(pretrain={"init_from": str(base_folder)})
    shutil.rmtree(catalog.PRETRAINED)
    with pytest.raises(StageError, match="different tokenizer than the one the data was encoded with"):
        pretrain(params)
    assert not catalog.PRETRAINED.exists()  # nothing trained, nothing written


def test_a_base_model_of_another_shape_is_refused(base_folder):
    params = with_params(pretrain={"init_from": str(base_folder)}, model={"d_ff": 128})
    build_data(params)
    with pytest.raises(StageError, match=r"different network .*d_ff 64 \(params: 128\)"):
        pretrain(params)


def test_a_base_model_with_other_positions_is_refused(base_folder):
    params = with_params(pretrain={"init_from": str(base_folder)}, model={"position": "rotary"})
    build_data(params)
    with pytest.raises(StageError, match=r"different network .*position learned \(params: rotary\)"):
        pretrain(params)


def test_a_classifier_or_a_missing_folder_is_not_a_language_model(base_folder, tmp_path):
    params = with_params(pretrain={"init_from": str(tmp_path / "nowhere")})
    with pytest.raises(StageError, match="is not a folder"):
        pretrain(params)
    params = with_params(pretrain={"init_from": None})
    pretrain(params)
    finetune(params, params.ingest.labels)
    params = with_params(pretrain={"init_from": str(catalog.FINETUNED.resolve())})
    with pytest.raises(StageError, match="is a fine-tuned classifier"):
        build_data(params)


def test_init_from_the_registry(base_folder):
    from tasks.evaluate import evaluate

    params = with_params(base_model={"name": "tiny-lm"})
    with stage_run("register_lm"):
        record = register_lm(params)
    assert record["model_uri"] == "models:/tiny-lm@base" and record["version"] == "1"
    version = mlflow.MlflowClient().get_model_version_by_alias("tiny-lm", "base")
    assert version.tags["model_kind"] == "language-model" and int(version.tags["tokens_seen"]) > 0
    vectors = mlflow.pyfunc.load_model(record["model_uri"]).predict(["what a great flight", "lost my bag"])
    assert vectors.shape == (2, params.model.d_model)

    params = with_params(pretrain={"init_from": "models:/tiny-lm@base"})
    build_data(params)
    pretrain(params)
    meta = read_json(catalog.PRETRAINED / catalog.META)["init_from"]
    assert meta["version"] == "1" and meta["weights_sha256"]
    finetune(params, params.ingest.labels)
    evaluate(params)
    with stage_run("register"):
        classifier = register(params)
    assert classifier["base_model"].startswith("models:/tiny-lm@base (version 1)")

    for uri, message in (("models:/nope@base", "is not in the model registry"),
                         ("models:/text-classifier@challenger", "is a text classifier")):  # fmt: skip
        params = with_params(pretrain={"init_from": uri})
        with pytest.raises(StageError, match=message):
            pretrain(params)


def test_a_base_model_built_under_another_split_seed_is_refused(base_folder):
    # Its corpus held out split 1337's validation/test texts; split 7 tests on others, which it may have read.
    params = with_params(pretrain={"init_from": str(base_folder)}, ingest={"split_seed": 7})
    build_data(params)
    with pytest.raises(StageError, match=r"another split seed, 1337, than this run's 7: .* rebuild the base model"):
        pretrain(params)


def test_a_base_model_built_from_another_labelled_source_is_refused(base_folder):
    shutil.copy("tiny.csv", "other.csv")
    params = with_params(pretrain={"init_from": str(base_folder)}, ingest={"source": "other.csv"})
    build_data(params)
    with pytest.raises(StageError, match=r"another labelled source \(ingest.source\), 'tiny.csv', than this run's"):
        pretrain(params)


def test_a_base_model_whose_corpus_did_not_hold_out_a_current_test_text_is_refused(base_folder):
    params = with_params(pretrain={"init_from": str(base_folder)})
    build_data(params)
    # The labelled data changed since the base model was built: a test text it never held out.
    test = pd.read_parquet(catalog.split_file("test"))
    test.loc[0, "text"] = "RT @someone: a test tweet the base model may have read"
    test.to_parquet(catalog.split_file("test"))
    with pytest.raises(StageError, match=r"1 of this run's \d+ validation/test texts were not held out"):
        pretrain(params)
    (base_folder / catalog.LM_HELD_OUT).unlink()
    with pytest.raises(StageError, match="does not record which texts its corpus held out"):
        pretrain(params)
