"""Tenants of a shared cluster with ``tenant_createdb`` on, attacking their neighbours as a review did:
each test does what one attack did and holds the backend to the rule it broke. Nothing a tenant
does holds up another tenant's create or claim, ends another tenant's session, or keeps another
tenant's delete from leaving nothing of it; nor does a tenant outlive its own delete."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import psycopg
import pytest
from psycopg import sql

from postgraas_server.errors import InUse

from .databases import Creator, Made
from .shared_cluster import create_database, gone, owned_by, tenant_session

pytestmark = pytest.mark.integration

# Low, so that an old-style wait fails quickly; what must not wait at all is held to MAX_WAIT_S.
LOCK_TIMEOUT = 5
MAX_WAIT_S = 2.0


def createdb_tenants(creator_for: Callable[..., Creator]) -> Creator:
    return creator_for("cluster", tenant_createdb=True, lock_timeout=LOCK_TIMEOUT)


def left_nothing(pg_server, made: Made, *databases: str) -> None:
    """Neither the tenant's role nor its database, nor any of ``databases`` it created, is left."""
    assert gone(pg_server, made), (made.spec.db_username, made.spec.db_name)
    assert owned_by(pg_server, made.spec.db_username) == set()
    assert not set(databases) & pg_server.databases()


def timed(action: Callable[[], object]) -> float:
    started = time.monotonic()
    action()
    return time.monotonic() - started


