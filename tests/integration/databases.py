"""What tests make through a backend directly (no server): ``Creator`` creates and claims, and
deletes what is left at teardown; ``Made`` logs in to what it made. Logins go through psycopg to
the real backends' servers and through ``FakeLogins`` to the fake's objects, so that one contract
suite holds the fake to what it holds the real backends to."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import psycopg

from postgraas_server.backends import Backend, DatabaseSpec, FrozenTemplate

from ..fakes import FakeBackend

# psycopg.connect for the real backends, a FakeLogins for the fake.
Connect = Callable[..., Any]


@dataclass
class Made:
    spec: DatabaseSpec
    ref: str
    host: str
    port: int
    login: Connect = psycopg.connect

    def connect(self, **overrides: Any) -> psycopg.Connection:
        """A session as the tenant (``overrides``: other connection parameters)."""
        params = {
            "host": self.host,
            "port": self.port,
            "user": self.spec.db_username,
            "password": self.spec.db_pwd,
            "dbname": self.spec.db_name,
            "connect_timeout": 5,
            **overrides,
        }
        return self.login(**params)

    def whoami(self) -> tuple[str, str]:
        """Who a tenant's login is, and in which database."""
        with self.connect() as conn:
            return conn.execute("select current_user, current_database()").fetchone()

    @property
    def tenant(self) -> tuple[str, str]:
        """Who the tenant's login should be, and in which database."""
        return self.spec.db_username, self.spec.db_name


def new_spec(instance_id: int, **overrides: Any) -> DatabaseSpec:
    """A spec whose names no other test shares, with a password that needs quoting."""
    tag = uuid.uuid4().hex[:8]
    fields = {
        "instance_id": instance_id,
        "instance_name": f"contract-{tag}",
        "db_name": f"db_{tag}",
        "db_username": f"user_{tag}",
        "db_pwd": f"pw {tag} ü'\"",
        **overrides,
    }
    return DatabaseSpec(**fields)


class Creator:
    """Creates through one backend and deletes (force) whatever a test left, at teardown."""

    def __init__(self, backend: Backend, login: Connect = psycopg.connect) -> None:
        self.backend = backend
        self.login = login
        self.made: list[Made] = []

    def __call__(self, **overrides: Any) -> Made:
        spec = new_spec(900000 + len(self.made), **overrides)
        provisioned = self.backend.create(spec)
        self.made.append(Made(spec, provisioned.ref, provisioned.host, provisioned.port, self.login))
        return self.made[-1]

    def pooled(self) -> Made:
        """An object made ahead for the warm pool: throwaway names, and a password the backend may
        replace with its own (docker does), so that it is not for logging in."""
        tag = uuid.uuid4().hex[:8]
        return self(instance_name=f"pool-{tag}", db_name=f"pool_{tag}", db_username=f"pool_{tag}", pooled=True)

    def claim(self, pooled: Made, **overrides: Any) -> Made:
        """Hands ``pooled`` over to new names and password, as the service does for a create."""
        spec = new_spec(pooled.spec.instance_id, **overrides)
        # The pool's names without a password, as the service hands them (it keeps no pooled password).
        provisioned = self.backend.claim(pooled.ref, replace(pooled.spec.credentials, db_pwd=""), spec)
        claimed = Made(spec, provisioned.ref, provisioned.host, provisioned.port, self.login)
        # From now on it is deleted as the instance's (the ref may have changed, the role has).
        self.made[self.made.index(pooled)] = claimed
        return claimed

    def clone(self, template: FrozenTemplate, **overrides: Any) -> Made:
        """A new instance from ``template``, as the service makes one for a create naming it."""
        spec = new_spec(900000 + len(self.made), **overrides)
        provisioned = self.backend.clone(template, spec)
        self.made.append(Made(spec, provisioned.ref, provisioned.host, provisioned.port, self.login))
        return self.made[-1]

    def delete(self, made: Made, *, force: bool = False) -> str | None:
        return self.backend.delete(made.ref, made.spec.credentials, instance_id=made.spec.instance_id, force=force)

    def cleanup(self) -> None:
        for made in self.made:
            self.delete(made, force=True)


class FakeLogins:
    """Logins to a FakeBackend's objects as a PostgreSQL server would answer them: one object's
    database, user and password, else psycopg's OperationalError. Host and port are not looked at."""

    def __init__(self, fake: FakeBackend) -> None:
        self.fake = fake

    def __call__(self, *, user: str, password: str, dbname: str, **_: Any) -> FakeSession:
        for ref, spec in self.fake.objects.items():
            if (spec.db_name, spec.db_username, spec.db_pwd) == (dbname, user, password):
                return FakeSession(self.fake, ref, spec)
        raise psycopg.OperationalError(f'password authentication failed for user "{user}"')


class FakeSession:
    """An open session to a fake object, counted in its ``sessions`` while open. Answers only
    ``select current_user, current_database()`` and ``select 1``; fails once the object is gone
    or handed over to someone else (as a terminated session does)."""

    def __init__(self, fake: FakeBackend, ref: str, spec: DatabaseSpec) -> None:
        self.fake, self.ref, self.spec = fake, ref, spec
        self.closed = False
        fake.sessions[ref] = fake.sessions.get(ref, 0) + 1

    def execute(self, query: str) -> FakeSession:
        if self.closed or self.fake.objects.get(self.ref) is not self.spec:
            raise psycopg.OperationalError("terminating connection due to administrator command")
        answers = {"select current_user, current_database()": (self.spec.db_username, self.spec.db_name)}
        self._row = answers.get(query, (1,) if query == "select 1" else None)
        if self._row is None:
            raise NotImplementedError(f"the fake answers no {query!r}")
        return self

    def fetchone(self) -> tuple:
        return self._row

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.fake.sessions[self.ref] -= 1

    def __enter__(self) -> FakeSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def fake_creator() -> Creator:
    fake = FakeBackend()
    return Creator(fake, FakeLogins(fake))
