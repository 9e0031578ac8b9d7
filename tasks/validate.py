"""validate: a Great Expectations gate over every split, and an HTML report readable offline.

    python -m tasks.validate          # reads data/raw/, writes reports/validation/ and data/validated/

The report is written first, pass or fail. Only when every expectation holds are the splits
copied to data/validated/, which is what tokenize reads: a failed gate leaves the previous
validated data, and everything downstream of it, untouched.
"""

from __future__ import annotations

import html
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tasks.common import StageError, atomic_dir, read_json, run_stage, write_json_atomic
from tasks.config import Params, load_params
from tasks.ingest import SPLITS
from tasks.textclean import normalise

RAW_DIR = Path("data/raw")
OUT_DIR = Path("data/validated")
REPORT_DIR = Path("reports/validation")


@dataclass(frozen=True)
class Check:
    split: str
    expectation: str
    column: str | None
    success: bool
    observed: str
    unexpected_count: int | None
    examples: list

    @property
    def name(self) -> str:
        return f"{self.split}: {self.expectation}" + (f"({self.column})" if self.column else "")


def load_splits(raw_dir: Path) -> dict[str, pd.DataFrame]:
    missing = [s for s in SPLITS if not (raw_dir / f"{s}.parquet").exists()]
    if missing:
        raise StageError(f"{raw_dir}: split(s) {missing} missing; run the ingest stage first")
    return {s: pd.read_parquet(raw_dir / f"{s}.parquet") for s in SPLITS}


