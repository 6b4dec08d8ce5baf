"""What the service does with instances: meta-db transactions around backend calls. No HTTP here."""

from __future__ import annotations

import logging

import psycopg
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from .backends import BackendRegistry, Credentials, DatabaseSpec, ObjectState
from .backends.postgres_client import login_works
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
        if not self._password_matches(row, request.db_pwd):
            raise WrongPassword("The password does not match this instance's db_pwd.", {"db_pwd": "does not match"})
        if row.status == InstanceStatus.CREATING:
            raise Conflict("The instance is still being created; delete it once it is ready.")
        previous = row.status
        self._claim(row, previous, InstanceStatus.DELETING)
        try:
            if row.container_id:
                credentials = Credentials(row.db_name, row.username, request.db_pwd)
                self.backends.holding(row.backend).delete(row.container_id, credentials, force=request.force)
        except BaseException:
            db.session.rollback()
            self._claim(row, InstanceStatus.DELETING, previous)
            raise
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
        except Exception:
            # A read must not fail because the backend does; say so instead.
            log.warning("could not describe %s in backend %s", row.container_id, row.backend, exc_info=True)
            return "unknown"

    def _password_matches(self, row: DBInstance, password: str) -> bool:
        if row.password_hash is not None:
            return password_matches(row.password_hash, password)
        # A row from a 2.x meta db without a password: check it by a login, as 2.x did, and
        # keep the hash from now on.
        if not row.hostname or not row.port:
            return False
        try:
            login_works(row.hostname, row.port, Credentials(row.db_name, row.username, password))
        except psycopg.OperationalError as e:
            if "password authentication failed" in str(e):
                return False
            raise BackendUnavailable(f"The password cannot be checked: the database does not answer ({e}).") from e
        row.password_hash = hash_password(password)
        db.session.commit()
        return True

    def _claim(self, row: DBInstance, expected: str, new: str) -> None:
        """Move the row from ``expected`` to ``new`` status, or raise Conflict if another
        request moved it first: a conditional UPDATE, so exactly one request wins."""
        result = db.session.execute(
            update(DBInstance)
            .where(DBInstance.id == row.id, DBInstance.status == expected)
            .values(status=new)
            .execution_options(synchronize_session=False)
        )
        db.session.commit()
        if result.rowcount != 1:
            raise Conflict(f"The instance is being changed by another request (it is no longer {expected}).")
        db.session.refresh(row)

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

