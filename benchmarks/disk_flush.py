"""How long this disk takes to flush one small write, idle and while a command runs (a soak, say):
what every durable commit waits for, a warm create's hand-over among them.

Writes 8 KiB into a 1 MiB file under ``--dir`` and times its ``fdatasync``, every ``--every``
seconds: first ``--idle`` seconds with nothing else started, then for as long as ``--during`` runs
(its output goes to a file beside the figures). Prints p50, p95, p99 and max of each. It measures, it
does not assert: the exit code is 0 whatever the figures, 1 when the command failed.

    .venv/bin/python benchmarks/disk_flush.py [--dir /var/tmp] [--idle 20] \
        [--during ".venv/bin/python benchmarks/soak.py --cycles 600"]
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):
    # Run as a file: make the repository root importable, so that `benchmarks.*` resolves.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.infra import REPO_ROOT, say  # noqa: E402
from benchmarks.report import aligned, seconds, summarize  # noqa: E402

BLOCK = 8192
FILE_SIZE = 1 << 20


def flush_times(fd: int, keep_going: Callable[[], bool], every: float) -> list[float]:
    """Seconds each 8 KiB write's fdatasync took, while ``keep_going()``: overwrites of blocks already
    on disk, as a WAL segment's are, so only the data and the device's cache flush are timed."""
    samples, offset = [], 0
    while keep_going():
        os.pwrite(fd, os.urandom(BLOCK), offset)
        offset = (offset + BLOCK) % FILE_SIZE
        started = time.perf_counter()
        os.fdatasync(fd)
        samples.append(time.perf_counter() - started)
        time.sleep(every)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default="/var/tmp", help="where the probe's file goes (default /var/tmp)")
    parser.add_argument("--idle", type=float, default=20, help="seconds timed before the command starts")
    parser.add_argument("--every", type=float, default=0.1, help="seconds between flushes (default 0.1)")
    parser.add_argument("--during", help="a command to time the flushes under, run from the repository root")
    args = parser.parse_args()

    rows, failed = [], False
    with tempfile.NamedTemporaryFile(dir=args.dir, prefix="disk-flush-") as probe:
        fd = probe.fileno()
        os.write(fd, b"\0" * FILE_SIZE)
        os.fsync(fd)
        until = time.monotonic() + args.idle
        rows.append(("idle", summarize(flush_times(fd, lambda: time.monotonic() < until, args.every))))
        if args.during:
            log_path = REPO_ROOT / "benchmarks" / "results" / "disk-flush-command.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            say(f"running {args.during!r} (output: {log_path})")
            with log_path.open("w") as log:
                command = subprocess.Popen(shlex.split(args.during), cwd=REPO_ROOT, stdout=log, stderr=log)
                try:
                    samples = flush_times(fd, lambda: command.poll() is None, args.every)
                finally:
                    if command.poll() is None:
                        command.terminate()
                    command.wait()
            failed = command.returncode != 0
            rows.append((f"during the command (exit {command.returncode})", summarize(samples)))

    header = ["8 KiB fdatasync", "p50", "p95", "p99", "max", "n"]
    cells = [[name, *(seconds(s[k]) for k in ("p50", "p95", "p99", "max")), str(s["n"])] for name, s in rows]
    print("\n".join(aligned(header, cells, right={1, 2, 3, 4, 5})))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
