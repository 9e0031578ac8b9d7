"""evaluate: test-split metrics for the fine-tuned model beside a TF-IDF + logistic-regression baseline.

python -m tasks.evaluate          # writes reports/metrics.json, reports/evaluation/
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from tasks.lib import catalog
from tasks.lib.baseline import TunedBaseline, fit_baseline
from tasks.lib.common import atomic_dir, run_stage, write_json_atomic
from tasks.lib.config import Params, load_params
from tasks.lib.evaluation_report import SIDES, headline, write_report
from tasks.lib.label_budget import budget_rows, finetune_seed
from tasks.lib.lineage import identity
from tasks.lib.tracking import PARENT_ENV, log_metrics, stage_run


def expected_calibration_error(proba: np.ndarray, y: np.ndarray, bins: int) -> float:
    """Gap between confidence and accuracy, averaged over equal-width confidence bins."""
    conf, pred = proba.max(1), proba.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            ece += sel.mean() * abs((pred[sel] == y[sel]).mean() - conf[sel].mean())
    return float(ece)


def classification_metrics(y: np.ndarray, proba: np.ndarray, labels: list[str], ece_bins: int) -> dict:
    pred = proba.argmax(1)
    p, r, f, support = precision_recall_fscore_support(y, pred, labels=range(len(labels)), zero_division=0)
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, average="macro", labels=range(len(labels)), zero_division=0)),
        "ece": expected_calibration_error(proba, y, ece_bins),
        "per_class": {
            name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i])}
            for i, name in enumerate(labels)
        },
    }


def plot_confusion(cm: np.ndarray, labels: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=30)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, cm[i, j], ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def predictions_table(texts: list[str], y: np.ndarray, proba: np.ndarray, labels: list[str]) -> pd.DataFrame:
    """One row per test example: text, true and predicted label, every class's probability."""
    table = pd.DataFrame(
        {"text": texts, "actual": [labels[i] for i in y], "predicted": [labels[i] for i in proba.argmax(1)]}
    )
    for i, name in enumerate(labels):
        table[f"proba_{name}"] = proba[:, i]
    return table


def tfidf_baseline(params: Params, labels: list[str], root: Path = Path(".")) -> tuple[TunedBaseline, pd.DataFrame]:
    """The baseline, fitted on the rows fine-tuning learned from (the label budget's sample) and,
    like the network, chosen on the validation split; and those rows."""
    train = pd.read_parquet(catalog.at(root, catalog.split_file("train")))
    train = train.iloc[budget_rows(train["label"], params.finetune.max_labels, labels, finetune_seed(params))]
    validation = pd.read_parquet(catalog.at(root, catalog.split_file("validation")))
    e = params.evaluate
    return fit_baseline(train, validation, labels, e.baseline_max_features, e.baseline_c, params.seed), train


def evaluate(params: Params, runs: dict[str, str] | None = None) -> dict:
    from models.inference import encode, predict_proba
    from tasks.finetune import load_classifier
    from tasks.lib.vocab import load_tokenizer

    # The served model's path: raw test texts through the saved tokenizer and the shared predictor.
    model, labels = load_classifier(catalog.FINETUNED)
    test_df = pd.read_parquet(catalog.split_file("test"))
    y = test_df["label"].map({n: i for i, n in enumerate(labels)}).to_numpy()
    proba = predict_proba(model, encode(load_tokenizer(), test_df["text"].tolist()))
    baseline, train_df = tfidf_baseline(params, labels)
    base_proba = baseline.predict_proba(test_df["text"])
    ours = classification_metrics(y, proba, labels, params.evaluate.ece_bins)
    base = classification_metrics(y, base_proba, labels, params.evaluate.ece_bins) | {"tuning": baseline.record()}
    metrics = {"test": ours, "baseline": base, "test_rows": int(len(y)), "labelled_rows": int(len(train_df))}
    with atomic_dir(catalog.EVALUATION_REPORT) as tmp:
        for (_, name, image), p in zip(SIDES, (proba, base_proba), strict=True):
            plot_confusion(confusion_matrix(y, p.argmax(1), labels=range(len(labels))), labels, tmp / image, name)
        write_report(tmp, identity(params, None, runs or {}), metrics)
        # `dvc plots show` draws its confusion matrix from the actual/predicted columns.
        predictions_table(test_df["text"].tolist(), y, proba, labels).to_csv(tmp / catalog.PREDICTIONS, index=False)
    write_json_atomic(catalog.METRICS, metrics)
    return metrics


def per_class_table(metrics: dict) -> dict[str, list]:
    """Per-class precision, recall, F1 and support of the model and the baseline, as columns."""
    rows = [(name, c, v) for side, name, _ in SIDES for c, v in metrics[side]["per_class"].items()]
    columns = {"model": [name for name, _, _ in rows], "class": [c for _, c, _ in rows]}
    for k in ("precision", "recall", "f1", "support"):
        columns[k] = [round(v[k], 4) for _, _, v in rows]
    return columns


def log_run(metrics: dict) -> None:
    """The headline metrics, the per-class table, the report and metrics.json in this stage's MLflow run."""
    import mlflow

    log_metrics(headline(metrics))
    mlflow.log_table(per_class_table(metrics), "evaluation/per_class.json")
    mlflow.log_artifacts(str(catalog.EVALUATION_REPORT), "evaluation")
    mlflow.log_artifact(str(catalog.METRICS))


def main() -> None:
    params = load_params()
    with stage_run("evaluate", {"evaluate": params.evaluate.model_dump()}) as run:
        metrics = evaluate(params, {"evaluate": run.info.run_id, "pipeline": os.environ.get(PARENT_ENV, "")})
        log_run(metrics)
    t, b = metrics["test"], metrics["baseline"]
    print(
        f"evaluate: model accuracy {t['accuracy']:.4f} macro-F1 {t['macro_f1']:.4f} | "
        f"TF-IDF baseline accuracy {b['accuracy']:.4f} macro-F1 {b['macro_f1']:.4f}"
    )


if __name__ == "__main__":
    run_stage(main)
