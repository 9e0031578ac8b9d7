"""Bring a registered version's exact data and checkpoints back into the workspace.

The registering run logged the dvc.lock it was built from; its output hashes name the
validated data, the tokenizer and both checkpoints in the DVC cache and remote. Restoring
writes that lock into the workspace, pulls those outputs, and checks every hash.
"""

from __future__ import annotations

from pathlib import Path

from tasks.lib import catalog
from tasks.lib.lineage import out_hash

# What a version is made of: the data it was trained and tested on, and what it runs with.
RESTORED = (catalog.VALIDATED, catalog.TOKENIZER, catalog.PRETRAINED, catalog.FINETUNED)


class RestoreError(RuntimeError):
    pass


def version_lock(client, name: str, version: str) -> str:
    """The dvc.lock text the version's registering run logged."""
    import mlflow

    ref = client.get_model_version(name, version).tags.get("dvc_lock", "none")
    if not ref.startswith("runs:/"):
        raise RestoreError(
            f"{name} version {version} was registered without a dvc.lock (outside `dvc repro` and the pipeline "
            "flow): there is no record of its data to restore"
        )
    return Path(mlflow.artifacts.download_artifacts(ref)).read_text()


def workspace_hashes(root: Path, paths) -> dict[str, str]:
    """The md5 DVC computes now for each output path in the workspace."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        outs = {str(o.def_path): o for stage in repo.index.stages for o in stage.outs}
        return {str(p): (outs[str(p)].get_hash().value or "missing") for p in paths}


def restore(client, name: str, version: str, root: Path = Path(".")) -> dict[str, str]:
    """Restore `version`'s outputs from the DVC remote into `root`, verified by hash; returns
    path -> md5. On any failure the workspace's own dvc.lock is put back."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    lock_text = version_lock(client, name, version)
    lock_file = catalog.at(root, catalog.DVC_LOCK)
    previous = lock_file.read_text() if lock_file.exists() else None
    try:
        lock_file.write_text(lock_text)
        expected = {str(p): out_hash(p, lock_file) for p in RESTORED}
        if unknown := [p for p, h in expected.items() if h == "unknown"]:
            raise RestoreError(f"the dvc.lock of version {version} records no hash for {', '.join(unknown)}")
        try:
            with Repo(str(root)) as repo:
                repo.pull(targets=[str(catalog.at(root, Path(p))) for p in expected], force=True)
        except DvcException as err:
            raise RestoreError(f"could not pull version {version}'s outputs from the DVC remote: {err}") from err
        actual = workspace_hashes(root, expected)
        if wrong := {p: h for p, h in actual.items() if h != expected[p]}:
            raise RestoreError(f"restored outputs differ from version {version}'s record: {wrong}")
    except BaseException:  # whatever went wrong, the workspace keeps its own record
        if previous is None:
            lock_file.unlink(missing_ok=True)
        else:
            lock_file.write_text(previous)
        raise
    return expected
