"""Ending the processes that work in a directory, found by the paths on their command lines.

A local instance's programs (``cp`` of the template, ``pg_ctl``, the ``sh`` that ``pg_ctl start``
runs, ``postgres``) run in sessions of their own, so they outlive the server that started them.
When that server dies mid-create, a ``pg_ctl start`` can still be on its way: once the reaper has
looked for ``postmaster.pid``, or while it removes the directory, a postgres comes up in it and
keeps files there. Each of these programs names the instance's directory in its arguments, so
that is how they are found, among the programs the caller names (an admin's ``tail -f`` of a log
there is left alone); a postgres child names only its role, and ends with its postmaster.

Linux only (``/proc``), as the local backend is.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

from ..errors import BackendError

PROC = Path("/proc")
POLL_S = 0.02


def processes_working_in(directory: Path, programs: frozenset[str]) -> dict[int, str]:
    """``{pid: program}`` of the ``programs`` (names as in ``/proc/<pid>/comm``) whose arguments
    name ``directory`` or a path under it."""
    # The path, not followed by a character that would make it another path ("…/1-ab" vs "…/1-abc").
    naming = re.compile(re.escape(os.fsencode(directory)) + rb"(?![\w.-])")
    found = {}
    try:
        entries = list(os.scandir(PROC))
    except FileNotFoundError:
        return {}
    for entry in entries:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            comm = (PROC / entry.name / "comm").read_text().strip()
            if comm in programs and naming.search((PROC / entry.name / "cmdline").read_bytes()):
                found[int(entry.name)] = comm
        except OSError:
            continue  # gone meanwhile
    return found


def end_processes_working_in(directory: Path, programs: frozenset[str], grace: float = 2.0) -> list[int]:
    """End the ``programs`` working in ``directory``; the pids it signalled.

    A postgres gets SIGQUIT first (an immediate shutdown that still frees its shared memory); what
    is left after ``grace`` seconds, and every other program at once, gets SIGKILL. Raises
    BackendError if any of them outlives twice ``grace``.
    """
    signalled: list[int] = []
    started = time.monotonic()
    while found := processes_working_in(directory, programs):
        waited = time.monotonic() - started
        if waited > 2 * grace:
            raise BackendError(f"The processes {sorted(found)} working in {directory} did not end.")
        for pid, comm in found.items():
            polite = comm == "postgres" and waited < grace
            try:
                os.kill(pid, signal.SIGQUIT if polite else signal.SIGKILL)
            except ProcessLookupError:
                continue
            if pid not in signalled:
                signalled.append(pid)
        time.sleep(POLL_S)
    return signalled
