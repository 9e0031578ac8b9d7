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
