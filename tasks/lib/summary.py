"""What a pipeline run reports: the Prefect summary artifact, the champion's registered
scores beside this run's, and the lines the terminal ends with."""

from __future__ import annotations

from pathlib import Path

from tasks.lib import catalog


def run_link(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    if tracking_uri.startswith("http"):
        return f"{tracking_uri}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"`{run_id}` in `{tracking_uri}`"


def summary_markdown(results: list[dict], metrics: dict, registered: dict, link: str, champion: dict | None) -> str:
    rows = "\n".join(
        f"| {r['stage']} | {r.get('pool', 'local')} | {'ran' if r['ran'] else 'up to date'} | {r['seconds']} |"
        for r in results
    )
    t, b = metrics["test"], metrics["baseline"]
    if champion:
        champ = f"| champion (version {champion['version']}) | {champion['accuracy']} | {champion['macro_f1']} |\n"
    else:
        champ = "| champion | none yet | |\n"
    report = catalog.VALIDATION_REPORT / catalog.REPORT_PAGE
    return (
        "## Pipeline run\n\n| stage | work pool | status | seconds |\n|---|---|---|---|\n" + rows + "\n\n"
        "| model | test accuracy | test macro-F1 |\n|---|---|---|\n"
        f"| this run | {t['accuracy']:.4f} | {t['macro_f1']:.4f} |\n"
        + champ
        + f"| TF-IDF baseline | {b['accuracy']:.4f} | {b['macro_f1']:.4f} |\n\n"
        f"Registered `{registered['name']}` version {registered['version']} as `@{registered['alias']}`; "
        "promote it with `python -m flows.promote`.\n\n"
        f"MLflow parent run: {link}. Data validation report: `{report}` (also the "
        f"run's artifact `validation/{catalog.REPORT_PAGE}`).\n"
    )


def champion_scores(client, name: str) -> dict | None:
    """The champion's test metrics as registered (measured on its own test split)."""
    from mlflow.exceptions import MlflowException

    from tasks.lib.registry import CHAMPION

    try:
        v = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # no champion yet
        return None
    return {"version": v.version, "accuracy": v.tags.get("test_accuracy", "?"), "macro_f1": v.tags.get("test_macro_f1", "?")}


def terminal_lines(metrics: dict, registered: dict, init: str, root: Path) -> list[str]:
    t, b, reg = metrics["test"], metrics["baseline"], registered
    kind = "pretrained + fine-tuned" if init == "pretrained" else "trained from scratch"
    return [
        f"test accuracy  {t['accuracy']:.4f}   macro-F1 {t['macro_f1']:.4f}   ({kind})",
        f"test accuracy  {b['accuracy']:.4f}   macro-F1 {b['macro_f1']:.4f}   (TF-IDF + logistic regression)",
        f"report         {(root / catalog.EVALUATION_REPORT / catalog.REPORT_PAGE).resolve()}",
        f"registered     {reg['name']} version {reg['version']} alias @{reg['alias']}  ({reg['model_uri']})",
    ]
