"""Tenants of one shared cluster, attacked as a tenant would attack: whatever tenant A does inside
its database (grants to B's role, flags on its database, settings that steer whoever connects,
locks held open) cannot block, outlive or steal B's delete. Against the real cluster backend."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest

from postgraas_server.backends import DatabaseSpec
from postgraas_server.errors import BackendTimeout, PostgraasError

from .conftest import AdminHeldLock
from .test_backend_contract import Creator, Made, make_backend


@pytest.fixture(autouse=True)
def cluster_left_as_found(pg_server) -> Iterator[None]:
    """After each test: no role and no database more than before it."""
    roles, databases = pg_server.roles(), pg_server.databases()
    yield
    assert pg_server.roles() == roles, f"roles left behind: {pg_server.roles() - roles}"
    assert pg_server.databases() == databases, f"databases left behind: {pg_server.databases() - databases}"


@pytest.fixture
def tenants(request) -> Iterator[Creator]:
    creator = Creator(make_backend("cluster", request, lock_timeout=2))
    yield creator
    # What a test did not delete itself (a failing one): force, ignoring what is gone already.
    for made in creator.made:
        creator.backend.delete(made.ref, made.spec.credentials, instance_id=made.spec.instance_id, force=True)


def tenant_session(made: Made, **overrides) -> psycopg.Connection:
    return made.connect(autocommit=True, **overrides)


def delete(tenants: Creator, made: Made, *, force: bool) -> str | None:
    return tenants.backend.delete(made.ref, made.spec.credentials, instance_id=made.spec.instance_id, force=force)


def gone(pg_server, made: Made) -> bool:
    return made.spec.db_username not in pg_server.roles() and made.spec.db_name not in pg_server.databases()


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


def test_deleting_a_lost_instance_leaves_whoever_took_its_names(tenants, pg_server):
    lost = tenants()
    # An admin removes the instance's database and role behind Postgraas's back...
    with pg_server.admin() as admin:
        admin.execute(f"drop database {lost.spec.db_name} with (force)")
        admin.execute(f"drop role {lost.spec.db_username}")
    # ...and another instance takes the very same names.
    taker = tenants(db_name=lost.spec.db_name, db_username=lost.spec.db_username)
    with tenant_session(taker) as conn:
        conn.execute("create table mine (v int)")
    with taker.connect() as conn:
        conn.execute("insert into mine values (1)")
        conn.execute("prepare transaction 'takers_own'")
    left = delete(tenants, lost, force=True)
    assert left is not None and "no longer this instance's" in left
    with pg_server.admin(taker.spec.db_name) as admin:
        # Nothing of the taker's was touched, its prepared transaction included.
        assert admin.execute("select count(*) from pg_prepared_xacts where gid = 'takers_own'").fetchone() == (1,)
        admin.execute("commit prepared 'takers_own'")
    with tenant_session(taker) as conn:
        assert conn.execute("select count(*) from mine").fetchone() == (1,)
    assert delete(tenants, taker, force=True) is None
    assert gone(pg_server, taker)


@pytest.mark.parametrize("taken", ["database", "role"])
def test_a_lost_instance_whose_one_name_was_taken_removes_only_what_is_its_own(tenants, pg_server, taken):
    lost = tenants()
    tag = uuid.uuid4().hex[:8]
    with pg_server.admin() as admin:
        if taken == "database":
            admin.execute(f"drop database {lost.spec.db_name} with (force)")
        else:
            # Its role survives only without its database: hand that to the admin, then drop the role.
            admin.execute(f"alter database {lost.spec.db_name} owner to current_user")
            admin.execute(f"drop database {lost.spec.db_name} with (force)")
            admin.execute(f"drop role {lost.spec.db_username}")
    if taken == "database":
        taker = tenants(db_name=lost.spec.db_name, db_username=f"other_{tag}")
    else:
        taker = tenants(db_name=f"other_{tag}", db_username=lost.spec.db_username)
    left = delete(tenants, lost, force=True)
    assert left is not None
    with tenant_session(taker) as conn:
        assert conn.execute("select current_user, current_database()").fetchone() == (
            taker.spec.db_username,
            taker.spec.db_name,
        )
    if taken == "database":
        # Its own role went, the taker's database stayed.
        assert lost.spec.db_username not in pg_server.roles()
    assert delete(tenants, taker, force=True) is None
    assert gone(pg_server, taker)


def test_a_role_postgraas_never_made_is_never_dropped(tenants, pg_server):
    made = tenants()
    with pg_server.admin() as admin:
        # An admin's hand-made role of the same name after the instance's went: no marker.
        admin.execute(f"drop database {made.spec.db_name} with (force)")
        admin.execute(f"drop role {made.spec.db_username}")
        admin.execute(f"create role {made.spec.db_username} login")
    try:
        assert delete(tenants, made, force=True) is not None
        assert made.spec.db_username in pg_server.roles()
    finally:
        with pg_server.admin() as admin:
            admin.execute(f"drop role {made.spec.db_username}")


def test_a_tenant_granting_to_my_role_in_a_loop_cannot_stall_my_delete(tenants, pg_server):
    """A GRANT in a tight loop (reconnecting when ended) makes DROP OWNED fail with "tuple
    concurrently updated", no lock wait in sight."""
    attacker, victim = tenants(), tenants()
    with tenant_session(attacker) as a:
        a.execute("create table loot (v int)")
    stop = threading.Event()

    def regrant() -> None:
        while not stop.is_set():
            try:
                with tenant_session(attacker) as a:
                    while not stop.is_set():
                        a.execute(f"grant select on loot to {victim.spec.db_username}")
            except psycopg.errors.UndefinedObject:
                return  # the role is gone
            except psycopg.Error:
                continue  # ended: in again at once

    thread = threading.Thread(target=regrant)
    thread.start()
    try:
        time.sleep(0.1)
        assert delete(tenants, victim, force=True) is None
    finally:
        stop.set()
        thread.join()
    assert gone(pg_server, victim)


