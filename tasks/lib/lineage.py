"""Where a result came from: the git commit of the code and the hashes dvc.lock recorded."""

from __future__ import annotations

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


def restore_command(commit: str) -> str:
    """How to get this exact data back: the commit's dvc.lock names it, the remote holds it."""
    sha = commit.removesuffix("-dirty")
    return f"git checkout {sha} -- {catalog.DVC_LOCK} && dvc pull {catalog.VALIDATED} (or dvc checkout {catalog.VALIDATED})"
