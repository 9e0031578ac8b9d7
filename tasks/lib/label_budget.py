"""The label budget (`finetune.max_labels`): which training rows keep their labels.

Fine-tuning and the TF-IDF baseline train on the same stratified sample, so the comparison
at N labels is fair; pretraining still reads all the text. The sample depends only on the
training split's labels, N and the fine-tuning seed: every model of a label-efficiency curve
sees the same N rows at a given seed, and each seed draws its own rows, so the spread over
seeds covers which rows got labels, not only the head's initialisation and batch order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tasks.lib.common import StageError
from tasks.lib.config import Params


def finetune_seed(params: Params) -> int:
    """Fine-tuning's seed (`finetune.seed`, else the global one): the head, the batch order,
    dropout and the label sample."""
    return params.finetune.seed if params.finetune.seed is not None else params.seed


def budget_rows(labels: Sequence[str], budget: int | None, classes: Sequence[str], seed: int) -> np.ndarray:
    """Sorted indices of `budget` rows, each class getting its share of the split (largest
    remainder), drawn at random within the class; every row when `budget` is None."""
    labels = np.asarray(labels)
    if budget is None:
        return np.arange(len(labels))
    if budget > len(labels):
        raise StageError(
            f"finetune.max_labels ({budget}) is larger than the training split ({len(labels)} rows): "
            "lower it, or set it to null to use every row"
        )
    counts = np.array([(labels == c).sum() for c in classes])
    exact = budget * counts / counts.sum()
    quota = np.floor(exact).astype(int)
    # The rows the floors left over go to the largest remainders (ties: the first class).
    for i in np.argsort(-(exact - quota), kind="stable")[: budget - quota.sum()]:
        quota[i] += 1
    if empty := [c for c, q in zip(classes, quota, strict=True) if q == 0]:
        raise StageError(
            f"finetune.max_labels ({budget}) leaves class {empty[0]!r} with no example "
            f"({int(counts[list(classes).index(empty[0])])} of {len(labels)} training rows): raise the budget"
        )
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels == c), q, replace=False) for c, q in zip(classes, quota, strict=True)]
    return np.sort(np.concatenate(chosen))
