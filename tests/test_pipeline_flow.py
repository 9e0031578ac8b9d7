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