def wait_until(condition: Callable[[], object], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the attack never got going"
        time.sleep(0.05)


def in_loop(action: Callable[[], None]) -> tuple[threading.Event, threading.Thread]:
    """``action`` run over and over in a thread until the event is set (errors: try again)."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                action()
            except psycopg.Error:
                time.sleep(0.01)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return stop, thread


@pytest.mark.parametrize("hold", ["open", "prepared"])
def test_a_tenants_grant_on_postgres_left_open_holds_up_no_create_claim_or_delete(
    cluster_left_as_found, creator_for, pg_server, hold
):
    create = createdb_tenants(creator_for)
    attacker, pooled, neighbour = create(), create.pooled(), create()
    bystander = tenant_session(attacker, dbname="postgres")
    # The attacker changes the row of "postgres" in pg_database (a no-op grant updates it too) and
    # keeps the transaction open, or prepared: a session of its own that no removal ends.
    holder = attacker.connect(dbname="postgres")
    holder.execute(
        sql.SQL("grant connect on database postgres to {}").format(sql.Identifier(attacker.spec.db_username))
    )
    gid = f"hold_{uuid.uuid4().hex[:8]}"
    if hold == "prepared":
        holder.execute(sql.SQL("prepare transaction {}").format(sql.Literal(gid)))
        holder.commit()
    try:
        assert timed(create) < MAX_WAIT_S
        assert timed(lambda: create.claim(pooled)) < MAX_WAIT_S
        # A process of the deployment started meanwhile: its first create closes the shared databases.
        assert timed(createdb_tenants(creator_for)) < MAX_WAIT_S
        assert timed(lambda: create.delete(neighbour)) < MAX_WAIT_S
        assert timed(lambda: create.delete(create(), force=True)) < MAX_WAIT_S
        # None of that needed what the attacker holds, so nothing of the attacker's was ended.
        assert bystander.execute("select current_database()").fetchone() == ("postgres",)
        if hold == "open":
            assert holder.execute("select 1").fetchone() == (1,)
        left_nothing(pg_server, neighbour)
    finally:
        bystander.close()
        if hold == "open":
            holder.rollback()
        holder.close()
        with pg_server.admin() as admin:
            if admin.execute("select 1 from pg_prepared_xacts where gid = %s", (gid,)).fetchone():
                admin.execute(sql.SQL("rollback prepared {}").format(sql.Literal(gid)))


def test_concurrent_creates_and_deletes_neither_fail_nor_end_a_tenants_session_in_postgres(
    cluster_left_as_found, creator_for, pg_server
):
    bystander = createdb_tenants(creator_for)()
    session = tenant_session(bystander, dbname="postgres")
    # Each its own backend: as the processes of a server, or several servers of one deployment.
    creators = [createdb_tenants(creator_for) for _ in range(6)]
    errors: list[str] = []

    def churn(create: Creator) -> None:
        for n in range(8):
            try:
                made = create()
                # Forced first: the first create of a backend logs in as the tenant, a session that may
                # linger a moment after its close.
                create.delete(made, force=n % 2 == 0)
            except Exception as e:
                errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=churn, args=(create,)) for create in creators]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert session.execute("select current_database()").fetchone() == ("postgres",)
    finally:
        session.close()
    for create in creators:
        for made in create.made:
            left_nothing(pg_server, made)


def make_invalid(attacker: Made, name: str, grantee: str, pg_server) -> None:
    """The attacker's database ``name`` holding a grant to ``grantee``, left invalid by an interrupted
    DROP DATABASE (PostgreSQL 15.4+ marks it so first: datconnlimit -2, no connection possible)."""
    for _ in range(20):
        create_database(attacker, name, dbname="postgres")
        with attacker.connect(dbname=name, autocommit=True) as conn:
            conn.execute("create table t (v int)")
            conn.execute(sql.SQL("grant select on t to {}").format(sql.Identifier(grantee)))
        with attacker.connect(dbname="postgres", autocommit=True) as conn:
            conn.execute("set statement_timeout = '1ms'")
            try:
                conn.execute(sql.SQL("drop database {}").format(sql.Identifier(name)))
            except psycopg.errors.QueryCanceled:
                pass
        with pg_server.admin() as admin:
            row = admin.execute("select datconnlimit from pg_database where datname = %s", (name,)).fetchone()
        if row is not None:
            break
    assert row is not None, "the DROP DATABASE was never interrupted"
    if row[0] != -2:
        # Interrupted before it marked the database: mark it as PostgreSQL would have.
        with pg_server.admin() as admin:
            admin.execute("update pg_database set datconnlimit = -2 where datname = %s", (name,))
    with pytest.raises(psycopg.OperationalError, match="invalid database"):
        attacker.connect(dbname=name)


def test_an_invalid_database_another_tenant_left_with_a_grant_to_me_does_not_keep_my_delete(
    cluster_left_as_found, creator_for, pg_server
):
    create = createdb_tenants(creator_for)
    attacker, victim = create(), create()
    make_invalid(attacker, f"bx_{attacker.spec.db_name}", victim.spec.db_username, pg_server)

    create.delete(victim)

    left_nothing(pg_server, victim)
    assert attacker.whoami() == attacker.tenant


def test_a_prepared_transaction_in_a_closed_database_of_another_tenant_does_not_keep_my_delete(
    cluster_left_as_found, creator_for, pg_server
):
    create = createdb_tenants(creator_for)
    attacker, victim = create(), create()
    closed = f"ax_{attacker.spec.db_name}"
    create_database(attacker, closed, dbname="postgres")
    # A setting of its own role in the victim's database locks that database; prepared, the lock
    # stays with no session, in a database the attacker then closes to every connection.
    with attacker.connect(dbname=closed) as conn:
        conn.execute(
            sql.SQL("alter role {} in database {} set work_mem = '1MB'").format(
                sql.Identifier(attacker.spec.db_username), sql.Identifier(victim.spec.db_name)
            )
        )
        conn.execute(sql.SQL("prepare transaction {}").format(sql.Literal(f"p_{uuid.uuid4().hex[:8]}")))
        conn.commit()
    with attacker.connect(dbname="postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("alter database {} allow_connections false").format(sql.Identifier(closed)))

    create.delete(victim)

    left_nothing(pg_server, victim)
    with pg_server.admin() as admin:
        # Reopened for the rollback only.
        assert admin.execute("select datallowconn from pg_database where datname = %s", (closed,)).fetchone() == (
            False,
        )


def prepared_in(pg_server, database: str) -> list[str]:
    with pg_server.admin() as admin:
        return [gid for (gid,) in admin.execute("select gid from pg_prepared_xacts where database = %s", (database,))]


def test_another_tenant_preparing_transactions_in_a_database_i_created_does_not_keep_my_forced_delete(
    cluster_left_as_found, creator_for, pg_server
):
    create = createdb_tenants(creator_for)
    attacker, victim = create(), create()
    created = f"test_{victim.spec.db_name}"
    create_database(victim, created, dbname="postgres")
    sessions: list[psycopg.Connection] = []

    def squatter(gid: str) -> Callable[[], None]:
        session: list[psycopg.Connection] = []

        def squat() -> None:
            # PostgreSQL opens a new database to PUBLIC: the attacker gets in and prepares a
            # transaction there as soon as the last one is rolled back, reconnecting when ended.
            if not session or session[0].closed or session[0].broken:
                session[:] = [attacker.connect(dbname=created, autocommit=True)]
                sessions.append(session[0])
            session[0].execute("begin")
            session[0].execute("select 1")
            try:
                session[0].execute(sql.SQL("prepare transaction {}").format(sql.Literal(gid)))
            except psycopg.errors.DuplicateObject:
                session[0].execute("rollback")

        return squat

    # Several at once: while the removal rolls back one, the others prepare theirs again.
    loops = [in_loop(squatter(f"squat_{n}_{uuid.uuid4().hex[:8]}")) for n in range(3)]
    try:
        wait_until(lambda: len(prepared_in(pg_server, created)) == 3)
        create.delete(victim, force=True)
    finally:
        for stop, thread in loops:
            stop.set()
            thread.join()
        for conn in sessions:
            conn.close()

    left_nothing(pg_server, victim, created)
    assert attacker.whoami() == attacker.tenant


def test_a_tenant_creating_databases_from_postgres_while_deleted_does_not_outlive_its_delete(
    cluster_left_as_found, creator_for, pg_server
):
    create = createdb_tenants(creator_for)
    made = create()
    names: list[str] = [f"pre{n}_{made.spec.db_name}" for n in range(10)]
    for name in names:
        create_database(made, name, dbname="postgres")
    in_postgres = tenant_session(made, dbname="postgres")
    try:
        # A session in "postgres" is the tenant's too: a plain delete is refused and changes nothing.
        with pytest.raises(InUse):
            create.delete(made)
        assert owned_by(pg_server, made.spec.db_username) == {made.spec.db_name, *names}
        assert made.whoami() == made.tenant
    finally:
        in_postgres.close()

    runner: list[psycopg.Connection] = []

    def create_more() -> None:
        # As a test runner would, reconnecting when its session is ended.
        if not runner or runner[0].closed or runner[0].broken:
            runner[:] = [made.connect(dbname="postgres", autocommit=True)]
        names.append(f"r{len(names)}_{made.spec.db_name}")
        runner[0].execute(sql.SQL("create database {}").format(sql.Identifier(names[-1])))
        created_meanwhile.append(names[-1])

    created_meanwhile: list[str] = []
    stop, thread = in_loop(create_more)
    try:
        wait_until(lambda: len(created_meanwhile) >= 3)
        create.delete(made, force=True)
    finally:
        stop.set()
        thread.join()
        for conn in runner:
            conn.close()

    left_nothing(pg_server, made, *names)
