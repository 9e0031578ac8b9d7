"""Where a result came from: the git commit of the code and the hashes dvc.lock recorded."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import yaml

from tasks.lib import catalog


def git_commit(root: Path | str = ".", short: bool = False) -> str:
    """HEAD's commit, marked `-dirty` when tracked code or params differ from it ("unknown"
    outside a git checkout). dvc.lock changes with every run: it does not count."""
    rev = ["git", "rev-parse", *(["--short"] if short else []), "HEAD"]
    try:
        sha = subprocess.run(rev, cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", f":!{catalog.DVC_LOCK}"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def lock_stages(lock_file: Path = catalog.DVC_LOCK) -> dict:
    lock_file = Path(lock_file)
    return (yaml.safe_load(lock_file.read_text()) or {}).get("stages", {}) if lock_file.exists() else {}


def out_hash(path: Path, lock_file: Path = catalog.DVC_LOCK) -> str:
    """The md5 DVC recorded for the stage output `path` ("unknown" if none)."""
    for stage in lock_stages(lock_file).values():
        for out in stage.get("outs", []):
            if out.get("path") == str(path):
                return out.get("md5", "unknown")
    return "unknown"


def data_hash(lock_file: Path = catalog.DVC_LOCK) -> str:
    """The md5 DVC recorded for data/validated: the exact data a model was trained on."""
    return out_hash(catalog.VALIDATED, lock_file)


def lineage_params(params, lock_file: Path = catalog.DVC_LOCK) -> dict:
    """The params each stage was actually built with, as DVC recorded them; params.yaml may
    hold newer values for stages whose change did not alter their outputs."""
    used: dict = {}
    for stage in lock_stages(lock_file).values():
        for key, value in stage.get("params", {}).get(str(catalog.PARAMS), {}).items():
            section, _, leaf = key.partition(".")
            if leaf:
                used.setdefault(section, {})[leaf] = value
            else:
                used[key] = value
    return used or params.model_dump(by_alias=True)


def params_digest(used: dict) -> str:
    """A short fingerprint of a run's params (every report of one run shows the same one, and
    the registered version's `params.json` hashes to it): equal digests, equal params."""
    return hashlib.sha256(json.dumps(used, sort_keys=True).encode()).hexdigest()[:12]


def restore_command(version: str) -> str:
    """How to get a registered version's exact data and checkpoints back (tasks/registry.py)."""
    return f"python -m tasks.registry restore {version}"


def identity(params, version: str | None, runs: dict[str, str], root: Path | str = ".") -> dict[str, str]:
    """What a report is about, for its first lines: the model version, the runs that made
    it, the code, the data and the params, and when."""
    import datetime

    lock = catalog.at(root, catalog.DVC_LOCK)
    return {
        "model version": f"version {version}" if version else "not registered",
        **{f"{what} run": run_id for what, run_id in runs.items() if run_id},
        "git commit": _marked(git_commit(root)),
        "data hash (data/validated)": data_hash(lock),
        "params digest": params_digest(params.model_dump(by_alias=True)),
        "date (UTC)": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
    }


def _marked(commit: str) -> str:
    if commit.endswith("-dirty"):
        return f"{commit.removesuffix('-dirty')} (dirty: the working tree had uncommitted changes)"
    return commit
