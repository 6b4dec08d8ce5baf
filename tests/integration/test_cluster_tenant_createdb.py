"""The cluster backend's ``tenant_createdb``: a tenant of a shared server may create databases of its
own where the admin turned it on; they are its instance's, and go with it whatever the tenant did to
them (sessions left open, template and connection flags, a rename of its own database)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from postgraas_server.errors import InUse

from .conftest import backend_config
from .databases import Creator, Made
from .servers import Server, body, start, stop_server
from .shared_cluster import create_database, owned_by

pytestmark = pytest.mark.integration


@pytest.fixture
def createdb(cluster_left_as_found, creator_for) -> Creator:
    return creator_for("cluster", tenant_createdb=True)


def test_off_by_default_the_tenant_gets_the_servers_refusal(cluster_left_as_found, creator_for):
    made = creator_for("cluster")()
    with made.connect(autocommit=True) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
        conn.execute("create database test_refused")
    assert "permission denied to create database" in str(refused.value)
    with pytest.raises(psycopg.OperationalError, match="permission denied"):
        made.connect(dbname="postgres")


def test_on_the_tenant_may_connect_to_postgres_where_runners_create_and_drop_theirs(createdb, pg_server):
    made = createdb()
    test_db = f"test_{made.spec.db_name}"
    # As Django's runner does: create and drop the test database from a session in "postgres".
    with made.connect(dbname="postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(test_db)))
        conn.execute(sql.SQL("drop database {}").format(sql.Identifier(test_db)))
        # CONNECT only: nothing of its own may be left there.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("create temporary table t (v int)")
    createdb.delete(made)
    assert made.spec.db_username not in pg_server.roles()


def test_the_databases_a_tenant_creates_go_with_its_instance(createdb, pg_server):
    made = createdb()
    test_db = f"test_{made.spec.db_name}"
    create_database(made, test_db)
    with made.connect(dbname=test_db) as conn:
        conn.execute("create table t (v int)")
        conn.commit()
    assert owned_by(pg_server, made.spec.db_username) == {made.spec.db_name, test_db}

    note = createdb.delete(made)

    assert note is not None and repr(test_db) in note
    assert test_db not in pg_server.databases()
    assert made.spec.db_name not in pg_server.databases()
    assert made.spec.db_username not in pg_server.roles()


def test_a_session_in_a_database_the_tenant_created_refuses_a_plain_delete_and_changes_nothing(createdb, pg_server):
    made = createdb()
    test_db = f"test_{made.spec.db_name}"
    create_database(made, test_db)
    session = made.connect(dbname=test_db, autocommit=True)
    try:
        with pytest.raises(InUse):
            createdb.delete(made)
        assert owned_by(pg_server, made.spec.db_username) == {made.spec.db_name, test_db}
        assert made.whoami() == made.tenant
        # Forced, the session is ended and both go.
        createdb.delete(made, force=True)
        with pytest.raises(psycopg.OperationalError):
            session.execute("select 1")
    finally:
        session.close()
    assert owned_by(pg_server, made.spec.db_username) == set()
    assert made.spec.db_username not in pg_server.roles()


def test_flags_and_a_rename_by_the_tenant_do_not_keep_its_databases(createdb, pg_server):
    made = createdb()
    flagged, renamed = f"t_{made.spec.db_name}", f"r_{made.spec.db_name}"
    create_database(made, flagged)
    # What an owner with CREATEDB may do: rename its instance's database away (from a session
    # elsewhere), flag a database a template (DROP DATABASE refuses one) and close it to connections.
    with made.connect(dbname=flagged, autocommit=True) as conn:
        conn.execute(
            sql.SQL("alter database {} rename to {}").format(sql.Identifier(made.spec.db_name), sql.Identifier(renamed))
        )
    with made.connect(dbname=renamed, autocommit=True) as conn:
        conn.execute(sql.SQL("alter database {} is_template true").format(sql.Identifier(flagged)))
        conn.execute(sql.SQL("alter database {} allow_connections false").format(sql.Identifier(flagged)))
    assert owned_by(pg_server, made.spec.db_username) == {flagged, renamed}

    createdb.delete(made, force=True)

    assert owned_by(pg_server, made.spec.db_username) == set()
    assert not {flagged, renamed} & pg_server.databases()
    assert made.spec.db_username not in pg_server.roles()


def test_a_tenant_cannot_take_or_drop_another_tenants_database(createdb, pg_server):
    alice, bob = createdb(), createdb()
    with alice.connect(autocommit=True) as conn:
        with pytest.raises(psycopg.errors.DuplicateDatabase):
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(bob.spec.db_name)))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql.SQL("drop database {}").format(sql.Identifier(bob.spec.db_name)))
    createdb.delete(alice, force=True)
    assert bob.whoami() == bob.tenant


def test_another_tenant_in_a_database_i_created_does_not_keep_my_delete(createdb, pg_server):
    mine, theirs = createdb(), createdb()
    test_db = f"test_{mine.spec.db_name}"
    create_database(mine, test_db)
    # PostgreSQL opens a new database to PUBLIC: the other tenant gets in, and holds a lock there.
    intruder = theirs.connect(dbname=test_db)
    try:
        intruder.execute("create temporary table squat (v int)")
        assert createdb.delete(mine) is not None
        with pytest.raises(psycopg.OperationalError):
            intruder.execute("select 1")
    finally:
        intruder.close()
    assert owned_by(pg_server, mine.spec.db_username) == set()
    assert theirs.whoami() == theirs.tenant


def hand_over(pooled_by: Creator, to: Creator) -> Made:
    """An object pooled by one backend, handed over by another of the same deployment."""
    pooled = pooled_by.pooled()
    pooled_by.made.remove(pooled)
    to.made.append(pooled)
    return to.claim(pooled)


def test_a_pooled_tenant_gets_the_privilege_its_backend_gives_now(cluster_left_as_found, creator_for):
    off, on = creator_for("cluster"), creator_for("cluster", tenant_createdb=True)
    # Pooled while the setting was off, handed over with it on: as a cold create would be.
    made = hand_over(off, on)
    create_database(made, f"test_{made.spec.db_name}")
    with made.connect(dbname="postgres") as conn:
        assert conn.execute("select current_database()").fetchone() == ("postgres",)
    # And the other way round.
    made_off = hand_over(on, off)
    with made_off.connect(autocommit=True) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("create database test_refused_after_claim")
    with pytest.raises(psycopg.OperationalError, match="permission denied"):
        made_off.connect(dbname="postgres")


@pytest.fixture(scope="module")
def server(request, tmp_path_factory) -> Iterator[Server]:
    """A server whose cluster backend lets tenants create databases, with a quick reaper."""
    backends = {"cluster": backend_config("cluster", request, tenant_createdb=True)}
    lifecycle = {"reaper_interval": 0.5}
    server = start(tmp_path_factory.mktemp("createdb"), backends, default="cluster", lifecycle=lifecycle)
    yield server
    stop_server(server)


def test_through_the_api_a_delete_and_the_reaper_leave_no_database_of_the_tenant(server, pg_server):
    deleted, expiring = server.post(body("deleted")).json(), server.post(body("expiring", ttl=3)).json()
    for instance in (deleted, expiring):
        with psycopg.connect(instance["connection_uri"], autocommit=True) as conn:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(f"test_{instance['db_name']}")))

    answer = server.delete(deleted["id"], {"db_pwd": deleted["db_pwd"]})
    assert answer.status_code == 200, answer.text
    assert f"'test_{deleted['db_name']}'" in answer.json()["msg"]
    # Nobody deletes the other: its ttl runs out and the reaper removes it, with what its tenant made.
    deadline = time.monotonic() + 30
    while server.get(f"/{expiring['id']}").status_code != 404:
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.2)
    for instance in (deleted, expiring):
        assert owned_by(pg_server, instance["db_username"]) == set()
        assert not {instance["db_name"], f"test_{instance['db_name']}"} & pg_server.databases()
        assert instance["db_username"] not in pg_server.roles()
