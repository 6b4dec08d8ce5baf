"""init-db: creates the schema, is safe to run twice, and upgrades a postgraas_server 2.x meta db."""

import os

import pytest
import sqlalchemy as sa

from postgraas_server.migrations import upgrade
from postgraas_server.passwords import password_matches

from .api_calls import BODY

LEGACY_2X = """
create table db_instance (
    id integer primary key,
    postgraas_instance_name varchar(100),
    creation_timestamp datetime,
    db_name varchar(100),
    username varchar(500),
    password varchar(100),
    hostname varchar(500),
    port integer,
    container_id varchar(100)
)
"""


def columns(url):
    return {c["name"] for c in sa.inspect(sa.create_engine(url)).get_columns("db_instance")}


def test_fresh_schema_twice(tmp_path):
    url = f"sqlite:///{tmp_path / 'meta.sqlite'}"
    upgrade(url)
    upgrade(url)
    assert {"password_hash", "status", "backend"} <= columns(url)


def test_upgrade_from_2x_keeps_rows_and_hashes_passwords(tmp_path):
    url = f"sqlite:///{tmp_path / 'meta.sqlite'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(LEGACY_2X))
        conn.execute(
            sa.text(
                "insert into db_instance values"
                " (1, 'old', '2019-01-01 10:00:00', 'db', 'u', 'plain-pw', 'h', 5432, 'c1'),"
                " (2, 'newer', '2020-01-01 10:00:00', 'db2', 'u2', '', 'h', 5433, 'c2')"
            )
        )
    upgrade(url, legacy_backend="docker")
    upgrade(url, legacy_backend="docker")
    assert "password" not in columns(url)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "select id, postgraas_instance_name, password_hash, backend, status, port, container_id"
                " from db_instance order by id"
            )
        ).fetchall()
    assert [(r.id, r.postgraas_instance_name, r.backend, r.status, r.port, r.container_id) for r in rows] == [
        (1, "old", "docker", "ready", 5432, "c1"),
        (2, "newer", "docker", "ready", 5433, "c2"),
    ]
    assert password_matches(rows[0].password_hash, "plain-pw")
    assert rows[1].password_hash is None
    # The name is unique from now on.
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(
            sa.text(
                "insert into db_instance"
                " (postgraas_instance_name, db_name, username, backend, status, creation_timestamp)"
                " values ('old', 'x', 'y', 'docker', 'ready', '2020-01-01')"
            )
        )


def test_2x_duplicate_names_stop_the_upgrade_with_a_clear_message(tmp_path):
    url = f"sqlite:///{tmp_path / 'meta.sqlite'}"
    with sa.create_engine(url).begin() as conn:
        conn.execute(sa.text(LEGACY_2X))
        conn.execute(sa.text("insert into db_instance (id, postgraas_instance_name) values (1, 'twin'), (2, 'twin')"))
    with pytest.raises(RuntimeError, match="several instances named 'twin'"):
        upgrade(url)


def test_ids_of_deleted_instances_are_never_reused(app, client):
    first = client.post("/postgraas_instances", json={**BODY, "postgraas_instance_name": "first"}).get_json()
    client.delete(f"/postgraas_instances/{first['postgraas_instance_id']}", json={"db_pwd": BODY["db_pwd"]})
    second = client.post("/postgraas_instances", json={**BODY, "postgraas_instance_name": "second"}).get_json()
    assert second["postgraas_instance_id"] > first["postgraas_instance_id"]


def test_an_upgraded_sqlite_meta_db_is_in_wal_mode(tmp_path):
    url = f"sqlite:///{tmp_path / 'wal.sqlite'}"
    upgrade(url)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("pragma journal_mode").scalar() == "wal"
    finally:
        engine.dispose()


def test_the_sqlite_meta_db_and_its_side_files_are_private(tmp_path):
    # Created 0600 under the usual umask, which would give SQLite's own files 0644; -wal and -shm alike.
    before = os.umask(0o022)
    try:
        url = f"sqlite:///{tmp_path / 'meta.sqlite'}"
        upgrade(url)
    finally:
        os.umask(before)
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        conn.exec_driver_sql("select count(*) from db_instance")
        files = sorted(tmp_path.glob("meta.sqlite*"))
        assert [f.name for f in files] == ["meta.sqlite", "meta.sqlite-shm", "meta.sqlite-wal"]
        assert {oct(f.stat().st_mode & 0o777) for f in files} == {"0o600"}
    engine.dispose()


def test_a_world_readable_meta_db_of_an_older_version_is_made_private(tmp_path):
    path = tmp_path / "meta.sqlite"
    upgrade(f"sqlite:///{path}")
    for file in tmp_path.glob("meta.sqlite*"):
        file.chmod(0o644)
    upgrade(f"sqlite:///{path}")
    assert {oct(f.stat().st_mode & 0o777) for f in tmp_path.glob("meta.sqlite*")} == {"0o600"}
