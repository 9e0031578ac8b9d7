"""The data contract's own rules: which rows are quarantined and why, the snapshot kept of
each accepted dataset version, and drift between two versions.

Great Expectations checks the dataset as a whole (tasks/validate.py); these are the checks
that need a reason per row or a memory of the previous version.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pandas as pd

from tasks.lib.config import DriftParams, ValidateParams
from tasks.lib.textclean import CONTROL_CHARS, normalise

# Encoding damage that survived cleaning: replacement characters from undecodable bytes,
# control characters, and the signatures of UTF-8 read as Latin-1/Windows-1252.
DAMAGE_PATTERNS = {
    "undecodable bytes (U+FFFD)": "\ufffd",
    "control characters": CONTROL_CHARS,
    "mojibake": r"Ã[\x80-\xbf]|â€|Â[\xa0-\xbf]",
}
DAMAGE_REGEX = "|".join(DAMAGE_PATTERNS.values())
SPLIT_PRIORITY = ("test", "validation", "train")  # a leaked text stays in the split it is rarer in
VOCAB_SIZE = 5000


def quarantine(splits: dict[str, pd.DataFrame], cfg: ValidateParams, labels: list[str]) -> tuple[dict, pd.DataFrame]:
    """Split each frame into accepted rows and quarantined rows with the first rule they break."""
    frame = pd.concat([df.assign(split=name) for name, df in splits.items()], ignore_index=True)
    text = frame["text"].fillna("")
    frame = frame.assign(text=text, key=text.map(normalise), reason="")
    n_chars = text.str.len()
    rules = [
        (text.str.strip() == "", "empty text"),
        (n_chars < cfg.min_chars, f"shorter than validate.min_chars={cfg.min_chars}"),
        (n_chars > cfg.max_chars, f"longer than validate.max_chars={cfg.max_chars}"),
        (~frame["label"].isin(labels), "label not in ingest.labels: " + frame["label"].astype(str).str.slice(0, 40)),
    ]
    rules += [(text.str.contains(pattern, regex=True), name) for name, pattern in DAMAGE_PATTERNS.items()]
    label_sets = frame[frame["key"] != ""].groupby("key")["label"].agg(lambda s: ", ".join(sorted(set(s))))
    conflicting = frame["key"].map(label_sets).fillna("")
    rules.append((conflicting.str.contains(", "), "same text carries labels " + conflicting))
    rules.append(_leak_rule(frame))
    for mask, reason in rules:
        fresh = mask & (frame["reason"] == "")
        frame.loc[fresh, "reason"] = reason[fresh] if isinstance(reason, pd.Series) else reason
    bad = frame["reason"] != ""
    accepted = {name: part[["text", "label"]].reset_index(drop=True) for name, part in frame[~bad].groupby("split")}
    accepted = {name: accepted.get(name, splits[name].iloc[:0][["text", "label"]]) for name in splits}
    return accepted, frame.loc[bad, ["split", "text", "label", "reason"]].reset_index(drop=True)


def _leak_rule(frame: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """A text in two splits is quarantined from the lower-priority one (train before test)."""
    rank = frame["split"].map({s: i for i, s in enumerate(SPLIT_PRIORITY)})
    best = rank.groupby(frame["key"]).transform("min")
    leaked = (rank > best) & (frame["key"] != "")
    owner = best.map(dict(enumerate(SPLIT_PRIORITY)))
    return leaked, "also in the " + owner + " split"


def snapshot(splits: dict[str, pd.DataFrame], source: str) -> dict:
    """What a later version is compared with: sizes, label shares, lengths, vocabulary."""
    frame = pd.concat(splits.values(), ignore_index=True)
    lengths = frame["text"].str.len()
    words = Counter(w for t in frame["text"].str.lower() for w in re.findall(r"\w+", t))
    return {
        "source": source,
        "rows": {name: len(df) for name, df in splits.items()},
        "label_shares": (frame["label"].value_counts(normalize=True).sort_index().round(6)).to_dict(),
        "length_quantiles": {f"p{q}": float(np.percentile(lengths, q)) for q in (10, 50, 90)} if len(frame) else {},
        "vocabulary": [w for w, _ in words.most_common(VOCAB_SIZE)],
    }


def snapshot_checks(new: dict, old: dict | None, cfg: ValidateParams, labels: list[str]) -> list[dict]:
    """Class balance always; drift only against an earlier accepted version of the same source."""
    shares = new["label_shares"]
    checks = [
        _check(
            "smallest class share",
            None,
            min((shares.get(lab, 0.0) for lab in labels), default=0.0),
            f">= {cfg.min_class_share}",
            lambda v: v >= cfg.min_class_share,
        )
    ]
    d: DriftParams = cfg.drift
    if old is None or not d.enabled or old.get("source") != new["source"]:
        return checks
    tv = 0.5 * sum(
        abs(shares.get(k, 0.0) - old["label_shares"].get(k, 0.0)) for k in set(shares) | set(old["label_shares"])
    )
    checks.append(
        _check(
            "label distribution shift (total variation)",
            _fmt(old["label_shares"]),
            round(tv, 4),
            f"<= {d.max_label_shift}",
            lambda v: v <= d.max_label_shift,
            shown=_fmt(shares),
        )
    )
    for q in ("p50", "p90"):
        o, n = old["length_quantiles"].get(q), new["length_quantiles"].get(q)
        rel = abs(n - o) / max(o, 1.0) if o is not None and n is not None else 0.0
        checks.append(
            _check(
                f"text length {q} shift",
                o,
                round(rel, 4),
                f"<= {d.max_length_shift}",
                lambda v: v <= d.max_length_shift,
                shown=n,
            )
        )
    overlap = len(set(new["vocabulary"]) & set(old["vocabulary"])) / max(len(new["vocabulary"]), 1)
    checks.append(
        _check(
            "vocabulary overlap with previous version",
            len(old["vocabulary"]),
            round(overlap, 4),
            f">= {d.min_vocab_overlap}",
            lambda v: v >= d.min_vocab_overlap,
            shown=len(new["vocabulary"]),
        )
    )
    o_rows, n_rows = sum(old["rows"].values()), sum(new["rows"].values())
    ratio = max(n_rows, 1) / max(o_rows, 1)
    checks.append(
        _check(
            "row count ratio",
            o_rows,
            round(ratio, 4),
            f"within 1/{d.max_row_ratio}..{d.max_row_ratio}",
            lambda v: 1 / d.max_row_ratio <= v <= d.max_row_ratio,
            shown=n_rows,
        )
    )
    return checks


def _check(name: str, previous, value, limit: str, ok, shown=None) -> dict:
    return {
        "check": name,
        "previous": previous,
        "current": value if shown is None else shown,
        "measure": value,
        "limit": limit,
        "success": bool(ok(value)),
    }


def _fmt(shares: dict) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in sorted(shares.items()))
