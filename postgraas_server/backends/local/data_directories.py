"""The local backend's files: the data root and, in it, one directory per instance.

An instance lives in ``<data_root>/<ref>/``: ``data/`` (the cluster), ``run/`` (its unix socket,
mode 0700), ``postgres.log`` and ``instance.json`` (port, and the names it was made with, no
secret), by which ``list_objects`` finds it. Names starting with a dot are the backend's own: the
initdb cluster every instance copies (``.t-*``) and the frozen templates (``.templates/``).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ...errors import BackendError, BackendUnavailable
from ..postgres.own_server import EPHEMERAL_SETTINGS
from .top_directory import mark_top_directory

# sun_path holds 108 bytes; the socket file name adds up to 18 (".s.PGSQL.NNNNN.lock").
MAX_SOCKET_DIR_BYTES = 88
# What list_objects finds an instance by.
META_FILE = "instance.json"
# A removal racing another of the same home fails an attempt at most once or twice before one finishes.
REMOVAL_ATTEMPTS = 5


@dataclass(frozen=True)
class RunAs:
    """The OS user postgres runs as, where the server runs as root."""

    uid: int
    gid: int
    home: str
    groups: frozenset[int]


def default_data_root() -> str:
    return "/var/lib/postgraas" if os.geteuid() == 0 else "postgraas-data"


def run_as_user(name: str) -> RunAs | None:
    """postgres refuses to run as root: then it runs as the user ``name``; otherwise as ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise BackendUnavailable(
            f"The OS user {name!r} (run_as_user) does not exist; postgres cannot run as root."
        ) from None
    groups = frozenset(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return RunAs(entry.pw_uid, entry.pw_gid, entry.pw_dir, groups)


def prepare_data_root(data_root: Path, run_as: RunAs | None, run_as_name: str) -> None:
    """Make ``data_root`` (the user ``run_as`` owning it) and check that it can hold instances."""
    if len(str(data_root).encode()) + len("/12345678901-abcdef01/run") > MAX_SOCKET_DIR_BYTES:
        raise BackendUnavailable(f"data_root {data_root} is too long for unix socket paths; use a shorter one.")
    try:
        data_root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if run_as and data_root.stat().st_uid != run_as.uid:
            os.chown(data_root, run_as.uid, run_as.gid)
    except OSError as e:
        raise BackendUnavailable(f"data_root {data_root} cannot be prepared: {e.strerror}.") from e
    # Each instance's tree in block groups of its own (see top_directory); a few syscalls.
    mark_top_directory(data_root)
    if run_as:
        for parent in data_root.parents:
            if not _traversable(parent, run_as):
                raise BackendUnavailable(
                    f"data_root {data_root} is not reachable by the OS user {run_as_name!r}: {parent} does "
                    "not let it in. Choose a data_root outside private directories (e.g. /var/lib/postgraas)."
                )


def _traversable(directory: Path, user: RunAs) -> bool:
    st = directory.stat()
    if st.st_uid == user.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in user.groups:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def home_of(data_root: Path, ref: str) -> Path:
    """The instance directory ``ref`` names, which must be one right below ``data_root``."""
    home = (data_root / ref).resolve()
    # Dot names are the backend's own (the template cluster ".t-*", the templates' ".templates").
    if home.parent != data_root or home.name.startswith("."):
        raise BackendError(f"Invalid local instance reference {ref!r}.")
    return home


def write_meta(home: Path, meta: dict, name: str = META_FILE) -> None:
    # Write then rename: a crash never leaves half a file for list_objects to trip on.
    partial = home / f"{name}.partial"
    partial.write_text(json.dumps(meta))
    partial.replace(home / name)


def read_meta(home: Path) -> dict:
    try:
        return json.loads((home / META_FILE).read_text())
    except (OSError, ValueError):
        return {}


def port_of(home: Path) -> int | None:
    """The port from instance.json, else from the running server's postmaster.pid (line 4)."""
    port = read_meta(home).get("port")
    if port is None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            port = int((home / "data" / "postmaster.pid").read_text().splitlines()[3])
    return port


def configure_durability(home: Path, durable: bool = False) -> None:
    """Turn EPHEMERAL_SETTINGS off (or back on: a template frozen from an ephemeral builder)."""
    value = "on" if durable else "off"
    with (home / "data" / "postgresql.conf").open("a") as conf:
        # The instance's own server: a crash may lose or corrupt it, and that was asked for.
        conf.write("\n" + "".join(f"{setting} = {value}\n" for setting in EPHEMERAL_SETTINGS))


def configure(home: Path, listen_address: str, ephemeral: bool) -> None:
    if ephemeral:
        configure_durability(home)
    with (home / "data" / "postgresql.conf").open("a") as conf:
        conf.write(
            "\n# postgraas local backend\n"
            f"listen_addresses = '{listen_address}'\n"
            f"unix_socket_directories = '{home / 'run'}'\n"
            "unix_socket_permissions = 0700\n"
            "password_encryption = 'scram-sha-256'\n"
            "include_if_exists = 'postgraas_port.conf'\n"
        )


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def remove_home(home: Path, meta_file: str = META_FILE, remove_tree: Callable[[Path], None] = _remove_tree) -> None:
    """``meta_file`` (instance.json) goes last: a removal cut short (a process writing there
    meanwhile) leaves a home that list_objects still finds, so the reaper tries again.
    ``remove_tree(directory)``: removes what it can of a directory, silently.

    Another removal of the same home may run at once (a delete racing the create's own clean-up):
    what it removed first is no error, and a home it removed whole is removed."""
    vanished: FileNotFoundError | None = None
    for _ in range(REMOVAL_ATTEMPTS):
        if not home.exists():
            return
        try:
            left = _remove_contents(home, meta_file, remove_tree)
        except FileNotFoundError as e:
            vanished = e  # the other removal took something from under us: look again
            continue
        except OSError as e:
            raise BackendError(f"The local directory {home} could not be removed: {e}.") from e
        if left:
            raise BackendError(f"The local directory {home} could not be removed: {', '.join(left)} remain.")
        return
    if home.exists():
        raise BackendError(f"The local directory {home} could not be removed: {vanished}.") from vanished


def _remove_contents(home: Path, meta_file: str, remove_tree: Callable[[Path], None]) -> list[str]:
    """Remove ``home``: what was left, apart from ``meta_file``, if it could not be."""
    for entry in home.iterdir():
        if entry.name == meta_file:
            continue
        if entry.is_dir() and not entry.is_symlink():
            remove_tree(entry)
        else:
            entry.unlink(missing_ok=True)
    left = sorted(entry.name for entry in home.iterdir() if entry.name != meta_file)
    if left:
        return left
    meta = home / meta_file
    try:
        kept: bytes | None = meta.read_bytes()
    except FileNotFoundError:
        kept = None  # another removal holds it, and puts it back if its rmdir fails: leave it be
    if kept is not None:
        meta.unlink(missing_ok=True)
    try:
        home.rmdir()
    except FileNotFoundError:
        return []  # the other removal's rmdir came first
    except OSError:
        if kept is not None:  # something was written meanwhile: stay listed
            _put_back(meta, kept)
        raise
    return []


def _put_back(meta: Path, kept: bytes) -> None:
    """``meta`` again, whole at once (a reaper may read it any moment), unless it is there already
    (a create's newer one)."""
    partial = meta.with_name(f"{meta.name}.restore")
    partial.write_bytes(kept)
    try:
        os.link(partial, meta)
    except FileExistsError:
        pass
    finally:
        partial.unlink(missing_ok=True)
