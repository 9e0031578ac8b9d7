"""Each fact is written once: paths in the catalog, defaults in params.yaml, one writer of
params.yaml. These read the project's own source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tasks.lib import catalog
from tasks.lib.config import IngestParams, Params

from .conftest import ROOT

CODE = [p for d in ("tasks", "flows", "models", "bench") for p in (ROOT / d).rglob("*.py")]
CATALOG_FILE = ROOT / "tasks" / "lib" / "catalog.py"
PATHS = {str(v) for v in vars(catalog).values() if isinstance(v, Path) and "/" in str(v) or str(v).endswith((".yaml", ".lock"))}
NAMES = {v for k, v in vars(catalog).items() if k.isupper() and isinstance(v, str) and "." in v}


def string_constants(path: Path):
    """Every string literal of a file except docstrings (prose may name a path)."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


@pytest.mark.parametrize("path", CODE, ids=lambda p: str(p.relative_to(ROOT)))
def test_artifact_paths_are_written_only_in_the_catalog(path):
    if path == CATALOG_FILE:
        return
    found = [f"line {n}: {s!r}" for n, s in string_constants(path)
             if s in PATHS or s in NAMES or any(s.startswith(p + "/") for p in PATHS)]  # fmt: skip
    assert not found, f"{path.relative_to(ROOT)} spells catalog paths itself: {found}"


def test_only_params_file_writes_params_yaml():
    writers = []
    for path in CODE:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                "write_text", "write_bytes", "replace", "rename"):  # fmt: skip
                target = ast.unparse(node.func.value)
                if "PARAMS" in target or "params" in target.lower().split("/")[-1]:
                    writers.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
    expected = {"tasks/lib/params_file.py"}
    assert {w.split(":")[0] for w in writers} <= expected, writers


def test_params_yaml_is_the_only_set_of_defaults():
    """Sections other than ingest declare types and bounds only; ingest's layout keys keep
    the readers' defaults, which params.yaml and the profiles never restate."""
    for name, field in Params.model_fields.items():
        section = field.annotation
        assert field.is_required(), f"{name} has a default"
        if section is IngestParams or not hasattr(section, "model_fields"):
            continue
        for sub in [section, *(f.annotation for f in section.model_fields.values() if hasattr(f.annotation, "model_fields"))]:
            optional = [k for k, f in sub.model_fields.items() if not f.is_required()]
            assert not optional, f"{sub.__name__} gives defaults of its own: {optional}"
    defaults = {k: f.default for k, f in IngestParams.model_fields.items() if not f.is_required()}
    for source in [ROOT / "params.yaml", *sorted((ROOT / "profiles").glob("*.yaml"))]:
        ingest = (yaml.safe_load(source.read_text()) or {}).get("ingest", {})
        restated = [k for k, v in ingest.items() if k in defaults and v == defaults[k]]
        assert not restated, f"{source.name} restates the readers' defaults: {restated}"
