"""Tenants of one shared cluster, attacked as a tenant would attack: whatever tenant A does inside
its database (grants to B's role, flags on its database, settings that steer whoever connects,
locks held open) cannot block, outlive or steal B's delete. Against the real cluster backend."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import psycopg
import pytest

from postgraas_server.backends import DatabaseSpec
from postgraas_server.errors import BackendTimeout, PostgraasError

from .conftest import AdminHeldLock, make_backend
from .databases import Creator
from .shared_cluster import delete, gone, tenant_session

pytestmark = pytest.mark.usefixtures("cluster_left_as_found")


# Each plants, as tenant A inside A's database, something that names B's role (b). The database-wide
# ones run last in "everything", since they leave A's database hard to reach for anybody.
PLANTS: dict[str, Callable[[psycopg.Connection, str, str], None]] = {
    "table privilege": lambda a, b, _: a.execute(f"grant select, insert on loot to {b}"),
    "column privilege": lambda a, b, _: a.execute(f"grant update (v) on loot to {b}"),
    "default privilege": lambda a, b, _: a.execute(f"alter default privileges grant select on tables to {b}"),
    "default privilege in a schema": lambda a, b, _: a.execute(
        f"alter default privileges in schema side grant usage on sequences to {b}"
    ),
    "row-level policy": lambda a, b, _: a.execute(
        f"alter table loot enable row level security; create policy only_b on loot to {b} using (true)"
    ),
    "schema privilege": lambda a, b, _: a.execute(f"grant usage, create on schema side to {b}"),
    "function privilege": lambda a, b, _: a.execute(f"grant execute on function side.answer() to {b}"),
    "sequence privilege": lambda a, b, _: a.execute(f"grant usage on sequence side.counter to {b}"),
    "type privilege": lambda a, b, _: a.execute(f"grant usage on type side.mood to {b}"),
    "large object privilege": lambda a, b, _: a.execute(f"grant select on large object 424242 to {b}"),
    "database privilege": lambda a, b, db: a.execute(f"grant connect, temporary on database {db} to {b}"),
    "database made a template": lambda a, b, db: a.execute(
        f"grant select on loot to {b}; alter database {db} is_template true"
    ),
    "admin steered to the owner's role": lambda a, b, db: a.execute(
        f"grant select on loot to {b}; alter database {db} set role = {a.info.user!r}"
    ),
    "admin steered to read-only": lambda a, b, db: a.execute(
        f"grant select on loot to {b}; alter database {db} set default_transaction_read_only = on"
    ),
    "admin steered to the owner's functions": lambda a, b, db: a.execute(
        f"grant select on loot to {b}; alter database {db} set search_path = side, pg_catalog"
    ),
    "admin steered to an encoding without a codec": lambda a, b, db: a.execute(
        f"grant select on loot to {b}; alter database {db} set client_encoding = 'EUC_TW'"
    ),
    "database limited to no connections": lambda a, b, db: a.execute(
        f"grant select on loot to {b}; alter database {db} connection limit 0"
    ),
    "admin logins refused": lambda a, b, db: a.execute(
        f"grant select on loot to {b}; alter database {db} set local_preload_libraries = 'no_such_library'"
    ),
    "everything": lambda a, b, db: [
        PLANTS[kind](a, b, db) for kind in PLANTS if kind not in ("everything", "admin logins refused")
    ],
}


def prepare_attacker(a: psycopg.Connection) -> None:
    a.execute("create table loot (v int)")
    a.execute("insert into loot values (7)")
    a.execute("create schema side")
    a.execute("create function side.answer() returns int language sql as 'select 42'")
    a.execute("create sequence side.counter")
    a.execute("create type side.mood as enum ('ok')")
    a.execute("select lo_create(424242)")


@pytest.mark.parametrize("force", [True, False], ids=["force", "no-force"])
@pytest.mark.parametrize("kind", list(PLANTS))
def test_a_dependency_another_tenant_plants_cannot_block_my_delete(tenants, pg_server, kind, force):
    attacker, victim = tenants(), tenants()
    with tenant_session(attacker) as a:
        prepare_attacker(a)
        PLANTS[kind](a, victim.spec.db_username, attacker.spec.db_name)
    with pg_server.admin() as admin:
        # The victim's role is named where it cannot even connect: a database of another tenant.
        assert (
            admin.execute(
                "select count(*) > 0 from pg_shdepend where refobjid = (select oid from pg_roles where rolname = %s)"
                " and dbid <> 0",
                (victim.spec.db_username,),
            ).fetchone()
            == (True,)
            or kind == "database privilege"
        )
    assert delete(tenants, victim, force=force) is None
    assert gone(pg_server, victim)
    # The attacker's database is as it was, apart from what named the victim.
    # Read as the admin, past what the attacker set on its database for whoever connects.
    with psycopg.connect(
        host=pg_server.host,
        port=pg_server.port,
        user=pg_server.username,
        password=pg_server.password,
        dbname=attacker.spec.db_name,
        options="-c local_preload_libraries= -c client_encoding=UTF8 -c role=none",
    ) as admin:
        assert admin.execute("select v from public.loot").fetchone() == (7,)
    assert delete(tenants, attacker, force=True) is None
    assert gone(pg_server, attacker)


@pytest.mark.parametrize("flag", ["is_template true", "allow_connections false", "connection limit 0"])
def test_flags_an_owner_sets_on_its_own_database_do_not_outlive_its_delete(tenants, pg_server, flag):
    own = tenants()
    with tenant_session(own) as conn:
        conn.execute("create table kept (v int)")
    # An owner may set these, from a session in another database it may reach (a grant of another
    # tenant's, say); here the admin sets them for it, as the owner could.
    with pg_server.admin() as admin:
        admin.execute(f"set role {own.spec.db_username}")
        admin.execute(f"alter database {own.spec.db_name} {flag}")
    assert delete(tenants, own, force=True) is None
    assert gone(pg_server, own)


@pytest.mark.parametrize("source", ["tenant's own, flagged a template", "template1", "designated but a tenant's"])
def test_only_a_template_the_admin_designated_can_be_copied(request, pg_server, source):
    tag = uuid.uuid4().hex[:8]
    victim_backend = Creator(make_backend("cluster", request))
    victim = victim_backend()
    try:
        with tenant_session(victim) as conn:
            conn.execute("create table secrets (v text)")
            conn.execute("insert into secrets values ('top secret')")
            conn.execute(f"alter database {victim.spec.db_name} is_template true")
        named = "template1" if source == "template1" else victim.spec.db_name
        designated = [named] if source == "designated but a tenant's" else []
        thief = Creator(make_backend("cluster", request, templates=designated))
        spec = DatabaseSpec(970000, f"thief-{tag}", f"thief_{tag}", f"thief_{tag}", "pw", template=named)
        with pytest.raises(PostgraasError) as refused:
            thief.backend.create(spec)
        assert refused.value.code == 400 and list(refused.value.errors) == ["template"]
        assert spec.db_name not in pg_server.databases() and spec.db_username not in pg_server.roles()
    finally:
        victim_backend.cleanup()
    assert gone(pg_server, victim)


def test_template1_cannot_be_designated(request):
    with pytest.raises(Exception, match="template1 is open to every role"):
        make_backend("cluster", request, templates=["template1"])


@pytest.mark.parametrize("database", ["postgres", "template1"])
def test_tenants_cannot_connect_to_the_shared_databases(tenants, database):
    made = tenants()
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        tenant_session(made, dbname=database)


@pytest.mark.parametrize("held", ["a table grant to my role", "a default privilege for my role"])
def test_a_tenant_holding_a_lock_my_delete_needs_is_ended_not_waited_on(tenants, pg_server, held):
    attacker, victim = tenants(), tenants()
    b = victim.spec.db_username
    with tenant_session(attacker) as a:
        a.execute("create table loot (v int)")
        a.execute(f"grant select on loot to {b}")
        a.execute(f"alter default privileges grant select on tables to {b}")
    holder = attacker.connect()  # a transaction left open, holding the catalog row it changed
    if held == "a table grant to my role":
        holder.execute(f"grant insert on loot to {b}")
    else:
        holder.execute(f"alter default privileges grant insert on tables to {b}")
    try:
        started = time.monotonic()
        assert delete(tenants, victim, force=True) is None
        # Well within the lock_timeout a blocked statement would otherwise run into, twice over.
        assert time.monotonic() - started < 4
        assert gone(pg_server, victim)
        with pytest.raises(psycopg.OperationalError):
            holder.execute("select 1")
    finally:
        holder.close()


@pytest.mark.parametrize("force", [True, False], ids=["force", "no-force"])
def test_a_lock_held_by_someone_not_a_tenant_times_out_and_a_retry_finishes(tenants, pg_server, force):
    victim = tenants()
    lock = AdminHeldLock(pg_server, victim.spec.db_username)
    try:
        started = time.monotonic()
        with pytest.raises(BackendTimeout, match="retried by the reaper"):
            delete(tenants, victim, force=force)
        assert time.monotonic() - started < 10
        # Whatever went already stays gone; its login is gone with the first step.
        with pytest.raises(psycopg.OperationalError):
            victim.connect()
        lock.release()
        assert delete(tenants, victim, force=True) is None
        assert gone(pg_server, victim)
    finally:
        lock.drop()


def test_a_prepared_transaction_does_not_keep_a_database_alive(tenants, pg_server):
    made = tenants()
    with made.connect() as conn:
        conn.execute("create table t (v int)")
        conn.execute("insert into t values (1)")
        conn.execute("prepare transaction 'kept_forever'")
    assert delete(tenants, made, force=True) is None
    assert gone(pg_server, made)
