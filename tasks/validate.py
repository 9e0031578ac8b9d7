"""validate: the data contract. Quarantine, a Great Expectations suite, drift, and a report.

    python -m tasks.validate          # reads data/raw/, writes reports/validation/ and data/validated/

1. Rows that break a row rule (empty, too short or long, unknown label, encoding damage,
   one text with two labels, a text in two splits) go to quarantine with their reason.
2. A Great Expectations suite built from params checks the accepted rows of every split.
3. Class balance, and drift against the last accepted version of the same source.

The report is written first, pass or fail. Only when every check holds is the accepted
version published to data/validated/ (splits, quarantine.parquet, snapshot.json), which is
what tokenize reads: a failed gate leaves the previous accepted data, and everything
downstream of it, untouched.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tasks.lib import catalog
from tasks.lib.catalog import SPLITS, split_file
from tasks.lib.common import StageError, atomic_dir, read_json, run_stage, write_json_atomic
from tasks.lib.config import Params, load_params
from tasks.lib.contract import DAMAGE_REGEX, quarantine, snapshot, snapshot_checks
from tasks.lib.lineage import identity
from tasks.lib.report_html import table
from tasks.lib.textclean import normalise

RESULTS = "results.json"  # inside the report folder: the verdict the flow publishes
HINT = " Undecodable bytes usually mean the file is not UTF-8: set ingest.encoding (e.g. cp1252 or latin-1)."


@dataclass(frozen=True)
class Check:
    split: str
    expectation: str
    column: str | None
    success: bool
    observed: str
    unexpected_count: int | None
    examples: list
    limit: str = ""

    @property
    def name(self) -> str:
        return f"{self.split}: {self.expectation}" + (f"({self.column})" if self.column else "")

    @property
    def label(self) -> str:
        """The expectation in words, for people."""
        what = EXPECTATION_LABELS.get(self.expectation, self.expectation.removeprefix("expect_").replace("_", " "))
        return f"{self.column}: {what}" if self.column else what


# The suite's expectations in words (GX's type names are for code).
EXPECTATION_LABELS = {
    "expect_table_columns_to_match_set": "columns are exactly",
    "expect_table_row_count_to_be_between": "row count",
    "expect_column_values_to_not_be_null": "no value is missing",
    "expect_column_values_to_not_match_regex": "no value matches",
    "expect_column_value_lengths_to_be_between": "length in characters",
    "expect_column_values_to_be_in_set": "every value is one of",
    "expect_column_distinct_values_to_equal_set": "the distinct values are exactly",
    "expect_column_proportion_of_unique_values_to_be_between": "share of distinct values",
}
# Regexes that read badly in a report, by what they mean.
REGEX_LABELS = {
    r"^\s*$": "blank text (whitespace only)",
    DAMAGE_REGEX: "encoding damage (mojibake, replacement characters)",
}


def limit_of(kwargs: dict) -> str:
    """The limit an expectation checks, from its arguments."""
    lo, hi = kwargs.get("min_value"), kwargs.get("max_value")
    if lo is not None or hi is not None:
        return (
            f"between {lo} and {hi}"
            if lo is not None and hi is not None
            else (f">= {lo}" if hi is None else f"<= {hi}")
        )
    for key in ("value_set", "column_set"):
        if kwargs.get(key) is not None:
            return ", ".join(str(v) for v in kwargs[key])
    if kwargs.get("regex"):
        return REGEX_LABELS.get(kwargs["regex"], kwargs["regex"])
    return "every row"


def load_splits(raw_dir: Path) -> dict[str, pd.DataFrame]:
    missing = [s for s in SPLITS if not split_file(s, raw_dir).exists()]
    if missing:
        raise StageError(f"{raw_dir}: split(s) {missing} missing; run the ingest stage first")
    return {s: pd.read_parquet(split_file(s, raw_dir)) for s in SPLITS}


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
        E.ExpectColumnValuesToNotMatchRegex(column="text", regex=DAMAGE_REGEX),
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
    # GX returns results in no fixed order: sort them into the suite's order, split by split.
    order = [
        (c.type, c.kwargs.get("column"), limit_of(c.kwargs)) for c in (e.configuration for e in suite.expectations)
    ]
    return sorted(checks, key=lambda c: (SPLITS.index(c.split), order.index((c.expectation, c.column, c.limit))))


def _to_check(split: str, r) -> Check:
    res = r.result or {}
    observed = res.get("observed_value")
    if res.get("partial_missing_list"):
        observed = f"missing {res['partial_missing_list']}"
    elif observed is None and res.get("unexpected_percent") is not None:
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
        examples=[shorten(str(x)) for x in (res.get("partial_unexpected_list") or [])[:5]],
        limit=limit_of(r.expectation_config.kwargs),
    )


def shorten(text: str, width: int = 120) -> str:
    """A text cut at a word boundary, marked when cut."""
    return text if len(text) <= width else text[:width].rsplit(" ", 1)[0] + " …"


def quarantine_summary(quarantined: pd.DataFrame) -> list[dict]:
    return [
        {
            "reason": reason,
            "rows": len(part),
            "splits": part["split"].value_counts().to_dict(),
            "examples": [shorten(t) for t in part["text"].head(3)],
        }
        for reason, part in quarantined.groupby("reason", sort=False)
    ]


# What ingest counted, in the order it does it, in words.
INGEST_STEPS = {
    "rows_read": "rows read from the source",
    "texts_changed_by_cleaning": "texts changed by cleaning (HTML unescaped, mojibake repaired)",
    "repeated_rows": "rows repeating another row of the same split",
    "repeats_collapsed": "repeats collapsed into one row",
    "rows_kept": "rows kept",
}


def _examples(texts: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{html.escape(t)}</li>" for t in texts) + "</ul>" if texts else ""


def render_report(
    checks: list[Check], contract: list[dict], quarantined: list[dict], ingest_stats: dict, ident: dict[str, str],
    labels: list[str], first_version: bool,
) -> str:  # fmt: skip
    """One self-contained HTML page: inline styles, no scripts, no external URL."""
    from tasks.lib.report_html import identity_table, page

    n_failed = sum(not c.success for c in checks) + sum(not c["success"] for c in contract)
    verdict = "PASSED" if n_failed == 0 else f"FAILED ({n_failed} check(s))"
    said = (
        "Every check holds: this version of the data is accepted and published to data/validated."
        if n_failed == 0
        else f"{n_failed} check(s) fail (red rows below): the data is not accepted, and nothing downstream runs."
    )
    steps = [k for k in INGEST_STEPS if k in ingest_stats]
    steps += [k for k, v in ingest_stats.items() if k not in INGEST_STEPS and isinstance(v, int)]
    cleaning = [[INGEST_STEPS.get(k, k.replace("_", " ")), f"{ingest_stats[k]:,}"] for k in steps]
    in_splits = sum(ingest_stats.get("split_rows", {}).values())
    if in_splits != ingest_stats.get("rows_kept", in_splits):
        cleaning.append(["rows in the splits (a stratified subsample: ingest.limit_rows)", f"{in_splits:,}"])
    split_labels = ingest_stats.get("split_labels", {})
    splits = [
        [s, f"{ingest_stats.get('split_rows', {}).get(s, 0):,}", *(f"{split_labels.get(s, {}).get(c, 0):,}" for c in labels)]
        for s in SPLITS
    ]  # fmt: skip
    quarantine_rows = [
        [q["reason"], f"{q['rows']:,}", *(q["splits"].get(s, 0) for s in SPLITS), _examples(q["examples"])]
        for q in quarantined
    ]
    previous = "first version of this source" if first_version else None
    contract_rows = [
        [c["check"], c["previous"] if c["previous"] is not None else (previous or "not compared"), c["current"],
         c["measure"], c["limit"], "pass" if c["success"] else "FAIL"]
        for c in contract
    ]  # fmt: skip
    expectation_rows = [
        [c.split, c.label, c.limit, "pass" if c.success else "FAIL", c.observed,
         "" if c.unexpected_count is None else c.unexpected_count, _examples(c.examples)]
        for c in checks
    ]  # fmt: skip
    first = (
        "<p>This is the <b>first version of this source</b>: there is no previous accepted version, so the drift "
        "checks (labels, lengths, vocabulary, row count) start with the next one.</p>"
        if first_version
        else ""
    )
    body = f"""<h1 class="{"pass" if n_failed == 0 else "fail"}">Data validation {verdict}</h1>
