"""Pieces of the pipeline flow that need no Prefect server: the workspace lock, lock parsing."""

import subprocess
import sys

import yaml

from flows.pipeline import recorded_outs, workspace_lock

from .conftest import ROOT


def test_a_second_run_waits_for_the_workspace_instead_of_racing_dvc(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from flows.pipeline import workspace_lock\n"
         "with workspace_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(2)\n"
         "    (Path(sys.argv[1]) / 'first-run-done').touch()\n", str(tmp_path)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    said = []
    with workspace_lock(tmp_path, say=said.append):
        first_done = (tmp_path / "first-run-done").exists()  # the first run finished before we started
    holder.wait(timeout=10)
    assert said and "waiting" in said[0] and first_done


def test_recorded_outs_lists_only_stages_present_in_the_lock():
    lock = yaml.safe_dump(
        {"stages": {"tokenize": {"outs": [{"path": "data/tokenized"}, {"path": "checkpoints/tokenizer"}]}}}
    )
    assert recorded_outs(lock, ("tokenize",)) == ["data/tokenized", "checkpoints/tokenizer"]
    assert recorded_outs(lock, ("pretrain", "finetune")) == []


def test_importing_the_flows_changes_neither_the_environment_nor_the_working_folder(tmp_path):
    code = (
        "import os, json; before = (dict(os.environ), os.getcwd())\n"
        "import flows.pipeline, flows.promote, flows.deploy\n"
        "print(json.dumps(before == (dict(os.environ), os.getcwd())))"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "true"


def test_a_failed_stage_reports_dvcs_own_message(tmp_path):
    from flows.pipeline import dvc_stage

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    stages = {
        "broken": {"cmd": f"{sys.executable} -c 'import sys; sys.exit(3)'"},
        "orphan": {"cmd": "true", "deps": ["missing.txt"]},
    }
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    failed = dvc_stage.fn("broken", str(tmp_path), "run-id")
    assert "failed to reproduce" in failed.message and "exited with 3" in failed.message
    assert "printed above" in failed.message  # the stage's own command failed: it said why
    missing = dvc_stage.fn("orphan", str(tmp_path), "run-id")
    assert "missing.txt" in missing.message and "printed above" not in missing.message
