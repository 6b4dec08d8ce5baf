"""What only the cluster backend does (the contract all backends keep is test_backend_contract*.py):
tenants of one shared server, confined to their database; templates; admin connections kept open
between requests; one login proof for many creates."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from postgraas_server.backends import DatabaseSpec
from postgraas_server.backends.cluster import backend as cluster
from postgraas_server.errors import BackendTimeout, Conflict, PostgraasError

from .conftest import make_backend
from .login_spy import LoginSpy


def spec(instance_id: int) -> DatabaseSpec:
    tag = uuid.uuid4().hex[:8]
    return DatabaseSpec(instance_id, f"kept-{tag}", f"db_{tag}", f"user_{tag}", f"pw-{tag}")


def test_the_admin_connection_is_kept_and_a_server_restart_costs_no_request(request, pg_server):
    backend = make_backend("cluster", request)
    with backend._admin() as conn:
        first = conn.info.backend_pid
    wanted = spec(1)
    created = backend.create(wanted)
    with backend._admin() as conn:
        # The same session served the create: no connect, no login on the request path.
        assert conn.info.backend_pid == first
    backend.delete(created.ref, wanted.credentials, instance_id=wanted.instance_id, force=True)

    pg_server.restart()
    after = spec(2)
    created = backend.create(after)
    with psycopg.connect(
        host=pg_server.host, port=pg_server.port, user=after.db_username, password=after.db_pwd, dbname=after.db_name
    ) as conn:
        assert conn.execute("select current_user").fetchone() == (after.db_username,)
        # PostgreSQL 15: PUBLIC cannot create in the public schema, and no lock-down was needed for it.
        assert conn.execute("select has_schema_privilege('public', 'public', 'create')").fetchone() == (False,)
    backend.delete(created.ref, after.credentials, instance_id=after.instance_id, force=True)


def log_in(pg_server, wanted: DatabaseSpec) -> None:
    with psycopg.connect(
        host=pg_server.host, port=pg_server.port, user=wanted.db_username, password=wanted.db_pwd, dbname=wanted.db_name
    ) as conn:
        assert conn.execute("select current_user, current_database()").fetchone() == (
            wanted.db_username,
            wanted.db_name,
        )


def leftovers(backend, wanted: DatabaseSpec) -> tuple:
    with backend._admin() as conn:
        return conn.execute(
            "select (select count(*) from pg_roles where rolname = %s), "
            "(select count(*) from pg_database where datname = %s)",
            (wanted.db_username, wanted.db_name),
        ).fetchone()


def test_the_first_create_proves_a_tenant_login_and_the_later_ones_rely_on_it(request, pg_server, monkeypatch):
    logins = LoginSpy(monkeypatch, cluster)
    backend = make_backend("cluster", request)
    made = [spec(10 + i) for i in range(3)]
    for wanted in made:
        backend.create(wanted)
    try:
        assert logins.calls == 1
        for wanted in made:
            log_in(pg_server, wanted)
    finally:
        for wanted in made:
            backend.delete(wanted.db_name, wanted.credentials, instance_id=wanted.instance_id, force=True)


def test_login_proof_every_proves_each_create(request, pg_server, monkeypatch):
    logins = LoginSpy(monkeypatch, cluster)
    backend = make_backend("cluster", request, login_proof="every")
    made = [spec(20 + i) for i in range(2)]
    for wanted in made:
        backend.create(wanted)
    try:
        assert logins.calls == 2
    finally:
        for wanted in made:
            backend.delete(wanted.db_name, wanted.credentials, instance_id=wanted.instance_id, force=True)


def test_a_first_create_whose_login_fails_leaves_nothing_and_the_next_create_proves_again(
    request, pg_server, monkeypatch
):
    logins = LoginSpy(monkeypatch, cluster)
    backend = make_backend("cluster", request)
    logins.refuse = True
    refused = spec(30)
    with pytest.raises(BackendTimeout):
        backend.create(refused)
    assert leftovers(backend, refused) == (0, 0)

    second, third = spec(31), spec(32)
    backend.create(second)
    backend.create(third)
    try:
        # The refused login proved nothing: the second create proved it, the third relied on it.
        assert logins.calls == 2
        log_in(pg_server, third)
    finally:
        for wanted in (second, third):
            backend.delete(wanted.db_name, wanted.credentials, instance_id=wanted.instance_id, force=True)


def test_names_taken_in_the_cluster_are_a_conflict(creator_for):
    create = creator_for("cluster")
    db = create()
    with pytest.raises(Conflict) as taken:
        create(db_username=db.spec.db_username)
    assert taken.value.errors == {"db_username": "already exists"}
    with pytest.raises(Conflict) as taken:
        create(db_name=db.spec.db_name)
    assert taken.value.errors == {"db_name": "already exists"}


def test_a_claim_to_names_taken_in_the_cluster_is_a_conflict_and_changes_nothing(creator_for):
    create = creator_for("cluster")
    other_tenant, pooled = create(), create.pooled()
    for taken in ({"db_username": other_tenant.spec.db_username}, {"db_name": other_tenant.spec.db_name}):
        with pytest.raises(Conflict):
            create.claim(pooled, **taken)
    assert other_tenant.whoami() == other_tenant.tenant
    # Still the pool's: claimed as if nothing had happened.
    claimed = create.claim(pooled)
    assert claimed.whoami() == claimed.tenant


def test_a_failed_create_leaves_nothing(request, pg_server):
    tag = uuid.uuid4().hex[:8]
    wanted = DatabaseSpec(990000, f"broken-{tag}", f"db_{tag}", f"user_{tag}", "pw", template=f"busy_{tag}")
    # The role is created, then CREATE DATABASE fails: its template is in use.
    with pg_server.admin() as admin:
        admin.execute(f"create database busy_{tag}")
    try:
        with pg_server.admin(f"busy_{tag}"):
            with pytest.raises(Conflict, match="being accessed by other users"):
                make_backend("cluster", request, templates=[f"busy_{tag}"]).create(wanted)
        assert wanted.db_username not in pg_server.roles()
        assert wanted.db_name not in pg_server.databases()
    finally:
        with pg_server.admin() as admin:
            admin.execute(f"drop database busy_{tag} with (force)")


def test_the_tenant_is_confined_to_its_database(creator_for, pg_server):
    db = creator_for("cluster")()
    with db.connect() as conn:
        rights = conn.execute(
            "select rolsuper, rolcreaterole, rolcreatedb from pg_roles where rolname = current_user"
        ).fetchone()
    assert rights == (False, False, False)
    with pg_server.admin(db.spec.db_name) as admin:
        assert admin.execute("select has_schema_privilege('public', 'public', 'CREATE')").fetchone() == (False,)
    # PUBLIC has no CONNECT on the tenant's database: a role of the cluster cannot open it.
    with pg_server.admin() as admin:
        admin.execute("create role outsider login password 'outsider'")
    try:
        with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
            db.connect(user="outsider", password="outsider")
    finally:
        with pg_server.admin() as admin:
            admin.execute("drop role outsider")


def test_the_tenant_owns_what_its_template_brought(creator_for, pg_server):
    template = f"tmpl_{uuid.uuid4().hex[:8]}"
    # Designated by the admin in the backend's settings; no flag on the database is needed.
    create = creator_for("cluster", templates=[template])
    with pg_server.admin() as admin:
        admin.execute(f"create database {template}")
    try:
        with pg_server.admin(template) as conn:
            conn.execute("create schema app")
            conn.execute("create table app.seeded (id serial primary key, v int)")
            conn.execute("create view app.seeded_view as select v from app.seeded")
            conn.execute("create type app.mood as enum ('ok')")
            conn.execute("create function app.answer() returns int language sql as 'select 42'")
            conn.execute("insert into app.seeded (v) values (42)")
        db = create(template=template)
        with db.connect() as conn:
            # The tenant owns what the template brought: it can read, write and alter it.
            assert conn.execute("select v from app.seeded_view").fetchone() == (42,)
            conn.execute("insert into app.seeded (v) values (app.answer())")
            conn.execute("alter table app.seeded add column note text")
            conn.execute("alter type app.mood add value 'great'")
            conn.commit()
            assert conn.execute("select count(*) from app.seeded").fetchone() == (2,)
    finally:
        with pg_server.admin() as admin:
            admin.execute(f"drop database {template} with (force)")


def test_a_database_that_is_no_designated_template_is_never_copied(creator_for):
    create = creator_for("cluster")
    victim = create()
    with victim.connect() as conn:
        conn.execute("create table secrets (v text)")
        conn.execute("insert into secrets values ('top secret')")
        conn.commit()
    for source in (victim.spec.db_name, "postgres", "template1"):
        with pytest.raises(PostgraasError) as refused:
            create(template=source)
        assert refused.value.code == 400
        assert refused.value.errors == {"template": "is not one of this backend's templates"}


def test_delete_removes_what_the_tenant_left_elsewhere(creator_for, pg_server):
    # Where the cluster's databases stay open to PUBLIC (close_shared_databases false), a tenant
    # may connect to "postgres" and own a large object there; DROP ROLE would fail on it.
    create = creator_for("cluster", close_shared_databases=False)
    db = create()
    with pg_server.admin() as admin:
        # As a cluster that nobody closed (other tests' backends close it).
        admin.execute("grant connect on database postgres to public")
    with db.connect(dbname="postgres", autocommit=True) as conn:
        conn.execute("select lo_create(0)")
    with pg_server.admin() as admin:
        admin.execute("revoke connect on database postgres from public")
    create.delete(db, force=True)
    assert db.spec.db_username not in pg_server.roles()
    with pg_server.admin() as admin:
        assert admin.execute("select count(*) from pg_largeobject_metadata").fetchone() == (0,)
