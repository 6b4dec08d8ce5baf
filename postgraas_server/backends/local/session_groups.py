"""The kernel's session groups (autogroup): where they are on, every session gets an equal share of
the CPU whatever the nice values in it, so a program in a session of its own weighs as much as the
whole API (see ServerPrograms.run).

A session's group can be given a nice value of its own (``/proc/<pid>/autogroup``), but without
CAP_SYS_ADMIN the kernel refuses a write made within 0.1 s of any other one, on the whole host: a
busy server could not count on it. So a program gets a session (and a group) of its own, weighted
down, only where this process holds that capability; elsewhere it stays in the API's session.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

log = logging.getLogger(__name__)

PROC = Path("/proc")
CAP_SYS_ADMIN = 21


@functools.cache
def weighable() -> bool:
    """Whether the kernel has session groups and this process may give each its own weight."""
    try:
        if not (PROC / "self" / "autogroup").exists():
            return False
        for line in (PROC / "self" / "status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_SYS_ADMIN & 1)
    except (OSError, ValueError):
        pass
    return False


def lower(pid: int, nice: int) -> None:
    """Give the session group of ``pid``, a session leader, the weight of ``nice``."""
    try:
        (PROC / str(pid) / "autogroup").write_text(f"{nice}\n")
    except OSError as e:
        # Gone already, or refused: it then weighs as much as any session, and no more.
        log.debug("could not lower the CPU weight of session %s: %s", pid, e)
