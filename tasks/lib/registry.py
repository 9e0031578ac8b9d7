"""The model registry: aliases moved under a lock with an audit trail, and lineage
(`python -m tasks.registry` shows them).

MLflow's stages are deprecated: this project uses aliases and tags only. Every alias move
is one JSON tag on the registered model (`alias_log.000001`, ...): who moved it, from which
version to which, when, how and why. Moves are compare-and-set: under a lock, the alias
must still point where the caller saw it, or nothing moves.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path

from tasks.lib.common import file_lock

CHAMPION = "champion"
LOG_PREFIX = "alias_log."
LOCK_ENV = "PROMOTION_LOCK"
# Set on a version last, after every lineage tag and the card: a version without it is not
# usable (its registration was killed). Its other value says why a version was given up on.
REGISTRATION_TAG = "registration"
COMPLETE = "complete"


class AliasMoved(RuntimeError):
    """The alias no longer points where the caller saw it: someone else moved it meanwhile."""


def alias_version(client, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def history(client, name: str) -> list[dict]:
    """Every recorded alias move of model `name`, oldest first."""
    from mlflow.exceptions import MlflowException

    try:
        tags = client.get_registered_model(name).tags
    except MlflowException:
        return []
    return [json.loads(v) for k, v in sorted(tags.items()) if k.startswith(LOG_PREFIX)]


def actor() -> str:
    """Who is moving an alias: user@host, plus the Prefect flow run when there is one."""
    from prefect.runtime import flow_run

    who = f"{getpass.getuser()}@{socket.gethostname()}"
    if flow_run.id:
        who += f" (prefect flow run {flow_run.id})"
    return who


def lock_path() -> Path:
    """One lock file per registry: beside a SQLite store, else where PROMOTION_LOCK says."""
    import mlflow

    if os.environ.get(LOCK_ENV):
        return Path(os.environ[LOCK_ENV])
    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).with_suffix(".promotion.lock")
    # A tracking server: every promoter must share this path (set PROMOTION_LOCK to shared storage).
    return Path.home() / ".cache" / "text-classifier" / "promotion.lock"


def registry_lock(timeout_s: float = 300, say=print):
    path = lock_path()
    return file_lock(
        path, f"waiting for the registry lock ({path}): another promotion is moving an alias", timeout_s, say
    )


def move_alias(
    client, name: str, alias: str, to_version: str, expected: str | None, action: str, reason: str, say=print
) -> dict:
    """Point `alias` at `to_version` only if it still points at `expected` (None: unset),
    and record the move; check, move and record happen under one lock."""
    with registry_lock(say=say):
        current = alias_version(client, name, alias)
        if current != expected:
            raise AliasMoved(
                f"'{alias}' moved while this decision was made (expected {_v(expected)}, found {_v(current)}); "
                "nothing was changed: run the promotion again to decide against the new one"
            )
        client.set_registered_model_alias(name, alias, to_version)
        event = {
            "seq": len(history(client, name)) + 1,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "alias": alias,
            "from_version": expected,
            "to_version": str(to_version),
            "action": action,
            "by": actor(),
            "reason": reason,
        }
        client.set_registered_model_tag(name, f"{LOG_PREFIX}{event['seq']:06d}", json.dumps(event, sort_keys=True))
    return event


def previous_champion(client, name: str) -> str | None:
    """The champion the current one replaced when it was promoted. Rollbacks walk back
    down the promotions (C -> B -> A), not back and forth between the last two."""
    current = alias_version(client, name, CHAMPION)
    for event in reversed(history(client, name)):
        if event["alias"] == CHAMPION and event["action"] == "promote" and event["to_version"] == current:
            return event["from_version"]
    return None


def resolve_version(client, name: str, ref: str) -> str:
    """A version number, or an alias, as a version number of a version that exists."""
    if ref.isdigit():
        if not version_exists(client, name, ref):
            raise LookupError(f"model '{name}' has no version {ref}")
        return ref
    version = alias_version(client, name, ref)
    if version is None:
        raise LookupError(f"model '{name}' has no alias '{ref}'")
    return version


def version_exists(client, name: str, version: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(name, version)
    except MlflowException:
        return False
    return True


def version_problem(client, name: str, version: str) -> str | None:
    """Why `version` cannot be promoted or rolled back to (None: it is complete)."""
    from mlflow.exceptions import MlflowException

    try:
        tags = client.get_model_version(name, version).tags
    except MlflowException:
        return f"model '{name}' has no version {version}"
    state = tags.get(REGISTRATION_TAG)
    if state != COMPLETE:
        why = state or "its registration did not finish: no lineage, card or completion marker"
        return f"version {version} of '{name}' is incomplete ({why}); register the model again"
    return None


def give_up_interrupted(client, name: str, say=print) -> list[str]:
    """Mark every version whose registration never finished as unusable. Call it holding
    `registry_lock`: registrations hold it throughout, so an unmarked version found then
    belongs to a registration that died."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return []
    given_up = []
    for v in versions:
        if REGISTRATION_TAG not in v.tags:
            client.set_model_version_tag(name, v.version, REGISTRATION_TAG, "unusable: its registration was interrupted")
            for alias in v.aliases:
                client.delete_registered_model_alias(name, alias)
            given_up.append(str(v.version))
    if given_up:
        say(f"register: version(s) {', '.join(given_up)} of '{name}' were left incomplete by an interrupted "
            "registration; marked unusable")  # fmt: skip
    return given_up


def lineage(client, name: str, version: str) -> dict:
    """From a version to everything that made it: runs, params, commit, data, report."""
    v = client.get_model_version(name, version)
    tags = dict(v.tags)
    run = client.get_run(v.run_id)
    return {
        "model": f"{name} version {version}",
        "aliases": list(v.aliases),
        "registering_run": v.run_id,
        "pipeline_run": tags.get("pipeline_run_id") or "none (registered outside the pipeline flow)",
        "experiment": run.info.experiment_id,
        "git_commit": tags.get("git_commit"),
        "data_hash": tags.get("data_hash"),
        "restore": tags.get("restore"),
        "params_digest": tags.get("params_digest"),
        "params": _params(tags.get("params", "")),
        "test_accuracy": tags.get("test_accuracy"),
        "test_macro_f1": tags.get("test_macro_f1"),
        "evaluation_report": tags.get("evaluation_report"),
        "model_card": tags.get("model_card"),
        "promotion": {k.removeprefix("promotion."): v for k, v in tags.items() if k.startswith("promotion.")},
    }


def _params(ref: str) -> dict:
    """The params a version was built with: the artifact its `params` tag points at."""
    import mlflow

    return mlflow.artifacts.load_dict(ref) if ref.startswith("runs:/") else {}


def _v(version: str | None) -> str:
    return "no version" if version is None else f"version {version}"


def format_history(events: list[dict]) -> str:
    if not events:
        return "no alias moves recorded"
    lines = ["| # | when (UTC) | alias | from | to | action | by | why |", "|---|---|---|---|---|---|---|---|"]
    lines += [
        f"| {e['seq']} | {e['at']} | {e['alias']} | {e['from_version'] or '-'} | {e['to_version']} | "
        f"{e['action']} | {e['by']} | {e['reason']} |"
        for e in events
    ]
    return "\n".join(lines)




def load_errors() -> tuple[type[BaseException], ...]:
    """What loading a registered version raises when its artifacts are missing, corrupted or
    unreadable; anything else is a bug and keeps its traceback."""
    from mlflow.exceptions import MlflowException
    from safetensors import SafetensorError

    return (MlflowException, OSError, RuntimeError, SafetensorError, json.JSONDecodeError)
