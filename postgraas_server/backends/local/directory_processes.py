"""Ending the processes that work in a directory, found by the paths on their command lines.

A local instance's programs (``cp`` of the template, ``pg_ctl``, the ``setpriv`` and ``setsid``
that start ``postgres``) run in process groups of their own, so they outlive the server that
started them.
When that server dies mid-create, a start can still be on its way: once the reaper has
looked for ``postmaster.pid``, or while it removes the directory, a postgres comes up in it and
keeps files there. Each of these programs names the instance's directory in its arguments, so
that is how they are found, among the programs the caller names (an admin's ``tail -f`` of a log
there is left alone) and the processes this server may signal. A postgres child names only its
role: it ends with its postmaster, or is killed with it.

Linux only (``/proc``), as the local backend is.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

from ...errors import BackendError

PROC = Path("/proc")
POLL_S = 0.02


def processes_working_in(directory: Path, programs: frozenset[str]) -> dict[int, str]:
    """``{pid: program}`` of the ``programs`` (names as in ``/proc/<pid>/comm``) whose arguments
    name ``directory`` or a path under it."""
    # The path, not followed by a character that would make it another path ("…/1-ab" vs "…/1-abc").
    naming = re.compile(re.escape(os.fsencode(directory)) + rb"(?![\w.-])")
    found = {}
    for pid in _pids():
        try:
            # Any bytes (a name cut at 15 bytes, mid-character): decoded as file names are.
            comm = os.fsdecode((PROC / str(pid) / "comm").read_bytes().rstrip(b"\n"))
            if comm in programs and naming.search((PROC / str(pid) / "cmdline").read_bytes()):
                found[pid] = comm
        except OSError:
            continue  # gone meanwhile
    return found


def end_processes_working_in(directory: Path, programs: frozenset[str], grace: float = 2.0) -> list[int]:
    """End the ``programs`` working in ``directory``; the pids it signalled.

    A postgres is sent SIGQUIT (an immediate shutdown that still frees its shared memory); one
    still there after ``grace`` seconds is killed with its children, and every other program at
    once. A process this server may not signal is not one of its own, and is left alone. Raises
    BackendError if any of them outlives twice ``grace``.
    """
    sent: dict[int, signal.Signals] = {}  # the last signal each was sent; in the order first sent
    not_ours: set[int] = set()
    started = time.monotonic()
    while True:
        found = processes_working_in(directory, programs)
        for pid in not_ours:
            found.pop(pid, None)
        if not found:
            return list(sent)
        waited = time.monotonic() - started
        if waited > 2 * grace:
            raise BackendError(f"The processes {sorted(found)} working in {directory} did not end.")
        for pid, comm in found.items():
            sig = signal.SIGQUIT if comm == "postgres" and waited < grace else signal.SIGKILL
            if sent.get(pid) == sig:
                continue  # sent once; ending takes a moment
            # A postgres killed takes its children first: once it is gone they are init's, unfound.
            targets = [*_children(pid), pid] if comm == "postgres" and sig == signal.SIGKILL else [pid]
            for target in targets:
                try:
                    os.kill(target, sig)
                except ProcessLookupError:
                    continue
                except PermissionError:
                    not_ours.add(target)
                    continue
                sent[target] = sig
        time.sleep(POLL_S)


def _pids() -> list[int]:
    try:
        return [
            int(entry.name) for entry in os.scandir(PROC) if entry.name.isdigit() and int(entry.name) != os.getpid()
        ]
    except FileNotFoundError:
        return []


def _children(parent: int) -> list[int]:
    children = []
    for pid in _pids():
        try:
            # The fields after the command's name, which may hold spaces and parentheses: state, ppid.
            fields = (PROC / str(pid) / "stat").read_bytes().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == parent:
            children.append(pid)
    return children
