"""Promotion: the challenger replaces the champion only when every gate passes.

    python -m flows.promote                      # challenger vs champion, gates from params.yaml
    python -m flows.promote --version 7          # a given version instead of @challenger
    python -m flows.promote --rollback --reason "bad outputs on mobile traffic"
    python -m tasks.registry history             # every alias move, oldest first

Both models are loaded from the registry the way a server loads them and scored on the same
held-out split of `data/validated`. Absolute gates (accuracy, macro-F1) apply to every
challenger; with a champion in place, the challenger must also improve macro-F1 by
`min_improvement` and no class's recall may fall by more than `max_recall_drop`. The
decision, each gate's value and the data hash go onto the challenger's version as tags
and into a Prefect markdown artifact; the champion alias moves only when every gate passes.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from tasks.common import apply_env_defaults

apply_env_defaults()

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402

from tasks.registry import CHAMPION, AliasMoved, alias_version, move_alias, previous_champion  # noqa: E402

VALIDATED_DIR = Path("data/validated")


class PromotionError(RuntimeError):
    """The promotion could not be decided (no challenger, no data, nothing to roll back to)."""


def held_out(split: str):
    import pandas as pd

    path = VALIDATED_DIR / f"{split}.parquet"
    if not path.exists():
        raise PromotionError(f"{path} not found: run the pipeline (or `dvc pull data/validated`) first")
    df = pd.read_parquet(path)
    return df["text"].tolist(), df["label"].tolist()


@task(task_run_name="score version {version}")
def score(name: str, version: str, texts: list[str], labels: list[str]) -> dict:
    """Load a version as a server would and score it; an unloadable version gets an `error`."""
    import mlflow
    import numpy as np
    from sklearn.metrics import accuracy_score, f1_score, recall_score

    try:
        model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
        predicted = []
        for start in range(0, len(texts), 500):
            predicted += model.predict(texts[start : start + 500])["label"].tolist()
    except Exception as err:  # any failure to load or run makes the version ineligible
        return {"version": version, "error": _one_line(err)}
    classes = sorted(set(labels))
    recall = recall_score(labels, predicted, labels=classes, average=None, zero_division=0)
    return {
        "version": version,
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": float(f1_score(labels, predicted, labels=classes, average="macro", zero_division=0)),
        "recall": {c: float(r) for c, r in zip(classes, np.atleast_1d(recall), strict=True)},
    }


def _one_line(err: Exception) -> str:
    text = getattr(err, "message", None) or str(err) or type(err).__name__
    return " ".join(text.split())[:300]


def gates(challenger: dict, champion: dict | None, p) -> list[dict]:
    """Each gate's value, threshold and verdict; relative gates only when there is a champion."""
    out = [
        _gate("min_accuracy", challenger["accuracy"], p.min_accuracy, ">="),
        _gate("min_macro_f1", challenger["macro_f1"], p.min_macro_f1, ">="),
    ]
    if champion is not None:
        out.append(_gate("min_improvement", challenger["macro_f1"] - champion["macro_f1"], p.min_improvement, ">="))
        drops = {c: champion["recall"][c] - challenger["recall"].get(c, 0.0) for c in champion["recall"]}
        worst = max(drops, key=drops.get)
        out.append(_gate("max_recall_drop", drops[worst], p.max_recall_drop, "<=", f"class '{worst}'"))
    return out


def _gate(name: str, value: float, threshold: float, op: str, where: str = "") -> dict:
    passed = value >= threshold if op == ">=" else value <= threshold
    margin = value - threshold if op == ">=" else threshold - value
    return {"gate": name, "value": round(value, 4), "threshold": threshold, "op": op, "passed": passed,
            "margin": round(margin, 4), "where": where}  # fmt: skip


def gate_line(g: dict) -> str:
    where = f" ({g['where']})" if g["where"] else ""
    verdict = "pass" if g["passed"] else f"FAIL, short by {abs(g['margin']):.4f}"
    return f"{g['gate']}{where}: {g['value']:.4f} {g['op']} {g['threshold']} -> {verdict}"


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


def record(client, name: str, decision: dict) -> None:
    """The decision on the challenger's version, as tags a user can read or filter on."""
    tags = {
        "promotion.decision": decision["decision"],
        "promotion.reason": decision["reason"][:4000],
        "promotion.gates": json.dumps(decision["gates"]),
        "promotion.data_hash": decision["data_hash"],
        "promotion.split": decision["split"],
        "promotion.champion_at_evaluation": decision["champion"] or "none",
        "promotion.decided_at": decision["at"],
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, decision["challenger"], key, value)