def test_what_another_tenant_built_on_my_objects_cannot_keep_my_role(tenants, pg_server):
    attacker, victim = tenants(), tenants()
    with pg_server.admin() as admin:
        # The attacker lets the victim in (as its owner may): CONNECT and CREATE in its schema.
        admin.execute(f"set role {attacker.spec.db_username}")
        admin.execute(f"grant connect on database {attacker.spec.db_name} to {victim.spec.db_username}")
    with tenant_session(attacker) as a:
        a.execute(f"grant create, usage on schema public to {victim.spec.db_username}")
    with tenant_session(victim, dbname=attacker.spec.db_name) as b:
        b.execute("create table public.bait (v int)")
        b.execute(f"grant select on public.bait to {attacker.spec.db_username}")
    with tenant_session(attacker) as a:
        a.execute("create view keep_alive as select * from public.bait")
    assert delete(tenants, victim, force=True) is None
    assert gone(pg_server, victim)
    with tenant_session(attacker) as a:
        # What it built on the victim's table went with the table.
        assert a.execute("select count(*) from pg_views where viewname = 'keep_alive'").fetchone() == (0,)


def test_another_tenants_prepared_transaction_cannot_stall_my_delete(tenants, pg_server):
    attacker, victim = tenants(), tenants()
    with tenant_session(attacker) as a:
        a.execute("create table loot (v int)")
        a.execute(f"grant select on loot to {victim.spec.db_username}")
    with attacker.connect() as a:
        a.execute(f"grant insert on loot to {victim.spec.db_username}")
        a.execute("prepare transaction 'in_the_way'")
    started = time.monotonic()
    assert delete(tenants, victim, force=True) is None
    assert time.monotonic() - started < 4
    assert gone(pg_server, victim)
    with pg_server.admin() as admin:
        assert admin.execute("select count(*) from pg_prepared_xacts where gid = 'in_the_way'").fetchone() == (0,)


def test_a_designated_template_is_closed_to_tenants_and_refused_while_one_holds_anything_in_it(
    request, pg_server, tenants
):
    template = f"tmpl_{uuid.uuid4().hex[:8]}"
    with pg_server.admin() as admin:
        admin.execute(f"create database {template}")  # CONNECT for PUBLIC, as CREATE DATABASE leaves it
    tenant = tenants()
    copier = Creator(make_backend("cluster", request, templates=[template]))
    try:
        with tenant_session(tenant, dbname=template) as planter:
            planter.execute("select lo_from_bytea(0, 'planted')")
        with pytest.raises(PostgraasError) as refused:
            copier(template=template)
        assert refused.value.code == 400 and refused.value.errors == {"template": "is not available"}
        # Closed on the way: no tenant gets in any more.
        with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
            tenant_session(tenant, dbname=template)
        with pg_server.admin(template) as admin:
            admin.execute("select lo_unlink(oid) from pg_largeobject_metadata")
        made = copier(template=template)
        with tenant_session(made) as conn:
            assert conn.execute("select count(*) from pg_largeobject_metadata").fetchone() == (0,)
    finally:
        copier.cleanup()
        with pg_server.admin() as admin:
            admin.execute(f"drop database {template} with (force)")


def test_the_first_creates_of_several_processes_close_the_shared_databases_together(request, pg_server):
    """Each server process closes the shared databases on its first create; the first creates of
    several workers (and threads) come in together and revoke the same rows at once."""
    with pg_server.admin() as admin:
        for database in ("postgres", "template1"):
            admin.execute(f"grant connect, temporary on database {database} to public")
    processes = [Creator(make_backend("cluster", request)) for _ in range(3)]
    barrier = threading.Barrier(9)
    failures: list[BaseException] = []

    def first_create(creator: Creator) -> None:
        barrier.wait()
        try:
            creator()
        except BaseException as e:  # collected: the assertion below names them
            failures.append(e)

    threads = [threading.Thread(target=first_create, args=(c,)) for c in processes for _ in range(3)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
        with pg_server.admin() as admin:
            for database in ("postgres", "template1"):
                assert admin.execute(
                    "select has_database_privilege('public', %s, 'CONNECT')", (database,)
                ).fetchone() == (False,)
    finally:
        for creator in processes:
            creator.cleanup()
