"""The TF-IDF + logistic-regression baseline, tuned like the networks it is compared with.

The networks keep the checkpoint with the best validation macro-F1; the baseline likewise
fits one model per `C` in `evaluate.baseline_c` on the labelled rows and keeps the one with
the best validation macro-F1 (ties: the smaller C, the stronger regularisation). The test
split is not an argument here: it cannot choose anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

FEATURES = "word 1–2-grams + char 2–5-grams"


@dataclass
class TunedBaseline:
    word: TfidfVectorizer
    char: TfidfVectorizer
    clf: LogisticRegression
    grid: list[dict]  # per C tried: {"C": c, "val_macro_f1": score}
    chosen_c: float

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        return self.clf.predict_proba(_features(self.word, self.char, texts))

    def record(self) -> dict:
        """What the evaluation report, metrics.json and the model card say about the baseline."""
        return {"features": FEATURES, "chosen_c": self.chosen_c, "grid": self.grid, "chosen_on": "validation macro-F1"}


def _features(word: TfidfVectorizer, char: TfidfVectorizer, texts: Sequence[str]):
    from scipy.sparse import hstack

    return hstack([word.transform(texts), char.transform(texts)]).tocsr()


def fit_baseline(
    train: pd.DataFrame,
    validation: pd.DataFrame,
    labels: list[str],
    max_features: int,
    grid: Sequence[float],
    seed: int,
) -> TunedBaseline:
    """Vectorizers fitted on the training rows; one logistic regression per C; the best on validation kept."""
    word = TfidfVectorizer(ngram_range=(1, 2), max_features=max_features, sublinear_tf=True, min_df=2)
    char = TfidfVectorizer(
        analyzer="char_wb", ngram_range=(2, 5), max_features=max_features, sublinear_tf=True, min_df=2
    )
    word.fit(train["text"])
    char.fit(train["text"])
    index = {n: i for i, n in enumerate(labels)}
    x_train, y_train = _features(word, char, train["text"]), train["label"].map(index).to_numpy()
    x_val, y_val = _features(word, char, validation["text"]), validation["label"].map(index).to_numpy()
    tried, best = [], None
    for c in sorted(grid):
        clf = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(x_train, y_train)
        score = float(f1_score(y_val, clf.predict(x_val), average="macro", labels=range(len(labels)), zero_division=0))
        tried.append({"C": c, "val_macro_f1": score})
        if best is None or score > best[0]:
            best = (score, c, clf)
    _, chosen, clf = best
    return TunedBaseline(word, char, clf, tried, chosen)
