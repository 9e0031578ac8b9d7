"""Readers of unlabelled corpus sources, a chunk of texts at a time, so a source larger than
memory streams through: a text file with one document per line, a CSV/TSV/JSONL/Parquet
column, a folder of such files, or `hf:<dataset>`. The layout keys are ingest's (`ReadSpec`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from tasks.lib.common import StageError
from tasks.lib.sources import SUFFIX_FORMATS, ReadSpec, csv_options, expand_path

TEXT_SUFFIXES = {".txt": "lines", **SUFFIX_FORMATS}
CHUNK_ROWS = 50_000


def read_texts(spec: ReadSpec, chunk_rows: int = CHUNK_ROWS) -> Iterator[list[str]]:
    """The source's texts in chunks of at most `chunk_rows`, in file order."""
    if spec.path.startswith("hf:"):
        yield from _hf_texts(spec.path[3:], spec.text_column, chunk_rows)
        return
    path = expand_path(spec.path)
    if not path.exists():
        hint = "; set DATA_ROOT to the folder that holds the datasets" if "$DATA_ROOT" in spec.path else ""
        raise StageError(f"corpus source '{spec.path}' ({path}) is not an existing file or folder{hint}")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and _format(p, spec))
    if not files:
        raise StageError(f"corpus source {path}: no {'/'.join(TEXT_SUFFIXES)} files inside")
    for f in files:
        yield from _file_texts(f, spec, chunk_rows)


def _format(path: Path, spec: ReadSpec) -> str | None:
    return TEXT_SUFFIXES.get(path.suffix.lower()) if spec.format == "auto" else spec.format


def _file_texts(path: Path, spec: ReadSpec, chunk_rows: int) -> Iterator[list[str]]:
    import pandas as pd

    fmt = _format(path, spec)
    if fmt is None:
        raise StageError(f"corpus source {path}: cannot tell the format from '{path.suffix}'; set its format")
    try:
        if fmt == "lines":
            yield from _lines(path, spec.encoding, chunk_rows)
        elif fmt in ("csv", "tsv"):
            for frame in pd.read_csv(path, chunksize=chunk_rows, **csv_options(spec, fmt)):
                yield _column(frame, spec.text_column, path)
        elif fmt == "jsonl":
            # Undecodable bytes become U+FFFD, as in ingest and the text-line reader.
            frames = pd.read_json(path, lines=True, chunksize=chunk_rows, dtype=False, encoding=spec.encoding,
                                  encoding_errors="replace")  # fmt: skip
            for frame in frames:
                yield _column(frame, spec.text_column, path)
        elif fmt == "parquet":
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows):
                yield _column(batch.to_pandas(), spec.text_column, path)
        else:
            raise StageError(f"corpus source {path}: format '{fmt}' holds labelled rows, not a text corpus")
    except (ValueError, OSError, UnicodeError, pd.errors.ParserError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise StageError(f"corpus source {path}: could not be read as {fmt} ({first[:200]})") from None


def _lines(path: Path, encoding: str, chunk_rows: int) -> Iterator[list[str]]:
    with open(path, "rb") as raw:
        if b"\x00" in raw.read(1 << 16):
            raise StageError(f"corpus source {path}: holds NUL bytes, so it is binary, not text")
    chunk: list[str] = []
    # Undecodable bytes become U+FFFD: such texts are dropped as encoding damage, and counted.
    with open(path, encoding=encoding, errors="replace", newline="\n") as f:
        for line in f:
            chunk.append(line.rstrip("\r\n"))
            if len(chunk) == chunk_rows:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def _column(frame, column: str, path) -> list[str]:
    """One column of a DataFrame or of a {column: values} batch, as strings."""
    if column not in frame.keys():
        raise StageError(
            f"corpus source {path}: no column '{column}' (it has {[str(c) for c in frame.keys()][:10]}); "
            "set the source's text_column"
        )
    values = list(frame[column])
    if bad := [i for i, v in enumerate(values) if not isinstance(v, str) and v is not None]:
        raise StageError(
            f"corpus source {path}: column '{column}' holds {type(values[bad[0]]).__name__} values "
            f"(first at row {bad[0]}), not text"
        )
    return [v or "" for v in values]


def _hf_texts(name: str, column: str, chunk_rows: int) -> Iterator[list[str]]:
    import datasets

    try:
        loaded = datasets.load_dataset(name)
    except Exception as err:  # the hub client raises many types; all mean "cannot load"
        raise StageError(f"corpus source hf:{name} could not be loaded ({type(err).__name__}: {err})") from None
    for split in loaded.values():
        for start in range(0, len(split), chunk_rows):
            yield _column(split[start : start + chunk_rows], column, f"hf:{name}")
