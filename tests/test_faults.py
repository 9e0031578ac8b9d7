# ruff: noqa: F811  (the promotion fixtures are imported by name and requested as arguments)
"""Faults and bad input that used to pass silently: each test is one row of docs/reliability.md.

Stage-level cases run the real stage functions on the tiny corpus; the pipeline cases run
`dvc repro` and the flow in a temporary git repository with a real MLflow registry; the
serving cases talk to a real server on loopback.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fastapi import Request  # module level: FastAPI resolves handler annotations here

from tasks.lib.common import read_json
from tasks.lib.config import load_params
from tasks.lib.registry import CHAMPION, REGISTRATION_TAG, alias_version
from tasks.lib.training import CHECKSUMS, Diverged

# The promotion tests' tiny registry (v1 trained, v2 always negative, v3 always positive).
from .conftest import ROOT
from .test_promote import NAME, _promote, _promote_ok, _stored_artifact, project, registry  # noqa: F401, F811


def _set_params(**sections) -> None:
    raw = yaml.safe_load(open("params.yaml"))
    for section, values in sections.items():
        raw[section].update(values)
    Path("params.yaml").write_text(yaml.safe_dump(raw))


# --- 1. finite or fail --------------------------------------------------------------------------


def test_diverged_finetuning_fails_naming_the_step_and_keeps_the_previous_model(tokenized):
    from tasks.finetune import finetune
    from tasks.pretrain import pretrain

    pretrain(tokenized)
    finetune(tokenized, tokenized.ingest.labels)
    before = Path("checkpoints/finetuned/model.safetensors").read_bytes()
    _set_params(finetune={"lr": 10000.0})
    with pytest.raises(Diverged, match=r"training diverged at step \d+: the (loss|gradient norm) is nan"):
        finetune(load_params(), tokenized.ingest.labels)
    assert Path("checkpoints/finetuned/model.safetensors").read_bytes() == before


def test_diverged_pretraining_fails_before_writing(tokenized):
    from tasks.pretrain import pretrain

    _set_params(pretrain={"lr": 1e6, "warmup_steps": 1, "grad_clip": 1e30})
    with pytest.raises(Diverged, match="training diverged at step"):
        pretrain(load_params())
    assert not Path("checkpoints/pretrained").exists()


def test_nan_weights_are_never_checkpointed(tokenized):
    import torch

    from tasks.lib.training import check_weights

    model = torch.nn.Linear(2, 2)
    check_weights(model, 3)
    with torch.no_grad():
        model.weight[0, 0] = math.inf
    with pytest.raises(Diverged, match="at step 3: the weight tensor 'weight' holds NaN or Inf"):
        check_weights(model, 3)


def _interrupted_pretraining(params) -> Path:
    """A resume state as a killed pretraining leaves it (the run stopped after a checkpoint)."""
    from tasks.lib import training
    from tasks.pretrain import pretrain

    class Killed(Exception):
        pass

    def stop_after_first(*args, **kwargs):
        original(*args, **kwargs)
        raise Killed

    original = training.save_resume_state
    training.save_resume_state = stop_after_first
    try:
        with pytest.raises(Killed):
            pretrain(params)
    finally:
        training.save_resume_state = original
    return Path("checkpoints/.pretrain-resume")


@pytest.mark.parametrize("damage", ["tensor bytes", "safetensors header", "checkpoint.json"])
def test_a_damaged_resume_state_is_set_aside_and_the_run_starts_fresh(tokenized, damage, capsys):
    from tasks.pretrain import pretrain

    _set_params(pretrain={"max_steps": 8, "checkpoint_every": 4})
    params = load_params()
    resume = _interrupted_pretraining(params)
    assert (resume / CHECKSUMS).exists()
    target = resume / ("checkpoint.json" if damage == "checkpoint.json" else "model.safetensors")
    data = bytearray(target.read_bytes())
    if damage == "tensor bytes":
        data[-3] ^= 0xFF  # a flipped byte inside the last tensor: it still loads, as NaN or garbage
    else:
        data[10] = ord("{") if data[10] != ord("{") else ord("[")  # the JSON header is no longer valid
    target.write_bytes(bytes(data))

    pretrain(params)
    said = capsys.readouterr().out
    assert "is damaged" in said and "starting fresh" in said and "resuming" not in said
    aside = [p for p in Path("checkpoints").iterdir() if "-damaged-" in p.name]
    assert len(aside) == 1 and aside[0].name.endswith("-resume")
    # Fresh from step 0: the same weights as a run that never saw the damaged state.
    pretrain(params, out_dir=Path("uninterrupted"), resume_dir=Path("unused-resume"))
    assert (
        Path("uninterrupted/model.safetensors").read_bytes()
        == Path("checkpoints/pretrained/model.safetensors").read_bytes()
    )


def test_an_intact_resume_state_still_resumes(tokenized, capsys):
    from tasks.pretrain import pretrain

    _set_params(pretrain={"max_steps": 8, "checkpoint_every": 4})
    params = load_params()
    _interrupted_pretraining(params)
    pretrain(params)
    assert "resuming from step 4" in capsys.readouterr().out
    assert read_json("checkpoints/pretrained/checkpoint.json")["step"] == 8


def test_a_kill_between_the_renames_of_a_checkpoint_keeps_the_previous_state(tokenized, capsys):
    """`atomic_dir` moves the old state aside, then moves the new one in: a kill between the
    two leaves only `.pretrain-resume.old-<pid>`; the next run puts it back and resumes."""
    from tasks.pretrain import pretrain

    _set_params(pretrain={"max_steps": 8, "checkpoint_every": 4})
    params = load_params()
    resume = _interrupted_pretraining(params)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    resume.rename(resume.with_name(f".{resume.name}.old-{dead.pid}"))
    pretrain(params)
    assert "resuming from step 4" in capsys.readouterr().out
    assert read_json("checkpoints/pretrained/checkpoint.json")["step"] == 8


# --- 5. errors that fit on a screen ------------------------------------------------------------


def test_a_stage_error_quoting_huge_input_is_cut_to_a_screen(capsys):
    from tasks.lib.common import MESSAGE_LIMIT, StageError, run_stage

    def main():
        raise StageError("bad row: " + "x" * 50_000_000)

    with pytest.raises(SystemExit):
        run_stage(main)
    said = capsys.readouterr().err
    assert len(said) < MESSAGE_LIMIT + 100 and "characters cut" in said and said.startswith("error: bad row: xxx")


# --- 6. bad input that used to get through ------------------------------------------------------


def _ingest_from(source: str, **ingest):
    from tasks.ingest import ingest as run_ingest

    _set_params(ingest={"source": source, **ingest})
    params = load_params()
    return run_ingest(params.ingest, params.seed)


def test_numbers_in_a_parquet_text_column_are_an_error_unless_cast(workdir):
    from tasks.lib.common import StageError
    from tests.conftest import tiny_frame

    frame = tiny_frame()
    frame["text"] = range(len(frame))
    frame.to_parquet("numbers.parquet")
    with pytest.raises(StageError, match=r"numbers.parquet: the text column 'text' holds int values .*cast_text"):
        _ingest_from("numbers.parquet")
    _ingest_from("numbers.parquet", cast_text=True)  # asked for: read as text


def test_a_folder_source_names_the_file_that_lacks_the_label_column(workdir):
    from tasks.lib.common import StageError
    from tests.conftest import tiny_frame

    Path("parts").mkdir()
    frame = tiny_frame()
    frame.iloc[:40].to_csv("parts/a.csv", index=False)
    frame.iloc[40:].drop(columns="label").to_csv("parts/b.csv", index=False)
    with pytest.raises(StageError, match=r"parts/b.csv: column\(s\) \['label'\] not found"):
        _ingest_from("parts")


def test_an_unset_variable_in_a_source_path_is_named_and_no_value_is_echoed(workdir, monkeypatch):
    from tasks.lib.common import StageError

    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    with pytest.raises(StageError) as err:
        _ingest_from("$SECRET_TOKEN/$NOT_SET_ANYWHERE/data.csv")
    assert "$NOT_SET_ANYWHERE" in str(err.value) and "hunter2" not in str(err.value)
    with pytest.raises(StageError) as err:
        _ingest_from("$SECRET_TOKEN/data.csv")  # every variable set, the file missing
    assert "hunter2" not in str(err.value) and "$SECRET_TOKEN/data.csv" in str(err.value)


@pytest.mark.parametrize("name", ["../../evil", "a/b", "", ".hidden", "x" * 101])
def test_registry_names_are_checked_with_the_params(workdir, name):
    from tasks.lib.config import ParamsError

    raw = yaml.safe_load(open("params.yaml"))
    raw["register"]["model_name"] = name
    Path("params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match="model_name"):
        load_params()


def test_profiles_come_only_from_the_profiles_folder(workdir):
    from tasks.lib.common import StageError
    from tasks.profile import apply_profile

    Path("profiles").mkdir()
    Path("profiles/ok.yaml").write_text("seed: 7\n")
    Path("outside.yaml").write_text("seed: 8\n")
    with pytest.raises(StageError, match="no profile '../outside'"):
        apply_profile("../outside", Path("params.yaml"), Path("profiles"))
    apply_profile("ok", Path("params.yaml"), Path("profiles"))
    assert yaml.safe_load(open("params.yaml"))["seed"] == 7


@pytest.mark.parametrize(
    "body,says",
    [
        (b'{"inputs": ["\xff\xfe bad bytes"]}', "not valid UTF-8"),
        (b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested too deeply"),
        (b'{"inputs": [' + b"9" * 5000 + b"]}", "cannot be read"),
        (b'{"inputs": ["fine", ""]}', "item 1 is empty"),
        (b'{"inputs": ["fine", "  \\n\\t "]}', "item 1 is empty"),
        (b'{"inputs": ["fine", "\\ud800"]}', "item 1 cannot be encoded as UTF-8"),
    ],
)
def test_request_bodies_that_used_to_be_500s_or_made_up_answers_are_400s(body, says):
    from tasks.serve import RequestError, decode_body, parse_texts

    with pytest.raises(RequestError, match=says) as err:
        parse_texts(decode_body(body))
    assert err.value.status == 400


def test_the_registered_model_refuses_empty_texts_too():
    from mlflow.exceptions import MlflowException

    from models.requests import texts_of

    with pytest.raises(MlflowException, match="item 0 is empty"):
        texts_of([" "], 10)


# --- 2 and 4. the registry is the truth; every artifact checksummed -----------------------------


def _no_traceback(done) -> str:
    said = done.stdout + done.stderr
    assert "Traceback" not in said, said[-3000:]
    return said


@pytest.mark.slow
def test_an_incomplete_version_is_refused_then_marked_unusable_by_the_next_registration(registry, project):
    from tasks.lib.tracking import stage_run
    from tasks.register import register

    v3 = project["v3"]
    registry.delete_model_version_tag(NAME, v3, REGISTRATION_TAG)  # as a registration killed before its last tag
    try:
        done = _promote("--version", v3)
        assert done.returncode == 1 and f"version {v3} of '{NAME}' is incomplete" in _no_traceback(done)
        assert alias_version(registry, NAME, CHAMPION) is None
        with stage_run("register"):
            new = register(load_params())["version"]
        assert registry.get_model_version(NAME, v3).tags[REGISTRATION_TAG].startswith("unusable")
        assert registry.get_model_version(NAME, new).tags[REGISTRATION_TAG] == "complete"
        done = _promote("--version", v3)
        assert done.returncode == 1 and "interrupted" in _no_traceback(done)
    finally:
        registry.set_model_version_tag(NAME, v3, REGISTRATION_TAG, "complete")


@pytest.mark.slow
def test_unknown_versions_and_a_missing_challenger_get_one_line(registry, project):
    done = _promote("--version", "999")
    assert done.returncode == 1 and f"model '{NAME}' has no version 999" in _no_traceback(done)
    challenger = alias_version(registry, NAME, "challenger")
    registry.delete_registered_model_alias(NAME, "challenger")
    try:
        done = _promote()
        said = _no_traceback(done)
        assert done.returncode == 1 and "has no @challenger version" in said
        # Prefect's own INFO lines (server start, flow run start and end) and the one error line.
        assert len(done.stderr.strip().splitlines()) <= 8 and "error: model" in done.stderr, done.stderr
    finally:
        registry.set_registered_model_alias(NAME, "challenger", challenger)
    shown = subprocess.run([sys.executable, "-m", "tasks.registry", "lineage", "999"], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert shown.returncode == 1 and "has no version 999" in _no_traceback(shown)


@pytest.mark.slow
def test_rollback_onto_a_version_that_does_not_load_leaves_the_champion(registry, project):
    _promote_ok(project["v2"])
    _promote_ok(project["v1"])
    stored = _stored_artifact(registry.get_model_version(NAME, project["v2"]), "model.safetensors")
    original = stored.read_bytes()
    stored.unlink()
    try:
        done = _promote("--rollback")
        said = _no_traceback(done)
        assert done.returncode == 1 and f"cannot roll back to version {project['v2']}" in said
        assert alias_version(registry, NAME, CHAMPION) == project["v1"]
    finally:
        stored.write_bytes(original)


@pytest.mark.slow
@pytest.mark.parametrize(
    "artifact,edit,says",
    [
        ("tokenizer.json", lambda t: t.replace("[UNK]", "[UNKNOWN]", 1), "tokenizer do not match the checksum"),
        ("config.json", lambda t: t.replace('"negative"', '"NEGATIVE"'), "config (labels, network) does not match"),
        ("transformer.py", lambda t: t + "\n# edited\n", "code does not match the checksum"),
    ],
)
def test_a_tampered_artifact_is_refused_at_load(registry, project, artifact, edit, says):
    """Every artifact of a version is checksummed: an edited tokenizer, label map or shipped
    code file is refused when the version loads, so it is never promoted or served."""
    import mlflow

    stored = _stored_artifact(registry.get_model_version(NAME, project["v3"]), artifact)
    original = stored.read_text()
    stored.write_text(edit(original))
    try:
        with pytest.raises(Exception, match=re.escape(says)):
            mlflow.pyfunc.load_model(f"models:/{NAME}/{project['v3']}")
        if artifact == "tokenizer.json":  # promotion loads the same way: one case shows it refuses
            done = _promote("--version", project["v3"])
            assert done.returncode == 1 and "cannot be loaded" in _no_traceback(done)
    finally:
        stored.write_text(original)


@pytest.mark.slow
def test_register_counts_as_done_only_when_the_registry_holds_these_weights(registry, project, tmp_path, monkeypatch):
    from tasks.register import registry_holds

    record = {"name": NAME, "version": project["v3"]}  # the last registration: v3's weights are the workspace's
    Path("reports/registered.json").write_text(json.dumps(record))
    assert registry_holds(NAME)
    Path("reports/registered.json").write_text(json.dumps({**record, "version": project["v1"]}))
    assert not registry_holds(NAME)  # another version's weights
    Path("reports/registered.json").write_text(json.dumps(record))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'lost.db'}")  # mlflow.db deleted
    assert not registry_holds(NAME)


# --- 3. a killed flow leaves no orphans ------------------------------------------------------


def _wait_for(predicate, timeout_s: float = 60.0) -> bool:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_the_reaper_stops_what_a_killed_flow_left_running(tmp_path):
    """A stand-in flow starts a child that starts a grandchild (as DVC starts a stage that
    starts pool workers); SIGKILL the flow and both go too."""
    import signal

    from flows.reaper import start_time

    pids = tmp_path / "pids"
    flow = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import subprocess, time; "
        'g = subprocess.Popen(["sleep", "300"]); print(g.pid, flush=True); time.sleep(300)\'],'
        " stdout=open(sys.argv[1], 'w'))\n"
        "from flows.runtime import reap_on_exit\n"
        "reap_on_exit()\n"
        "print('watched', flush=True)\n"
        "time.sleep(300)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", flow, str(pids)], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "watched"
    assert _wait_for(lambda: pids.exists() and pids.read_text().strip())
    grandchild = int(pids.read_text())
    listed = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    assert _wait_for(lambda: len(listed.read_text().split()) >= 2)  # the stage stand-in and the reaper
    children = [int(p) for p in listed.read_text().split()]
    started = {pid: start_time(pid) for pid in [grandchild, *children]}
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _wait_for(lambda: all(start_time(pid) != s for pid, s in started.items()), 30), "orphans left running"


def test_runs_a_dead_flow_left_running_are_marked_failed(workdir):
    import mlflow

    from tasks.lib.tracking import OWNER_HOST, OWNER_PID, configure, fail_abandoned_runs, owner_tags

    configure()
    client = mlflow.MlflowClient()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = dead.stdout.strip()
    parent = client.create_run(mlflow.get_experiment_by_name("text-classifier-pipeline").experiment_id,
                               tags={**owner_tags(), OWNER_PID: dead_pid}, run_name="pipeline")  # fmt: skip
    child = client.create_run(parent.info.experiment_id, tags={"mlflow.parentRunId": parent.info.run_id})
    alive = client.create_run(parent.info.experiment_id, tags=owner_tags())  # this process: still running
    assert set(fail_abandoned_runs(client)) == {parent.info.run_id, child.info.run_id}
    assert client.get_run(parent.info.run_id).info.status == "FAILED"
    assert client.get_run(child.info.run_id).info.status == "FAILED"
    assert client.get_run(alive.info.run_id).info.status == "RUNNING"
    assert client.get_run(parent.info.run_id).data.tags[OWNER_HOST]


# --- 6. serving: a connection that stops sending is closed -----------------------------------


def test_a_half_sent_request_is_timed_out_and_the_server_keeps_answering():
    import asyncio
    import socket

    import uvicorn
    from fastapi import FastAPI

    from tasks.serve import read_timeout_protocol

    app = FastAPI()

    @app.post("/invocations")
    async def invoke(request: Request):
        return {"bytes": len(await request.body())}

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def scenario():
        config = uvicorn.Config(app, host="127.0.0.1", port=port, http=read_timeout_protocol(0.5), log_level="error")
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.05)
        outcomes = {}
        for name, sent in {"half a header": b"POST /invocations HTTP/1.1\r\nHost: x\r\n",
                           "half a body": b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"in"}.items():  # fmt: skip
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(sent)
            await writer.drain()
            outcomes[name] = await asyncio.wait_for(reader.read(), timeout=10)  # b"": closed by the server
            writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
        outcomes["whole"] = await asyncio.wait_for(reader.read(), timeout=10)
        server.should_exit = True
        await serving
        return outcomes

    outcomes = asyncio.run(scenario())
    assert outcomes["half a header"] == b"" and outcomes["half a body"] == b""
    assert outcomes["whole"].startswith(b"HTTP/1.1 200") and b'{"bytes":2}' in outcomes["whole"]


# --- 1, 2 and 3 through the real pipeline: the flow, DVC and the registry --------------------


@pytest.fixture(scope="module")
def flow_project(tmp_path_factory):
    """A tiny project (its own git repository) after one real flow run: version 1 registered."""
    from .conftest import make_project, run_ok, tiny_frame, tiny_params

    proj = tmp_path_factory.mktemp("faults")
    env = make_project(proj, tiny_params())
    tiny_frame().to_csv(proj / "tiny.csv", index=False)
    run_ok([sys.executable, "-m", "flows.pipeline"], proj, env)
    return proj, env


def _copy_of(flow_project, tmp_path) -> tuple[Path, dict]:
    """The built project copied, so a test may break it without touching the others."""
    import shutil

    proj, env = flow_project
    copy = tmp_path / "proj"
    shutil.copytree(proj, copy, symlinks=True)
    return copy, {**env, "PREFECT_HOME": str(copy / ".prefect"), "PYTHONPATH": str(copy)}


def _registry_of(proj: Path):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{proj / 'mlflow.db'}")


@pytest.mark.slow
def test_diverged_finetuning_fails_dvc_repro_and_registers_nothing(flow_project, tmp_path):
    proj, env = _copy_of(flow_project, tmp_path)
    raw = yaml.safe_load((proj / "params.yaml").read_text())
    raw["finetune"]["lr"] = 10000.0
    (proj / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    before = (proj / "checkpoints/finetuned/model.safetensors").read_bytes()
    done = subprocess.run(["dvc", "repro"], cwd=proj, env=env, capture_output=True, text=True, timeout=600)
    said = done.stdout + done.stderr
    assert done.returncode != 0 and "error: training diverged at step" in said, said[-3000:]
    assert "Traceback" not in said
    assert (proj / "checkpoints/finetuned/model.safetensors").read_bytes() == before
    versions = _registry_of(proj).search_model_versions("name = 'text-classifier'")
    assert [str(v.version) for v in versions] == ["1"]


@pytest.mark.slow
def test_a_lost_registry_is_registered_again_by_the_next_run(flow_project, tmp_path):
    from .conftest import run_ok

    proj, env = _copy_of(flow_project, tmp_path)
    (proj / "mlflow.db").unlink()
    out = run_ok([sys.executable, "-m", "flows.pipeline"], proj, env).stdout
    [version] = _registry_of(proj).search_model_versions("name = 'text-classifier'")
    assert version.tags[REGISTRATION_TAG] == "complete" and "registered     text-classifier version 1" in out
    from models.checksum import file_sha256

    assert version.tags["weights_sha256"] == file_sha256(proj / "checkpoints/finetuned/model.safetensors")


@pytest.mark.slow
def test_a_killed_flow_leaves_no_stage_process_or_server_running(flow_project, tmp_path):
    import signal

    proj, env = _copy_of(flow_project, tmp_path)
    raw = yaml.safe_load((proj / "params.yaml").read_text())
    raw["pretrain"].update(max_steps=100_000, checkpoint_every=50)  # long enough to be killed in the middle
    (proj / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    flow = subprocess.Popen([sys.executable, "-m", "flows.pipeline"], cwd=proj, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    def in_project() -> set[int]:
        pids = set()
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and int(entry.name) != flow.pid and Path(entry, "cwd").resolve() == proj:
                    pids.add(int(entry.name))
            except OSError:
                continue
        return pids

    def training() -> bool:
        return any("tasks.pretrain" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")
                   for p in in_project() if Path(f"/proc/{p}/cmdline").exists())  # fmt: skip

    assert _wait_for(training, 300), "pretraining never started"
    assert _wait_for(lambda: (proj / "checkpoints/.pretrain-resume/checkpoint.json").exists(), 120)
    os.kill(flow.pid, signal.SIGKILL)
    flow.wait()
    assert _wait_for(lambda: not in_project(), 60), f"left running: {in_project()}"


@pytest.mark.slow
def test_a_flow_meeting_another_dvc_in_the_workspace_says_so(flow_project, tmp_path):
    """Another DVC command holds the workspace (as `dvc repro` in a second shell does): the
    flow's failure carries DVC's lock error and what to do, not "its error is printed above"."""
    proj, env = _copy_of(flow_project, tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "from dvc.repo import Repo; r = Repo('.'); r.lock.lock(); print('locked', flush=True); "
         "import time; time.sleep(600)"],
        cwd=proj, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        done = subprocess.run([sys.executable, "-m", "flows.pipeline"], cwd=proj, env=env, capture_output=True,
                              text=True, timeout=600)  # fmt: skip
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 1
    [error] = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert "Unable to acquire lock" in error and "another DVC command is using this workspace" in error, error
    assert "printed above" not in error


def test_the_reaper_lets_go_of_a_flow_that_exited_normally():
    """Run with captured output, as tests and schedulers run the flow: the reaper shares the
    stderr pipe, and must end when the flow exits (a zombie counts as gone), or the caller,
    waiting for the pipe to close before it reaps the flow, would wait forever."""
    code = "from flows.runtime import reap_on_exit; reap_on_exit(); print('done')"
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "done"
