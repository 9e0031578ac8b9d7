"""Hyperparameter search over the fine-tuning knobs (Optuna), scored on the validation split.

    dvc repro pretrain                                  # the checkpoint every trial starts from
    python -m tasks.hpo --trials 12                     # search; prints the best knobs
    python -m tasks.hpo --trials 12 --profile tuned     # ... and saves them as profiles/tuned.yaml
    python -m tasks.profile tuned                       # apply them to params.yaml

Every trial fine-tunes the pretrained checkpoint with the knobs Optuna proposes (params.yaml
gives the rest, the seed included) and is scored by its best validation macro-F1: the test
split is never read, so it stays a fair judge of the configuration chosen here. Trial 0 is
params.yaml's own knobs, so the search reports what it gained over them. Validation passes report
to a median pruner, which stops trials that trail the median of earlier ones at the same step.

MLflow: one parent run `hpo`, one child run per trial (its knobs, per-pass validation curve, outcome).
The study lives in `reports/hpo/study.db` (SQLite) under a name derived from the data, the
checkpoint and the seed, so re-running continues it and a new checkpoint starts a new one.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from tasks.lib import catalog
from tasks.lib.common import StageError, run_stage
from tasks.lib.config import FinetuneParams, Params, load_params, parse_params
from tasks.lib.lineage import git_commit
from tasks.lib.training import run_fingerprint

HPO_DIR = catalog.HPO
# The fine-tuning knobs searched, as Optuna distributions (name -> (kind, args)). Every other
# fine-tuning knob keeps its params.yaml value.
SPACE: dict[str, tuple] = {
    "lr": ("float", 3e-5, 3e-3, True),
    "batch_size": ("categorical", [16, 32, 64]),
    "max_steps": ("int", 1000, 5000),
    "dropout": ("float", 0.0, 0.3, False),
    "weight_decay": ("float", 1e-3, 0.1, True),
    "warmup_ratio": ("float", 0.0, 0.2, False),
    "lr_decay": ("float", 1.0, 2.6, False),
    "gradual_unfreeze": ("categorical", [False, True]),
}


def space_around(current: dict, space: dict = SPACE) -> dict:
    """SPACE widened to hold params.yaml's own knobs, so they can be trial 0 of the search."""
    out = {}
    for name, (kind, *args) in space.items():
        value = current[name]
        if kind == "categorical":
            out[name] = (kind, args[0] if value in args[0] else sorted([*args[0], value]))
        elif kind == "float" and args[2] and value <= 0:
            out[name] = (kind, *args)  # a log scale cannot hold 0: trial 0 is skipped (see search)
        else:
            out[name] = (kind, min(args[0], value), max(args[1], value), *args[2:])
    return out


def fits(value, dist: tuple) -> bool:
    kind, *args = dist
    return value in args[0] if kind == "categorical" else args[0] <= value <= args[1]


def suggest(trial, space: dict) -> dict:
    knobs = {}
    for name, (kind, *args) in space.items():
        if kind == "float":
            low, high, log = args
            knobs[name] = trial.suggest_float(name, low, high, log=log)
        elif kind == "int":
            knobs[name] = trial.suggest_int(name, *args)
        else:
            knobs[name] = trial.suggest_categorical(name, args[0])
    return knobs


def with_finetune(params: Params, knobs: dict) -> Params:
    """params with these fine-tuning knobs, validated like params.yaml itself."""
    raw = params.model_dump(by_alias=True)
    raw["finetune"] = {**raw["finetune"], **knobs}
    return parse_params(raw)


def study_name(params: Params, space: dict, data_dir: Path, pretrained_dir: Path) -> str:
    knobs = {"seed": params.seed, "init": params.finetune.init, "space": space}
    return "finetune-" + run_fingerprint(knobs, data_dir / "train", data_dir / "validation", pretrained_dir)[:12]