@flow(name="promote")
def promote(version: str | None = None, root: str = ".") -> dict:
    """Decide on one challenger (the `challenger` alias unless `version` is given)."""
    import os

    import mlflow

    from tasks.config import load_params
    from tasks.register import data_hash
    from tasks.tracking import configure

    logger = get_run_logger()
    os.chdir(Path(root).resolve())
    params = load_params()
    name, p = params.register_.model_name, params.promote
    configure()
    client = mlflow.MlflowClient()
    challenger = version or alias_version(client, name, params.register_.alias)
    if challenger is None:
        raise PromotionError(f"model '{name}' has no @{params.register_.alias} version: run the pipeline first")
    champion = alias_version(client, name, CHAMPION)
    if challenger == champion:
        raise PromotionError(f"version {challenger} is already @{CHAMPION}")
    texts, labels = held_out(p.split)
    ours = score(name, challenger, texts, labels)
    theirs = score(name, champion, texts, labels) if champion else None
    decision = {
        "challenger": challenger,
        "champion": champion,
        "split": p.split,
        "rows": len(texts),
        "data_hash": data_hash(),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "gates": [],
        "scores": {"challenger": ours, "champion": theirs},
    }
    if "error" in ours:
        decision |= {"decision": "rejected", "reason": f"version {challenger} cannot be loaded: {ours['error']}"}
    elif theirs is not None and "error" in theirs:
        decision |= {
            "decision": "rejected",
            "reason": f"the champion, version {champion}, cannot be loaded ({theirs['error']}): "
            "roll back (--rollback) or repair it before promoting against it",
        }
    else:
        decision["gates"] = gates(ours, theirs, p)
        failed = [g for g in decision["gates"] if not g["passed"]]
        decision |= {
            "decision": "rejected" if failed else "promoted",
            "reason": "; ".join(gate_line(g) for g in failed) if failed else "every gate passed",
        }
    if decision["decision"] == "promoted":
        try:
            move_alias(client, name, CHAMPION, challenger, champion, "promote", decision["reason"], say=logger.info)
        except AliasMoved as err:
            decision |= {"decision": "rejected", "reason": str(err)}
    record(client, name, decision)
    create_markdown_artifact(decision_markdown(name, decision), key="promotion-decision")
    for g in decision["gates"]:
        logger.info(gate_line(g))
    logger.info("version %s: %s (%s)", challenger, decision["decision"], decision["reason"])
    return decision


@flow(name="rollback")
def rollback(reason: str = "", root: str = ".") -> dict:
    """Move `champion` back to the version it pointed at before the current one."""
    import os

    import mlflow

    from tasks.config import load_params
    from tasks.tracking import configure

    os.chdir(Path(root).resolve())
    name = load_params().register_.model_name
    configure()
    client = mlflow.MlflowClient()
    current = alias_version(client, name, CHAMPION)
    target = previous_champion(client, name)
    if current is None or target is None:
        raise PromotionError(f"model '{name}' has no earlier champion to roll back to")
    event = move_alias(client, name, CHAMPION, target, current, "rollback", reason or "rollback")
    get_run_logger().info("champion: version %s -> version %s (rollback)", current, target)
    return event


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Promote the challenger to champion when the gates pass, or roll back.")
    ap.add_argument("--version", help="the version to decide on (default: the @challenger alias)")
    ap.add_argument("--rollback", action="store_true", help="move @champion back to the previous champion")
    ap.add_argument("--reason", default="", help="why (recorded with a rollback)")
    args = ap.parse_args(argv)
    try:
        if args.rollback:
            event = rollback(reason=args.reason)
            print(f"champion: version {event['from_version']} -> version {event['to_version']} (rollback)")
            return 0
        decision = promote(version=args.version)
    except (PromotionError, AliasMoved, TimeoutError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for g in decision["gates"]:
        print(gate_line(g))
    verb = "is now @champion" if decision["decision"] == "promoted" else "was NOT promoted"
    print(f"version {decision['challenger']} {verb}: {decision['reason']}")
    return 0 if decision["decision"] == "promoted" else 1


if __name__ == "__main__":
    raise SystemExit(main())
