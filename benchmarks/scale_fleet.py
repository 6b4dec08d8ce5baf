"""The fleet of benchmarks/scale.py: rows written straight into the meta db with the service's own
table, and, for its live rows, the objects the cluster backend's listing finds (marked roles).

A row is one of three kinds, by its number:
  - ready (18 in 20): a live instance in the ``cluster`` backend. Its object is a role carrying the
    backend's own marker (``tenant_marker``), so the reaper's listing finds it and leaves it alone,
    as it does a live tenant; no database is made behind it (the reaper reads only the markers).
  - failed (1 in 20): a creation that failed, kept for ``failed_retention``; no object.
  - lost (1 in 20): an instance whose object vanished, kept for ``lost_retention``; no object.
Every row changed within the last 12 hours (inside the default retention of a day), most expire in
days (1 in 10 never): a reaper pass has nothing to do for any of them. Owners hold ROWS_PER_OWNER
rows each (``team-000`` the first), so an owner's list is the same size whatever the fleet's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg
from psycopg import sql
from sqlalchemy import Engine, func, insert, select, update

from postgraas_server.backends import DatabaseSpec
from postgraas_server.backends.postgres.tenants import tenant_marker
from postgraas_server.models import INSTANCES, POOL_OWNER, Deployment, InstanceStatus, utcnow

from .infra import ThrowawayPostgres

FLEET_BACKEND = "cluster"
ROWS_PER_OWNER = 1000
MEASURED_OWNER = "team-000"
NAME_PREFIX = "fleet-"
BATCH = 5000


def owner_of(number: int) -> str:
    return f"team-{number // ROWS_PER_OWNER:03d}"


def status_of(number: int) -> str:
    return {0: InstanceStatus.FAILED, 1: InstanceStatus.LOST}.get(number % 20, InstanceStatus.READY)


def _row(number: int, now: datetime, cluster: ThrowawayPostgres) -> dict:
    status = status_of(number)
    created = now - timedelta(hours=1 + number % 11, seconds=number % 3600)
    name = f"fleet_{number}"
    detail = {
        InstanceStatus.FAILED: "creation failed: the cluster refused (benchmark row)",
        InstanceStatus.LOST: f"its cluster object {name} vanished (benchmark row)",
    }.get(status)
    return {
        "postgraas_instance_name": f"{NAME_PREFIX}{number}",
        "db_name": name,
        "username": name,
        "password_hash": "not-a-hash",
        "backend": FLEET_BACKEND,
        "status": status,
        "hostname": cluster.host,
        "port": cluster.port,
        "container_id": None if status == InstanceStatus.FAILED else name,
        "creation_timestamp": created,
        "status_detail": detail,
        "status_changed_at": created,
        "heartbeat_at": None,
        "expires_at": None if number % 10 == 2 else now + timedelta(days=1 + number % 30),
        "durability": "durable",
        "owner": owner_of(number),
        "template_id": None,
    }


@dataclass
class Fleet:
    """The rows of one meta db and the roles of one cluster; grown size by size, never shrunk
    except by the reaper's own deletes."""

    engine: Engine
    cluster: ThrowawayPostgres
    # The next row's number (numbers of rows the reaper deleted are not reused).
    next_number: int = 0

    def deployment(self) -> str:
        with self.engine.connect() as conn:
            return conn.execute(select(Deployment.id)).scalar_one()

    def count(self) -> int:
        """The rows of the fleet and of the run (the pool's, an instance being measured): the size."""
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(INSTANCES)).scalar_one()

    def grow_to(self, size: int) -> int:
        """Add rows (and their roles) until the meta db holds ``size`` rows; returns how many were added."""
        missing = size - self.count()
        deployment = self.deployment()
        added = 0
        while added < missing:
            batch = min(BATCH, missing - added)
            numbers = range(self.next_number, self.next_number + batch)
            now = utcnow()
            with self.engine.begin() as conn:
                first_id = (conn.execute(select(func.max(INSTANCES.c.id))).scalar() or 0) + 1
                conn.execute(insert(INSTANCES), [_row(n, now, self.cluster) for n in numbers])
                live = conn.execute(
                    select(INSTANCES.c.id, INSTANCES.c.db_name, INSTANCES.c.username, INSTANCES.c.creation_timestamp)
                    .where(
                        INSTANCES.c.id >= first_id,
                        INSTANCES.c.status == InstanceStatus.READY,
                        INSTANCES.c.postgraas_instance_name.startswith(NAME_PREFIX),
                    )
                    .order_by(INSTANCES.c.id)
                ).all()
            self._make_roles(deployment, live)
            self.next_number += batch
            added += batch
        return added

    def _make_roles(self, deployment: str, rows: list) -> None:
        statements = []
        for row in rows:
            spec = DatabaseSpec(row.id, f"{NAME_PREFIX}{row.id}", row.db_name, row.username, "")
            marker = tenant_marker(deployment, spec, row.creation_timestamp)
            role = sql.Identifier(row.username)
            statements.append(sql.SQL("create role {} nologin").format(role))
            statements.append(sql.SQL("comment on role {} is {}").format(role, sql.Literal(marker)))
        if not statements:
            return
        with self._admin() as conn, conn.transaction():
            # One round trip: without parameters, several statements go as one simple query.
            conn.execute(sql.SQL("; ").join(statements))

    def _admin(self) -> psycopg.Connection:
        pg = self.cluster
        return psycopg.connect(
            host=pg.host, port=pg.port, user=pg.username, password=pg.password, dbname="postgres", autocommit=True
        )

    def expire(self, how_many: int) -> int:
        """Make ``how_many`` ready rows of the fleet, spread evenly over it, expired a minute ago;
        returns how many there were to expire."""
        past = utcnow() - timedelta(minutes=1)
        with self.engine.begin() as conn:
            ids = (
                conn.execute(
                    select(INSTANCES.c.id)
                    .where(
                        INSTANCES.c.postgraas_instance_name.startswith(NAME_PREFIX),
                        INSTANCES.c.owner != POOL_OWNER,
                        INSTANCES.c.status == InstanceStatus.READY,
                    )
                    .order_by(INSTANCES.c.id)
                )
                .scalars()
                .all()
            )
            step = len(ids) / how_many if how_many else 0
            chosen = [ids[int(n * step)] for n in range(min(how_many, len(ids)))]
            for start in range(0, len(chosen), 500):
                part = chosen[start : start + 500]
                conn.execute(update(INSTANCES).where(INSTANCES.c.id.in_(part)).values(expires_at=past))
        return len(chosen)

    def roles(self) -> int:
        """The marked roles in the cluster (what its listing finds)."""
        with self._admin() as conn:
            row = conn.execute(
                "select count(*) from pg_roles where shobj_description(oid, 'pg_authid') like 'postgraas deployment=%'"
            ).fetchone()
        return int(row[0]) if row else 0
