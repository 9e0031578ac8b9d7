"""The linear probe: does a language model's frozen body already separate the classes?

A logistic regression on the body's mean-pooled states (`models.inference.embed`) of a fixed
stratified sample of labelled training rows, scored on the validation split. It is measured
when pretraining ends, before anyone fine-tunes, so a language model that learned nothing
useful shows it at once. The sample depends only on the split's labels and `PROBE_ROWS` and
`PROBE_SEED`, so every language model of one dataset is probed on the same rows. Labels are
read here only to measure: pretraining itself never sees one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.preprocessing import StandardScaler

from tasks.lib.label_budget import budget_rows

PROBE_ROWS = 1000  # labelled training rows the probe learns from (every row, if fewer)
PROBE_SEED = 0


def linear_probe(body, data_dir: Path, device="cpu") -> dict[str, float]:
    """probe_accuracy and probe_macro_f1 on the validation split, and the rows learned from."""
    import datasets

    from models.inference import embed

    train = datasets.load_from_disk(str(data_dir / "train"))
    val = datasets.load_from_disk(str(data_dir / "validation"))
    y_all = np.array(train["label"])
    classes = sorted(set(y_all.tolist()))
    rows = budget_rows(y_all, min(PROBE_ROWS, len(y_all)), classes, PROBE_SEED)
    x_train = embed(body, list(train.select(rows)["input_ids"]), device)
    x_val, y_val = embed(body, list(val["input_ids"]), device), np.array(val["label"])
    scaler = StandardScaler().fit(x_train)
    clf = LogisticRegression(max_iter=2000).fit(scaler.transform(x_train), y_all[rows])
    pred = clf.predict(scaler.transform(x_val))
    return {
        "probe_accuracy": float(accuracy_score(y_val, pred)),
        "probe_macro_f1": float(f1_score(y_val, pred, average="macro")),
        "probe_rows": len(rows),
    }
