"""Finding and ending the processes that work in a directory, with real processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from postgraas_server.backends.local.directory_processes import end_processes_working_in, processes_working_in

# Exits 3 on SIGQUIT, as a postgres ends its immediate shutdown on its own.
QUITS = "signal.signal(signal.SIGQUIT, lambda *_: sys.exit(3))"
# Ignores SIGQUIT, as a postgres that is stuck would.
STUCK = "signal.signal(signal.SIGQUIT, signal.SIG_IGN)"


@pytest.fixture
def spawn(tmp_path) -> Iterator:
    started: list[subprocess.Popen] = []

    def _spawn(program: str, on_quit: str, *args: Path, announce: str = "'ready'") -> subprocess.Popen:
        """Python under the name ``program`` (a link: /proc/<pid>/comm shows it), with ``args``;
        returns once its SIGQUIT handler is set and it printed ``announce`` (``.announced``)."""
        link = tmp_path / "bin" / program
        link.parent.mkdir(exist_ok=True)
        if not link.exists():
            link.symlink_to(sys.executable)
        code = f"import signal, subprocess, sys, time; {on_quit}; print({announce}, flush=True); time.sleep(60)"
        process = subprocess.Popen([link, "-c", code, *map(str, args)], stdout=subprocess.PIPE, text=True)
        started.append(process)
        process.announced = process.stdout.readline().strip()
        assert process.announced, f"{program} did not start"
        return process

    yield _spawn
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stdout.close()


def test_only_the_named_programs_working_in_the_directory_are_found(tmp_path, spawn):
    home = tmp_path / "1-ab"
    inside = spawn("postgres", QUITS, "-D", home / "data")
    itself = spawn("pg_ctl", QUITS, home)
    # Another instance's directory, whose name starts with this one's.
    other = spawn("postgres", QUITS, "-D", tmp_path / "1-abc" / "data")
    # A program not named, reading a log there.
    reader = spawn("tail", QUITS, home / "postgres.log")

    found = processes_working_in(home, frozenset({"postgres", "pg_ctl"}))

    assert found == {inside.pid: "postgres", itself.pid: "pg_ctl"}
    assert other.pid not in processes_working_in(home, frozenset({"postgres"}))
    assert reader.pid in processes_working_in(home, frozenset({"tail"}))


def test_a_postgres_is_asked_to_quit_and_the_others_are_killed(tmp_path, spawn):
    home = tmp_path / "1-ab"
    postgres = spawn("postgres", QUITS, "-D", home / "data")
    pg_ctl = spawn("pg_ctl", QUITS, "-D", home / "data", "start")
    other = spawn("postgres", QUITS, "-D", tmp_path / "1-abc" / "data")

    ended = end_processes_working_in(home, frozenset({"postgres", "pg_ctl"}), grace=5)

    assert sorted(ended) == sorted([postgres.pid, pg_ctl.pid])
    assert postgres.wait(5) == 3  # it quit on SIGQUIT
    assert pg_ctl.wait(5) == -signal.SIGKILL
    assert other.poll() is None
    assert processes_working_in(home, frozenset({"postgres", "pg_ctl"})) == {}


def test_a_postgres_that_does_not_quit_is_killed_after_the_grace(tmp_path, spawn):
    home = tmp_path / "1-ab"
    stuck = spawn("postgres", STUCK, "-D", home / "data")

    assert end_processes_working_in(home, frozenset({"postgres"}), grace=0.3) == [stuck.pid]
    assert stuck.wait(5) == -signal.SIGKILL


def test_a_postgres_killed_after_the_grace_takes_its_children_along(tmp_path, spawn):
    """A postgres child names only its role, so it is found as the killed postmaster's child."""
    home = tmp_path / "1-ab"
    child = "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])"
    stuck = spawn("postgres", STUCK, "-D", home / "data", announce=f"{child}.pid")
    child_pid = int(stuck.announced)

    ended = end_processes_working_in(home, frozenset({"postgres"}), grace=0.3)

    assert ended == [stuck.pid, child_pid] or ended == [child_pid, stuck.pid]
    assert stuck.wait(5) == -signal.SIGKILL
    deadline = time.monotonic() + 5
    while _alive(child_pid):
        assert time.monotonic() < deadline, "the child outlived its killed postgres"
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    """Running: neither gone nor a zombie (which its new parent may not reap at once)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_with_nothing_working_there_nobody_is_signalled(tmp_path):
    assert end_processes_working_in(tmp_path / "nothing-here", frozenset({"postgres", "sh"})) == []
