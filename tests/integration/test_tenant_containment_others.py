"""Tenants of one shared cluster, continued (test_tenant_containment.py is what tenant A plants in
its database): the names a lost instance leaves, roles Postgraas never made, a tenant's loops and
prepared transactions beside B's delete, designated templates, and the first creates of several
server processes at once. Against the real cluster backend."""

from __future__ import annotations

import threading
import time
import uuid

import psycopg
import pytest

from postgraas_server.errors import PostgraasError

from .conftest import make_backend
from .databases import Creator
from .shared_cluster import delete, gone, tenant_session

pytestmark = pytest.mark.usefixtures("cluster_left_as_found")


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
