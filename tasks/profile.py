"""Switch params.yaml to a dataset profile from profiles/.

    python -m tasks.profile sst2      # or: make run PROFILE=sst2

A profile names the sections that describe a dataset. `ingest` is replaced whole (a file
layout never mixes with the previous one); other sections are updated key by key, so
knobs the profile does not mention keep their values. Comments in params.yaml survive,
and the result is checked against the typed config before it is written.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

from ruamel.yaml import YAML

from tasks.common import StageError, run_stage
from tasks.config import PARAMS_FILE, parse_params

PROFILES_DIR = Path("profiles")
REPLACED_WHOLE = {"ingest"}


def available() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def apply_profile(name: str, params_file: Path = PARAMS_FILE, profiles_dir: Path = PROFILES_DIR) -> dict:
    source = profiles_dir / f"{name}.yaml"
    if not source.exists():
        raise StageError(f"no profile '{name}' in {profiles_dir}/; available: {', '.join(available()) or 'none'}")
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    params = yaml.load(params_file.read_text())
    profile = yaml.load(source.read_text())
    for section, values in profile.items():
        if section in REPLACED_WHOLE or not isinstance(values, dict) or section not in params:
            params[section] = values
        else:
            params[section].update(values)
    parse_params(_plain(params), params_file)  # refuse to write params that would not load
    out = io.StringIO()
    yaml.dump(params, out)
    params_file.write_text(out.getvalue())
    return _plain(params)


def _plain(node):
    """ruamel's commented containers as plain dicts and lists, for pydantic."""
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def main() -> None:
    if len(sys.argv) != 2:
        raise StageError(f"usage: python -m tasks.profile NAME   (one of: {', '.join(available())})")
    apply_profile(sys.argv[1])
    print(f"params.yaml now uses profile '{sys.argv[1]}' (profiles/{sys.argv[1]}.yaml)")


if __name__ == "__main__":
    run_stage(main)
