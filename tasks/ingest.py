"""ingest: read the source named in params into text/label splits.

    python -m tasks.ingest            # reads params.yaml, writes data/raw/

Splits the source gives are kept; missing ones are carved out of the training rows,
stratified by label and over groups of texts that normalise to the same key, so no text
(after normalisation) is cut across two splits. Output is byte-for-byte deterministic for
the same source and params, which lets a forced re-read leave downstream stages cached.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tasks.lib import catalog
from tasks.lib.common import StageError, atomic_dir, run_stage, write_json_atomic
from tasks.lib.config import IngestParams, load_params, split_seed
from tasks.lib.sources import read_source
from tasks.lib.textclean import clean_text, normalise


def clean(df: pd.DataFrame, cfg: IngestParams) -> tuple[pd.DataFrame, dict]:
    """Repair text and collapse repeats of the same text with the same label.

    Rows that break a rule (empty, too long, unknown label, two labels for one text,
    encoding damage) are kept here: validate quarantines them with the reason.
    """
    stats = {"rows_read": len(df)}
    text = df["text"].map(clean_text) if cfg.clean_text else df["text"].str.strip()
    stats["texts_changed_by_cleaning"] = int((text != df["text"].str.strip()).sum())
    df = df.assign(text=text, label=df["label"].str.strip(), key=text.map(normalise))
    stats["repeated_rows"] = int(df.duplicated(["key", "split"]).sum())
    if cfg.dedupe:
        before = len(df)
        df = df.drop_duplicates(["key", "label", "split"])
        stats["repeats_collapsed"] = before - len(df)
    stats["rows_kept"] = len(df)
    return df.reset_index(drop=True), stats


def subsample(df: pd.DataFrame, limit: int | None, seed: int) -> pd.DataFrame:
    """A stratified sample of about `limit` rows, for quick runs."""
    if limit is None or limit >= len(df):
        return df
    frac = limit / len(df)
    parts = [
        g.sample(n=max(1, round(len(g) * frac)), random_state=seed)
        for _, g in df.groupby(["split", "label"], sort=True)
    ]
    return pd.concat(parts).sort_index()


def carve(df: pd.DataFrame, fractions: dict[str, float], seed: int) -> dict[str, pd.DataFrame]:
    """Stratified split over normalised-text groups: a group never straddles two splits.

    `fractions` names the splits to cut out (e.g. validation, test); the rest is train.
    """
    groups = df.groupby("key", sort=True)["label"].first()
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for _, keys in groups.groupby(groups, sort=True):
        keys = keys.index.to_numpy()[rng.permutation(len(keys))]
        start = 0
        for name, fraction in fractions.items():
            n = round(len(keys) * fraction)
            assignment.update(dict.fromkeys(keys[start : start + n], name))
            start += n
        assignment.update(dict.fromkeys(keys[start:], "train"))
    where = df["key"].map(assignment)
    return {s: df.loc[where == s, ["text", "label"]].reset_index(drop=True) for s in ("train", *fractions)}


def make_splits(df: pd.DataFrame, cfg: IngestParams, seed: int) -> dict[str, pd.DataFrame]:
    """Keep the splits the source gives; carve the missing ones out of its training rows."""
    given = {name: part[["text", "label", "key"]] for name, part in df.groupby("split", sort=False)}
    if "all" in given:
        given["train"] = given.pop("all")
    fractions = {"test": cfg.test_fraction, "validation": cfg.val_fraction}
    missing = {name: f for name, f in fractions.items() if name not in given}
    splits = {name: part[["text", "label"]].reset_index(drop=True) for name, part in given.items()}
    if missing:
        splits.update(carve(given["train"], missing, seed))
    return {name: splits[name] for name in catalog.SPLITS}


def ingest(cfg: IngestParams, seed: int, out_dir: Path = catalog.RAW) -> dict:
    frames = read_source(cfg)
    empty = [name for name, frame in frames.items() if frame.empty]
    if empty:
        what = cfg.source if "all" in frames else ", ".join(cfg.splits[n].path for n in empty)
        raise StageError(f"{what}: the source has no rows (only a header, or an empty file)")
    raw = pd.concat([f.assign(split=name) for name, f in frames.items()], ignore_index=True)
    df, stats = clean(raw, cfg)
    df = subsample(df, cfg.limit_rows, seed)
    splits = make_splits(df, cfg, seed)
    stats["given_splits"] = sorted(n for n in frames if n != "all")
    stats["split_rows"] = {s: len(d) for s, d in splits.items()}
    stats["split_labels"] = {s: d["label"].value_counts().sort_index().to_dict() for s, d in splits.items()}
    stats["source"] = source_id(cfg)
    with atomic_dir(out_dir) as tmp:
        for name, part in splits.items():
            part.to_parquet(catalog.split_file(name, tmp), index=False)
        write_json_atomic(tmp / catalog.INGEST_STATS.name, stats)
    return stats


def source_id(cfg: IngestParams) -> str:
    """Names the dataset, so drift is only measured between versions of the same one."""
    if cfg.splits:
        return " + ".join(f"{name}={src.path}" for name, src in sorted(cfg.splits.items()))
    return cfg.source


def main() -> None:
    from tasks.lib.tracking import log_metrics, stage_run

    params = load_params()
    with stage_run("ingest", {"ingest": params.ingest.model_dump()}):
        import mlflow

        stats = ingest(params.ingest, split_seed(params))
        log_metrics({f"rows_{k}": v for k, v in stats["split_rows"].items()})
        mlflow.log_dict(stats, catalog.INGEST_STATS.name)
    print(f"ingest: {stats['rows_read']} rows read, {stats['rows_kept']} kept -> {stats['split_rows']}")


if __name__ == "__main__":
    run_stage(main)
