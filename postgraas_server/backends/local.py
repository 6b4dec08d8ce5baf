"""The local backend: a PostgreSQL cluster per instance, run as processes on the server's host.

Each instance lives in ``<data_root>/<ref>/``: ``data/`` (the cluster), ``run/`` (its unix
socket, mode 0700), ``postgres.log`` and ``instance.json`` (port, and the names it was made
with, no secret). The
postgres processes are started in their own session, so they outlive a server restart and
are found again from these files.

Inside a cluster the requested user is an ordinary LOGIN role owning its database; the
superuser ``postgres`` can only log in through the private socket (local trust), so a tenant
never gets superuser powers (which would run programs as the OS user owning every data dir).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import pwd
import random
import secrets
import shutil
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from ..config import LocalBackendSettings
from ..errors import BackendError, BackendTimeout, BackendUnavailable, InUse
from .base import Credentials, DatabaseSpec, ManagedObject, ObjectDescription, ObjectState, ProvisionedDatabase
from .claim_connections import ClaimConnections
from .directory_processes import end_processes_working_in
from .postgres_client import NotReady, wait_for_login
from .tenants import (
    END_OTHER_SESSIONS,
    HAND_OVER_WARM_UP,
    OUR_SESSIONS,
    count_sessions,
    create_tenant,
    hand_over_tenant,
    require_pooled_database,
)
from .top_directory import mark_top_directory

log = logging.getLogger(__name__)

SUPERUSER = "postgres"
# Bump when what the template holds changes: the next create builds a new one.
TEMPLATE_FORMAT = 1
INITDB_OPTIONS = (
    "--auth-local=trust",
    "--auth-host=scram-sha-256",
    "--encoding=UTF8",
    "--locale=C.UTF-8",
    "--no-instructions",
    # 1 MiB WAL segments instead of 16: every instance starts as a copy, so bytes cost time.
    "--wal-segsize=1",
)
# The superuser works from template1: the tenant's database is the cluster's "postgres" database,
# renamed, so no CREATE DATABASE (a copy and a sync of a whole database) runs on the request path.
ADMIN_DATABASE = "template1"
# What "durability": "ephemeral" turns off.
EPHEMERAL_SETTINGS = ("fsync", "synchronous_commit", "full_page_writes")
# How often a starting server is asked whether it takes connections (pg_ctl -w asks every 100 ms).
START_POLL_S = 0.005
START_ATTEMPTS = 8
# sun_path holds 108 bytes; the socket file name adds up to 18 (".s.PGSQL.NNNNN.lock").
MAX_SOCKET_DIR_BYTES = 88
LOG_TAIL_LINES = 20
# What list_objects finds an instance by.
META_FILE = "instance.json"
# The programs that work in an instance's directory (as in /proc/<pid>/comm).
INSTANCE_PROGRAMS = frozenset({"cp", "pg_ctl", "sh", "postgres"})


@dataclass(frozen=True)
class _RunAs:
    uid: int
    gid: int
    home: str
    groups: frozenset[int]


def default_data_root() -> str:
    return "/var/lib/postgraas" if os.geteuid() == 0 else "postgraas-data"


def _traversable(directory: Path, user: _RunAs) -> bool:
    st = directory.stat()
    if st.st_uid == user.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in user.groups:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


class LocalBackend:
    type_name = "local"
    supports_template = False
    supports_pool = True

    def __init__(self, settings: LocalBackendSettings, deployment: str) -> None:
        self.settings = settings
        self.deployment = deployment
        self.data_root = Path(settings.data_root or default_data_root()).resolve()
        self._bin_dir: Path | None = None
        self._template_dir: Path | None = None
        self._template_lock = threading.Lock()
        self._claim_connections = ClaimConnections(
            self._connect_claim, warm_up=HAND_OVER_WARM_UP, end_others=END_OTHER_SESSIONS
        )

    # -- the Backend contract ------------------------------------------------------------

    def create(self, spec: DatabaseSpec) -> ProvisionedDatabase:
        run_as = self._run_as()
        self._ensure_data_root(run_as)
        # Short and unique: the socket path must fit in sun_path; the name is in instance.json.
        ref = f"{spec.instance_id}-{secrets.token_hex(4)}"
        home = self.data_root / ref
        home.mkdir(mode=0o700)
        meta = {
            "deployment": self.deployment,
            "instance_id": spec.instance_id,
            "name": spec.instance_name,
            "db_name": spec.db_name,
            "db_username": spec.db_username,
            "port": None,
            "created_at": datetime.now(UTC).isoformat(),
        }
        try:
            # First of all, so that list_objects finds even a creation cut short.
            self._write_meta(home, meta)
            (home / "run").mkdir(mode=0o700)
            if run_as:
                for path in (home, home / "run"):
                    os.chown(path, run_as.uid, run_as.gid)
            # cp -a keeps the owner (the postgres user) and modes; ~60 ms where initdb takes ~600 ms.
            self._run(["cp", "-a", self._template(run_as) / "data", home / "data"], None, "copying the template")
            self._configure(home, spec.ephemeral)
            port = self._start(home, run_as)
            self._write_meta(home, {**meta, "port": port})
            with self._superuser(home, port) as conn:
                # The cluster is the tenant's alone: its "postgres" database becomes the tenant's.
                create_tenant(conn, spec, existing_database="postgres")
            wait_for_login(self._probe_host, port, spec.credentials, timeout=self.settings.ready_timeout)
        except BaseException as e:
            try:
                self._destroy(home, run_as)
            except BackendError:
                log.exception("could not clean up after the failed creation of %s", ref)
            if isinstance(e, NotReady):
                raise BackendTimeout(f"The new cluster did not accept a login in time ({e}); it was removed.") from e
            raise
        log.info("started local cluster %s for instance %s on port %s", ref, spec.instance_name, port)
        return ProvisionedDatabase(ref=ref, host=self.settings.advertised_host, port=port)

    def claim(self, ref: str, pooled: Credentials, spec: DatabaseSpec) -> ProvisionedDatabase:
        home = self._home(ref)
        try:
            # After it, a claimed cluster holds no session of ours: one in template1 would make
            # the tenant's CREATE DATABASE fail (a later login is refused, see _connect_claim).
            with self._claim_connections.claiming(ref) as conn:
                port = conn.info.port
                hand_over_tenant(conn, pooled, spec, own_server=True)
                if spec.ephemeral:
                    # Into the file _configure writes (ALTER SYSTEM would cost a statement and an
                    # fsync each); all three take effect on this reload, no restart.
                    self._configure_durability(home)
                    conn.execute("select pg_reload_conf()")
        except psycopg.Error as e:
            raise BackendError(f"The local cluster {home.name} failed: {str(e).strip()}") from e
        except OSError as e:
            raise BackendError(f"The local cluster {home.name} could not be configured: {e}") from e
        # instance.json keeps the pool's names (the meta db has the instance's): _connect_claim
        # tells a claimed cluster by the pool's database, and a rewrite would cost a millisecond.
        log.info("claimed local cluster %s for instance %s on port %s", ref, spec.instance_name, port)
        return ProvisionedDatabase(ref=ref, host=self.settings.advertised_host, port=port)

    def can_claim(self, db_name: str, db_username: str) -> bool:
        return True

    def keep_ready(self, refs: list[str]) -> list[str]:
        """Hold a superuser connection to each of the pooled ``refs``, for their claims."""
        return self._claim_connections.keep(refs)

    def delete(self, ref: str, credentials: Credentials, *, instance_id: int, force: bool = False) -> None:
        # The ref starts with the instance id and ends with random bytes: it is never another's.
        home = self._home(ref)
        if not home.exists():
            return None
        run_as = self._run_as()
        if not force and self._running(home, run_as):
            port = self._port(home)
            try:
                with self._superuser(home, port) as conn:
                    sessions = count_sessions(conn, credentials.db_name)
            except BackendError:
                sessions = 0  # it stopped meanwhile
            if sessions:
                raise InUse(sessions)
        self._destroy(home, run_as)
        log.info("removed local cluster %s (force=%s)", ref, force)
        return None

    def exists(self, ref: str) -> bool:
        return self._home(ref).is_dir()

    def describe(self, ref: str) -> ObjectDescription:
        home = self._home(ref)
        if not home.is_dir():
            return ObjectDescription(ObjectState.MISSING)
        port = self._port(home)
        state = ObjectState.RUNNING if self._running(home, self._run_as()) else ObjectState.STOPPED
        return ObjectDescription(state, self.settings.advertised_host, port)

    def list_objects(self) -> list[ManagedObject]:
        objects = []
        with contextlib.suppress(FileNotFoundError):
            for home in self.data_root.iterdir():
                meta = self._read_meta(home)
                if meta.get("deployment") != self.deployment:
                    continue
                try:
                    created = datetime.fromisoformat(meta["created_at"])
                    credentials = Credentials(meta["db_name"], meta["db_username"], "")
                    instance_id = int(meta["instance_id"])
                    port = meta.get("port")
                    objects.append(ManagedObject(home.name, instance_id, created, credentials, port, meta.get("name")))
                except (KeyError, ValueError, TypeError):
                    log.warning("unreadable %s/instance.json; leaving it alone", home)
        return objects

    def health(self) -> None:
        self.bin_dir  # noqa: B018 - raises when the binaries are missing
        self._run_as()
        self._ensure_data_root(self._run_as())

    # -- binaries, users and files -----------------------------------------------------------

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = find_bin_dir(self.settings.bin_dir)
        return self._bin_dir

    def _template(self, run_as: _RunAs | None) -> Path:
        """The initialised cluster every instance starts as a copy of, built on first use.

        It lives in ``<data_root>/.t-<key>``, where the key names the PostgreSQL version and what
        the template holds; workers and servers sharing a data_root share it (the first to finish
        building it wins the rename, the others drop theirs). Delete it to have it rebuilt."""
        with self._template_lock:
            if self._template_dir is not None and self._template_dir.is_dir():
                return self._template_dir
            version = self._run([self.bin_dir / "postgres", "--version"], None, "postgres --version").stdout
            key = hashlib.sha256(f"{TEMPLATE_FORMAT} {version} {INITDB_OPTIONS}".encode()).hexdigest()[:12]
            final = self.data_root / f".t-{key}"
            if not final.is_dir():
                self._build_template(final, run_as)
            self._template_dir = final
            return final

    def _build_template(self, final: Path, run_as: _RunAs | None) -> None:
        partial = self.data_root / f"{final.name}.{secrets.token_hex(3)}"
        partial.mkdir(mode=0o700)
        try:
            if run_as:
                os.chown(partial, run_as.uid, run_as.gid)
            self._run(
                [self.bin_dir / "initdb", "-D", partial / "data", "-U", SUPERUSER, *INITDB_OPTIONS], run_as, "initdb"
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

    @property
    def _probe_host(self) -> str:
        return self.settings.probe_host or self.settings.advertised_host

    def _run_as(self) -> _RunAs | None:
        """postgres refuses to run as root: then it runs as run_as_user; otherwise as ourselves."""
        if os.geteuid() != 0:
            return None
        try:
            entry = pwd.getpwnam(self.settings.run_as_user)
        except KeyError:
            raise BackendUnavailable(
                f"The OS user {self.settings.run_as_user!r} (run_as_user) does not exist; postgres cannot run as root."
            ) from None
        groups = frozenset(os.getgrouplist(entry.pw_name, entry.pw_gid))
        return _RunAs(entry.pw_uid, entry.pw_gid, entry.pw_dir, groups)

    def _ensure_data_root(self, run_as: _RunAs | None) -> None:
        if len(str(self.data_root).encode()) + len("/12345678901-abcdef01/run") > MAX_SOCKET_DIR_BYTES:
            raise BackendUnavailable(
                f"data_root {self.data_root} is too long for unix socket paths; use a shorter one."
            )
        try:
            self.data_root.mkdir(mode=0o700, parents=True, exist_ok=True)
            if run_as and self.data_root.stat().st_uid != run_as.uid:
                os.chown(self.data_root, run_as.uid, run_as.gid)
        except OSError as e:
            raise BackendUnavailable(f"data_root {self.data_root} cannot be prepared: {e.strerror}.") from e
        # Each instance's tree in block groups of its own (see top_directory); a few syscalls.
        mark_top_directory(self.data_root)
        if run_as:
            for parent in self.data_root.parents:
                if not _traversable(parent, run_as):
                    raise BackendUnavailable(
                        f"data_root {self.data_root} is not reachable by the OS user "
                        f"{self.settings.run_as_user!r}: {parent} does not let it in. Choose a data_root "
                        "outside private directories (e.g. /var/lib/postgraas)."
                    )

    def _home(self, ref: str) -> Path:
        home = (self.data_root / ref).resolve()
        if home.parent != self.data_root:
            raise BackendError(f"Invalid local instance reference {ref!r}.")
        return home

    @staticmethod
    def _write_meta(home: Path, meta: dict) -> None:
        # Write then rename: a crash never leaves half a file for list_objects to trip on.
        partial = home / "instance.json.partial"
        partial.write_text(json.dumps(meta))
        partial.replace(home / META_FILE)

    def _port(self, home: Path) -> int | None:
        """The port from instance.json, else from the running server's postmaster.pid (line 4)."""
        port = self._read_meta(home).get("port")
        if port is None:
            with contextlib.suppress(OSError, ValueError, IndexError):
                port = int((home / "data" / "postmaster.pid").read_text().splitlines()[3])
        return port

    @staticmethod
    def _read_meta(home: Path) -> dict:
        try:
            return json.loads((home / META_FILE).read_text())
        except (OSError, ValueError):
            return {}

    @staticmethod
    def _configure_durability(home: Path) -> None:
        with (home / "data" / "postgresql.conf").open("a") as conf:
            # The instance's own server: a crash may lose or corrupt it, and that was asked for.
            conf.write("\n" + "".join(f"{setting} = off\n" for setting in EPHEMERAL_SETTINGS))

    def _configure(self, home: Path, ephemeral: bool) -> None:
        if ephemeral:
            self._configure_durability(home)
        with (home / "data" / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# postgraas local backend\n"
                f"listen_addresses = '{self.settings.listen_address}'\n"
                f"unix_socket_directories = '{home / 'run'}'\n"
                "unix_socket_permissions = 0700\n"
                "password_encryption = 'scram-sha-256'\n"
                "include_if_exists = 'postgraas_port.conf'\n"
            )

    # -- processes ---------------------------------------------------------------------------

    def _run(self, argv: list, run_as: _RunAs | None, what: str, check: bool = True) -> subprocess.CompletedProcess:
        kwargs: dict = {}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}
        if run_as:
            kwargs = {"user": run_as.uid, "group": run_as.gid, "extra_groups": []}
            env["HOME"] = run_as.home
        try:
            result = subprocess.run(
                [str(a) for a in argv],
                capture_output=True,
                text=True,
                env=env,
                cwd="/",
                # Own session: the postgres it starts must outlive this server's process group.
                start_new_session=True,
                timeout=self.settings.ready_timeout + 30,
                **kwargs,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise BackendError(f"{what} failed: {e}") from e
        if check and result.returncode != 0:
            raise BackendError(f"{what} failed (exit {result.returncode}): {_tail(result.stderr + result.stdout)}")
        return result

    def _start(self, home: Path, run_as: _RunAs | None) -> int:
        """Start on a free port; a port taken meanwhile makes postgres fail to bind, so try another."""
        tried: set[int] = set()
        for _ in range(START_ATTEMPTS):
            port = self._candidate_port(tried)
            tried.add(port)
            (home / "data" / "postgraas_port.conf").write_text(f"port = {port}\n")
            log_file = home / "postgres.log"
            # -W: pg_ctl returns once postgres is forked (its own wait polls every 100 ms); _await_start polls faster.
            self._run(
                [self.bin_dir / "pg_ctl", "-D", home / "data", "-l", log_file, "-W", "start"], run_as, "pg_ctl start"
            )
            if self._await_start(home, port, log_file):
                return port
            log_file.unlink(missing_ok=True)
        raise BackendError(f"postgres found no free port in {self.settings.port_min}-{self.settings.port_max}.")

    def _await_start(self, home: Path, port: int, log_file: Path) -> bool:
        """True once the superuser can connect through the private socket; False when the port was
        taken (postgres then exits); raises when postgres failed otherwise or took too long."""
        deadline = time.monotonic() + self.settings.ready_timeout
        while True:
            try:
                self._connect_superuser(home, port, connect_timeout=2).close()
                return True
            except psycopg.OperationalError:
                pass
            server_log = log_file.read_text(errors="replace") if log_file.exists() else ""
            if "could not bind" in server_log or "could not create any TCP/IP sockets" in server_log:
                self._wait_for_exit(home)
                return False
            if ("FATAL:" in server_log or "PANIC:" in server_log) and not (home / "data" / "postmaster.pid").exists():
                raise BackendError(f"postgres did not start: {_tail(server_log)}")
            if time.monotonic() > deadline:
                raise NotReady(f"postgres did not accept connections within {self.settings.ready_timeout:g} s")
            time.sleep(START_POLL_S)

    @staticmethod
    def _wait_for_exit(home: Path, timeout: float = 10.0) -> None:
        # A postgres that could not bind removes its postmaster.pid as it exits; the next try reuses the dir.
        deadline = time.monotonic() + timeout
        while (home / "data" / "postmaster.pid").exists() and time.monotonic() < deadline:
            time.sleep(START_POLL_S)

    def _candidate_port(self, tried: set[int]) -> int:
        low, high = self.settings.port_min, self.settings.port_max
        for _ in range(64):
            port = random.randint(low, high)
            if port not in tried and _port_looks_free(self.settings.listen_address, port):
                return port
        return random.randint(low, high)

    def _running(self, home: Path, run_as: _RunAs | None) -> bool:
        if not (home / "data").is_dir():
            return False
        result = self._run(
            [self.bin_dir / "pg_ctl", "-D", home / "data", "status"], run_as, "pg_ctl status", check=False
        )
        return result.returncode == 0

    def _destroy(self, home: Path, run_as: _RunAs | None) -> None:
        """Stop the server (fast: sessions are terminated), end whatever else still works in the
        instance's directory, and remove everything of the instance."""
        if (home / "data" / "postmaster.pid").exists():
            self._run(
                [self.bin_dir / "pg_ctl", "-D", home / "data", "-m", "fast", "-w", "stop"],
                run_as,
                "pg_ctl stop",
                check=False,
            )
            if self._running(home, run_as):
                self._run(
                    [self.bin_dir / "pg_ctl", "-D", home / "data", "-m", "immediate", "-w", "stop"],
                    run_as,
                    "pg_ctl stop",
                    check=False,
                )
        # A pg_ctl start whose server died mid-create has no postmaster.pid yet to stop it by.
        if ended := end_processes_working_in(home, INSTANCE_PROGRAMS):
            log.warning("ended the processes %s still working in %s", ended, home)
        self._remove_home(home)

    @staticmethod
    def _remove_home(home: Path) -> None:
        """instance.json goes last: a removal cut short (a process writing there meanwhile) leaves
        a home that list_objects still finds, so the reaper tries again."""
        if not home.exists():
            return
        try:
            for entry in home.iterdir():
                if entry.name == META_FILE:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
            left = sorted(entry.name for entry in home.iterdir() if entry.name != META_FILE)
            if not left:
                meta = home / META_FILE
                kept = meta.read_bytes() if meta.exists() else None
                meta.unlink(missing_ok=True)
                try:
                    home.rmdir()
                except OSError:
                    if kept is not None:  # something was written meanwhile: stay listed
                        meta.write_bytes(kept)
                    raise
        except OSError as e:
            raise BackendError(f"The local instance directory {home} could not be removed: {e}.") from e
        if left:
            raise BackendError(f"The local instance directory {home} could not be removed: {', '.join(left)} remain.")

    @staticmethod
    def _connect_superuser(home: Path, port: int | None, connect_timeout: float) -> psycopg.Connection:
        return psycopg.connect(
            host=str(home / "run"),
            port=port,
            user=SUPERUSER,
            dbname=ADMIN_DATABASE,
            autocommit=True,
            connect_timeout=connect_timeout,
            application_name=OUR_SESSIONS,
        )

    def _connect_claim(self, ref: str) -> psycopg.Connection:
        """The superuser, to a cluster still pooled: instance.json names the pool's database,
        which a claim renames (a login that raced a claim must not stay in the tenant's cluster)."""
        home = self._home(ref)
        conn = self._connect_superuser(home, self._port(home), connect_timeout=5)
        return require_pooled_database(conn, self._read_meta(home).get("db_name", ""), f"The local cluster {ref}")

    @contextlib.contextmanager
    def _superuser(self, home: Path, port: int | None) -> Iterator[psycopg.Connection]:
        """The superuser through the private socket; psycopg errors become BackendError."""
        try:
            conn = self._connect_superuser(home, port, connect_timeout=5)
            with conn:
                yield conn
        except psycopg.Error as e:
            raise BackendError(f"The local cluster {home.name} failed: {str(e).strip()}") from e


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
    # Only a hint to skip busy ports cheaply; the real test is postgres binding it (see _start).
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


def _tail(text: str) -> str:
    return "\n".join(text.strip().splitlines()[-LOG_TAIL_LINES:])
