"""The pieces every self-contained HTML report shares: one style sheet, one table."""

from __future__ import annotations

import html

# Inline styles, no scripts, no external URL: the pages open offline, from an artifact store too.
STYLE = """<style>
body{font-family:system-ui,sans-serif;margin:2em;color:#222} table{border-collapse:collapse;margin-bottom:2em}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top;font-size:14px}
th{background:#f0f0f0} tr.bad td{background:#fde2e2} td.n{text-align:right}
h1.pass{color:#15803d} h1.fail{color:#b91c1c}
</style>"""


def table(headers: list[str], rows: list[list], row_ok: list[bool] | None = None) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        f"<tr class='{'' if row_ok is None else ('ok' if row_ok[i] else 'bad')}'>"
        + "".join(f"<td>{esc('' if v is None else str(v))}</td>" for v in row)
        + "</tr>"
        for i, row in enumerate(rows)
    )
    return f"<table><tr>{head}</tr>{body}</table>"
