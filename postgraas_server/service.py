"""What the service does with instances: meta-db transactions around backend calls. No HTTP here."""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from .backends import BackendRegistry, Credentials, DatabaseSpec, ObjectState
from .errors import BackendUnavailable, Conflict, InvalidRequest, NotFound, WrongPassword
from .models import DBInstance, InstanceStatus, db
from .passwords import hash_password, password_matches
from .schemas import CreateInstanceRequest, DeleteInstanceRequest

log = logging.getLogger(__name__)


class InstanceService:
    def __init__(self, backends: BackendRegistry) -> None:
        self.backends = backends

    def list(self) -> list[DBInstance]:
        return list(db.session.execute(select(DBInstance).order_by(DBInstance.id)).scalars())

    def get(self, instance_id: int) -> DBInstance:
        row = db.session.get(DBInstance, instance_id)
        if row is None:
            raise NotFound(f"There is no instance with id {instance_id}.")
        return row

    def create(self, request: CreateInstanceRequest) -> DBInstance:
        """Reserve the name in the meta db, create the database, then mark the row ready.

        Any failure undoes the earlier steps: no orphan backend object, no orphan row.
        """
        backend_name, backend = self.backends.choose(request.backend)
        if request.template is not None and not backend.supports_template:
            raise InvalidRequest(
                f"Backend {backend_name!r} cannot create a database from a template.",
                {"template": f"not supported by the {backend.type_name} backend"},
            )
        row = self._reserve(request, backend_name)
        spec = DatabaseSpec(
            instance_id=row.id,
            instance_name=row.postgraas_instance_name,
            db_name=request.db_name,
            db_username=request.db_username,
            db_pwd=request.db_pwd,
            template=request.template,
        )
        try:
            provisioned = backend.create(spec)
        except BaseException:
            self._release(row.id)
            raise
        try:
            row.hostname = provisioned.host
            row.port = provisioned.port
            row.container_id = provisioned.ref
            row.status = InstanceStatus.READY
            db.session.commit()
        except BaseException:
            db.session.rollback()
            log.warning("meta db update failed for %s; removing what was created", spec.instance_name)
            try:
                backend.delete(provisioned.ref, spec.credentials, force=True)
            except Exception:
                log.exception("could not remove %s object %s", backend_name, provisioned.ref)
            self._release(spec.instance_id)
            raise
        log.info("instance %s (id %s) is ready in backend %s", row.postgraas_instance_name, row.id, backend_name)
        return row

    def delete(self, instance_id: int, request: DeleteInstanceRequest) -> DBInstance:
        row = self.get(instance_id)
        if not password_matches(row.password_hash, request.db_pwd):
            raise WrongPassword("The password does not match this instance's db_pwd.", {"db_pwd": "does not match"})
        if row.container_id:
            credentials = Credentials(row.db_name, row.username, request.db_pwd)
            self.backends.holding(row.backend).delete(row.container_id, credentials, force=request.force)
        db.session.delete(row)
        db.session.commit()
        log.info("instance %s (id %s) deleted (force=%s)", row.postgraas_instance_name, row.id, request.force)
        return row

    def backend_state(self, row: DBInstance) -> str:
        """What the backend says of the instance's object now: running, stopped, missing or unknown."""
        if not row.container_id:
            return ObjectState.MISSING.value
        try:
            return self.backends.holding(row.backend).describe(row.container_id).state.value
        except BackendUnavailable:
            return "unknown"

    def _reserve(self, request: CreateInstanceRequest, backend_name: str) -> DBInstance:
        row = DBInstance(
            postgraas_instance_name=request.postgraas_instance_name,
            db_name=request.db_name,
            username=request.db_username,
            password_hash=hash_password(request.db_pwd),
            backend=backend_name,
            status=InstanceStatus.CREATING,
        )
        db.session.add(row)
        try:
            db.session.commit()
        except IntegrityError:
            db.session.rollback()
            raise Conflict(
                f"An instance named {request.postgraas_instance_name!r} already exists.",
                {"postgraas_instance_name": "already exists"},
            ) from None
        return row

    def _release(self, instance_id: int) -> None:
        """Drop a reserved row after a failed create. Its own failure must not hide the first one."""
        try:
            db.session.rollback()
            row = db.session.get(DBInstance, instance_id)
            if row is not None:
                db.session.delete(row)
                db.session.commit()
        except Exception:
            db.session.rollback()
            log.exception("could not remove the meta row of failed instance id %s", instance_id)