def with_derived_columns(splits: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Add the normalised text and whether it also occurs in another split (leakage)."""
    keys = {s: df["text"].fillna("").map(normalise) for s, df in splits.items()}
    out = {}
    for s, df in splits.items():
        others = set().union(*(set(k) for o, k in keys.items() if o != s))
        out[s] = df.assign(norm=keys[s], in_other_split=keys[s].isin(others))
    return out


def build_suite(params: Params):
    import great_expectations as gx

    v, labels = params.validate_, params.ingest.labels
    E = gx.expectations
    suite = gx.ExpectationSuite(name="text_classification")
    for exp in [
        E.ExpectTableColumnsToMatchSet(column_set=["text", "label", "norm", "in_other_split"], exact_match=True),
        E.ExpectTableRowCountToBeBetween(min_value=v.min_rows_per_split),
        E.ExpectColumnValuesToNotBeNull(column="text"),
        E.ExpectColumnValuesToNotMatchRegex(column="text", regex=r"^\s*$"),
        E.ExpectColumnValueLengthsToBeBetween(column="text", min_value=v.min_chars, max_value=v.max_chars),
        E.ExpectColumnValuesToNotBeNull(column="label"),
        E.ExpectColumnValuesToBeInSet(column="label", value_set=labels),
        E.ExpectColumnDistinctValuesToEqualSet(column="label", value_set=labels),
        E.ExpectColumnProportionOfUniqueValuesToBeBetween(column="norm", min_value=1 - v.max_duplicate_rate),
        E.ExpectColumnValuesToBeInSet(column="in_other_split", value_set=[False]),
    ]:
        suite.add_expectation(exp)
    return suite


def run_suite(params: Params, frames: dict[str, pd.DataFrame]) -> list[Check]:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("splits")
    suite = context.suites.add(build_suite(params))
    checks = []
    for split, df in frames.items():
        batch = source.add_dataframe_asset(name=split).add_batch_definition_whole_dataframe(split)
        definition = context.validation_definitions.add(gx.ValidationDefinition(name=split, data=batch, suite=suite))
        result = definition.run(batch_parameters={"dataframe": df})
        checks.extend(_to_check(split, r) for r in result.results)
    # GX returns results in no fixed order; sort so reports and diffs are stable.
    return sorted(checks, key=lambda c: (SPLITS.index(c.split), c.expectation, c.column or ""))


def _to_check(split: str, r) -> Check:
    res = r.result or {}
    observed = res.get("observed_value")
    if res.get("partial_missing_list"):
        observed = f"missing {res['partial_missing_list']}"
    elif observed is None and "unexpected_percent" in res:
        observed = f"{res['unexpected_percent']:.2f}% unexpected"
    if isinstance(observed, float):
        observed = f"{observed:.4f}"
    return Check(
        split=split,
        expectation=r.expectation_config.type,
        column=r.expectation_config.kwargs.get("column"),
        success=bool(r.success),
        observed=str(observed if observed is not None else ""),
        unexpected_count=res.get("unexpected_count"),
        examples=[str(x)[:120] for x in (res.get("partial_unexpected_list") or [])[:5]],
    )


def render_report(checks: list[Check], ingest_stats: dict) -> str:
    """One self-contained HTML page: inline styles, no scripts, no external URL."""
    esc = html.escape
    n_failed = sum(not c.success for c in checks)
    verdict = "PASSED" if n_failed == 0 else f"FAILED ({n_failed} expectation(s))"
    cleaning = "".join(
        f"<tr><td>{esc(k)}</td><td>{esc(str(v))}</td></tr>" for k, v in ingest_stats.items() if not isinstance(v, dict)
    )
    split_rows = "".join(
        f"<tr><td>{esc(s)}</td><td>{ingest_stats.get('split_rows', {}).get(s, '')}</td>"
        f"<td>{esc(str(ingest_stats.get('split_labels', {}).get(s, '')))}</td></tr>"
        for s in SPLITS
    )
    rows = "".join(
        f"<tr class='{'ok' if c.success else 'bad'}'><td>{esc(c.split)}</td><td>{esc(c.expectation)}</td>"
        f"<td>{esc(c.column or '')}</td><td>{'pass' if c.success else 'FAIL'}</td><td>{esc(c.observed)}</td>"
        f"<td>{'' if c.unexpected_count is None else c.unexpected_count}</td>"
        f"<td>{'<br>'.join(esc(x) for x in c.examples)}</td></tr>"
        for c in checks
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Data validation: {verdict}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse;margin-bottom:2em}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top;font-size:14px}}
th{{background:#f0f0f0}} tr.bad td{{background:#fde2e2}} tr.ok td:nth-child(4){{color:#15803d}}
h1.pass{{color:#15803d}} h1.fail{{color:#b91c1c}}
</style></head><body>
<h1 class="{"pass" if n_failed == 0 else "fail"}">Data validation {verdict}</h1>
<h2>What ingest cleaned</h2><table><tr><th>step</th><th>rows</th></tr>{cleaning}</table>
<h2>Splits</h2><table><tr><th>split</th><th>rows</th><th>labels</th></tr>{split_rows}</table>
<h2>Expectations</h2>
<table><tr><th>split</th><th>expectation</th><th>column</th><th>result</th><th>observed</th><th>unexpected rows</th><th>examples</th></tr>{rows}</table>
</body></html>
"""


def validate(
    params: Params, raw_dir: Path = RAW_DIR, out_dir: Path = OUT_DIR, report_dir: Path = REPORT_DIR
) -> list[Check]:
    splits = load_splits(raw_dir)
    stats_file = raw_dir / "ingest_stats.json"
    ingest_stats = read_json(stats_file) if stats_file.exists() else {}
    checks = run_suite(params, with_derived_columns(splits))
    with atomic_dir(report_dir) as tmp:
        (tmp / "index.html").write_text(render_report(checks, ingest_stats))
        write_json_atomic(
            tmp / "results.json", {"success": all(c.success for c in checks), "checks": [c.__dict__ for c in checks]}
        )
    failed = [c for c in checks if not c.success]
    if failed:
        names = "; ".join(f"{c.name} observed {c.observed}" for c in failed[:8])
        more = f" and {len(failed) - 8} more" if len(failed) > 8 else ""
        raise StageError(
            f"data validation failed: {len(failed)} expectation(s) broken: {names}{more}. "
            f"Nothing downstream was touched. Report: {report_dir / 'index.html'}"
        )
    with atomic_dir(out_dir) as tmp:
        for s in SPLITS:
            shutil.copy2(raw_dir / f"{s}.parquet", tmp / f"{s}.parquet")
    return checks


def main() -> None:
    from tasks.tracking import stage_run

    params = load_params()
    section = {"validate": params.validate_.model_dump(), "labels": params.ingest.labels}
    with stage_run("validate", section):
        import mlflow

        try:
            checks = validate(params)
        finally:
            if (REPORT_DIR / "index.html").exists():
                mlflow.log_artifacts(str(REPORT_DIR), "validation")
        mlflow.log_metric("expectations_passed", sum(c.success for c in checks))
    print(f"validate: {len(checks)} expectations passed; report {REPORT_DIR / 'index.html'}")


if __name__ == "__main__":
    run_stage(main)
