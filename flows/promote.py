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
The policy lives in `tasks/lib/promotion.py`; this module only orchestrates it.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.states import Failed

from tasks.lib import catalog
from tasks.lib.promotion import (
    PromotionError,
    decide,
    decision_markdown,
    decision_tags,
    gate_line,
    held_out,
    load_problem,
    score_version,
)
from tasks.lib.registry import CHAMPION, AliasMoved, alias_version, move_alias, previous_champion, version_problem


@task(task_run_name="score version {version}")
def score(name: str, version: str, texts: list[str], labels: list[str]) -> dict:
    return score_version(name, version, texts, labels)


def _open_registry(root: Path):
    """params.yaml of the workspace `root`, and a registry client for it."""
    import mlflow

    from tasks.lib.config import load_params
    from tasks.lib.tracking import configure

    params = load_params(catalog.at(root, catalog.PARAMS))
    configure(root)
    return params, mlflow.MlflowClient()


EXPECTED = (PromotionError, AliasMoved, TimeoutError)  # a user's situation, not a bug: one line, no traceback


def _expected_failures_as_state(body):
    """The flow's expected failures end it Failed with their one-line message instead of an
    exception, so Prefect prints no traceback for them."""

    @functools.wraps(body)  # Prefect reads the flow's parameters from the signature
    def run(*args, **kwargs):
        try:
            return body(*args, **kwargs)
        except EXPECTED as err:
            return Failed(message=str(err))

    return run


@flow(name="promote")
@_expected_failures_as_state
def promote(version: str | None = None, root: str = ".") -> dict:
    """Decide on one challenger (the `challenger` alias unless `version` is given)."""
    from tasks.lib.lineage import data_hash

    logger = get_run_logger()
    root_path = Path(root).resolve()
    params, client = _open_registry(root_path)
    name, p = params.register_.model_name, params.promote
    challenger = version or alias_version(client, name, params.register_.alias)
    if challenger is None:
        raise PromotionError(f"model '{name}' has no @{params.register_.alias} version: run the pipeline first")
    if problem := version_problem(client, name, challenger):
        raise PromotionError(f"{problem}: nothing was promoted")
    champion = alias_version(client, name, CHAMPION)
    if challenger == champion:
        raise PromotionError(f"version {challenger} is already @{CHAMPION}")
    texts, labels = held_out(p.split, root_path)
    ours = score(name, challenger, texts, labels)
    theirs = score(name, champion, texts, labels) if champion else None
    data = data_hash(catalog.at(root_path, catalog.DVC_LOCK))
    decision = decide(challenger, champion, ours, theirs, p, len(texts), data)
    if decision["decision"] == "promoted":
        try:
            move_alias(client, name, CHAMPION, challenger, champion, "promote", decision["reason"], say=logger.info)
        except AliasMoved as err:
            decision |= {"decision": "rejected", "reason": str(err)}
    for key, value in decision_tags(decision).items():
        client.set_model_version_tag(name, decision["challenger"], key, value)
    create_markdown_artifact(
        decision_markdown(name, decision),
        key="promotion-decision",
        description="Whether the challenger became champion: each gate, its measured value and its limit.",
    )
    for g in decision["gates"]:
        logger.info(gate_line(g))
    logger.info("version %s: %s (%s)", challenger, decision["decision"], decision["reason"])
    return decision


@flow(name="rollback")
@_expected_failures_as_state
def rollback(reason: str = "", root: str = ".") -> dict:
    """Move `champion` back to the version it pointed at before the current one, once that
    version is complete and loads with every checksum matching."""
    params, client = _open_registry(Path(root).resolve())
    name = params.register_.model_name
    current = alias_version(client, name, CHAMPION)
    target = previous_champion(client, name)
    if current is None or target is None:
        raise PromotionError(f"model '{name}' has no earlier champion to roll back to")
    if problem := version_problem(client, name, target) or load_problem(name, target):
        raise PromotionError(f"cannot roll back to version {target}: {problem}; @{CHAMPION} stays on version {current}")
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
    state = (
        rollback(reason=args.reason, return_state=True)
        if args.rollback
        else promote(version=args.version, return_state=True)
    )
    if state.is_failed():
        print(f"error: {state.message}", file=sys.stderr)
        return 1
    if args.rollback:
        event = state.result()
        print(f"champion: version {event['from_version']} -> version {event['to_version']} (rollback)")
        return 0
    decision = state.result()
    for g in decision["gates"]:
        print(gate_line(g))
    verb = "is now @champion" if decision["decision"] == "promoted" else "was NOT promoted"
    print(f"version {decision['challenger']} {verb}: {decision['reason']}")
    return 0 if decision["decision"] == "promoted" else 1


if __name__ == "__main__":
    from flows.runtime import offline_defaults

    with offline_defaults():
        raise SystemExit(main())
