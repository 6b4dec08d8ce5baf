"""What only the local backend does (the contract all backends keep is test_backend_contract*.py):
a PostgreSQL server of the instance's own, run unprivileged in a private directory."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import psycopg
import pytest

from postgraas_server.backends import DatabaseSpec
from postgraas_server.backends.local import backend as local
from postgraas_server.backends.local import session_groups
from postgraas_server.backends.local.top_directory import FS_TOPDIR_FL
from postgraas_server.errors import BackendTimeout, PostgraasError

from ..file_flags import file_system_type, flags
from .conftest import make_backend
from .login_spy import LoginSpy
from .template_builds import ROWS, TemplateBuilds


def test_the_server_runs_unprivileged_and_private(creator_for, local_data_root):
    db = creator_for("local")()
    home = local_data_root / db.ref
    with db.connect() as conn:
        # The tenant is no superuser: it cannot run programs as the OS user owning every data dir.
        assert conn.execute("select rolsuper from pg_roles where rolname = current_user").fetchone() == (False,)
    pid = int((home / "data" / "postmaster.pid").read_text().split()[0])
    owner = Path(f"/proc/{pid}").stat().st_uid
    assert owner != 0
    for path in (home, home / "data", home / "run"):
        assert path.stat().st_mode & 0o777 == 0o700, path
        assert path.stat().st_uid == owner
    if file_system_type(local_data_root) == "ext4":
        # Instances spread over block groups (see top_directory).
        assert flags(local_data_root) & FS_TOPDIR_FL


@pytest.mark.parametrize("pooled", [False, True], ids=["cold", "pooled"])
def test_the_tenant_may_create_databases_and_trusted_extensions_not_more(creator_for, pooled):
    """What test runners need (a database beside the given one), and nothing that would reach the
    other local instances, which run as the same OS user."""
    local = creator_for("local")
    db = local.claim(local.pooled()) if pooled else local()
    with db.connect(autocommit=True) as conn:
        assert conn.execute(
            "select rolcreatedb, rolsuper, rolcreaterole, rolreplication from pg_roles where rolname = current_user"
        ).fetchone() == (True, False, False, False)
        conn.execute("create database test_runner_db")
        conn.execute("create extension pgcrypto")
        for untrusted in ("create extension dblink", "copy (select 1) to program 'true'"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(untrusted)
        conn.execute("drop database test_runner_db")


def test_the_postgres_database_name_is_the_tenants_to_take(creator_for):
    db = creator_for("local")(db_name="postgres")
    with db.connect() as conn:
        conn.execute("create table mine (v int)")
        conn.commit()


def test_a_failed_create_leaves_nothing(request, local_data_root):
    tag = uuid.uuid4().hex[:8]
    spec = DatabaseSpec(990000, f"broken-{tag}", f"db_{tag}", f"user_{tag}", "pw")
    # The template is copied, then no port of the (one-port) range can be bound.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        broken = make_backend("local", request, port_min=port, port_max=port)
        with pytest.raises(PostgraasError, match="no free port"):
            broken.create(spec)
    # Only the template cluster, a cache shared by every instance, remains.
    assert [p.name[:3] for p in local_data_root.iterdir()] == [".t-"]


def test_a_login_is_proven_once_per_copied_cluster_and_process(creator_for, monkeypatch):
    logins = LoginSpy(monkeypatch, local)
    create = creator_for("local")
    templates = TemplateBuilds(create)
    try:
        templates.build()
        made = [create() for _ in range(2)]
        assert logins.calls == 1  # the builder's, a copy of the initdb cluster like the two after it
        frozen, _, _ = templates.build()
        clones = [create.clone(frozen) for _ in range(2)]
        assert logins.calls == 2  # the template's first clone
        for db in made + clones:
            assert db.whoami() == db.tenant
    finally:
        templates.cleanup()


def test_login_proof_every_proves_each_create(creator_for, monkeypatch):
    logins = LoginSpy(monkeypatch, local)
    create = creator_for("local", login_proof="every")
    create(), create()
    assert logins.calls == 2


def test_a_first_login_that_fails_proves_nothing_and_leaves_nothing(creator_for, monkeypatch, local_data_root):
    logins = LoginSpy(monkeypatch, local)
    create = creator_for("local")
    before = sorted(local_data_root.iterdir())
    logins.refuse = True
    with pytest.raises(BackendTimeout):
        create()
    assert sorted(local_data_root.iterdir()) == before
    # The refused login proved nothing: the second create proves it, the third relies on it.
    made = [create(), create()]
    assert logins.calls == 2
    assert [db.whoami() for db in made] == [db.tenant for db in made]


def test_a_template_keeps_only_the_wal_its_start_reads(creator_for):
    create = creator_for("local")
    templates = TemplateBuilds(create)
    try:
        builder = templates.builder()
        with builder.connect() as conn:
            # WAL enough for several of the 1 MiB segments, recycled ones among them.
            conn.execute("create table filler as select repeat('x', 500) as v from generate_series(1, 20000)")
            conn.execute("drop table filler")
            conn.commit()
        frozen = templates.freeze(builder)
        wal = create.backend._templates.data_of(frozen.artifact) / "pg_wal"
        assert len([entry for entry in wal.iterdir() if entry.is_file()]) == 1
        clone = create.clone(frozen)
        with clone.connect() as conn:
            assert conn.execute("select count(*) from items").fetchone() == (ROWS,)
    finally:
        templates.cleanup()


@pytest.mark.parametrize("weighable", [True, False], ids=["own-session-groups", "in-the-api-session"])
@pytest.mark.parametrize("nice", [10, 0])
def test_the_programs_that_copy_and_remove_run_below_the_api_the_servers_do_not(
    creator_for, local_data_root, monkeypatch, nice, weighable
):
    """A warm create must not wait for a core behind copies and removals (ServerPrograms.run): the
    backend's programs run ``nice`` steps below the API, where the kernel groups tasks by session in
    a session whose group weighs as little (or else in the API's session); a server keeps the API's
    priority, in a session of its own."""
    if weighable and not session_groups.weighable():
        pytest.skip("this kernel has no session groups, or this process may not weigh them (CAP_SYS_ADMIN)")
    monkeypatch.setattr(session_groups, "weighable", lambda: weighable)
    creator = creator_for("local", nice=nice)
    db = creator()
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    pid = int((local_data_root / db.ref / "data" / "postmaster.pid").read_text().split()[0])
    assert _stat_of(pid)["nice"] == ours
    assert _stat_of(pid)["session"] != os.getsid(0)
    with db.connect() as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    seen = creator.backend._programs.run(
        ["sh", "-c", "cat /proc/$$/stat; cat /proc/$$/autogroup || true"], None, "look"
    )
    stat, _, group = seen.stdout.partition("\n")
    program = _parse_stat(stat)
    assert program["nice"] == min(19, ours + nice)
    assert program["group"] != os.getpgid(0)
    if weighable and nice:
        assert program["session"] != os.getsid(0)
        assert group.split()[-1] == str(nice)
    else:
        assert program["session"] == os.getsid(0)
    home = local_data_root / db.ref
    creator.backend.delete(db.ref, db.spec.credentials, instance_id=db.spec.instance_id, force=True)
    assert not home.exists()


def _stat_of(pid: int) -> dict[str, int]:
    return _parse_stat(Path(f"/proc/{pid}/stat").read_text())


def _parse_stat(text: str) -> dict[str, int]:
    fields = text.rsplit(")", 1)[1].split()
    # proc(5): pgrp, session and nice are fields 5, 6 and 19; fields[0] is field 3, the state.
    return {"group": int(fields[2]), "session": int(fields[3]), "nice": int(fields[16])}
