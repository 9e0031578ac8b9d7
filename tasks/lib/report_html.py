"""The pieces every self-contained HTML report shares: one style sheet, one table."""

from __future__ import annotations

import base64
import html
from pathlib import Path

# Inline styles, no scripts, no external URL: the pages open offline, from an artifact store too.
STYLE = """<style>
body{font-family:system-ui,sans-serif;margin:2em;color:#222} table{border-collapse:collapse;margin-bottom:2em}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top;font-size:14px}
th{background:#f0f0f0} tr.bad td{background:#fde2e2} td.n{text-align:right}
h1.pass{color:#15803d} h1.fail{color:#b91c1c} caption{text-align:left;font-weight:600;padding:4px 0}
p.verdict{font-size:18px} figure{display:inline-block;margin:0 2em 1em 0} figcaption{font-size:14px}
</style>"""


def page(title: str, body: str) -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
{STYLE}</head><body>
{body}
</body></html>
"""


def identity_table(ident: dict[str, str]) -> str:
    """The report's identity (tasks/lib/lineage.py: identity) as a two-column table."""
    return table([], [[k, v] for k, v in ident.items()], caption="What this report is about")


def embedded_png(path: Path, alt: str) -> str:
    """An image inside the page itself: MLflow's artifact viewer cannot follow relative links."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def table(
    headers: list[str], rows: list[list], row_ok: list[bool] | None = None, caption: str = "", html_last: bool = False
) -> str:
    """An HTML table; with `html_last`, each row's last cell is already HTML (a list of examples)."""
    esc = html.escape

    def cells(row: list) -> str:
        plain = row[:-1] if html_last else row
        out = "".join(f"<td>{esc('' if v is None else str(v))}</td>" for v in plain)
        return out + (f"<td>{row[-1]}</td>" if html_last else "")

    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        f"<tr class='{'' if row_ok is None else ('ok' if row_ok[i] else 'bad')}'>{cells(row)}</tr>"
        for i, row in enumerate(rows)
    )
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return f"<table>{cap}{f'<tr>{head}</tr>' if headers else ''}{body}</table>"
