"""How the data contract's cost grows with rows: 1x, 4x and 16x the default corpus.

    python bench/validation_scaling.py            # prints a markdown table

Each scale copies the default corpus's ingested splits k times, every copy's texts made
distinct (a suffix), so quarantine, the Great Expectations suite and the profile see k
times the rows with the same shape. Timings are wall-clock seconds of one run on this
machine; the GX import is timed once, on its own.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.ingest import ingest  # noqa: E402
from tasks.lib.config import load_params  # noqa: E402
from tasks.lib.contract import profile, quarantine  # noqa: E402


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def suite(params, accepted):
    """The GX suite with the derived columns it checks (normalised text, leakage flag)."""
    from tasks.validate import run_suite, with_derived_columns

    return run_suite(params, with_derived_columns(accepted))


def main(scales=(1, 4, 16)) -> None:
    start = time.perf_counter()
    import great_expectations  # noqa: F401

    gx_import = time.perf_counter() - start
    params = load_params()
    with tempfile.TemporaryDirectory() as tmp:
        ingest(params.ingest, params.seed, out_dir=Path(tmp))
        base = {s: pd.read_parquet(Path(tmp) / f"{s}.parquet") for s in ("train", "validation", "test")}
    print(f"GX import: {gx_import:.2f} s\n")
    print("| scale | rows | quarantine s | GX suite s | profile s | total s | µs per row | total vs 1x |")
    print("|---|---|---|---|---|---|---|---|")
    first = None
    for k in scales:
        splits = {
            s: pd.concat([df.assign(text=df["text"] + f" copy{i}") if i else df for i in range(k)], ignore_index=True)
            for s, df in base.items()
        }
        rows = sum(len(d) for d in splits.values())
        (accepted, _), t_q = timed(quarantine, splits, params.validate_, params.ingest.labels)
        _, t_gx = timed(suite, params, accepted)
        _, t_p = timed(profile, accepted, "bench")
        total = t_q + t_gx + t_p
        first = first or total
        print(
            f"| {k}x | {rows:,} | {t_q:.2f} | {t_gx:.2f} | {t_p:.2f} | {total:.2f} | {1e6 * total / rows:.1f} | {total / first:.1f}x |"
        )


if __name__ == "__main__":
    main()
