"""The evaluation report: a verdict against the baseline, the report's identity, labelled
tables and the confusion matrices embedded, so the page reads the same from disk and inside
MLflow's artifact viewer. Evaluate writes it; register and the pipeline flow log a copy that
names the registered version.
"""

from __future__ import annotations

import html
from pathlib import Path

from tasks.lib import catalog
from tasks.lib.common import read_json
from tasks.lib.lineage import identity

# The two sides of every comparison: the metrics key, the name a person reads, the confusion-matrix image.
SIDES = (
    ("test", "fine-tuned model", "confusion_matrix.png"),
    ("baseline", "TF-IDF + logistic regression", "baseline_confusion_matrix.png"),
)


def verdict(model: dict, baseline: dict) -> tuple[bool, str]:
    """Whether the model beats the baseline on macro-F1 (the metric promotion gates on), in words."""
    gap = (model["macro_f1"] - baseline["macro_f1"]) * 100
    scores = f"macro-F1 {model['macro_f1']:.4f} against {baseline['macro_f1']:.4f}"
    if gap > 0:
        return True, f"The model beats the TF-IDF baseline by {gap:.1f} macro-F1 points ({scores})."
    if gap == 0:
        return False, f"The model ties the TF-IDF baseline ({scores})."
    return False, f"The TF-IDF baseline beats the model by {-gap:.1f} macro-F1 points ({scores})."


def baseline_tuning(baseline: dict) -> str:
    """How the baseline was chosen, in words (older metrics, from before it was tuned, say so)."""
    t = baseline.get("tuning")
    if not t:
        return "The baseline was not tuned (C=4, fixed)."
    tried = ", ".join(f"C={g['C']:g}: {g['val_macro_f1']:.4f}" for g in t["grid"])
    return (
        f"TF-IDF ({t['features']}) + logistic regression, C={t['chosen_c']:g}: the best {t['chosen_on']} "
        f"of the grid ({tried}); the test split chose nothing."
    )


def render_report(metrics: dict, ident: dict[str, str], folder: Path) -> str:
    """The evaluation page: verdict, identity, labelled tables and the confusion matrices
    embedded (read from `folder`), so it reads the same from disk and in MLflow."""
    from tasks.lib.report_html import embedded_png, identity_table, page, table

    model, baseline = metrics["test"], metrics["baseline"]
    ok, said = verdict(model, baseline)
    overall = table(
        ["", "accuracy", "macro-F1", "ECE"],
        [[name, f"{metrics[side]['accuracy']:.4f}", f"{metrics[side]['macro_f1']:.4f}", f"{metrics[side]['ece']:.4f}"]
         for side, name, _ in SIDES],
        caption=f"Test split: {metrics['test_rows']:,} rows; both trained on {metrics['labelled_rows']:,} labelled rows",
    )  # fmt: skip
    per_class = "".join(
        table(
            ["class", "precision", "recall", "F1", "support (test rows)"],
            [
                [c, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", v["support"]]
                for c, v in metrics[side]["per_class"].items()
            ],
            caption=f"Per class: {name}",
        )  # fmt: skip
        for side, name, _ in SIDES
    )
    figures = "".join(
        f"<figure>{embedded_png(folder / image, f'{name} confusion matrix')}"
        f"<figcaption>{name}: rows are the true labels, columns the predicted ones</figcaption></figure>"
        for _, name, image in SIDES
    )
    body = f"""<h1 class="{"pass" if ok else "fail"}">Evaluation on the test split</h1>
<p class="verdict">{html.escape(said)}</p>
{identity_table(ident)}
{overall}
<p>{html.escape(baseline_tuning(baseline))}</p>
<p>ECE (expected calibration error) is how far the model's confidence is from how often it is right,
averaged over confidence bins: 0 means a prediction made with 80% confidence is right 80% of the time;
{model["ece"]:.3f} means the stated confidence is off by {model["ece"] * 100:.1f} points on average.</p>
{per_class}
<h2>Confusion matrices</h2>{figures}
<p>Every test prediction: <a href="{catalog.PREDICTIONS}">{catalog.PREDICTIONS}</a> (beside this page; in MLflow,
the <code>evaluation/{catalog.PREDICTIONS}</code> artifact): the text, its true label, the predicted label and
each class's probability.</p>"""
    return page(f"Evaluation: {said}", body)


def write_report(folder: Path, ident: dict[str, str], metrics: dict) -> None:
    """(Re)write the report page in `folder`, which holds the confusion-matrix images."""
    (folder / catalog.REPORT_PAGE).write_text(render_report(metrics, ident, folder))


def log_versioned_report(params, version: str | None, runs: dict[str, str], root: Path = Path(".")) -> None:
    """Log the evaluation folder to the active MLflow run as `evaluation/`, its page naming
    `version` and `runs` (the DVC output itself stays as evaluate wrote it)."""
    import shutil
    import tempfile

    import mlflow

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "evaluation"
        shutil.copytree(catalog.at(root, catalog.EVALUATION_REPORT), folder)
        write_report(folder, identity(params, version, runs, root), read_json(catalog.at(root, catalog.METRICS)))
        mlflow.log_artifacts(str(folder), "evaluation")


def headline(metrics: dict) -> dict:
    """The numbers worth a chart: overall scores of the model and the baseline, and the row
    counts; per-class scores and supports go in the `per_class` table instead."""
    return {f"{side}.{k}": metrics[side][k] for side, _, _ in SIDES for k in ("accuracy", "macro_f1", "ece")} | {
        "test_rows": metrics["test_rows"],
        "labelled_rows": metrics["labelled_rows"],
    }
