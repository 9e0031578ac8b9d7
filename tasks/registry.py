"""Inspect the model registry: alias history, lineage, model cards.

    python -m tasks.registry history               # every alias move, oldest first
    python -m tasks.registry lineage champion      # or a version number
    python -m tasks.registry card 3                # the model card of version 3
    python -m tasks.registry restore 3             # version 3's data and checkpoints, from the DVC remote
"""

from __future__ import annotations

import argparse
import json
import sys

from tasks.lib.registry import CHAMPION, format_history, history, lineage, resolve_version
from tasks.lib.restore import RestoreError, restore


def restored_lines(client, name: str, version: str, hashes: dict[str, str]) -> str:
    commit = client.get_model_version(name, version).tags.get("git_commit", "unknown")
    lines = [f"restored {name} version {version} (every hash checked):"]
    lines += [f"  {path:<24} md5 {md5}" for path, md5 in hashes.items()]
    lines.append(
        f"dvc.lock now records that version's outputs; its code was commit {commit} "
        f"(git checkout {commit.removesuffix('-dirty')} for it; params.yaml is yours)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import mlflow

    from tasks.lib.config import load_params
    from tasks.lib.tracking import configure

    ap = argparse.ArgumentParser(description="Inspect the model registry: alias history, lineage, model cards.")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("history", help="every alias move, oldest first")
    for cmd in ("lineage", "card", "restore"):
        p = sub.add_parser(cmd)
        p.add_argument("ref", nargs="?", default=CHAMPION, help="version number or alias (default: champion)")
    args = ap.parse_args(argv)
    configure()
    client = mlflow.MlflowClient()
    name = load_params().register_.model_name
    if args.command == "history":
        print(format_history(history(client, name)))
        return 0
    try:
        version = resolve_version(client, name, args.ref)
        if args.command == "card":
            print(client.get_model_version(name, version).description)
        elif args.command == "restore":
            print(restored_lines(client, name, version, restore(client, name, version)))
        else:
            print(json.dumps(lineage(client, name, version), indent=2))
    except (LookupError, RestoreError, mlflow.exceptions.MlflowException) as err:
        print(f"error: {getattr(err, 'message', err)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
