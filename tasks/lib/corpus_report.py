"""The corpus section of the data reports: every source, what was read, kept and dropped (by
reason), and the tokens each gave pretraining. Written by tokenize (the first stage that knows
the tokens) as reports/corpus/index.html; the pipeline flow shows it beside the validation
verdict in Prefect and MLflow."""

from __future__ import annotations

import html

from tasks.lib.report_html import STYLE, table

COUNTED = ("source", "read", "kept")  # every other key of a source's counts is a reason to drop


def rows(corpus_stats: dict, token_stats: dict) -> list[dict]:
    tokens = token_stats.get("corpus_tokens_by_source", [])
    out = []
    for i, source in enumerate(corpus_stats["sources"]):
        dropped = {k: v for k, v in source.items() if k not in COUNTED}
        out.append({"source": source["source"], "read": source["read"], "kept": source["kept"],
                    "dropped": dropped, "tokens": tokens[i] if i < len(tokens) else None})  # fmt: skip
    return out


def _dropped(d: dict) -> str:
    return ", ".join(f"{k}: {v:,}" for k, v in d.items()) or "none"


def render_html(corpus_stats: dict, token_stats: dict) -> str:
    body = [[r["source"], f"{r['read']:,}", f"{r['kept']:,}", _dropped(r["dropped"]),
             "" if r["tokens"] is None else f"{r['tokens']:,}"] for r in rows(corpus_stats, token_stats)]  # fmt: skip
    total = token_stats.get("corpus_tokens", 0)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Pretraining corpus</title>
{STYLE}</head><body>
<h1>Pretraining corpus: {corpus_stats["documents"]:,} texts, {total:,} tokens</h1>
<p>Unlabelled text for pretraining only (never fine-tuning or evaluation). Every text is cleaned
like labelled text; dropped are texts too short, with encoding damage, repeated (exactly or after
normalisation, across all sources) or equal to / containing a validation or test text.</p>
{table(["source", "texts read", "kept", "dropped, by reason", "tokens"], body)}
<p>{html.escape(str(corpus_stats["shards"]))} shard(s); tokenizer vocabulary {token_stats.get("vocab_size", "?")}.</p>
</body></html>
"""


def markdown(corpus_stats: dict, token_stats: dict) -> str:
    lines = ["## Pretraining corpus", "", "| source | read | kept | dropped | tokens |", "|---|---|---|---|---|"]
    for r in rows(corpus_stats, token_stats):
        tokens = "" if r["tokens"] is None else f"{r['tokens']:,}"
        lines.append(f"| {r['source']} | {r['read']:,} | {r['kept']:,} | {_dropped(r['dropped'])} | {tokens} |")
    return (
        "\n".join(lines) + f"\n\n{corpus_stats['documents']:,} texts, {token_stats.get('corpus_tokens', 0):,} tokens.\n"
    )
