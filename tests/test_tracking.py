import mlflow

from tasks.lib.tracking import PARENT_ENV, configure, flatten, stage_run


def test_flatten_nested_params():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}


def test_stage_run_nests_under_the_pipeline_run(workdir, monkeypatch):
    configure()
    with mlflow.start_run(run_name="pipeline") as parent:
        parent_id = parent.info.run_id
    monkeypatch.setenv(PARENT_ENV, parent_id)
    with stage_run("ingest", {"ingest": {"limit_rows": 5}}) as run:
        child_id = run.info.run_id
    child = mlflow.get_run(child_id)
    assert child.data.tags["mlflow.parentRunId"] == parent_id
    assert child.data.tags["pipeline.stage"] == "ingest" and child.data.params["ingest.limit_rows"] == "5"


def test_artifacts_land_beside_the_sqlite_store(workdir):
    exp_id = configure()
    location = mlflow.get_experiment(exp_id).artifact_location
    assert location == (workdir / "mlartifacts").as_uri()
