"""The meta db's "reaper" lease: whoever holds it unexpired may run reaper passes, one at a time,
whichever of many workers and replicas runs a reaper loop."""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime, timedelta

from sqlalchemy import or_, update

from ..models import Lease, db, utcnow
from .transitions import execute_dml

LEASE_NAME = "reaper"


class LeaseLost(Exception):
    """Another reaper holds the lease now."""


class ReaperLease:
    def __init__(self) -> None:
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def acquire(self, seconds: float) -> bool:
        """Take or renew the lease: one conditional UPDATE, so one holder at a time."""
        now = utcnow()
        result = execute_dml(
            update(Lease)
            .where(
                Lease.name == LEASE_NAME,
                or_(Lease.holder == self.holder, Lease.expires_at.is_(None), Lease.expires_at < now),
            )
            .values(holder=self.holder, expires_at=now + timedelta(seconds=seconds))
            .execution_options(synchronize_session=False)
        )
        db.session.commit()
        return result.rowcount == 1

    def release(self) -> None:
        db.session.execute(
            update(Lease)
            .where(Lease.name == LEASE_NAME, Lease.holder == self.holder)
            .values(holder=None, expires_at=None)
            .execution_options(synchronize_session=False)
        )
        db.session.commit()

    def holder_now(self) -> tuple[str | None, datetime | None]:
        """Who holds the lease, and until when."""
        lease = db.session.get(Lease, LEASE_NAME)
        return (lease.holder, lease.expires_at) if lease else (None, None)
