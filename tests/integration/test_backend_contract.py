"""One contract, every backend, against the real thing: a Docker engine, a PostgreSQL server,
local postgres processes. Each test runs once per backend."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import docker.errors
import psycopg
import pytest

from postgraas_server.backends import Backend, DatabaseSpec, ObjectState, build_backend
from postgraas_server.backends.top_directory import FS_TOPDIR_FL
from postgraas_server.config import settings_from_dict
from postgraas_server.errors import Conflict, PostgraasError

from ..file_flags import file_system_type, flags
from .conftest import RUN_ID, RUN_LABEL, TEST_IMAGE

BACKENDS = ["docker", "cluster", "local"]
DEPLOYMENT = f"contract-{RUN_ID}"


def backend_config(name: str, request: pytest.FixtureRequest, **overrides) -> dict:
    if name == "docker":
        request.getfixturevalue("docker_client")
        return {
            "type": "docker",
            "image": TEST_IMAGE,
            "advertised_host": "127.0.0.1",
            "bind_address": "127.0.0.1",
            "labels": {RUN_LABEL: RUN_ID},
            **overrides,
        }
    if name == "cluster":
        server = request.getfixturevalue("pg_server")
        return {
            "type": "cluster",
            "host": server.host,
            "port": server.port,
            "username": server.username,
            "password": server.password,
            **overrides,
        }
    root = request.getfixturevalue("local_data_root")
    return {"type": "local", "data_root": str(root), "advertised_host": "127.0.0.1", **overrides}


def make_backend(name: str, request: pytest.FixtureRequest, **overrides) -> Backend:
    settings = settings_from_dict({"backends": {name: backend_config(name, request, **overrides)}})
    return build_backend(settings.backends[name], DEPLOYMENT)


@pytest.fixture(params=BACKENDS)
def backend_name(request) -> str:
    return request.param


@dataclass
class Made:
    spec: DatabaseSpec
    ref: str
    host: str
    port: int

    def connect(self, **overrides) -> psycopg.Connection:
        params = {
            "host": self.host,
            "port": self.port,
            "user": self.spec.db_username,
            "password": self.spec.db_pwd,
            "dbname": self.spec.db_name,
            "connect_timeout": 5,
            **overrides,
        }
        return psycopg.connect(**params)


class Creator:
    """Creates through one backend and deletes (force) whatever a test left, at teardown."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.made: list[Made] = []

    def __call__(self, **overrides) -> Made:
        tag = uuid.uuid4().hex[:8]
        fields = {
            "instance_id": 900000 + len(self.made),
            "instance_name": f"contract-{tag}",
            "db_name": f"db_{tag}",
            "db_username": f"user_{tag}",
            "db_pwd": f"pw {tag} ü'\"",
            **overrides,
        }
        spec = DatabaseSpec(**fields)
        provisioned = self.backend.create(spec)
        self.made.append(Made(spec, provisioned.ref, provisioned.host, provisioned.port))
        return self.made[-1]

    def cleanup(self) -> None:
        for item in self.made:
            self.backend.delete(item.ref, item.spec.credentials, instance_id=item.spec.instance_id, force=True)


@pytest.fixture
def creator_for(request) -> Iterator[Callable[[str], Creator]]:
    creators: list[Creator] = []

    def _for(name: str, **overrides) -> Creator:
        creators.append(Creator(make_backend(name, request, **overrides)))
        return creators[-1]

    yield _for
    for creator in creators:
        creator.cleanup()


@pytest.fixture
def create(backend_name, creator_for) -> Creator:
    return creator_for(backend_name)


@pytest.fixture
def backend(create) -> Backend:
    return create.backend


def test_create_use_delete_gone(backend, create):
    db = create()
    with db.connect() as conn:
        conn.execute("create table t (v text)")
        conn.execute("insert into t values ('written')")
        conn.commit()
    with db.connect() as conn:
        assert conn.execute("select v from t").fetchone() == ("written",)
        assert conn.execute("select current_user, current_database()").fetchone() == (
            db.spec.db_username,
            db.spec.db_name,
        )
    assert backend.exists(db.ref)
    description = backend.describe(db.ref)
    assert (description.state, description.host, description.port) == (ObjectState.RUNNING, db.host, db.port)
    backend.health()

    backend.delete(db.ref, db.spec.credentials, instance_id=db.spec.instance_id)
    assert not backend.exists(db.ref)
    assert backend.describe(db.ref).state == ObjectState.MISSING
    with pytest.raises(psycopg.OperationalError):
        db.connect()
    # Idempotent: deleting what is gone is no error.
    backend.delete(db.ref, db.spec.credentials, instance_id=db.spec.instance_id)


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
        psycopg.connect(
            host=b.host,
            port=b.port,
            user=a.spec.db_username,
            password=a.spec.db_pwd,
            dbname=b.spec.db_name,
            connect_timeout=5,
        )
    with pytest.raises(psycopg.OperationalError):
        b.connect(password=a.spec.db_pwd)


