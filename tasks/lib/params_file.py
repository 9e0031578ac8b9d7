"""The one writer of params.yaml. Every change (a profile, a search's knobs, an experiment's
starting point, the params a training deployment receives) goes through `write`, which
keeps comments and key order (ruamel round trip) and refuses params that would not load."""

from __future__ import annotations

import io
import os
from pathlib import Path

from ruamel.yaml import YAML

from tasks.lib.catalog import PARAMS
from tasks.lib.config import parse_params

REPLACED_WHOLE = {"ingest"}  # a file layout never mixes with the previous dataset's


def _yaml() -> YAML:
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    return yaml


def read(path: Path = PARAMS):
    """params.yaml as a commented mapping (what `write` takes back)."""
    return _yaml().load(Path(path).read_text())


def plain(node):
    """ruamel's commented containers as plain dicts and lists."""
    if isinstance(node, dict):
        return {str(k): plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [plain(v) for v in node]
    return node


def write(document, path: Path = PARAMS) -> dict:
    """Validate `document` (a mapping, or YAML text) and replace `path` with it atomically."""
    if isinstance(document, str):
        document = _yaml().load(document)
    parse_params(plain(document), Path(path))  # raises ParamsError before anything is written
    out = io.StringIO()
    _yaml().dump(document, out)
    tmp = Path(path).with_name(f".{Path(path).name}.tmp-{os.getpid()}")
    tmp.write_text(out.getvalue())
    tmp.replace(path)
    return plain(document)


def merge(overlay: dict, path: Path = PARAMS) -> dict:
    """params.yaml with `overlay`'s sections applied: `ingest` replaced whole, other sections
    updated key by key (knobs the overlay does not name keep their values)."""
    document = read(path)
    for section, values in overlay.items():
        if section in REPLACED_WHOLE or not isinstance(values, dict) or section not in document:
            document[section] = values
        else:
            document[section].update(values)
    return write(document, path)
