"""The local backend's programs: initdb for the template every instance copies, pg_ctl and postgres.

The postgres processes are started in their own session, so they outlive a server restart and
are found again from the instance's files. The superuser ``postgres`` can only log in through
the instance's private socket (local trust).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import logging
import os
import random
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import psycopg

from ...backend_settings import LocalBackendSettings
from ...errors import BackendError, BackendUnavailable
from ..postgres.client import NotReady
from ..postgres.tenants import OUR_SESSIONS
from . import session_groups
from .data_directories import RunAs
from .directory_processes import end_processes_working_in

log = logging.getLogger(__name__)

SUPERUSER = "postgres"
# The superuser works from template1.
ADMIN_DATABASE = "template1"
# The template holds this database beside initdb's: renamed, it becomes the tenant's, so no CREATE
# DATABASE (a copy and a sync of a whole database) runs on the request path, and "postgres" stays
# for what connects there to create and drop databases (Django's test runner, say).
TENANT_DATABASE = "postgraas_tenant"
# Bump when what the template holds changes: the next create builds a new one.
TEMPLATE_FORMAT = 2
INITDB_OPTIONS = (
    "--auth-local=trust",
    "--auth-host=scram-sha-256",
    "--encoding=UTF8",
    "--locale=C.UTF-8",
    "--no-instructions",
    # 1 MiB WAL segments instead of 16: every instance starts as a copy, so bytes cost time.
    "--wal-segsize=1",
)
# How often a starting server is asked whether it takes connections (pg_ctl -w asks every 100 ms).
START_POLL_S = 0.005
# A WAL segment's file name (timeline, log, segment), as pg_wal holds them beside .history files.
WAL_SEGMENT = re.compile(r"[0-9A-F]{24}")
START_ATTEMPTS = 8
LOG_TAIL_LINES = 20
# pg_controldata's lines (in the C locale run sets): "shut down" after a clean stop; the WAL
# segment a start begins to read at.
CLUSTER_STATE = "Database cluster state"
REDO_SEGMENT = "Latest checkpoint's REDO WAL file"
# The programs that work in an instance's directory (as in /proc/<pid>/comm).
# "nice": what a lowered program is called until it has started the next one (see run).
INSTANCE_PROGRAMS = frozenset({"cp", "pg_ctl", "setpriv", "setsid", "postgres", "nice"})


class ServerPrograms:
    """Runs the PostgreSQL programs of ``bin_dir`` for the instances of one data root."""

    def __init__(self, settings: LocalBackendSettings, data_root: Path) -> None:
        self.settings = settings
        self.data_root = data_root
        self._bin_dir: Path | None = None
        self._template_dir: Path | None = None
        self._template_lock = threading.Lock()

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = find_bin_dir(self.settings.bin_dir)
        return self._bin_dir

    def template(self, run_as: RunAs | None) -> Path:
        """The initialised cluster every instance starts as a copy of, built on first use.

        It lives in ``<data_root>/.t-<key>``, where the key names the PostgreSQL version and what
        the template holds; workers and servers sharing a data_root share it (the first to finish
        building it wins the rename, the others drop theirs). Delete it to have it rebuilt."""
        with self._template_lock:
            if self._template_dir is not None and self._template_dir.is_dir():
                return self._template_dir
            version = self.run([self.bin_dir / "postgres", "--version"], None, "postgres --version").stdout
            key = hashlib.sha256(f"{TEMPLATE_FORMAT} {version} {INITDB_OPTIONS}".encode()).hexdigest()[:12]
            final = self.data_root / f".t-{key}"
            if not final.is_dir():
                self._build_template(final, run_as)
            self._template_dir = final
            return final

    def _build_template(self, final: Path, run_as: RunAs | None) -> None:
        partial = self.data_root / f"{final.name}.{secrets.token_hex(3)}"
        partial.mkdir(mode=0o700)
        try:
            if run_as:
                os.chown(partial, run_as.uid, run_as.gid)
            self.run(
                [self.bin_dir / "initdb", "-D", partial / "data", "-U", SUPERUSER, *INITDB_OPTIONS], run_as, "initdb"
            )
            # Single-user mode: no server to start, no port, no socket for this one statement.
            self.run(
                [self.bin_dir / "postgres", "--single", "-D", partial / "data", ADMIN_DATABASE],
                run_as,
                "creating the tenant's database in the template",
                stdin=f"create database {TENANT_DATABASE}\n",
            )
            try:
                partial.rename(final)
            except OSError:
                if not final.is_dir():
                    raise
                # Another worker built it first: use theirs.
                shutil.rmtree(partial, ignore_errors=True)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        log.info("built the template cluster %s", final)

    def run(
        self,
        argv: list,
        run_as: RunAs | None,
        what: str,
        check: bool = True,
        stdin: str | None = None,
        output: int | None = None,
        server: bool = False,
        time_limit: bool = True,
    ) -> subprocess.CompletedProcess:
        """``output``: a file descriptor for the program's stdout and stderr (else captured), its stdin
        then /dev/null. ``time_limit``: the program is killed after ``ready_timeout`` + 30 s.

        A program runs ``nice`` steps below the API: a warm create needs a few milliseconds of CPU,
        and must not wait for a core behind copies of the template and removals of thousands of
        files. Where the kernel groups tasks by session, in a session of its own whose group gets
        the same weight, or else in the API's session (see session_groups); in a process group of
        its own either way, out of reach of a terminal's signals to the API's. ``server``: it starts
        an instance's server, which must outlive this process and its session, and runs at the API's
        priority: its queries are the tenants' work."""
        kwargs: dict = (
            {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
            if output is None
            else {"stdout": output, "stderr": output}
        )
        if output is not None and stdin is None:
            kwargs["stdin"] = subprocess.DEVNULL
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}
        if run_as:
            # setpriv switches to the user. Python's switch (user=, group=) would fork the whole
            # server process instead of vfork-ing it: a copy of its page tables per program run.
            argv = ["setpriv", f"--reuid={run_as.uid}", f"--regid={run_as.gid}", "--clear-groups", *argv]
            env["HOME"] = run_as.home
        try:
            nice = 0 if server else self.settings.nice
            own_session = server or (nice > 0 and session_groups.weighable())
            result = _run_program(
                [str(a) for a in (["nice", "-n", nice, *argv] if nice > 0 else argv)],
                stdin,
                env,
                self.settings.ready_timeout + 30 if time_limit else None,
                {"start_new_session": True} if own_session else {"process_group": 0},
                nice if own_session else 0,
                kwargs,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise BackendError(f"{what} failed: {e}") from e
        if check and result.returncode != 0:
            raise BackendError(
                f"{what} failed (exit {result.returncode}): {_tail((result.stderr or '') + (result.stdout or ''))}"
            )
        return result

    def start(self, home: Path, run_as: RunAs | None, prefer: int | None = None) -> int:
        """Start on a free port (``prefer`` first, where given); a port taken meanwhile makes
        postgres fail to bind, so try another."""
        tried: set[int] = set()
        for attempt in range(START_ATTEMPTS):
            port = prefer if attempt == 0 and prefer is not None else self._candidate_port(tried)
            tried.add(port)
            (home / "data" / "postgraas_port.conf").write_text(f"port = {port}\n")
            log_file = home / "postgres.log"
            # Only what this start writes tells how it went: a server started again appends to its log.
            offset = log_file.stat().st_size if log_file.exists() else 0
            self._spawn_postgres(home, run_as, log_file)
            if self._await_start(home, port, log_file, offset):
                return port
            log_file.unlink(missing_ok=True)
        raise BackendError(f"postgres found no free port in {self.settings.port_min}-{self.settings.port_max}.")

    def _spawn_postgres(self, home: Path, run_as: RunAs | None, log_file: Path) -> None:
        """postgres in a session of its own, its parent init once ``setsid -f`` has forked it (as
        pg_ctl start leaves it), appending to ``log_file``. Not pg_ctl: it first runs ``postgres -V``
        to check the binary, a whole start of the program; _await_start tells how the start went."""
        log = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            if run_as:
                os.fchown(log, run_as.uid, run_as.gid)
            self.run(
                ["setsid", "-f", self.bin_dir / "postgres", "-D", home / "data"],
                run_as,
                "starting postgres",
                output=log,
                server=True,
            )
        finally:
            os.close(log)

    def _await_start(self, home: Path, port: int, log_file: Path, offset: int) -> bool:
        """True once the superuser can connect through the private socket; False when the port was
        taken (postgres then exits); raises when postgres failed otherwise or took too long."""
        deadline = time.monotonic() + self.settings.ready_timeout
        while True:
            try:
                connect_superuser(home, port, connect_timeout=2).close()
                return True
            except psycopg.OperationalError:
                pass
            if not (home / "data").is_dir():
                # A delete took the instance meanwhile (its server died mid-create): nothing to wait for.
                raise BackendError("postgres did not start: the instance's directory was removed meanwhile.")
            server_log = _read_from(log_file, offset)
            if "could not bind" in server_log or "could not create any TCP/IP sockets" in server_log:
                _wait_for_exit(home)
                return False
            if ("FATAL:" in server_log or "PANIC:" in server_log) and not (home / "data" / "postmaster.pid").exists():
                raise BackendError(f"postgres did not start: {_tail(server_log)}")
            if time.monotonic() > deadline:
                raise NotReady(f"postgres did not accept connections within {self.settings.ready_timeout:g} s")
            time.sleep(START_POLL_S)

    def _candidate_port(self, tried: set[int]) -> int:
        low, high = self.settings.port_min, self.settings.port_max
        for _ in range(64):
            port = random.randint(low, high)
            if port not in tried and _port_looks_free(self.settings.listen_address, port):
                return port
        return random.randint(low, high)

    def running(self, home: Path, run_as: RunAs | None) -> bool:
        if not (home / "data").is_dir():
            return False
        result = self.run(
            [self.bin_dir / "pg_ctl", "-D", home / "data", "status"], run_as, "pg_ctl status", check=False
        )
        return result.returncode == 0

    def remove_tree(self, directory: Path) -> None:
        """Remove what can be removed of ``directory``, as ``rm -rf`` does (the caller looks at what
        is left): a program's work, below the API (see run), however long it takes."""
        try:
            self.run(["rm", "-rf", "--", directory], None, f"removing {directory}", check=False, time_limit=False)
        except BackendError as e:
            log.warning("%s; removing it in this process", e.msg)
            shutil.rmtree(directory, ignore_errors=True)

    def discard(self, home: Path) -> None:
        """End the server whose data is thrown away next, and whatever else works in the instance's
        directory: an immediate shutdown (SIGQUIT), with no checkpoint to write and no pg_ctl to
        wait for, as a delete needs."""
        end_processes_working_in(home, INSTANCE_PROGRAMS)

    def shut_down(self, home: Path, run_as: RunAs | None) -> None:
        """Stop the server with a fast shutdown (every session ended, then a shutdown checkpoint)
        and make sure the cluster was left shut down cleanly, so that a copy of it starts without
        recovery. Raises BackendError otherwise (the server may still run, or have crashed).
        Then only the WAL segment of that checkpoint is kept, all a start reads: the others (older
        ones, and those recycled ahead for later writes) would be copied into every clone."""
        data = home / "data"
        if (data / "postmaster.pid").exists():
            self.run([self.bin_dir / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop"], run_as, "pg_ctl stop")
        # pg_ctl stop succeeds too when the shutdown checkpoint failed (a PANIC ends the server).
        controldata = self.run([self.bin_dir / "pg_controldata", data], run_as, "pg_controldata").stdout
        fields = dict(line.split(":", 1) for line in controldata.splitlines() if ":" in line)
        state = fields.get(CLUSTER_STATE, "").strip()
        if state != "shut down":
            raise BackendError(f"postgres was not shut down cleanly (cluster state: {state or 'unknown'}).")
        kept = fields.get(REDO_SEGMENT, "").strip()
        if WAL_SEGMENT.fullmatch(kept):
            for entry in (data / "pg_wal").iterdir():
                if WAL_SEGMENT.fullmatch(entry.name) and entry.name != kept:
                    entry.unlink()


def connect_superuser(home: Path, port: int | None, connect_timeout: int) -> psycopg.Connection:
    """The superuser, through the instance's private socket, to the admin database."""
    return psycopg.connect(
        host=str(home / "run"),
        port=port,
        user=SUPERUSER,
        dbname=ADMIN_DATABASE,
        autocommit=True,
        connect_timeout=connect_timeout,
        application_name=OUR_SESSIONS,
    )


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as file:
            file.seek(offset)
            return file.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def _wait_for_exit(home: Path, timeout: float = 10.0) -> None:
    # A postgres that could not bind removes its postmaster.pid as it exits; the next try reuses the dir.
    deadline = time.monotonic() + timeout
    while (home / "data" / "postmaster.pid").exists() and time.monotonic() < deadline:
        time.sleep(START_POLL_S)


def find_bin_dir(configured: str | None) -> Path:
    """bin_dir if configured, else `pg_config --bindir`, else the newest Debian-style install."""
    candidates: list[Path] = []
    if configured:
        candidates.append(Path(configured))
    else:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10)
            if out.returncode == 0:
                candidates.append(Path(out.stdout.strip()))
        debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
        candidates += [Path(p) for p in debian]
    for candidate in candidates:
        if all(os.access(candidate / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return candidate
    where = configured or "pg_config --bindir or /usr/lib/postgresql/*/bin"
    raise BackendUnavailable(f"PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found in {where}.")


def _port_looks_free(address: str, port: int) -> bool:
    # Only a hint to skip busy ports cheaply; the real test is postgres binding it (see start).
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


def _tail(text: str) -> str:
    return "\n".join(text.strip().splitlines()[-LOG_TAIL_LINES:])


def _run_program(
    argv: list[str],
    stdin: str | None,
    env: dict[str, str],
    timeout: float | None,
    group: dict,
    session_nice: int,
    kwargs: dict,
) -> subprocess.CompletedProcess:
    """subprocess.run with ``group`` (its session or process group), the group of a session of its
    own weighted at ``session_nice``; killed on a timeout or when the caller is interrupted, as
    subprocess.run does."""
    if stdin is not None:
        kwargs["stdin"] = subprocess.PIPE
    with subprocess.Popen(argv, text=True, env=env, cwd="/", **group, **kwargs) as process:
        if session_nice > 0:
            session_groups.lower(process.pid, session_nice)
        try:
            stdout, stderr = process.communicate(stdin, timeout=timeout)
        except BaseException:
            process.kill()
            # Not communicate(): a program it started may still hold the pipes.
            process.wait()
            raise
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)
