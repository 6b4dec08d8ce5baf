"""The cluster backend's templates (the contract every backend keeps is test_backend_contract_templates.py),
attacked as tenants would: a builder, its neighbours and the clones' tenants are untrusted. Nobody
reaches a template or another tenant's clone; the builder cannot log in once frozen; nothing a
tenant does passes its database off as a template; a dropped template leaves nothing behind."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace

import psycopg
import pytest
from psycopg import sql

from postgraas_server.backends import Credentials, FrozenTemplate
from postgraas_server.backends.cluster import backend as cluster
from postgraas_server.backends.postgres.client import NotReady
from postgraas_server.errors import BackendError, BackendTimeout, Conflict

from .databases import Made
from .template_builds import TemplateBuilds, next_template_id

pytestmark = pytest.mark.usefixtures("cluster_left_as_found")

ROWS = 1000


@pytest.fixture
def builds_for(creator_for) -> Iterator[Callable[..., TemplateBuilds]]:
    made: list[TemplateBuilds] = []

    def _for(**settings: object) -> TemplateBuilds:
        made.append(TemplateBuilds(creator_for("cluster", **settings), ROWS))
        return made[-1]

    yield _for
    for builds in made:
        builds.cleanup()


def database_state(pg_server, name: str) -> tuple | None:
    """Owner, whether it allows connections or is a template, and who may connect (PUBLIC counted)."""
    with pg_server.admin() as admin:
        return admin.execute(
            "select pg_get_userbyid(d.datdba), d.datallowconn, d.datistemplate,"
            " array(select coalesce(pg_get_userbyid(nullif(a.grantee, 0)), 'public') from aclexplode(d.datacl) a"
            "       where a.privilege_type = 'CONNECT' and a.grantee <> d.datdba)"
            " from pg_database d where d.datname = %s",
            (name,),
        ).fetchone()


def can_log_in(pg_server, role: str) -> bool:
    with pg_server.admin() as admin:
        return admin.execute("select rolcanlogin from pg_roles where rolname = %s", (role,)).fetchone()[0]


def test_freeze_closes_the_template_to_everyone_and_the_builder_and_what_it_made_beside_go(builds_for, pg_server):
    builds = builds_for(tenant_createdb=True)
    builder, neighbour = builds.builder(), builds.create()
    side = f"side_{builder.spec.db_name}"
    db, role = builder.spec.db_name, builder.spec.db_username
    with builder.connect(autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(side)))
        # Whoever the builder lets in, and whoever could copy a database flagged a template.
        conn.execute(
            sql.SQL("grant connect on database {} to {} with grant option").format(
                sql.Identifier(db), sql.Identifier(neighbour.spec.db_username)
            )
        )
        conn.execute(sql.SQL("alter database {} is_template true").format(sql.Identifier(db)))
    inside = neighbour.connect(dbname=db, autocommit=True)
    # Uncommitted at the freeze: not the template's.
    pending = builder.connect()
    pending.execute("insert into items (v) values ('prepared')")
    pending.execute("prepare transaction 'builder_pending'")
    pending.commit()
    pending.close()

    frozen = builds.freeze(builder)

    with pytest.raises(psycopg.OperationalError):
        inside.execute("select 1")
    inside.close()
    admin = pg_server.username
    assert database_state(pg_server, frozen.artifact) == (admin, False, False, [])
    assert side not in pg_server.databases() and db not in pg_server.databases()
    assert not can_log_in(pg_server, role)
    for dbname in (frozen.artifact, "postgres", side, db):
        with pytest.raises(psycopg.OperationalError):
            builder.connect(dbname=dbname)
    with pytest.raises(psycopg.OperationalError, match="not currently accepting connections|permission denied"):
        neighbour.connect(dbname=frozen.artifact)
    with pg_server.admin() as conn:
        assert conn.execute("select count(*) from pg_prepared_xacts where gid = 'builder_pending'").fetchone() == (0,)
    clone = builds.create.clone(frozen)
    with clone.connect() as conn:
        assert conn.execute("select count(*) from items").fetchone() == (ROWS,)


def test_no_tenant_reaches_the_template_or_another_clone(builds_for, pg_server):
    builds = builds_for(tenant_createdb=True)
    frozen = builds.freeze(builds.builder())
    first, second = builds.create.clone(frozen), builds.create.clone(frozen)
    # Each clone ran REASSIGN OWNED BY the template's role, which would hand over a database it owned.
    assert database_state(pg_server, frozen.artifact) == (pg_server.username, False, False, [])
    for source in (frozen.artifact, first.spec.db_name):
        with pytest.raises(psycopg.OperationalError):
            second.connect(dbname=source)
        # CREATEDB copies only a database flagged a template, or one of its own.
        with (
            second.connect(dbname="postgres", autocommit=True) as conn,
            pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied to copy database"),
        ):
            conn.execute(
                sql.SQL("create database {} template {}").format(
                    sql.Identifier(f"copy_{uuid.uuid4().hex[:8]}"), sql.Identifier(source)
                )
            )
    with second.connect(autocommit=True) as conn:
        # Nor can a tenant take the template's rights: its database and objects are not its role's.
        for statement in (
            "alter database {} allow_connections true",
            "alter database {} is_template true",
            "alter database {} owner to current_user",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql.SQL(statement).format(sql.Identifier(frozen.artifact)))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql.SQL("grant {} to current_user").format(sql.Identifier(frozen.tenant.db_username)))


def test_the_clones_tenant_owns_everything_in_it_and_nothing_names_the_builder(builds_for, pg_server):
    builds = builds_for()
    builder = builds.builder()
    with builder.connect() as conn:
        conn.execute("create schema app")
        conn.execute("create type app.mood as enum ('ok')")
        conn.execute("create function app.answer() returns int language sql as 'select 42'")
        conn.execute("create sequence app.counter")
        conn.execute("select lo_create(4242)")
        conn.execute("alter default privileges grant select on tables to public")
        conn.execute("alter table items enable row level security")
        conn.execute(
            sql.SQL("create policy builders on items to {} using (true)").format(
                sql.Identifier(builder.spec.db_username)
            )
        )
        conn.commit()
    frozen = builds.freeze(builder)
    clone = builds.create.clone(frozen, ephemeral=True)
    with clone.connect() as conn:
        conn.execute("alter type app.mood add value 'great'")
        conn.execute("alter sequence app.counter restart")
        conn.execute("drop function app.answer()")
        conn.execute("select lo_unlink(4242)")
        assert conn.execute("select count(*) from items").fetchone() == (ROWS,)
        assert conn.execute("show synchronous_commit").fetchone() == ("off",)
        conn.execute("drop schema app cascade")
        conn.commit()
    with pg_server.admin(clone.spec.db_name) as conn:
        assert conn.execute(
            "select count(*) from pg_shdepend s join pg_database d on d.oid = s.dbid"
            " where d.datname = current_database() and s.refobjid = %s::regrole",
            (builder.spec.db_username,),
        ).fetchone() == (0,)
        assert conn.execute("select has_schema_privilege('public', 'public', 'CREATE')").fetchone() == (False,)


def test_a_tenant_cannot_pass_its_database_off_as_a_template(builds_for, pg_server):
    builds = builds_for(tenant_createdb=True)
    builder = builds.builder()
    frozen = builds.freeze(builder)
    forger = builds.create()
    marker = f"postgraas deployment={builds.backend.deployment} template=4242 db={{}} created=2024-01-01T00:00:00+00:00"
    fake = f"{frozen.artifact[:-8]}ffffffff"
    with forger.connect(autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(fake)))
        for name in (fake, forger.spec.db_name):
            conn.execute(
                sql.SQL("comment on database {} is {}").format(sql.Identifier(name), sql.Literal(marker.format(name)))
            )
        # Only the admin marks roles (COMMENT ON ROLE needs CREATEROLE).
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                sql.SQL("comment on role {} is {}").format(
                    sql.Identifier(forger.spec.db_username), sql.Literal(marker.format(fake))
                )
            )
    listed = set(builds.backend.list_templates().values())
    assert frozen.artifact in listed and not listed & {fake, forger.spec.db_name}

    for artifact in (fake, forger.spec.db_name):
        builds.backend.drop_template(artifact)
        passed_off = FrozenTemplate(artifact, Credentials(forger.spec.db_name, forger.spec.db_username, ""))
        with pytest.raises(BackendError, match="no template"):
            builds.create.clone(passed_off)
    # Nor a template of ours with another role than its own: REASSIGN OWNED BY that role would hand
    # the forger's database to the clone's tenant.
    with pytest.raises(BackendError, match="no template"):
        builds.create.clone(replace(frozen, tenant=forger.spec.credentials))
    assert {fake, forger.spec.db_name} <= pg_server.databases()
    assert forger.whoami() == forger.tenant
    # A frozen builder is no instance: deleting it by its old names takes nothing of the template.
    builds.create.delete(builder, force=True)
    clone = builds.create.clone(frozen)
    with clone.connect() as conn:
        assert conn.execute("select count(*) from items").fetchone() == (ROWS,)


def test_freeze_refuses_a_database_holding_another_roles_objects_and_the_builder_works_on(builds_for, pg_server):
    builds = builds_for(tenant_createdb=True)
    builder, neighbour = builds.builder(), builds.create()
    db, side = builder.spec.db_name, f"side_{builder.spec.db_name}"
    with builder.connect(autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(side)))
        conn.execute(
            sql.SQL("grant connect on database {} to {}").format(
                sql.Identifier(db), sql.Identifier(neighbour.spec.db_username)
            )
        )
        conn.execute(sql.SQL("grant create on schema public to {}").format(sql.Identifier(neighbour.spec.db_username)))
    with neighbour.connect(dbname=db, autocommit=True) as conn:
        conn.execute("create table planted (v int)")
    template_id = next_template_id()
    with pytest.raises(BackendError, match="objects of other roles"):
        builds.backend.freeze(builder.ref, builder.spec.credentials, template_id=template_id)
    assert builder.whoami() == builder.tenant
    assert side in pg_server.databases()
    assert template_id not in builds.backend.list_templates()
    assert builder.ref in {o.ref for o in builds.backend.list_objects()}


def test_a_failed_clone_leaves_nothing(builds_for, pg_server, monkeypatch):
    builds = builds_for(login_proof="every")
    frozen = builds.freeze(builds.builder())
    taken = builds.create()
    before = pg_server.roles(), pg_server.databases()
    with pytest.raises(Conflict):
        builds.create.clone(frozen, db_name=taken.spec.db_name)
    with pytest.raises(Conflict):
        builds.create.clone(frozen, db_username=taken.spec.db_username)

    def refused(*args, **kwargs):
        raise NotReady("connection refused")

    monkeypatch.setattr(cluster, "wait_for_login", refused)
    with pytest.raises(BackendTimeout):
        builds.create.clone(frozen)
    assert (pg_server.roles(), pg_server.databases()) == before


def test_a_drop_waits_for_a_clone_under_way(builds_for, pg_server, monkeypatch):
    builds = builds_for()
    frozen = builds.freeze(builds.builder())
    copied, go = threading.Event(), threading.Event()
    real = cluster.create_tenant

    def slow_create_tenant(*args, **kwargs):
        real(*args, **kwargs)
        # CREATE DATABASE has copied the template; the clone still holds the template's lock.
        copied.set()
        assert go.wait(10)

    monkeypatch.setattr(cluster, "create_tenant", slow_create_tenant)
    made: list[Made] = []
    cloning = threading.Thread(target=lambda: made.append(builds.create.clone(frozen)))
    dropping = threading.Thread(target=builds.backend.drop_template, args=(frozen.artifact,))
    cloning.start()
    assert copied.wait(10)
    dropping.start()
    time.sleep(1)
    assert dropping.is_alive()
    go.set()
    cloning.join()
    dropping.join()
    with made[0].connect() as conn:
        assert conn.execute("select count(*) from items").fetchone() == (ROWS,)
    assert frozen.artifact not in pg_server.databases()
    assert frozen.tenant.db_username not in pg_server.roles()
    with pytest.raises(BackendError, match="no template"):
        builds.create.clone(frozen)


def test_drop_template_removes_the_role_whatever_a_tenant_granted_it(builds_for, pg_server):
    builds = builds_for()
    frozen = builds.freeze(builds.builder())
    clone, neighbour = builds.create.clone(frozen), builds.create()
    # Role names are visible to every tenant; grants to them keep a role until DROP OWNED.
    for granter in (clone, neighbour):
        with granter.connect(autocommit=True) as conn:
            conn.execute("create table shared (v int)")
            conn.execute(sql.SQL("grant select on shared to {}").format(sql.Identifier(frozen.tenant.db_username)))
            conn.execute(
                sql.SQL("grant connect on database {} to {}").format(
                    sql.Identifier(granter.spec.db_name), sql.Identifier(frozen.tenant.db_username)
                )
            )
    builds.backend.drop_template(frozen.artifact)
    assert frozen.artifact not in pg_server.databases()
    assert frozen.tenant.db_username not in pg_server.roles()
    assert frozen.artifact not in builds.backend.list_templates().values()
    for granter in (clone, neighbour):
        with granter.connect() as conn:
            assert conn.execute("select count(*) from shared").fetchone() == (0,)


def test_two_freezes_under_one_id_are_listed_oldest_first_so_both_can_be_dropped(builds_for):
    """A build frozen again after the server lost its first freeze (it died before the row said
    so): the reaper must see the first one, which no row holds, before the one its row holds."""
    builds = builds_for()
    template_id = next_template_id()
    first = builds.freeze(builds.builder(), template_id)
    second = builds.freeze(builds.builder(), template_id)
    assert builds.backend.list_templates()[template_id] == first.artifact
    builds.backend.drop_template(first.artifact)
    assert builds.backend.list_templates()[template_id] == second.artifact
