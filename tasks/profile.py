"""Switch params.yaml to a params profile from profiles/.

    python -m tasks.profile sst2      # or: make run PROFILE=sst2

A profile names the sections that describe a dataset (or a search's tuned knobs). `ingest`
is replaced whole (a file layout never mixes with the previous one); other sections are
updated key by key, so knobs the profile does not mention keep their values. Comments in
params.yaml survive, and the result is checked against the typed config before it is written.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tasks.lib import catalog, params_file
from tasks.lib.common import StageError, run_stage


def available(profiles_dir: Path = catalog.PROFILES) -> list[str]:
    return sorted(p.stem for p in profiles_dir.glob("*.yaml"))


def apply_profile(name: str, params: Path = catalog.PARAMS, profiles_dir: Path = catalog.PROFILES) -> dict:
    # A name, not a path: `../../x` must not apply a file from outside profiles/.
    if name not in available(profiles_dir):
        raise StageError(
            f"no profile '{name[:80]}' in {profiles_dir}/; available: {', '.join(available(profiles_dir)) or 'none'}"
        )
    source = profiles_dir / f"{name}.yaml"
    return params_file.merge(params_file.read(source), params)


def main() -> None:
    if len(sys.argv) != 2:
        raise StageError(f"usage: python -m tasks.profile NAME   (one of: {', '.join(available())})")
    apply_profile(sys.argv[1])
    print(f"params.yaml now uses profile '{sys.argv[1]}' ({catalog.PROFILES}/{sys.argv[1]}.yaml)")


if __name__ == "__main__":
    run_stage(main)
