"""The CPU priority of the programs the local backend runs to copy, start and remove instances
(``cp`` of the template, ``initdb``, ``pg_ctl``, ``rm``): below the API that answers for them.

A create taken from a warm pool needs a few milliseconds of CPU, but on a busy host it waits for a
core behind the bulk work of other instances: copies of the template, and removals of thousands of
files, whose kernel time was the API's own while its threads did them. A lower priority (``nice``)
lets the API's threads go first. Nice alone is not enough where the kernel groups tasks by session
(autogroup, ``/proc/sys/kernel/sched_autogroup_enabled``): every session then gets an equal share,
and each of these programs runs in a session of its own (see server_processes), so each alone would
weigh as much as the whole API. Their session's group gets the same nice value through
``/proc/<pid>/autogroup``.

The instances' servers keep the API's priority: their queries are the tenants' work. Only lowering
is done: it needs no privilege, and the API keeps whatever priority it was given.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

PROC = Path("/proc")


def lowered(argv: list, nice: int) -> list:
    """``argv`` run at ``nice`` (a program it starts inherits it)."""
    return ["nice", "-n", str(nice), *argv] if nice > 0 else argv


def lower_session(pid: int, nice: int) -> None:
    """Give the session group of ``pid``, a session leader, the weight of ``nice``; nothing where
    the kernel has no autogroups or the process is gone."""
    if nice <= 0:
        return
    try:
        (PROC / str(pid) / "autogroup").write_text(f"{nice}\n")
    except FileNotFoundError:
        pass  # no autogroups in this kernel, or the process ended already
    except OSError as e:
        log.debug("could not lower the CPU priority of session %s: %s", pid, e)
