"""The backend contract (postgraas_server/backends/contract.py), each promise a test run against
every backend of CONTRACT_BACKENDS: docker, cluster and local with their real components (a Docker
engine, a PostgreSQL server, local postgres processes; logins through psycopg), and the fake of the
unit tests, held to the same promises. Here: creating, logging in, deleting, describing, listing
and the capabilities; the warm pool's methods are in test_backend_contract_pool.py, and what only
one backend does in test_<type>_backend.py."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest

from postgraas_server.backends import Backend, ObjectDescription, ObjectState
from postgraas_server.errors import BackendUnavailable, Conflict

from .conftest import BACKENDS, CONTRACT_TEMPLATE_BACKENDS, make_backend
from .databases import Creator
from .servers import free_port


def test_each_backend_declares_the_contract(create):
    assert isinstance(create.backend, Backend)


def test_create_returns_once_the_tenant_can_log_in(create):
    db = create()
    assert db.whoami() == db.tenant


def test_wrong_credentials_are_refused(create):
    db = create()
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        db.connect(password="not the password")
    with pytest.raises(psycopg.OperationalError):
        db.connect(user="nobody_here")


def test_two_instances_cannot_open_each_other(create):
    a, b = create(), create()
    # A's login to B's database, wherever B lives; and B's user with A's password.
    with pytest.raises(psycopg.OperationalError):
        b.connect(user=a.spec.db_username, password=a.spec.db_pwd)
    with pytest.raises(psycopg.OperationalError):
        b.connect(password=a.spec.db_pwd)


def test_exists_and_describe_follow_the_object_until_it_is_deleted(create):
    backend, db = create.backend, create()
    assert backend.exists(db.ref)
    assert backend.describe(db.ref) == ObjectDescription(ObjectState.RUNNING, db.host, db.port)

    # Its own object, all of it removed: nothing to say.
    assert create.delete(db) is None
    assert not backend.exists(db.ref)
    assert backend.describe(db.ref).state == ObjectState.MISSING
    with pytest.raises(psycopg.OperationalError):
        db.connect()


def test_delete_is_idempotent(create):
    db = create()
    create.delete(db)
    # What is gone already is no error, forced or not.
    create.delete(db)
    create.delete(db, force=True)
    assert not create.backend.exists(db.ref)


def test_delete_refuses_open_sessions_unless_forced(create):
    backend, db = create.backend, create()
    session = db.connect()
    try:
        with pytest.raises(Conflict):
            create.delete(db)
        assert backend.exists(db.ref)
        assert session.execute("select 1").fetchone() == (1,)
        create.delete(db, force=True)
        # Forced: the session was ended with the object.
        with pytest.raises(psycopg.OperationalError):
            session.execute("select 1")
    finally:
        session.close()
    assert not backend.exists(db.ref)


def test_health_returns_when_the_backend_can_create(create):
    assert create.backend.health() is None


# Settings that leave each real backend unable to create: its engine, server or programs are not there.
UNREACHABLE: dict[str, Callable[[], dict]] = {
    # Over TCP: docker-py leaves the socket of a failed unix-socket connect unclosed (a ResourceWarning).
    "docker": lambda: {"base_url": f"tcp://127.0.0.1:{free_port()}"},
    "cluster": lambda: {"port": free_port()},
    "local": lambda: {"bin_dir": "/nonexistent/postgresql/bin"},
}


@pytest.mark.parametrize("name", BACKENDS)
def test_health_says_why_a_backend_cannot_create(request, name):
    broken = make_backend(name, request, **UNREACHABLE[name]())
    with pytest.raises(BackendUnavailable) as unavailable:
        broken.health()
    assert str(unavailable.value).strip()


def test_list_objects_finds_what_it_made_with_the_instance_id_until_it_is_deleted(create):
    backend = create.backend
    db, pooled = create(), create.pooled()
    listed = {o.ref: o for o in backend.list_objects()}
    assert listed[db.ref].instance_id == db.spec.instance_id
    assert listed[pooled.ref].instance_id == pooled.spec.instance_id

    create.delete(db)
    create.delete(pooled, force=True)
    refs = {o.ref for o in backend.list_objects()}
    assert db.ref not in refs and pooled.ref not in refs


def test_what_list_objects_gives_is_enough_to_delete_it(create):
    """The reaper deletes what it lists, whose password it does not know, sessions open or not."""
    backend, db = create.backend, create()
    session = db.connect()
    try:
        (listed,) = [o for o in backend.list_objects() if o.ref == db.ref]
        backend.delete(listed.ref, listed.credentials, instance_id=listed.instance_id, force=True)
    finally:
        session.close()
    assert not backend.exists(db.ref)


def a_sentence(answer: object) -> bool:
    return isinstance(answer, str) and len(answer.split()) >= 3


def test_why_no_pool_and_why_no_template_answer_none_or_a_sentence(create):
    for answer in (create.backend.why_no_pool(), create.backend.why_no_template()):
        assert answer is None or a_sentence(answer), answer


@pytest.fixture
def cluster_template(pg_server, creator_for) -> Iterator[tuple[Creator, str]]:
    """A cluster backend whose settings designate a template, and the template: seeded by the admin."""
    template = f"tmpl_{uuid.uuid4().hex[:8]}"
    with pg_server.admin() as admin:
        admin.execute(f"create database {template}")
    try:
        with pg_server.admin(template) as conn:
            conn.execute("create table seeded (v int)")
            conn.execute("insert into seeded values (42)")
        yield creator_for("cluster", templates=[template]), template
    finally:
        with pg_server.admin() as admin:
            admin.execute(f"drop database {template} with (force)")


# Each backend that makes databases from a database its admin designated, and the fixture giving
# one (see cluster_template). Postgraas's own templates: test_backend_contract_templates.py.
TEMPLATES = {"cluster": "cluster_template"}


def test_why_no_template_is_none_exactly_for_the_backends_with_templates(create, contract_name):
    # The fake keeps templates too; its sessions run no SQL, so the template suite leaves it out.
    assert (create.backend.why_no_template() is None) == (contract_name in (*CONTRACT_TEMPLATE_BACKENDS, "fake"))
    assert create.backend.takes_designated_templates == (contract_name in TEMPLATES)


@pytest.mark.parametrize("template_backend", sorted(TEMPLATES))
def test_a_create_from_a_template_works(template_backend, request):
    creator, template = request.getfixturevalue(TEMPLATES[template_backend])
    db = creator(template=template)
    with db.connect() as conn:
        # What the template held, the tenant's now.
        assert conn.execute("select v from seeded").fetchone() == (42,)
        conn.execute("insert into seeded values (43)")
        conn.commit()
