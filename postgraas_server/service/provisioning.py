"""Provisioning: a reserved row, the backend's object made for it (or a pooled one handed over),
then the row marked ready; whatever fails on the way is removed again, row or object."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from types import SimpleNamespace

from sqlalchemy.exc import IntegrityError

from ..backends import Backend, Credentials, DatabaseSpec, ProvisionedDatabase
from ..errors import BackendError, Conflict
from ..metrics import CREATE_DURATION, CREATE_FAILURES, failure_reason
from ..models import DBInstance, InstanceStatus, db, utcnow
from ..schemas import CreateInstanceRequest
from .heartbeats import Heartbeats
from .transitions import forget, transition, transition_returning

log = logging.getLogger(__name__)


class Provisioner:
    def __init__(self, heartbeats: Heartbeats) -> None:
        self.heartbeats = heartbeats

    @staticmethod
    def reserve(
        request: CreateInstanceRequest,
        password_hash: str,
        backend_name: str,
        expires_at: datetime | None,
        owner: str,
        template_id: int | None = None,
    ) -> DBInstance:
        """The row of a new instance, creating: its name is taken from now on (409 when it was).
        ``template_id``: the template it is to be a clone of."""
        now = utcnow()
        row = DBInstance(
            postgraas_instance_name=request.postgraas_instance_name,
            db_name=request.db_name,
            username=request.db_username,
            password_hash=password_hash,
            backend=backend_name,
            status=InstanceStatus.CREATING,
            status_changed_at=now,
            heartbeat_at=now,
            creation_timestamp=now,
            expires_at=expires_at,
            owner=owner,
            durability=request.durability,
            template_id=template_id,
        )
        db.session.add(row)
        try:
            db.session.commit()
        except IntegrityError:
            db.session.rollback()
            raise name_taken(request) from None
        return row

    def provision(
        self,
        backend_name: str,
        backend: Backend,
        spec: DatabaseSpec,
        pooled: Credentials | None = None,
        ref: str | None = None,
        ready_status: str = InstanceStatus.READY,
    ) -> SimpleNamespace:
        """Create in the backend (or, with ``pooled`` and ``ref``, hand that pooled object over),
        then mark the row ready and return it as it is now; a row cancelled meanwhile gets its
        object removed (and the row with it) instead."""
        started = time.monotonic()
        with self.heartbeats.beating(spec.instance_id):
            if pooled is not None and ref is not None:
                provisioned = backend.claim(ref, pooled, spec)
            elif spec.from_template is not None:
                provisioned = backend.clone(spec.from_template, spec)
            else:
                provisioned = backend.create(spec)
        try:
            marked = _mark_ready(spec.instance_id, provisioned, ready_status)
        except BaseException:
            db.session.rollback()
            log.warning("meta db update failed for %s; removing what was created", spec.instance_name)
            remove_quietly(backend, provisioned.ref, spec.credentials, spec.instance_id)
            raise
        if marked is None:
            remove_quietly(backend, provisioned.ref, spec.credentials, spec.instance_id)
            row = db.session.get(DBInstance, spec.instance_id)
            if row is not None and row.status == InstanceStatus.FAILED:
                # The reaper gave the creation up (no heartbeat came through): the row says so.
                raise BackendError(f"The creation was given up meanwhile: {row.status_detail}")
            log.info("instance %s was deleted while being created; removed it", spec.instance_name)
            forget(spec.instance_id)
            raise Conflict(
                f"The instance {spec.instance_name!r} was deleted while it was being created.",
                {"postgraas_instance_name": "deleted while being created"},
            )
        if ready_status == InstanceStatus.READY:
            source = "pool" if pooled is not None else "template" if spec.from_template else "new"
            CREATE_DURATION.labels(backend_name, source).observe(time.monotonic() - started)
        log.info("instance %s (id %s) is ready in backend %s", spec.instance_name, spec.instance_id, backend_name)
        return marked

    @staticmethod
    def fail(instance_id: int, detail: str) -> None:
        """A creation in the background failed: the row says why."""
        db.session.rollback()
        if not transition(instance_id, InstanceStatus.CREATING, InstanceStatus.FAILED, detail, heartbeat_at=None):
            # Cancelled while it failed: nothing was left in the backend, so the row can go.
            forget(instance_id)


def remove_quietly(backend: Backend, ref: str, credentials: Credentials, instance_id: int) -> None:
    """Remove what a failed creation made; a failure here is the reaper's to retry."""
    try:
        backend.delete(ref, credentials, instance_id=instance_id, force=True)
    except Exception:
        # The reaper finds it again by its deployment and instance id.
        log.exception("could not remove %s object %s", backend.type_name, ref)


@contextmanager
def failures_counted(backend_name: str) -> Iterator[None]:
    try:
        yield
    except Exception as e:
        CREATE_FAILURES.labels(backend_name, failure_reason(e)).inc()
        raise


def name_taken(request: CreateInstanceRequest) -> Conflict:
    return Conflict(
        f"An instance named {request.postgraas_instance_name!r} already exists.",
        {"postgraas_instance_name": "already exists"},
    )


def _mark_ready(instance_id: int, provisioned: ProvisionedDatabase, status: str) -> SimpleNamespace | None:
    return transition_returning(
        instance_id,
        InstanceStatus.CREATING,
        status,
        heartbeat_at=None,
        hostname=provisioned.host,
        port=provisioned.port,
        container_id=provisioned.ref,
    )
