"""Promotion policy: scoring a registered version, the gates of params.yaml's `promote`
section, the decision and how it is written down. `flows/promote.py` only orchestrates."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from tasks.lib import catalog
from tasks.lib.registry import load_errors


class PromotionError(RuntimeError):
    """The promotion could not be decided (no challenger, no data, nothing to roll back to)."""


def held_out(split: str, root: Path = Path(".")) -> tuple[list[str], list[str]]:
    import pandas as pd

    path = catalog.at(root, catalog.split_file(split))
    if not path.exists():
        raise PromotionError(f"{path} not found: run the pipeline (or `dvc pull {catalog.VALIDATED}`) first")
    df = pd.read_parquet(path)
    return df["text"].tolist(), df["label"].tolist()


def score_version(name: str, version: str, texts: list[str], labels: list[str]) -> dict:
    """Load a version as a server would and score it; one that cannot be loaded gets an
    `error` saying why."""
    import mlflow
    import numpy as np
    from sklearn.metrics import accuracy_score, f1_score, recall_score

    try:
        model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
        predicted = []
        for start in range(0, len(texts), 500):
            predicted += model.predict(texts[start : start + 500])["label"].tolist()
    except load_errors() as err:
        return {"version": version, "error": f"{type(err).__name__}: {one_line(err)}"}
    classes = sorted(set(labels))
    recall = recall_score(labels, predicted, labels=classes, average=None, zero_division=0)
    return {
        "version": version,
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": float(f1_score(labels, predicted, labels=classes, average="macro", zero_division=0)),
        "recall": {c: float(r) for c, r in zip(classes, np.atleast_1d(recall), strict=True)},
    }


def load_problem(name: str, version: str) -> str | None:
    """Why `version` does not load as a server would load it (checksums verified), or None."""
    import mlflow

    try:
        mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    except load_errors() as err:
        return f"it cannot be loaded ({type(err).__name__}: {one_line(err)})"
    return None


def one_line(err: BaseException, limit: int = 300) -> str:
    text = getattr(err, "message", None) or str(err) or type(err).__name__
    return " ".join(text.split())[:limit]


def gate(name: str, value: float, threshold: float, op: str, where: str = "") -> dict:
    passed = value >= threshold if op == ">=" else value <= threshold
    margin = value - threshold if op == ">=" else threshold - value
    return {"gate": name, "value": round(value, 4), "threshold": threshold, "op": op, "passed": passed,
            "margin": round(margin, 4), "where": where}  # fmt: skip


def gates(challenger: dict, champion: dict | None, p) -> list[dict]:
    """Each gate's value, threshold and verdict; relative gates only when there is a champion."""
    out = [
        gate("min_accuracy", challenger["accuracy"], p.min_accuracy, ">="),
        gate("min_macro_f1", challenger["macro_f1"], p.min_macro_f1, ">="),
    ]
    if champion is not None:
        out.append(gate("min_improvement", challenger["macro_f1"] - champion["macro_f1"], p.min_improvement, ">="))
        drops = {c: champion["recall"][c] - challenger["recall"].get(c, 0.0) for c in champion["recall"]}
        worst = max(drops, key=drops.get)
        out.append(gate("max_recall_drop", drops[worst], p.max_recall_drop, "<=", f"class '{worst}'"))
    return out


def gate_line(g: dict) -> str:
    where = f" ({g['where']})" if g["where"] else ""
    verdict = "pass" if g["passed"] else f"FAIL, short by {abs(g['margin']):.4f}"
    return f"{g['gate']}{where}: {g['value']:.4f} {g['op']} {g['threshold']} -> {verdict}"


def decide(challenger: str, champion: str | None, ours: dict, theirs: dict | None, p, rows: int, data: str) -> dict:
    """The decision on `challenger` from both scores: promoted only when both loaded and
    every gate passes."""
    decision = {
        "challenger": challenger,
        "champion": champion,
        "split": p.split,
        "rows": rows,
        "data_hash": data,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "gates": [],
        "scores": {"challenger": ours, "champion": theirs},
    }
    if "error" in ours:
        return decision | {"decision": "rejected", "reason": f"version {challenger} cannot be loaded: {ours['error']}"}
    if theirs is not None and "error" in theirs:
        return decision | {
            "decision": "rejected",
            "reason": f"the champion, version {champion}, cannot be loaded ({theirs['error']}): "
            "roll back (--rollback) or repair it before promoting against it",
        }
    decision["gates"] = gates(ours, theirs, p)
    failed = [g for g in decision["gates"] if not g["passed"]]
    return decision | {
        "decision": "rejected" if failed else "promoted",
        "reason": "; ".join(gate_line(g) for g in failed) if failed else "every gate passed",
    }


def decision_markdown(name: str, decision: dict) -> str:
    rows = "\n".join(
        f"| {g['gate']} {g['where']} | {g['value']:.4f} | {g['op']} {g['threshold']} | "
        f"{'pass' if g['passed'] else 'FAIL'} | {g['margin']:+.4f} |"
        for g in decision["gates"]
    )
    champ = decision["champion"] or "none"
    return (
        f"## Promotion of `{name}` version {decision['challenger']}: **{decision['decision']}**\n\n"
        f"Champion at evaluation: {champ}; data `{decision['data_hash']}` ({decision['split']} split, "
        f"{decision['rows']:,} rows).\n\n{decision['reason']}\n\n"
        "| gate | value | threshold | verdict | margin |\n|---|---|---|---|---|\n" + rows + "\n"
    )


def decision_tags(decision: dict) -> dict[str, str]:
    """The decision as tags on the challenger's version, for a user to read or filter on."""
    return {
        "promotion.decision": decision["decision"],
        "promotion.reason": decision["reason"][:4000],
        "promotion.gates": json.dumps(decision["gates"]),
        "promotion.data_hash": decision["data_hash"],
        "promotion.split": decision["split"],
        "promotion.champion_at_evaluation": decision["champion"] or "none",
        "promotion.decided_at": decision["at"],
    }
