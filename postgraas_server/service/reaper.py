"""The reaper: reconciles the meta db with what the backends hold, so nothing leaks.

One pass deletes expired instances, fails creations whose server died, retries deletes that
failed, marks instances whose backend object vanished as lost, removes objects of ours that
have no row (after a grace period) and forgets old failed and lost rows. Only the holder of
the meta db's "reaper" lease acts, so any number of workers and replicas can run the loop.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, and_, or_, select

from ..backends import Backend, BackendRegistry, Credentials, ManagedObject, ObjectState
from ..config import LifecycleSettings
from ..errors import PostgraasError
from ..metrics import REAPER_ACTIONS
from ..models import INSTANCES, InstanceStatus, db, utcnow
from .background import Context
from .heartbeats import Heartbeats
from .pool import pool_sizes
from .reaper_lease import LeaseLost, ReaperLease
from .reaper_listing import Listing
from .reaper_removals import EXPIRABLE, Removals, expired_at, move_expired
from .template_upkeep import TemplateUpkeep
from .transitions import forget, transition, update_row

log = logging.getLogger(__name__)

# Up to this many objects listed, their rows are looked up by id; beyond, reading every row's id
# is faster than a long IN list.
IDS_PER_QUERY = 500

# What the comparisons with the listing read of a row: every live row is read each pass, so only
# these columns (an action reads the row again, as it is then).
_LOST_COLUMNS = ("id", "postgraas_instance_name", "backend", "status", "container_id")
_PORT_COLUMNS = ("id", "postgraas_instance_name", "backend", "container_id", "port")
_STRAY_COLUMNS = ("id", "postgraas_instance_name", "backend", "status")


@dataclass
class PassReport:
    acted: bool
    actions: list[str] = field(default_factory=list)

    def add(self, kind: str, backend: str, action: str) -> None:
        """``kind`` (a fixed word) and ``backend`` label the count in /metrics; ``action`` says it all."""
        log.info("reaper: %s", action)
        REAPER_ACTIONS.labels(kind, backend).inc()
        self.actions.append(action)


class Reaper:
    def __init__(
        self,
        backends: BackendRegistry,
        lifecycle: LifecycleSettings,
        heartbeats: Heartbeats | None = None,
        context: Context | None = None,
    ) -> None:
        """``context``: where a meta-db session lives for the threads that remove expired instances
        after a pass; without one, a pass removes them itself."""
        self.backends = backends
        self.lifecycle = lifecycle
        self.lease = ReaperLease()
        self._lease_seconds: float | None = None
        # (backend, ref) of the objects this pass removed: the listing, older, still has them.
        self._removed: set[tuple[str, str]] = set()
        # The process's own (InstanceService.heartbeats), so that one thread beats for all; a reaper
        # run alone (reap --once, tests) beats with its own.
        self._heartbeats = heartbeats or Heartbeats.of_meta_db(lifecycle.heartbeat_timeout)
        self._removals: Removals | None = None
        if context is not None:
            self._removals = Removals(context, self._heartbeats, lifecycle.reaper_removals)

    # -- the lease (see ReaperLease) --------------------------------------------------------

    def acquire(self, seconds: float) -> bool:
        return self.lease.acquire(seconds)

    def release(self) -> None:
        self.lease.release()

    def lease_holder(self) -> tuple[str | None, datetime | None]:
        return self.lease.holder_now()

    def stop(self) -> None:
        """Queue no more removals (see Removals.stop)."""
        if self._removals is not None:
            self._removals.stop()

    def wait_for_removals(self, timeout: float | None = None) -> bool:
        """Until the removals queued by the passes so far have run (``reap --once`` exits after)."""
        return self._removals is None or self._removals.wait(timeout)

    # -- one pass ----------------------------------------------------------------------------

    def _keep_lease(self) -> None:
        """Renew the lease before each action; stop the pass if another reaper has it now."""
        if self._lease_seconds is not None and not self.acquire(self._lease_seconds):
            raise LeaseLost()

    def run_pass(self, lease_seconds: float | None = None) -> PassReport:
        """One pass. With ``lease_seconds``, the lease is renewed for that long before each
        action, and the pass stops (LeaseLost) if another reaper took it over."""
        self._lease_seconds = lease_seconds
        self._removed = set()
        report = PassReport(acted=True)
        now = utcnow()
        listed = Listing.of(self.backends)
        expired: list[Row] = []
        try:
            ids = [row.id for row in self._rows(*EXPIRABLE, where=expired_at(now), columns=("id",))]
            move_expired(ids, now, self._keep_lease, expired)
            self._fail_dead_creations(now, report)
            self._retry_deletes(now, listed, report)
            self._remove_stray_objects(now, listed, report)
            self._mark_lost(listed, now, report)
            self._follow_ports(listed, report)
            self._forget_old_rows(now, report)
            self._trim_pools(report)
            TemplateUpkeep(self.backends, self.lifecycle, report.add, self._keep_lease).run(now)
        finally:
            # After the pass's own work, which they would otherwise slow; also when it stopped half
            # way, for the rows it moved to deleting.
            if self._removals is not None:
                self._removals.submit(expired, lambda row: self._finish_expired(row, report))
            else:
                for row in expired:
                    self._finish_expired(row, report)
        return report

    @staticmethod
    def _rows(*statuses: str, where: Sequence[Any] = (), columns: Sequence[str] = ()) -> list[Row]:
        """Snapshots of the rows, not ORM objects: a request may change or delete a row during the
        pass (an ORM object of a deleted row raises on its next read). Every action is a conditional
        statement that re-checks the row as it is then. ``where``: more conditions, so that rows
        with nothing to do are not read; ``columns``: only these (default: all)."""
        query = select(*(INSTANCES.c[name] for name in columns)) if columns else select(INSTANCES)
        query = query.where(INSTANCES.c.status.in_(statuses), *where).order_by(INSTANCES.c.id)
        rows = list(db.session.execute(query).all())
        db.session.rollback()
        return rows

    def _finish_expired(self, row: Row, report: PassReport) -> None:
        # No lease needed: the row is deleting and beats, as under a request's delete.
        # Not forgotten: the row went meanwhile (an admin's hand in the meta db), and with it the report.
        if self._remove_object(row, "expired", lease=False) and forget(row.id, InstanceStatus.DELETING):
            report.add(
                "expired",
                row.backend,
                f"deleted expired instance {row.postgraas_instance_name} (id {row.id}) in backend {row.backend}",
            )

    def _fail_dead_creations(self, now: datetime, report: PassReport) -> None:
        stale = now - timedelta(seconds=self.lifecycle.heartbeat_timeout)
        for row in self._rows(InstanceStatus.CREATING):
            last_sign = row.heartbeat_at or row.status_changed_at or row.creation_timestamp
            if last_sign > stale:
                continue
            detail = "creation interrupted: the server creating it stopped; what it made is removed"
            # Still silent at the moment of the transition: a heartbeat meanwhile wins.
            still_silent = or_(INSTANCES.c.heartbeat_at.is_(None), INSTANCES.c.heartbeat_at <= stale)
            if self._transition(row, InstanceStatus.CREATING, InstanceStatus.FAILED, detail, still_silent):
                report.add(
                    "creation_died",
                    row.backend,
                    f"marked instance {row.postgraas_instance_name} (id {row.id}) in backend {row.backend} "
                    "failed: its creation died with its server",
                )

    def _retry_deletes(self, now: datetime, listed: Listing, report: PassReport) -> None:
        # Silent long enough that no request is still working on it: a request's delete beats.
        stale = now - timedelta(seconds=self.lifecycle.heartbeat_timeout)
        queued = self._removals.pending() if self._removals is not None else frozenset()
        for row in self._rows(InstanceStatus.DELETING):
            if row.id in queued:
                continue  # beating, unless the meta db kept its beats from landing
            signs = (row.heartbeat_at, row.status_changed_at or row.creation_timestamp)
            if max(sign for sign in signs if sign is not None) > stale:
                continue
            if not self._take_over_delete(row.id, stale):
                continue  # it beat meanwhile, or is gone
            removed = self._remove_object(row, "retrying a delete")
            for obj in self._objects_of(row, listed):
                removed &= self._remove(row.backend, obj, "retrying a delete")
            if removed:
                forget(row.id, InstanceStatus.DELETING)
                report.add(
                    "delete_finished",
                    row.backend,
                    f"finished deleting instance {row.postgraas_instance_name} (id {row.id}) in backend {row.backend}",
                )

    def _remove_stray_objects(self, now: datetime, listed: Listing, report: PassReport) -> None:
        """Objects of ours with no row (after the grace period), whose row failed, or whose row is lost
        while the backend still holds the object (a swarm service of a node that went down)."""
        listed_count = listed.count()
        if not listed_count:
            return
        # Of the objects listed: which have a row, and the rows of those that may have something
        # to do (failed or lost); a live row's object has nothing to do here.
        named = (INSTANCES.c.id.in_(listed.instance_ids()),) if listed_count <= IDS_PER_QUERY else ()
        judged = self._rows(InstanceStatus.LOST, InstanceStatus.FAILED, where=named, columns=_STRAY_COLUMNS)
        rows = {row.id: row for row in judged}
        # Read after those: a row made meanwhile is one too.
        existing = set(db.session.execute(select(INSTANCES.c.id).where(*named)).scalars())
        db.session.rollback()
        grace = now - timedelta(seconds=self.lifecycle.orphan_grace)
        for backend_name, objects in listed.items():
            for obj in objects:
                if self._removed and (backend_name, obj.ref) in self._removed:
                    continue  # an expired instance's, say: removed by this pass already
                if obj.instance_id not in existing:
                    if obj.created_at < grace and self._remove(backend_name, obj, "orphan"):
                        report.add(
                            "orphan_removed",
                            backend_name,
                            f"removed orphan {obj.ref} of instance {obj.name or '?'} (id {obj.instance_id}) "
                            f"from backend {backend_name}: it has no meta row",
                        )
                    continue
                row = rows.get(obj.instance_id)
                if row is None:
                    continue
                status = row.status
                if status == InstanceStatus.LOST and row.backend == backend_name and obj.lost:
                    # Its removal when it was marked lost failed (the manager out of reach): again.
                    if self._remove(backend_name, obj, "lost"):
                        report.add(
                            "lost_leftover_removed", backend_name, f"removed {obj.ref} of lost instance id {row.id}"
                        )
                elif status == InstanceStatus.FAILED and row.backend == backend_name:
                    if self._remove(backend_name, obj, "failed creation"):
                        report.add(
                            "failed_leftover_removed",
                            backend_name,
                            f"removed what the failed creation of {row.postgraas_instance_name} (id {row.id}) "
                            f"left in backend {backend_name}",
                        )

    def _mark_lost(self, listed: Listing, listed_at: datetime, report: PassReport) -> None:
        """``listed_at``: when the backends were listed, which was before this pass read the rows. A
        row that changed since (made, or a pooled one claimed) may hold an object the listing missed,
        or a name another instance held then: it is left to the next pass."""
        answered = listed.answered()
        if not answered:
            return
        changed, made = INSTANCES.c.status_changed_at, INSTANCES.c.creation_timestamp
        judged = (
            INSTANCES.c.backend.in_(answered),
            INSTANCES.c.container_id.is_not(None),
            or_(changed < listed_at, and_(changed.is_(None), made < listed_at)),
        )
        for row in self._rows(InstanceStatus.READY, InstanceStatus.POOLED, where=judged, columns=_LOST_COLUMNS):
            if not row.container_id:
                continue
            held = listed.held(row.backend, row.container_id, row.id)
            if held is not None and held.lost is None:
                continue
            holders = {o.instance_id for o in listed.with_ref(row.backend, row.container_id)}
            backend = self._backend(row.backend)
            if backend is None:
                continue
            # Held by another instance: this one's object vanished and its name was taken since.
            if held is None and not holders:
                try:
                    if backend.describe(row.container_id).state != ObjectState.MISSING:
                        continue
                except PostgraasError:
                    continue
            vanished = f"its {backend.type_name} object {row.container_id} vanished"
            detail = held.lost if held is not None and held.lost is not None else vanished
            unchanged = or_(INSTANCES.c.status_changed_at.is_(None), INSTANCES.c.status_changed_at < listed_at)
            if self._transition(row, row.status, InstanceStatus.LOST, detail, unchanged):
                name = row.postgraas_instance_name
                report.add(
                    "lost", row.backend, f"marked instance {name} (id {row.id}) in backend {row.backend} lost: {detail}"
                )
                # Nothing of it may come back when its node does (a swarm service is removed).
                if held is not None:
                    self._remove(row.backend, held, "lost")

    def _follow_ports(self, listed: Listing, report: PassReport) -> None:
        """A container restarted by its engine gets a new published port: record it."""
        with_ports = listed.with_ports()
        if not with_ports:
            return
        of_those = (INSTANCES.c.backend.in_(with_ports),)
        for row in self._rows(InstanceStatus.READY, InstanceStatus.POOLED, where=of_those, columns=_PORT_COLUMNS):
            same_ref = listed.with_ref(row.backend, row.container_id)
            obj = same_ref[0] if same_ref else None
            if obj is None or obj.port is None or obj.port == row.port:
                continue
            self._keep_lease()
            update_row(row.id, INSTANCES.c.port == row.port, port=obj.port)
            name = row.postgraas_instance_name
            report.add(
                "port_changed",
                row.backend,
                f"instance {name} (id {row.id}) in backend {row.backend} now listens on port {obj.port}",
            )

    def _trim_pools(self, report: PassReport) -> None:
        """Pooled instances beyond their pool's size (a backend's or a ready template's, read after
        the rows: a template ready since counts) go, newest first (keepers overshoot, pools shrink)."""
        pooled: dict[tuple[str, int | None], list[Row]] = {}
        for row in self._rows(InstanceStatus.POOLED):
            pooled.setdefault((row.backend, row.template_id), []).append(row)
        sizes = pool_sizes(self.backends)
        for (backend_name, template_id), rows in pooled.items():
            surplus = len(rows) - sizes.get((backend_name, template_id), 0)
            for row in sorted(rows, key=lambda r: r.id, reverse=True)[: max(surplus, 0)]:
                if not self._transition(row, InstanceStatus.POOLED, InstanceStatus.DELETING, "pool surplus"):
                    continue  # taken by a create meanwhile
                if self._remove_object(row, "pool surplus"):
                    forget(row.id, InstanceStatus.DELETING)
                    report.add("pool_trimmed", backend_name, f"removed surplus pooled instance (id {row.id})")

    def _forget_old_rows(self, now: datetime, report: PassReport) -> None:
        retention = {
            InstanceStatus.LOST: self.lifecycle.lost_retention,
            InstanceStatus.FAILED: self.lifecycle.failed_retention,
        }
        changed, made = INSTANCES.c.status_changed_at, INSTANCES.c.creation_timestamp

        def past(status: str, seconds: float) -> Any:
            # Changed (made, for rows of 2.x) before the cutoff: two terms rather than a coalesce,
            # so that each is a range of the (status, status_changed_at) index.
            cutoff = now - timedelta(seconds=seconds)
            return and_(INSTANCES.c.status == status, or_(changed <= cutoff, and_(changed.is_(None), made <= cutoff)))

        past_retention = or_(*(past(status, seconds) for status, seconds in retention.items()))
        for row in self._rows(*retention, where=(past_retention,)):
            status = row.status
            if status == InstanceStatus.LOST:
                # Deleting first, as a request's delete would: the two cannot both act on it.
                if not self._transition(row, status, InstanceStatus.DELETING, "lost, past its retention"):
                    continue
                status = InstanceStatus.DELETING
                if not self._remove_object(row, "retention"):
                    continue
            if not forget(row.id, status):
                continue
            report.add(
                "forgotten",
                row.backend,
                f"forgot {row.status} instance {row.postgraas_instance_name} (id {row.id}) in backend {row.backend}",
            )

    # -- helpers -----------------------------------------------------------------------------

    def _backend(self, name: str) -> Backend | None:
        return self.backends.backends.get(name)

    @staticmethod
    def _objects_of(row: Row, listed: Listing) -> list[ManagedObject]:
        return [o for o in listed.of_instance(row.backend, row.id) if o.ref != row.container_id]

    def _remove_object(self, row: Row, why: str, lease: bool = True) -> bool:
        if not row.container_id:
            return True
        obj = ManagedObject(
            row.container_id, row.id, row.creation_timestamp, Credentials(row.db_name, row.username, "")
        )
        return self._remove(row.backend, obj, why, lease)

    def _remove(self, backend_name: str, obj: ManagedObject, why: str, lease: bool = True) -> bool:
        """``lease``: renew the lease first (and stop if it is lost); no need for a deleting row's."""
        backend = self._backend(backend_name)
        if backend is None:
            log.warning("reaper: backend %s is not configured; cannot remove %s", backend_name, obj.ref)
            return False
        if lease:
            self._keep_lease()
        try:
            # Beating, as a request's delete does: no other reaper takes the row over meanwhile.
            with self._heartbeats.beating(obj.instance_id):
                left = backend.delete(obj.ref, obj.credentials, instance_id=obj.instance_id, force=True)
        except PostgraasError as e:
            log.warning("reaper: could not remove %s from backend %s (%s): %s", obj.ref, backend_name, why, e.msg)
            return False
        except Exception:
            # One object must not stop the pass for every other.
            log.exception("reaper: removing %s from backend %s (%s) failed", obj.ref, backend_name, why)
            return False
        if left:
            log.warning("reaper: instance id %s in backend %s (%s): %s", obj.instance_id, backend_name, why, left)
        self._removed.add((backend_name, obj.ref))
        return True

    def _take_over_delete(self, instance_id: int, stale: datetime) -> bool:
        """Beat for a delete whose request went silent, unless it beat meanwhile: one conditional
        UPDATE, so a request still working on it keeps it."""
        self._keep_lease()
        return update_row(
            instance_id,
            INSTANCES.c.status == InstanceStatus.DELETING,
            or_(INSTANCES.c.heartbeat_at.is_(None), INSTANCES.c.heartbeat_at <= stale),
            or_(INSTANCES.c.status_changed_at.is_(None), INSTANCES.c.status_changed_at <= stale),
            heartbeat_at=utcnow(),
        )

    def _transition(self, row: Row, expected: str, new: str, detail: str, *conditions: Any) -> bool:
        self._keep_lease()
        return transition(row.id, expected, new, detail, *conditions)