def search(
    params: Params,
    n_trials: int,
    data_dir: Path,
    pretrained_dir: Path,
    out_dir: Path = HPO_DIR,
    timeout_s: float | None = None,
    say=print,
    pruner=None,
):
    """Run `n_trials` more trials of this checkpoint's study; return the study."""
    import mlflow
    import optuna

    from tasks.finetune import finetune
    from tasks.lib.tracking import flatten, stage_run

    if params.finetune.nproc_per_node != 1:
        raise StageError("hpo runs its trials in one process: set finetune.nproc_per_node to 1 for the search")
    out_dir.mkdir(parents=True, exist_ok=True)
    current = {k: getattr(params.finetune, k) for k in SPACE}
    space = space_around(current)
    name = study_name(params, space, data_dir, pretrained_dir)
    study = optuna.create_study(
        study_name=name,
        storage=f"sqlite:///{(out_dir / 'study.db').resolve()}",
        direction="maximize",
        # TPE models the scores only after its random start-up trials; 10 (the default) would
        # make a CPU-sized search of about a dozen trials a random search.
        sampler=optuna.samplers.TPESampler(seed=params.seed, n_startup_trials=4),
        pruner=pruner or optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
        load_if_exists=True,
    )
    if all(fits(current[k], space[k]) for k in space):
        study.enqueue_trial(current, user_attrs={"source": str(catalog.PARAMS)}, skip_if_exists=True)
    else:
        say("hpo: params.yaml's own knobs lie outside the search space (a log scale holds no 0); not trial 0")
    labels = params.ingest.labels

    def objective(trial) -> float:
        knobs = suggest(trial, space)
        trial_params = with_finetune(params, knobs)
        run = mlflow.start_run(run_name=f"trial-{trial.number}", nested=True, tags={"optuna.study": name})
        mlflow.log_params(flatten({"finetune": trial_params.finetune.model_dump()}))
        mlflow.set_tag("optuna.trial", trial.number)

        def log(metrics: dict, step: int) -> None:
            mlflow.log_metrics(metrics, step=step)
            trial.report(metrics["val_macro_f1"], step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"step {step}: validation macro-F1 {metrics['val_macro_f1']:.4f}")

        try:
            with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
                summary = finetune(
                    trial_params, labels, data_dir, pretrained_dir, Path(tmp) / "model", log=log,
                    resume_dir=Path(tmp) / "resume", run_id=run.info.run_id,
                )  # fmt: skip
        except optuna.TrialPruned as pruned:
            mlflow.set_tag("optuna.state", "pruned")
            mlflow.end_run("KILLED")
            say(f"trial {trial.number}: pruned at {pruned} {json.dumps(knobs)}")
            raise
        except BaseException:
            mlflow.end_run("FAILED")
            raise
        mlflow.log_metrics(summary)
        mlflow.set_tag("optuna.state", "complete")
        mlflow.end_run()
        say(f"trial {trial.number}: validation macro-F1 {summary['best_val_macro_f1']:.4f} {json.dumps(knobs)}")
        return summary["best_val_macro_f1"]

    with stage_run("hpo", {"hpo": {"study": name, "trials": n_trials}}):
        mlflow.set_tag("optuna.study", name)
        study.optimize(objective, n_trials=n_trials, timeout=timeout_s, catch=())
        if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
            raise StageError(f"hpo: no trial of study {name} has finished yet; run more trials")
        best = study.best_trial
        mlflow.log_metrics({"best_val_macro_f1": best.value, "best_trial": best.number})
        mlflow.log_params(flatten({"best": best.params}))
        plot = plot_history(study, out_dir / "history.png")
        mlflow.log_artifact(str(plot))
    return study


def plot_history(study, path: Path) -> Path:
    """Each finished trial's score, the pruned ones' last pass, and the best so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    fig, ax = plt.subplots(figsize=(6, 3.5))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED and t.intermediate_values]
    ax.scatter([t.number for t in done], [t.value for t in done], label="finished", color="C0")
    ax.scatter([t.number for t in pruned], [t.intermediate_values[t.last_step] for t in pruned],
               label="pruned (last pass)", color="C1", marker="x")  # fmt: skip
    best, xs, ys = float("-inf"), [], []
    for t in sorted(done, key=lambda t: t.number):
        best = max(best, t.value)
        xs.append(t.number)
        ys.append(best)
    ax.step(xs, ys, where="post", color="C2", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation macro-F1")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_profile(study, params: Params, name: str, profiles_dir: Path = catalog.PROFILES) -> Path:
    """The best trial's knobs as a params profile, with where they came from in its header.
    A profile's sections update params.yaml key by key, so it holds only what was searched."""
    best = study.best_trial
    baseline = [t for t in study.trials if t.user_attrs.get("source") == str(catalog.PARAMS) and t.value is not None]
    # Refuse to write a profile that would not load.
    FinetuneParams.model_validate({**params.finetune.model_dump(), **best.params})
    commit = git_commit(short=True)
    header = [
        f"# Fine-tuning knobs found by `python -m tasks.hpo` (study {study.study_name}, Optuna TPE,",
        f"# seed {params.seed}): trial {best.number} of {len(study.trials)}, validation macro-F1 {best.value:.4f}"
        + (f" (params.yaml's own knobs: {baseline[0].value:.4f})" if baseline else "")
        + ".",
        f"# Written {time.strftime('%Y-%m-%d', time.gmtime())} at commit {commit or 'unknown'}; "
        f"apply with `python -m tasks.profile {name}`.",
    ]
    body = {"finetune": {k: best.params[k] for k in SPACE}}
    path = profiles_dir / f"{name}.yaml"
    # Through a temporary file: an interrupted write must not leave a profile that half loads.
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text("\n".join(header) + "\n" + _yaml(body))
    tmp.replace(path)
    return path


def _yaml(body: dict) -> str:
    import yaml

    def tidy(v):
        return float(f"{v:.4g}") if isinstance(v, float) else v

    return yaml.safe_dump({s: {k: tidy(v) for k, v in kv.items()} for s, kv in body.items()}, sort_keys=False)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=12, help="trials to run now (the study keeps earlier ones)")
    ap.add_argument("--timeout", type=float, default=None, help="stop starting trials after this many seconds")
    ap.add_argument("--profile", default=None, help="save the best knobs as profiles/NAME.yaml")
    ap.add_argument("--params", type=Path, default=catalog.PARAMS)
    args = ap.parse_args(argv)
    if args.trials < 1:
        raise StageError("--trials must be at least 1")
    params = load_params(args.params)
    data_dir, pretrained_dir = catalog.TOKENIZED, catalog.PRETRAINED
    if params.finetune.init == "pretrained" and not (pretrained_dir / catalog.META).exists():
        raise StageError(f"no pretrained checkpoint in {pretrained_dir}: run `dvc repro pretrain` first")
    if not (data_dir / "train").exists():
        raise StageError(f"no tokenized data in {data_dir}: run `dvc repro tokenize` first")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = search(params, args.trials, data_dir, pretrained_dir, timeout_s=args.timeout)
    best = study.best_trial
    print(f"hpo: best validation macro-F1 {best.value:.4f} (trial {best.number}): {json.dumps(best.params)}")
    print(f"hpo: trial history plot in {HPO_DIR / 'history.png'}")
    if args.profile:
        print(f"hpo: wrote {write_profile(study, params, args.profile)}")


if __name__ == "__main__":
    run_stage(main)
