import yaml

from tasks.lib.config import parse_params
from tasks.lib.lineage import data_hash, git_commit, lineage_params
from tasks.register import pip_requirements

from .conftest import tiny_params

LOCK = {
    "schema": "2.0",
    "stages": {
        "ingest": {"params": {"params.yaml": {"seed": 7, "ingest": {"source": "a.csv"}}}},
        "validate": {
            "params": {"params.yaml": {"ingest.labels": ["x", "y"], "validate": {"max_chars": 9}}},
            "outs": [{"path": "data/validated", "md5": "abc123.dir"}, {"path": "reports/validation", "md5": "zzz"}],
        },
    },
}


def test_data_hash_and_params_come_from_dvc_lock(tmp_path):
    lock = tmp_path / "dvc.lock"
    lock.write_text(yaml.safe_dump(LOCK))
    assert data_hash(lock) == "abc123.dir"
    used = lineage_params(parse_params(tiny_params()), lock)
    assert used == {"seed": 7, "ingest": {"source": "a.csv", "labels": ["x", "y"]}, "validate": {"max_chars": 9}}


def test_without_dvc_lock_the_loaded_params_are_used(tmp_path):
    params = parse_params(tiny_params())
    assert data_hash(tmp_path / "none.lock") == "unknown"
    assert lineage_params(params, tmp_path / "none.lock")["finetune"]["lr"] == params.finetune.lr


def test_git_commit_outside_a_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert git_commit() == "unknown"


def test_runtime_requirements_are_pinned():
    reqs = pip_requirements()
    assert any(r.startswith("torch==") for r in reqs) and all("==" in r for r in reqs)


def test_identity_marks_a_dirty_tree_and_digests_the_params(tmp_path):
    import subprocess

    from tasks.lib.lineage import identity, params_digest

    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(LOCK))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], git + ["commit", "-qm", "c"]):
        subprocess.run(cmd, cwd=tmp_path, check=True)
    params = parse_params(tiny_params())
    clean = identity(params, "3", {"register": "r1", "pipeline": ""}, tmp_path)
    assert clean["model version"] == "version 3" and clean["register run"] == "r1" and "pipeline run" not in clean
    assert "dirty" not in clean["git commit"] and clean["data hash (data/validated)"] == "abc123.dir"
    assert clean["params digest"] == params_digest(params.model_dump(by_alias=True))
    (tmp_path / "code.py").write_text("x = 2\n")
    dirty = identity(params, None, {}, tmp_path)
    assert dirty["model version"] == "not registered" and dirty["git commit"].endswith("uncommitted changes)")
