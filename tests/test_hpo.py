"""Hyperparameter search: Optuna trials through the real fine-tuning code, MLflow child runs,
the study resumed from its SQLite file, and the best knobs saved as a profile that applies."""

import shutil
from pathlib import Path

import mlflow
import optuna
import pytest

from tasks.hpo import SPACE, search, space_around, study_name, write_profile
from tasks.lib.config import load_params
from tasks.pretrain import pretrain
from tasks.profile import apply_profile

DATA, PRETRAINED = Path("data/tokenized"), Path("checkpoints/pretrained")


class PruneAfterFirst(optuna.pruners.BasePruner):
    """Every trial after trial 0 is pruned at its first report."""

    def prune(self, study, trial) -> bool:
        return trial.number > 0


@pytest.fixture
def pretrained(tokenized):
    params = tokenized
    pretrain(params)
    shutil.rmtree(DATA / "test")  # the search must not need the test split
    return params


def _runs(experiment: str = "text-classifier-pipeline") -> list:
    client = mlflow.MlflowClient(f"sqlite:///{Path('mlflow.db').resolve()}")
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id])


def test_search_logs_child_runs_resumes_and_saves_the_best_profile(pretrained):
    params = pretrained
    study = search(params, 3, DATA, PRETRAINED, say=lambda *_: None)
    assert len(study.trials) == 3 and study.study_name == study_name(
        params, space_around(study.trials[0].params), DATA, PRETRAINED
    )
    first = study.trials[0]
    assert first.params == {k: getattr(params.finetune, k) for k in SPACE}  # params.yaml's own knobs first
    assert all(0 <= t.value <= 1 for t in study.trials)

    runs = _runs()
    parent = next(r for r in runs if r.info.run_name == "hpo")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(int(r.data.tags["optuna.trial"]) for r in children) == [0, 1, 2]
    for child in children:
        trial = study.trials[int(child.data.tags["optuna.trial"])]
        assert child.data.metrics["best_val_macro_f1"] == pytest.approx(trial.value)
        assert float(child.data.params["finetune.lr"]) == pytest.approx(trial.params["lr"])
    assert parent.data.metrics["best_val_macro_f1"] == pytest.approx(study.best_value)
    assert Path("reports/hpo/history.png").stat().st_size > 0

    again = search(params, 1, DATA, PRETRAINED, say=lambda *_: None)  # the same study, one more trial
    assert len(again.trials) == 4 and again.trials[0].params == first.params

    Path("profiles").mkdir()
    path = write_profile(again, params, "tuned")
    assert f"trial {again.best_trial.number} of 4" in path.read_text()
    apply_profile("tuned")
    tuned = load_params().finetune
    for name, value in again.best_params.items():
        assert getattr(tuned, name) == pytest.approx(value, rel=1e-3)
    assert tuned.patience == params.finetune.patience  # knobs outside the search keep their values


def test_pruned_trials_are_killed_runs_and_never_the_best(pretrained):
    study = search(load_params(), 3, DATA, PRETRAINED, say=lambda *_: None, pruner=PruneAfterFirst())
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE] + [optuna.trial.TrialState.PRUNED] * 2
    assert study.best_trial.number == 0
    pruned = [r for r in _runs() if r.data.tags.get("optuna.state") == "pruned"]
    assert len(pruned) == 2 and {r.info.status for r in pruned} == {"KILLED"}


def test_space_widens_to_hold_the_current_knobs_where_it_can():
    current = {"lr": 0.5, "batch_size": 8, "max_steps": 3000, "dropout": 0.1, "weight_decay": 0.0,
               "warmup_ratio": 0.1, "lr_decay": 1.0, "gradual_unfreeze": False}  # fmt: skip
    space = space_around(current)
    assert space["lr"][1:] == (SPACE["lr"][1], 0.5, True)
    assert space["batch_size"] == ("categorical", [8, 16, 32, 64])
    assert space["max_steps"] == SPACE["max_steps"] and space["weight_decay"] == SPACE["weight_decay"]
