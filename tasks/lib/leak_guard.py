"""The leak guard for base models: a language model is trained only from one whose corpus
held out this run's validation and test texts.

The corpus stage drops every validation or test text from the pretraining text, but only
those of the split in force when it ran. A base model built from another labelled source,
or under another split seed, may have read this run's test texts as training text (with
`corpus.train_text`, its training split is part of its corpus). So every language model
records what its corpus held out: the labelled source, the split seed and the digests of
the held-out texts (`catalog.LM_HELD_OUT`, under the masked key of `textclean.leak_keys`), and
`pretrain.init_from` refuses a base model unless it held out every current validation and
test text, naming what differs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.lib import catalog
from tasks.lib.common import StageError
from tasks.lib.config import split_seed
from tasks.lib.textclean import leak_keys

REBUILD = (
    "rebuild the base model on this run's data and split (make base PROFILE=<its profile>, with ingest set "
    "as here), or set pretrain.init_from: null to start from random weights"
)


def digest(key: str) -> int:
    raw = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(raw, "little", signed=True)


def held_out_digests(texts) -> np.ndarray:
    """Sorted, distinct digests of the texts' masked keys."""
    return np.unique(np.array([digest(keys[0]) for keys in map(leak_keys, texts) if keys], dtype=np.int64))


def current(params, root: Path = Path(".")) -> tuple[dict, np.ndarray]:
    """This run's record (source, split seed, count) and the digests of its validation and test texts."""
    texts = pd.concat(
        [
            pd.read_parquet(catalog.at(root, catalog.split_file(s)), columns=["text"])["text"]
            for s in ("validation", "test")
        ]
    )
    digests = held_out_digests(texts)
    return {"source": params.ingest.source, "split_seed": split_seed(params), "texts": len(digests)}, digests


def write(folder: Path, digests: np.ndarray) -> None:
    np.save(folder / catalog.LM_HELD_OUT, digests)


def check(source: str, meta: dict, folder: Path, record: dict, digests: np.ndarray) -> None:
    """Fail unless the base model in `folder` (`meta` its checkpoint.json) held out every text in `digests`."""
    theirs = meta.get("held_out")
    if not theirs or not (folder / catalog.LM_HELD_OUT).exists():
        raise StageError(
            f"pretrain.init_from: {source} does not record which texts its corpus held out (it was built "
            f"before base models did), so it may have read this run's validation or test texts: {REBUILD}"
        )
    for key, what in (("source", "labelled source (ingest.source)"), ("split_seed", "split seed")):
        if theirs[key] != record[key]:
            raise StageError(
                f"pretrain.init_from: {source} was built with another {what}, {theirs[key]!r}, than this run's "
                f"{record[key]!r}: its corpus held out that data's validation and test texts, not these, so it "
                f"may have trained on this run's test texts; {REBUILD}"
            )
    missing = int((~np.isin(digests, np.load(folder / catalog.LM_HELD_OUT))).sum())
    if missing:
        raise StageError(
            f"pretrain.init_from: {missing:,} of this run's {len(digests):,} validation/test texts were not held "
            f"out of {source}'s corpus (the labelled data changed since it was built), so it may have trained "
            f"on them; {REBUILD}"
        )
