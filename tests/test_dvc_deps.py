"""dvc.yaml and dvc.lock say the truth about the code: every stage depends on every project
module it imports (directly or through other project modules), and the committed dvc.lock
records the code and params of this tree."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tasks.lib import catalog

from .conftest import ROOT, make_project, run_ok, tiny_frame, tiny_params

PACKAGES = ("tasks", "models", "flows")


def module_file(name: str) -> Path | None:
    """The project file of a dotted module name (a package's __init__.py), or None."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function (both run in a stage)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # `from pkg import module`
    return found


def closure(path: Path) -> set[Path]:
    """The project files `path` needs: itself, what it imports, their packages' __init__ files."""
    seen, todo = set(), [path]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        for name in imported_modules(f):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
                target = module_file(".".join(parts[:i]))
                if target is not None and target not in seen:
                    todo.append(target)
    return {p.relative_to(ROOT) for p in seen}


def stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def covered(path: Path, deps: list[str]) -> bool:
    return any(path == Path(d) or Path(d) in path.parents for d in deps)


@pytest.mark.parametrize("stage", list(stages()))
def test_every_stage_depends_on_every_module_it_imports(stage):
    spec = stages()[stage]
    module = spec["cmd"].split("-m ", 1)[1].split()[0]
    deps = [d for d in spec["deps"] if isinstance(d, str)]
    missing = sorted(str(p) for p in closure(module_file(module)) if not covered(p, deps))
    assert not missing, f"dvc.yaml: stage '{stage}' imports {missing} but does not list them in its deps"


def test_the_closure_follows_imports_inside_functions():
    # evaluate imports finetune (and through it models/) only inside a function.
    found = closure(ROOT / "tasks" / "evaluate.py")
    assert Path("tasks/finetune.py") in found and Path("models/transformer.py") in found


def test_stage_outputs_are_the_catalogs_paths():
    catalog_paths = {str(v) for v in vars(catalog).values() if isinstance(v, Path)}
    for name, spec in stages().items():
        for out in [*spec.get("outs", []), *spec.get("metrics", [])]:
            path = next(iter(out)) if isinstance(out, dict) else out
            assert path in catalog_paths, f"dvc.yaml: {name} writes {path}, which tasks/lib/catalog.py does not name"


def test_committed_lock_matches_the_code_and_params():
    """Code hashes and params in dvc.lock are this tree's; data and output hashes may differ."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        stale = []
        for stage in repo.index.stages:
            for dep in stage.deps:
                rel = Path(dep.fs_path).relative_to(ROOT) if Path(dep.fs_path).is_absolute() else Path(dep.def_path)
                if dep.def_path == str(catalog.PARAMS) or (hasattr(dep, "params") and dep.params is not None):
                    changed = dep.workspace_status()
                    if changed:
                        stale.append(f"{stage.addressing}: params {changed}")
                elif rel.parts[0] in PACKAGES and dep.changed_checksum():
                    stale.append(f"{stage.addressing}: {rel}")
    assert not stale, (
        "dvc.lock is stale (run `make run` and commit dvc.lock with the code): " + "; ".join(stale)
    )


@pytest.mark.slow
def test_editing_a_shared_module_reruns_the_stages_that_import_it(tmp_path):
    """A quarantine rule lives in tasks/lib/contract.py: editing it re-runs validate, and
    ingest, which does not import it, stays as it was."""
    env = make_project(tmp_path, tiny_params())
    tiny_frame().to_csv(tmp_path / "tiny.csv", index=False)
    run_ok(["dvc", "repro", "validate"], tmp_path, env)
    contract = tmp_path / "tasks" / "lib" / "contract.py"
    contract.write_text(contract.read_text() + "\n# a new quarantine rule would go here\n")
    out = run_ok(["dvc", "repro", "validate"], tmp_path, env).stdout
    assert "Stage 'ingest' didn't change" in out
    assert "Running stage 'validate'" in out
