"""The processes a flow started die with it, however it ends.

    python -m flows.reaper PID START  # started by flows.runtime.reap_on_exit(), not by hand

A flow starts stage processes (through DVC, some with pool workers or torchrun ranks) and
Prefect's ephemeral API server. `kill -9` of the flow leaves them all running: re-parented,
a pretraining goes on training after the workspace lock is released and the server keeps
its port. This watchdog, in a session of its own so a signal to the flow's group spares it,
records the flow's descendants every second; once the flow is gone it terminates those
still running (SIGTERM, then SIGKILL after a grace period) and exits.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

POLL_S = 1.0
GRACE_S = 5.0


def children_map() -> dict[int, list[int]]:
    """Parent pid -> child pids, from /proc (Linux)."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))):
            tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def descendants(pid: int, tree: dict[int, list[int]]) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None."""
    try:
        # comm may hold spaces and parentheses: the fields after the last ')' are fixed.
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_time(pid: int) -> str | None:
    """A process's start time (clock ticks since boot): tells a pid apart from a later reuse."""
    fields = _stat(pid)
    return fields[19] if fields else None


def alive(pid: int, started: str | None) -> bool:
    """Running as the process that started at `started`. A zombie is dead: its parent may be
    waiting for the pipes this watchdog shares before it reaps the exit."""
    fields = _stat(pid)
    return started is not None and fields is not None and fields[19] == started and fields[0] not in "ZX"


def terminate(pids: dict[int, str | None]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        living = {p: s for p, s in pids.items() if alive(p, s)}
        for pid in living:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + GRACE_S
        while living and time.monotonic() < deadline:
            living = {p: s for p, s in living.items() if alive(p, s)}
            time.sleep(0.1)
        if not living:
            return


def watch(flow_pid: int, flow_started: str) -> None:
    seen: dict[int, str | None] = {}
    me = os.getpid()
    ready = False
    while alive(flow_pid, flow_started):
        for pid in descendants(flow_pid, children_map()) - {me} - seen.keys():
            seen[pid] = start_time(pid)
        if not ready:  # the flow waits for this line: what it started so far is on record
            print("ready", flush=True)
            sys.stdout.close()
            ready = True
        time.sleep(POLL_S)
    # Re-parented children of the dead flow, and whatever they started since.
    tree = children_map()
    for pid in list(seen):
        for child in descendants(pid, tree) - {me} - seen.keys():
            seen[child] = start_time(child)
    left = {p: s for p, s in seen.items() if alive(p, s)}
    if left:
        print(f"reaper: the flow (pid {flow_pid}) is gone; stopping the {len(left)} process(es) it left running",
              file=sys.stderr)  # fmt: skip
        terminate(left)


if __name__ == "__main__":
    watch(int(sys.argv[1]), sys.argv[2])
