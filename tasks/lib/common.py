"""Small helpers every stage shares: atomic outputs, seeding, device choice, JSON I/O."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

# Offline, quiet defaults for every stage process; a user's own setting wins.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "TOKENIZERS_PARALLELISM": "false",
}


def apply_env_defaults() -> None:
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


class StageError(RuntimeError):
    """Bad input or a failed gate: reported as one paragraph, without a traceback."""


MESSAGE_LIMIT = 2000  # characters of an error message: one screen, whatever bad input it quotes


def excerpt(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """`text` cut to about `limit` characters, its start and end kept and the cut said."""
    if len(text) <= limit:
        return text
    keep = max(limit // 2 - 20, 1)
    return f"{text[:keep]} … [{len(text) - 2 * keep:,} characters cut] … {text[-keep:]}"


def run_stage(main) -> None:
    """Entry point wrapper: StageError and ParamsError exit 1 with their message only, cut to
    a screen (a message may quote bad input, and bad input can be a 50 MB line)."""
    from tasks.lib.config import ParamsError

    apply_env_defaults()  # `dvc repro` runs stages straight from a shell, not via the flow
    try:
        main()
    except (StageError, ParamsError) as err:
        print(f"error: {excerpt(str(err))}", file=sys.stderr)
        raise SystemExit(1) from None


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a scratch folder that replaces `final` only if the block succeeds.

    A failed or killed stage therefore leaves the previous good output in place.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clear_dead_runs(final)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def clear_dead_runs(final: Path) -> None:
    """What a killed process left beside `final`: its scratch folder goes; a previous output
    it had moved aside but not yet replaced goes back into place (so a kill between the two
    renames of `atomic_dir` loses nothing)."""
    for leftover in final.parent.glob(f".{final.name}.*-*"):
        kind, _, pid = leftover.name.removeprefix(f".{final.name}.").partition("-")
        if kind not in ("tmp", "old") or not pid.isdigit() or pid_alive(int(pid)):
            continue
        if kind == "old" and not final.exists():
            with contextlib.suppress(FileNotFoundError):  # another rank of the same run got there first
                leftover.rename(final)
        else:
            shutil.rmtree(leftover, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def file_lock(path: Path, waiting: str, timeout_s: float | None = None, say=print) -> Iterator[None]:
    """An exclusive lock on `path` (fcntl: released by the OS if the holder dies). When it is
    held, say `waiting` once and wait, at most `timeout_s` seconds (None: as long as it takes)."""
    import fcntl
    import time

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(waiting)
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if deadline is not None and time.monotonic() > deadline:
                        raise TimeoutError(f"the lock {path} was held for over {timeout_s:.0f} s") from None
                    time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_json_atomic(path: Path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(preference: str):
    """'auto' takes CUDA when present, else CPU; an explicit 'cuda' without a GPU is an error."""
    import torch

    if preference == "cuda" and not torch.cuda.is_available():
        raise StageError("device 'cuda' was asked for in params.yaml but no CUDA GPU is visible; use 'auto' or 'cpu'")
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(preference)
