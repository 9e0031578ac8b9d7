"""Set when a flow's entry point starts, never at import: offline, quiet defaults for this
process, its stage subprocesses and Prefect's ephemeral server. A user's own setting wins."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from tasks.lib.common import apply_env_defaults


@contextlib.contextmanager
def offline_defaults() -> Iterator[None]:
    # Prefect reads its environment once, at import: its own keys go in as settings, which the
    # ephemeral server process inherits, rather than as variables set too late to count.
    from prefect.settings import (
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    apply_env_defaults()
    updates = {
        setting: os.environ[setting.name]
        for setting in (PREFECT_SERVER_ANALYTICS_ENABLED, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)
    }
    with temporary_settings(updates=updates):
        yield


def reap_on_exit() -> None:
    """Start the watchdog that stops this flow's processes when it dies (flows/reaper.py), and
    wait until it watches: a flow killed before then would leave its children unseen."""
    import subprocess
    import sys

    from flows.reaper import start_time

    watchdog = subprocess.Popen(
        [sys.executable, "-m", "flows.reaper", str(os.getpid()), str(start_time(os.getpid()))],
        start_new_session=True,  # a Ctrl-C or kill of the flow's process group spares it
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_root(), os.environ.get("PYTHONPATH")]))},
    )
    watchdog.stdout.readline()  # "ready" (or end of file, should it fail to start)
    watchdog.stdout.close()


def _root() -> str:
    from pathlib import Path

    return str(Path(__file__).resolve().parents[1])
