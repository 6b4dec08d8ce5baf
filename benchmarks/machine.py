"""The machine's state around a timed path: waiting until it is quiet, and how fast its disk and CPU
are at the moment (for the report's notes)."""

from __future__ import annotations

import hashlib
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

from .infra import REPO_ROOT

# The machine is quiet when, in each of two windows in a row, its block devices wrote less than
# QUIET_BYTES and its CPUs were busy less than QUIET_CPU of the time.
QUIET_BYTES = 1 << 20
QUIET_CPU = 0.3
QUIET_WINDOW_S = 0.25


def settle_machine(max_wait: float = 20.0) -> None:
    """Each path, and each run of one, starts on a quiet machine: what came before left to write
    back or to clean up (20 removed containers the engine still collects, the previous run's
    delete, a pool's refill) would otherwise slow what is timed, on 2 cores. A sync, then a wait
    (``max_wait`` at most) until the block devices stop writing and the CPUs are mostly idle."""
    os.sync()
    deadline = time.monotonic() + max_wait
    quiet, last_bytes, last_cpu = 0, _bytes_written(), _cpu_times()
    while quiet < 2 and time.monotonic() < deadline:
        time.sleep(QUIET_WINDOW_S)
        now_bytes, now_cpu = _bytes_written(), _cpu_times()
        busy = now_cpu[0] - last_cpu[0]
        total = busy + now_cpu[1] - last_cpu[1]
        calm = now_bytes - last_bytes < QUIET_BYTES and (total == 0 or busy / total < QUIET_CPU)
        quiet = quiet + 1 if calm else 0
        last_bytes, last_cpu = now_bytes, now_cpu


def time_file_creates(root: Path, count: int = 500) -> float:
    """Seconds to create ``count`` small files in ``root`` (then removed, untimed): how fast this
    disk's file system makes files now. A local instance is a copy of about 1,270 files, so this moves the
    local backend's cold path; on a virtual disk it varies with what was written before."""
    scratch = root / f"file-probe-{secrets.token_hex(3)}"
    scratch.mkdir()
    try:
        started = time.perf_counter()
        for n in range(count):
            (scratch / str(n)).write_bytes(b"x")
        return time.perf_counter() - started
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def time_cpu(rounds: int = 20) -> float:
    """Seconds one PBKDF2-SHA256 of 4096 iterations takes now (median of ``rounds``): one SCRAM
    derivation, a yardstick of how fast this shared machine's CPU is at the moment."""
    taken = []
    for _ in range(rounds):
        started = time.perf_counter()
        hashlib.pbkdf2_hmac("sha256", b"yardstick", b"0123456789abcdef", 4096)
        taken.append(time.perf_counter() - started)
    return statistics.median(taken)


def _cpu_times() -> tuple[int, int]:
    """(busy, idle) jiffies of all CPUs since boot, from /proc/stat; (0, 0) where unreadable."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, idle


def _bytes_written() -> int:
    """Sectors written by whole block devices since boot (/proc/diskstats), in bytes; 0 where unreadable."""
    total = 0
    try:
        lines = Path("/proc/diskstats").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        fields = line.split()
        # Whole devices only (vda, sda, nvme0n1), not their partitions; no loop or ram devices.
        if len(fields) > 9 and not fields[2].startswith(("loop", "ram", "dm-")) and not _is_partition(fields[2]):
            total += int(fields[9]) * 512
    return total


def _is_partition(name: str) -> bool:
    return Path(f"/sys/class/block/{name}/partition").exists()


def describe(docker_version: str | None, bin_dir: Path | None, image: str) -> dict:
    """What the run ran on, for its JSON: cores, memory, commit, versions."""

    def output(argv: list) -> str | None:
        try:
            return subprocess.run(argv, capture_output=True, text=True, cwd=REPO_ROOT, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    memory = next((line.split()[1] for line in Path("/proc/meminfo").open() if line.startswith("MemTotal")), None)
    return {
        "cpu_count": os.cpu_count(),
        "memory_gib": round(int(memory) / 2**20, 1) if memory else None,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": output(["git", "rev-parse", "HEAD"]),
        "git_dirty": bool(output(["git", "status", "--porcelain"])),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "docker": docker_version,
        "postgres": output([bin_dir / "postgres", "--version"]) if bin_dir else None,
        "image": image,
    }