def test_delete_refuses_open_sessions_unless_forced(backend, create):
    db = create()
    conn = db.connect()
    try:
        with pytest.raises(Conflict, match="1 open session"):
            backend.delete(db.ref, db.spec.credentials, instance_id=db.spec.instance_id)
        assert backend.exists(db.ref)
        backend.delete(db.ref, db.spec.credentials, instance_id=db.spec.instance_id, force=True)
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")
    finally:
        conn.close()
    assert not backend.exists(db.ref)


def _hold_port() -> tuple[socket.socket, int]:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    return holder, holder.getsockname()[1]


def test_failure_half_way_leaves_nothing(backend_name, request):
    tag = uuid.uuid4().hex[:8]
    spec = DatabaseSpec(990000, f"broken-{tag}", f"db_{tag}", f"user_{tag}", "pw")
    if backend_name == "docker":
        # The container starts, but cannot be ready in 10 ms.
        broken = make_backend("docker", request, ready_timeout=0.01)
        with pytest.raises(PostgraasError, match="not ready"):
            broken.create(spec)
        client = request.getfixturevalue("docker_client")
        assert client.containers.list(all=True, filters={"label": f"postgraas.name={spec.instance_name}"}) == []
    elif backend_name == "cluster":
        # The role is created, then CREATE DATABASE fails: its template is in use.
        server = request.getfixturevalue("pg_server")
        with server.admin() as admin:
            admin.execute(f"create database busy_{tag}")
        try:
            with server.admin(f"busy_{tag}"):
                with pytest.raises(Conflict, match="being accessed by other users"):
                    make_backend("cluster", request, templates=[f"busy_{tag}"]).create(
                        DatabaseSpec(**{**spec.__dict__, "template": f"busy_{tag}"})
                    )
            assert spec.db_username not in server.roles()
            assert spec.db_name not in server.databases()
        finally:
            with server.admin() as admin:
                admin.execute(f"drop database busy_{tag} with (force)")
    else:
        # The template is copied, then no port of the (one-port) range can be bound.
        holder, port = _hold_port()
        try:
            broken = make_backend("local", request, port_min=port, port_max=port)
            with pytest.raises(PostgraasError, match="no free port"):
                broken.create(spec)
        finally:
            holder.close()
        root = request.getfixturevalue("local_data_root")
        # Only the template cluster, a cache shared by every instance, remains.
        assert [p.name[:3] for p in root.iterdir()] == [".t-"]


def test_cluster_refuses_existing_role_or_database(creator_for):
    create = creator_for("cluster")
    db = create()
    with pytest.raises(Conflict) as taken:
        create(db_username=db.spec.db_username)
    assert taken.value.errors == {"db_username": "already exists"}
    with pytest.raises(Conflict) as taken:
        create(db_name=db.spec.db_name)
    assert taken.value.errors == {"db_name": "already exists"}


def test_cluster_tenant_is_confined(creator_for, pg_server):
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


def test_cluster_creates_from_a_template(creator_for, pg_server):
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


def test_docker_container_is_labelled(creator_for, docker_client):
    db = creator_for("docker")()
    container = docker_client.containers.get(db.ref)
    assert container.labels["postgraas.managed"] == "true"
    assert container.labels["postgraas.name"] == db.spec.instance_name


def test_docker_delete_removes_the_volume(creator_for, docker_client):
    create = creator_for("docker")
    db = create()
    volumes = [m["Name"] for m in docker_client.containers.get(db.ref).attrs["Mounts"] if m["Type"] == "volume"]
    assert volumes
    create.backend.delete(db.ref, db.spec.credentials, instance_id=db.spec.instance_id)
    for volume in volumes:
        with pytest.raises(docker.errors.NotFound):
            docker_client.volumes.get(volume)


def test_local_cluster_runs_unprivileged_and_private(creator_for, local_data_root):
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


def test_cluster_refuses_to_copy_a_database_that_is_no_template(creator_for, pg_server):
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


def test_cluster_delete_removes_what_the_tenant_left_elsewhere(creator_for, pg_server):
    # Where the cluster's databases stay open to PUBLIC (close_shared_databases false), a tenant
    # may connect to "postgres" and own a large object there; DROP ROLE would fail on it.
    create = creator_for("cluster", close_shared_databases=False)
    db = create()
    with pg_server.admin() as admin:
        # As a cluster that nobody closed (other tests' backends close it).
        admin.execute("grant connect on database postgres to public")
    with psycopg.connect(
        host=db.host,
        port=db.port,
        user=db.spec.db_username,
        password=db.spec.db_pwd,
        dbname="postgres",
        autocommit=True,
    ) as conn:
        conn.execute("select lo_create(0)")
    with pg_server.admin() as admin:
        admin.execute("revoke connect on database postgres from public")
    create.backend.delete(db.ref, db.spec.credentials, instance_id=db.spec.instance_id, force=True)
    assert db.spec.db_username not in pg_server.roles()
    with pg_server.admin() as admin:
        assert admin.execute("select count(*) from pg_largeobject_metadata").fetchone() == (0,)


def test_local_accepts_the_postgres_database_name(creator_for):
    db = creator_for("local")(db_name="postgres")
    with db.connect() as conn:
        conn.execute("create table mine (v int)")
        conn.commit()
