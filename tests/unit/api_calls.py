"""Requests to the app under test (conftest's ``client``, with the fake backend) and a look at its
meta db, for the unit tests of the API, the service and its workers."""

import time

from sqlalchemy import select

from postgraas_server.models import DBInstance, db

BODY = {"postgraas_instance_name": "demo", "db_name": "app", "db_username": "alice", "db_pwd": "s3cr@t pw"}


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def rows(app):
    with app.app_context():
        return list(db.session.execute(select(DBInstance)).scalars())


def create(client, **overrides):
    return client.post("/postgraas_instances", json={**BODY, **overrides})


def fill(app, keeper) -> int:
    """One round of the pool keeper (conftest's ``keeper``) of ``app``; how many it made."""
    with app.app_context():
        try:
            return keeper.fill()
        finally:
            db.session.remove()
