"""The TF-IDF baseline is tuned like the networks: C is chosen on validation, never on test."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.sparse import hstack
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from tasks.lib.baseline import fit_baseline

LABELS = ["neg", "pos"]


def noisy_split(n: int, noise: float, seed: int) -> pd.DataFrame:
    """Texts whose sentiment word decides the label, with `noise` of the labels flipped."""
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "delta", "omega", "kappa"]
    rows = []
    for _ in range(n):
        label = int(rng.integers(2))
        cue = ["awful", "great"][label]
        filler = " ".join(rng.choice(words, 4))
        if rng.random() < noise:
            label = 1 - label
        rows.append((f"{filler} {cue} {filler}", LABELS[label]))
    return pd.DataFrame(rows, columns=["text", "label"])


def test_the_baseline_keeps_the_c_with_the_best_validation_macro_f1():
    train, validation = noisy_split(120, 0.3, 1), noisy_split(80, 0.1, 2)
    grid = [0.01, 1.0, 64.0]
    tuned = fit_baseline(train, validation, LABELS, 500, grid, seed=0)
    assert [g["C"] for g in tuned.grid] == sorted(grid)

    # Each recorded score is that C's validation macro-F1, refitted here independently.
    def feats(texts):
        return hstack([tuned.word.transform(texts), tuned.char.transform(texts)]).tocsr()

    y_train, y_val = (d["label"].map({n: i for i, n in enumerate(LABELS)}).to_numpy() for d in (train, validation))
    for g in tuned.grid:
        clf = LogisticRegression(C=g["C"], max_iter=2000, random_state=0).fit(feats(train["text"]), y_train)
        assert g["val_macro_f1"] == f1_score(y_val, clf.predict(feats(validation["text"])), average="macro")
    best = max(tuned.grid, key=lambda g: (g["val_macro_f1"], -g["C"]))
    assert tuned.chosen_c == best["C"] and tuned.clf.C == best["C"]
    record = tuned.record()
    assert record["chosen_c"] == best["C"] and record["grid"] == tuned.grid


def test_ties_go_to_the_stronger_regularisation():
    data = noisy_split(60, 0.0, 3)
    tuned = fit_baseline(data, data, LABELS, 500, [16.0, 4.0, 64.0], seed=0)
    assert all(g["val_macro_f1"] == 1.0 for g in tuned.grid)
    assert tuned.chosen_c == 4.0