<p class="verdict">{html.escape(said)}</p>
{identity_table({"source": str(ingest_stats.get("source", "")), **ident})}
{table(["step", "rows"], cleaning, caption="What ingest read and cleaned, in order")}
{table(["split", "rows", *labels], splits, caption="Rows per split and label, before quarantine")}
<h2>Quarantined rows</h2>
{table(["reason", "rows", *SPLITS, "examples"], quarantine_rows, caption="Rows that break a row rule, by reason and split", html_last=True) if quarantine_rows else "<p>None.</p>"}
<h2>Contract and drift</h2>{first}
{table(["check", "previous version", "this version", "measured", "limit", "result"], contract_rows, [c["success"] for c in contract], caption="Against the previous accepted version of the same source")}
<h2>Great Expectations suite</h2>
{table(["split", "expectation", "limit", "result", "observed", "unexpected rows", "failing examples"], expectation_rows, [c.success for c in checks], caption="On the accepted rows of each split", html_last=True)}
<p>The unlabelled text pretraining reads is reported by the corpus and tokenize stages: <a href="../corpus/index.html">corpus report</a>.</p>"""
    return page(f"Data validation: {verdict}", body)


def markdown_summary(results: dict, report_link: str) -> str:
    """The pass/fail table for a Prefect artifact (or any markdown viewer)."""
    verdict = "PASSED" if results["success"] else "FAILED"
    lines = [
        f"## Data validation {verdict}",
        "",
        f"Report: {report_link}",
        "",
        "| check | measured | limit | result |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {c['check']} | {c['measure']} | {c['limit']} | {'pass' if c['success'] else '**FAIL**'} |"
        for c in results["contract"]
    ]
    by_split: dict[str, list[bool]] = {}
    for c in results["checks"]:
        by_split.setdefault(c["split"], []).append(c["success"])
    lines += [
        f"| expectations on {s} | {sum(ok)} of {len(ok)} hold | all | {'pass' if all(ok) else '**FAIL**'} |"
        for s, ok in by_split.items()
    ]
    lines += ["", f"Quarantined {results['quarantined_rows']} of {results['rows']} rows."]
    lines += [f"- {q['reason']}: {q['rows']}" for q in results["quarantine"]]
    return "\n".join(lines) + "\n"


def first_version(old: dict | None, new: dict) -> bool:
    """No accepted version of this source came before (drift has nothing to compare with)."""
    return old is None or old.get("source") != new["source"]


def validate(
    params: Params,
    raw_dir: Path = catalog.RAW,
    out_dir: Path = catalog.VALIDATED,
    report_dir: Path = catalog.VALIDATION_REPORT,
    ident: dict[str, str] | None = None,
) -> list[Check]:
    v, labels = params.validate_, params.ingest.labels
    splits = load_splits(raw_dir)
    stats_file = raw_dir / catalog.INGEST_STATS.name
    ingest_stats = read_json(stats_file) if stats_file.exists() else {}
    accepted, quarantined = quarantine(splits, v, labels)
    total = sum(len(df) for df in splits.values())
    share = len(quarantined) / max(total, 1)
    checks = run_suite(params, with_derived_columns(accepted))
    new_snapshot = snapshot(accepted, ingest_stats.get("source", params.ingest.source))
    old_file = out_dir / catalog.SNAPSHOT.name
    old_snapshot = read_json(old_file) if old_file.exists() else None
    contract = [
        {
            "check": "quarantined rows share",
            "previous": None,
            "current": f"{len(quarantined)} of {total}",
            "measure": round(share, 4),
            "limit": f"<= {v.max_quarantine_share}",
            "success": share <= v.max_quarantine_share,
        }
    ] + snapshot_checks(new_snapshot, old_snapshot, v, labels)
    summary = quarantine_summary(quarantined)
    with atomic_dir(report_dir) as tmp:
        page = render_report(
            checks, contract, summary, ingest_stats, ident or {}, labels, first_version(old_snapshot, new_snapshot)
        )
        (tmp / catalog.REPORT_PAGE).write_text(page)
        write_json_atomic(
            tmp / RESULTS,
            {
                "success": all(c.success for c in checks) and all(c["success"] for c in contract),
                "quarantined_rows": len(quarantined),
                "rows": total,
                "quarantine": summary,
                "contract": contract,
                "checks": [c.__dict__ for c in checks],
            },
        )
    failed = [f"{c['check']} {c['measure']} (limit {c['limit']})" for c in contract if not c["success"]]
    failed += [f"{c.name} observed {c.observed}" for c in checks if not c.success]
    if failed:
        reasons = "; ".join(f"{q['reason']}: {q['rows']}" for q in summary[:5])
        raise StageError(
            f"data validation failed: {len(failed)} check(s) broken: {'; '.join(failed[:8])}"
            f"{f' and {len(failed) - 8} more' if len(failed) > 8 else ''}."
            f"{f' Quarantined rows by reason: {reasons}.' if reasons else ''}"
            f"{HINT if any(q['reason'].startswith('undecodable') for q in summary) else ''}"
            f" Nothing downstream was touched. Report: {report_dir / catalog.REPORT_PAGE}"
        )
    with atomic_dir(out_dir) as tmp:
        for name, df in accepted.items():
            df.to_parquet(split_file(name, tmp), index=False)
        quarantined.to_parquet(tmp / catalog.QUARANTINE.name, index=False)
        write_json_atomic(tmp / catalog.SNAPSHOT.name, new_snapshot)
    return checks


def main() -> None:
    from tasks.lib.tracking import PARENT_ENV, log_metrics, stage_run

    params = load_params()
    section = {"validate": params.validate_.model_dump(), "labels": params.ingest.labels}
    report = catalog.VALIDATION_REPORT
    with stage_run("validate", section) as run:
        import mlflow

        ident = identity(params, None, {"validate": run.info.run_id, "pipeline": os.environ.get(PARENT_ENV, "")})
        # The data this stage accepts gets its hash in dvc.lock only once the stage has passed.
        ident["data hash (data/validated)"] = "this version's: recorded in dvc.lock once it passes"
        try:
            checks = validate(params, ident=ident)
        finally:
            if (report / catalog.REPORT_PAGE).exists():
                mlflow.log_artifacts(str(report), "validation")
        results = read_json(report / RESULTS)
        log_metrics(
            {"expectations_passed": sum(c.success for c in checks), "quarantined_rows": results["quarantined_rows"]}
        )
        mlflow.set_tag("data_report", str(report / catalog.REPORT_PAGE))
    print(
        f"validate: {len(checks)} expectations passed, {results['quarantined_rows']} of {results['rows']} rows "
        f"quarantined; report {report / catalog.REPORT_PAGE}"
    )


if __name__ == "__main__":
    run_stage(main)
