"""What the service does with instances: meta-db transactions around backend calls. No HTTP here.

An instance moves creating -> ready, or creating -> failed; deleting while it is removed; lost
when its backend object vanished. Status changes that can race (two deletes, a delete during a
create) are conditional UPDATEs: exactly one request wins, the others see a 409.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

import psycopg
from flask import Flask, Response, after_this_request, has_request_context
from sqlalchemy import Engine, bindparam, create_engine, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import NullPool

from .backends import Backend, BackendRegistry, Credentials, DatabaseSpec, ObjectState, ProvisionedDatabase
from .backends.postgres_client import login_works
from .config import LifecycleSettings
from .durations import format_duration
from .errors import (
    BackendError,
    BackendUnavailable,
    CapacityExhausted,
    Conflict,
    InvalidRequest,
    NotFound,
    PostgraasError,
    QuotaExceeded,
    WrongPassword,
)
from .heartbeats import Heartbeats
from .logs import request_id
from .metrics import CREATE_DURATION, CREATE_FAILURES, failure_reason
from .models import INSTANCES, POOL_OWNER, DBInstance, InstanceStatus, db, move_status, move_status_returning, utcnow
from .passwords import PasswordHashes, generate_password, hash_password, password_hashes, password_matches
from .schemas import CreateInstanceRequest, DeleteInstanceRequest, ExtendInstanceRequest
from .tokens import Principal

log = logging.getLogger(__name__)

# How often a create tries the next pooled row when concurrent creates took the previous ones.
TAKE_ATTEMPTS = 20


# A claim's two statements, built once: building them per request cost 0.6 ms of Python (measured),
# of a claim that answers in about 13. On the table, not the mapped class: an ORM-enabled
# statement costs more Python for nothing here.
_FIRST_POOLED = (
    select(
        INSTANCES.c.id,
        INSTANCES.c.postgraas_instance_name,
        INSTANCES.c.db_name,
        INSTANCES.c.username,
        INSTANCES.c.password_hash,
        INSTANCES.c.container_id,
    )
    .where(INSTANCES.c.backend == bindparam("backend_name"), INSTANCES.c.status == InstanceStatus.POOLED)
    .order_by(INSTANCES.c.id)
    .limit(1)
)
_TAKE_POOLED = (
    update(INSTANCES)
    .where(INSTANCES.c.id == bindparam("pooled_id"), INSTANCES.c.status == InstanceStatus.POOLED)
    .values(
        status=InstanceStatus.CREATING,
        status_detail=None,
        status_changed_at=bindparam("now"),
        heartbeat_at=bindparam("now"),
        creation_timestamp=bindparam("now"),
        postgraas_instance_name=bindparam("new_name"),
        db_name=bindparam("new_db_name"),
        username=bindparam("new_username"),
        password_hash=bindparam("new_password_hash"),
        owner=bindparam("new_owner"),
        expires_at=bindparam("new_expires_at"),
        durability=bindparam("new_durability"),
    )
)


# What a list shows (InstanceOut.fields_of), and nothing else: no password hash, and fewer
# datetimes to convert, which are most of the Python a long list costs.
_LISTED = (
    select(
        INSTANCES.c.id,
        INSTANCES.c.postgraas_instance_name,
        INSTANCES.c.db_name,
        INSTANCES.c.username,
        INSTANCES.c.hostname,
        INSTANCES.c.port,
        INSTANCES.c.container_id,
        INSTANCES.c.backend,
        INSTANCES.c.status,
        INSTANCES.c.status_detail,
        INSTANCES.c.durability,
        INSTANCES.c.expires_at,
        INSTANCES.c.creation_timestamp,
    )
    .where(INSTANCES.c.owner != POOL_OWNER)
    .order_by(INSTANCES.c.id)
)


@dataclass(frozen=True)
class _PooledRow:
    """A pooled row as it was before a create took it: what to hand over, or to give back."""

    id: int
    name: str
    db_name: str
    username: str
    password_hash: str | None
    ref: str


# Statuses a delete may start from; "creating" is a cancellation, handled apart.
DELETABLE = (InstanceStatus.READY, InstanceStatus.FAILED, InstanceStatus.LOST)


class InstanceService:
    def __init__(self, backends: BackendRegistry, lifecycle: LifecycleSettings) -> None:
        self.backends = backends
        self.lifecycle = lifecycle
        # Set when a PoolKeeper runs in this process: a claim wakes it to make a replacement.
        self.pool_keeper: Any = None
        self._beat_engine: Engine | None = None
        self._engine_lock = threading.Lock()
        self.heartbeats = Heartbeats(self._heartbeat_engine, every=max(0.5, lifecycle.heartbeat_timeout / 4))

    # -- reading -----------------------------------------------------------------------------

    def list(self, principal: Principal | None = None) -> list[Any]:
        """Read-only snapshots with the listed columns as attributes (what InstanceOut.fields_of
        reads). Not ORM objects, nor Rows, whose attribute access is slow: for a list of a thousand,
        those were two thirds of the time. Run on the session's connection, as Core: the ORM's
        result handling added 1.5 ms per thousand rows."""
        query = _LISTED
        if principal is not None and not principal.admin:
            query = query.where(INSTANCES.c.owner == principal.owner)
        result = db.session.connection().execute(query)
        # Keys zipped once per row: a mapping's ``**`` builds a key view for every row.
        keys = tuple(result.keys())
        return [SimpleNamespace(**dict(zip(keys, row, strict=True))) for row in result]

    def get(self, instance_id: int, principal: Principal | None = None) -> DBInstance:
        """The instance, if it exists and ``principal`` may see it; another owner's instance is
        a 404 exactly like a missing one, so ids reveal nothing."""
        row = db.session.get(DBInstance, instance_id)
        hidden = row is not None and (
            row.owner == POOL_OWNER or (principal is not None and not principal.admin and row.owner != principal.owner)
        )
        if row is None or hidden:
            raise NotFound(f"There is no instance with id {instance_id}.")
        return row

    def wait_until_settled(self, instance_id: int, timeout: float, principal: Principal | None = None) -> DBInstance:
        """The instance once it is no longer creating, or as it is when ``timeout`` runs out."""
        deadline = time.monotonic() + timeout
        while True:
            db.session.expire_all()
            row = self.get(instance_id, principal)
            if row.status != InstanceStatus.CREATING or time.monotonic() >= deadline:
                return row
            # End the transaction: a waiting request must not hold a pooled connection.
            db.session.rollback()
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

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

    # -- creating ----------------------------------------------------------------------------

    def create(
        self, request: CreateInstanceRequest, app: Flask, principal: Principal | None = None
    ) -> DBInstance | SimpleNamespace:
        """Reserve the name, create the database, mark the row ready; returns the row (a snapshot
        of its columns once ready).

        With ``request.wait`` (the default) this returns once the database is ready, and any
        failure removes the row again. Otherwise it returns the row still creating and goes on
        in a thread of ``app``; a failure then leaves the row as ``failed``, saying why.
        No failure leaves a backend object behind.
        """
        backend_name, backend = self.backends.choose(request.backend)
        with _failures_counted(backend_name):
            if request.template is not None and not backend.supports_template:
                raise InvalidRequest(
                    f"Backend {backend_name!r} cannot create a database from a template.",
                    {"template": f"not supported by the {backend.type_name} backend"},
                )
            expires_at = self._expiry(request.ttl, default=self.lifecycle.default_ttl, principal=principal)
            if request.db_pwd is None:
                # The caller returns request.db_pwd once, in the answer to this create.
                request.db_pwd = generate_password()
            owner = principal.owner if principal else ""
            hashes = password_hashes(request.db_pwd)
            if (
                request.wait
                and request.template is None
                and backend_name in self.backends.pools
                and backend.can_claim(request.db_name, request.db_username)
            ):
                claimed = self._create_from_pool(request, hashes, backend_name, backend, expires_at, owner, principal)
                if claimed is not None:
                    return claimed
            row = self._reserve(request, hashes.meta_hash, backend_name, expires_at, owner)
            self._enforce_quotas(row.id, row.owner, backend_name, principal)
            spec = DatabaseSpec(
                instance_id=row.id,
                instance_name=row.postgraas_instance_name,
                db_name=request.db_name,
                db_username=request.db_username,
                db_pwd=request.db_pwd,
                template=request.template,
                ephemeral=request.durability == "ephemeral",
                db_pwd_verifier=hashes.scram_verifier,
            )
            if not request.wait:
                # Say no now rather than accept a creation that cannot start (an engine that is down).
                try:
                    backend.health()
                except BaseException:
                    self._release(row.id)
                    raise
                threading.Thread(
                    target=self._provision_in_background,
                    # The creation logs under the id of the request that started it (and holds nothing else of it).
                    args=(app, backend_name, spec, request_id.get()),
                    daemon=True,
                    name=f"create-{row.id}",
                ).start()
                return row
            try:
                return self._provision(backend_name, backend, spec)
            except BaseException:
                # A no-op where _provision already forgot the row (a creation cancelled meanwhile).
                self._release(row.id)
                raise

    def _provision_in_background(self, app: Flask, backend_name: str, spec: DatabaseSpec, started_by: str) -> None:
        request_id.set(started_by)
        with app.app_context():
            try:
                with _failures_counted(backend_name):
                    self._provision(backend_name, self.backends.holding(backend_name), spec)
            except PostgraasError as e:
                self._fail(spec.instance_id, e.msg)
            except Exception as e:
                log.exception("creating instance %s failed", spec.instance_name)
                self._fail(spec.instance_id, f"Internal error: {type(e).__name__}")
            finally:
                db.session.remove()

    def _provision(
        self,
        backend_name: str,
        backend: Backend,
        spec: DatabaseSpec,
        pooled: Credentials | None = None,
        ref: str | None = None,
        ready_status: str = InstanceStatus.READY,
    ) -> SimpleNamespace:
        """Create in the backend (or, with ``pooled`` and ``ref``, take over that pooled object),
        then mark the row ready and return it as it is now; a row cancelled meanwhile gets its
        object removed (and the row with it) instead."""
        started = time.monotonic()
        with self.heartbeats.beating(spec.instance_id):
            if pooled is not None and ref is not None:
                provisioned = backend.claim(ref, pooled, spec)
            else:
                provisioned = backend.create(spec)
        try:
            marked = self._mark_ready(spec.instance_id, provisioned, ready_status)
        except BaseException:
            db.session.rollback()
            log.warning("meta db update failed for %s; removing what was created", spec.instance_name)
            self._remove_quietly(backend, provisioned.ref, spec.credentials, spec.instance_id)
            raise
        if marked is None:
            self._remove_quietly(backend, provisioned.ref, spec.credentials, spec.instance_id)
            row = db.session.get(DBInstance, spec.instance_id)
            if row is not None and row.status == InstanceStatus.FAILED:
                # The reaper gave the creation up (no heartbeat came through): the row says so.
                raise BackendError(f"The creation was given up meanwhile: {row.status_detail}")
            log.info("instance %s was deleted while being created; removed it", spec.instance_name)
            self._forget(spec.instance_id)
            raise Conflict(
                f"The instance {spec.instance_name!r} was deleted while it was being created.",
                {"postgraas_instance_name": "deleted while being created"},
            )
        if ready_status == InstanceStatus.READY:
            source = "pool" if pooled is not None else "new"
            CREATE_DURATION.labels(backend_name, source).observe(time.monotonic() - started)
        log.info("instance %s (id %s) is ready in backend %s", spec.instance_name, spec.instance_id, backend_name)
        return marked

    @staticmethod
    def _mark_ready(instance_id: int, provisioned: ProvisionedDatabase, status: str) -> SimpleNamespace | None:
        return move_status_returning(
            instance_id,
            InstanceStatus.CREATING,
            status,
            heartbeat_at=None,
            hostname=provisioned.host,
            port=provisioned.port,
            container_id=provisioned.ref,
        )

    def _heartbeat_engine(self) -> Engine:
        # Its own unpooled engine: heartbeats must get through when the request pool is busy,
        # or the reaper would give up creations that are alive.
        with self._engine_lock:
            if self._beat_engine is None:
                url = db.engine.url
                # SQLite: wait for a competing writer like the main engine does (see app.py).
                connect_args = {"timeout": 30} if url.get_backend_name() == "sqlite" else {}
                self._beat_engine = create_engine(
                    url, poolclass=NullPool, hide_parameters=True, connect_args=connect_args
                )
            return self._beat_engine

    def _fail(self, instance_id: int, detail: str) -> None:
        db.session.rollback()
        if not move_status(instance_id, InstanceStatus.CREATING, InstanceStatus.FAILED, detail, heartbeat_at=None):
            # Cancelled while it failed: nothing was left in the backend, so the row can go.
            self._forget(instance_id)

    # -- the warm pool -----------------------------------------------------------------------

    def _create_from_pool(
        self,
        request: CreateInstanceRequest,
        hashes: PasswordHashes,
        backend_name: str,
        backend: Backend,
        expires_at: datetime | None,
        owner: str,
        principal: Principal | None,
    ) -> SimpleNamespace | None:
        """Take over a pooled instance for ``request``; None when the pool is empty or the
        pooled object failed (the caller then creates one as usual)."""
        pooled = self._take_pooled(request, hashes.meta_hash, backend_name, expires_at, owner)
        if pooled is None:
            return None
        try:
            self._enforce_quotas(pooled.id, owner, backend_name, principal, release=False)
        except PostgraasError:
            # The object is untouched: it goes back to the pool.
            self._return_to_pool(pooled)
            raise
        spec = DatabaseSpec(
            instance_id=pooled.id,
            instance_name=request.postgraas_instance_name,
            db_name=request.db_name,
            db_username=request.db_username,
            db_pwd=request.db_pwd or "",
            ephemeral=request.durability == "ephemeral",
            db_pwd_verifier=hashes.scram_verifier,
        )
        credentials = Credentials(pooled.db_name, pooled.username, "")
        try:
            row = self._provision(backend_name, backend, spec, pooled=credentials, ref=pooled.ref)
        except Conflict:
            # The names are taken in the backend (a shared cluster); claim() changed nothing.
            self._return_to_pool(pooled)
            raise
        except BaseException as e:
            reason = e.msg if isinstance(e, PostgraasError) else type(e).__name__
            log.warning("pooled object %s of backend %s failed (%s)", pooled.ref, backend_name, reason)
            # claim() left it with the pool's names or removed it: only the pool's role is named here,
            # never the requested one, which in a shared cluster may be another tenant's.
            self._remove_quietly(backend, pooled.ref, credentials, pooled.id)
            self._release(pooled.id)
            if not isinstance(e, PostgraasError):
                raise
            return None
        if self.pool_keeper is not None:
            _after_response(self.pool_keeper.wake)
        return row

    def _take_pooled(
        self,
        request: CreateInstanceRequest,
        password_hash: str,
        backend_name: str,
        expires_at: datetime | None,
        owner: str,
    ) -> _PooledRow | None:
        """Turn one pooled row into the request's, in one conditional UPDATE (exactly one create
        gets each); what it was is read just before, to hand over or give back."""
        # Concurrent creates aim at the same first row; a loser tries the next while there are any.
        for _ in range(TAKE_ATTEMPTS):
            found = db.session.execute(_FIRST_POOLED, {"backend_name": backend_name}).first()
            if found is None:
                db.session.rollback()
                return None
            # The columns selected are _PooledRow's fields, in its order.
            pooled = _PooledRow(*found[:-1], ref=found.container_id or "")
            now = utcnow()
            try:
                result = db.session.execute(
                    _TAKE_POOLED,
                    {
                        "pooled_id": pooled.id,
                        "now": now,
                        "new_name": request.postgraas_instance_name,
                        "new_db_name": request.db_name,
                        "new_username": request.db_username,
                        "new_password_hash": password_hash,
                        "new_owner": owner,
                        "new_expires_at": expires_at,
                        "new_durability": request.durability,
                    },
                )
                db.session.commit()
            except IntegrityError:
                db.session.rollback()
                raise _name_taken(request) from None
            if result.rowcount == 1:
                return pooled
        return None

    @staticmethod
    def _return_to_pool(pooled: _PooledRow) -> None:
        db.session.rollback()
        db.session.execute(
            update(DBInstance)
            .where(DBInstance.id == pooled.id, DBInstance.status == InstanceStatus.CREATING)
            .values(
                status=InstanceStatus.POOLED,
                postgraas_instance_name=pooled.name,
                db_name=pooled.db_name,
                username=pooled.username,
                password_hash=pooled.password_hash,
                owner=POOL_OWNER,
                expires_at=None,
                durability="durable",
                heartbeat_at=None,
            )
            .execution_options(synchronize_session=False)
        )
        db.session.commit()

    def keep_pool_ready(self, backend_name: str) -> int:
        """Let the backend hold what the claims of its pooled objects need (see Backend.keep_ready),
        and remove those it can never claim (made under another pool secret); returns how many."""
        rows = db.session.execute(
            select(DBInstance.id, DBInstance.container_id, DBInstance.db_name, DBInstance.username).where(
                DBInstance.backend == backend_name, DBInstance.status == InstanceStatus.POOLED
            )
        ).all()
        db.session.rollback()
        backend = self.backends.holding(backend_name)
        unclaimable = set(backend.keep_ready([row.container_id for row in rows if row.container_id]))
        removed = 0
        for row in rows:
            # Conditional: a create that took it meanwhile keeps it.
            if row.container_id not in unclaimable or not move_status(
                row.id, InstanceStatus.POOLED, InstanceStatus.DELETING, "not claimable by this server"
            ):
                continue
            try:
                backend.delete(
                    row.container_id, Credentials(row.db_name, row.username, ""), instance_id=row.id, force=True
                )
            except PostgraasError as e:
                # The reaper finds the deleting row and tries again.
                log.warning("could not remove unclaimable pooled object %s: %s", row.container_id, e.msg)
                continue
            self._forget(row.id)
            removed += 1
        return removed

    def fill_pool(self, backend_name: str, size: int) -> int:
        """Create pooled instances until ``backend_name`` has ``size`` (made or being made);
        returns how many were made. Stops at the first failure (the next round tries again)."""
        made = 0
        backend = self.backends.holding(backend_name)
        while True:
            have = self._count(
                (DBInstance.backend == backend_name)
                & (DBInstance.owner == POOL_OWNER)
                & DBInstance.status.in_((InstanceStatus.CREATING, InstanceStatus.POOLED))
            )
            limit = self.backends.limits.get(backend_name)
            held = self._count(DBInstance.backend == backend_name) if limit is not None else 0
            db.session.rollback()
            if have >= size or (limit is not None and held >= limit):
                return made
            tag = secrets.token_hex(6)
            request = CreateInstanceRequest(
                postgraas_instance_name=f"pool-{tag}",
                db_name=f"pool_{tag}",
                db_username=f"pool_{tag}",
                db_pwd=generate_password(),
            )
            hashes = password_hashes(request.db_pwd or "")
            row = self._reserve(request, hashes.meta_hash, backend_name, None, POOL_OWNER)
            spec = DatabaseSpec(
                row.id,
                row.postgraas_instance_name,
                row.db_name,
                row.username,
                request.db_pwd or "",
                db_pwd_verifier=hashes.scram_verifier,
                pooled=True,
            )
            try:
                self._provision(backend_name, backend, spec, ready_status=InstanceStatus.POOLED)
            except BaseException as e:
                # The backend removed what it made; a failed row of the pool would help nobody
                # (no request sees it) and hold capacity.
                self._release(row.id)
                if not isinstance(e, PostgraasError):
                    raise
                log.warning("could not fill the pool of backend %s: %s", backend_name, e.msg)
                return made
            made += 1

    # -- deleting ----------------------------------------------------------------------------

    def delete(self, instance_id: int, request: DeleteInstanceRequest, principal: Principal | None = None) -> str:
        """Remove the instance; returns a sentence saying what happened."""
        row = self.get(instance_id, principal)
        self._authorize(row, request.db_pwd, principal)
        name = row.postgraas_instance_name
        if row.status == InstanceStatus.CREATING:
            self._claim(row, (InstanceStatus.CREATING,), InstanceStatus.DELETING, "creation cancelled")
            return f"Cancelled the creation of instance {name!r} (id {instance_id}); what was made is removed."
        previous = row.status
        self._claim(row, DELETABLE, InstanceStatus.DELETING)
        backend = self.backends.holding(row.backend)
        left = None
        try:
            if row.container_id:
                credentials = Credentials(row.db_name, row.username, request.db_pwd or "")
                # Beating: the reaper retries a delete only once its request stopped working on it.
                with self.heartbeats.beating(instance_id):
                    left = backend.delete(row.container_id, credentials, instance_id=instance_id, force=request.force)
        except Conflict:
            # In use: the instance stays as it was.
            self._set_status(instance_id, InstanceStatus.DELETING, previous)
            raise
        except PostgraasError as e:
            # The user asked for it to go: keep it "deleting" and let the reaper retry.
            self._set_status(
                instance_id,
                InstanceStatus.DELETING,
                InstanceStatus.DELETING,
                f"delete failed, will be retried: {e.msg}",
            )
            raise
        self._forget(instance_id)
        log.info("instance %s (id %s) deleted (force=%s)", name, instance_id, request.force)
        return f"Deleted instance {name!r} (id {instance_id})." + (f" {left}" if left else "")

    # -- time to live ------------------------------------------------------------------------

    def extend(
        self, instance_id: int, request: ExtendInstanceRequest, principal: Principal | None = None
    ) -> DBInstance:
        """Set a new expiry, ``ttl`` from now (None: never, where no maximum is configured)."""
        row = self.get(instance_id, principal)
        self._authorize(row, request.db_pwd, principal)
        if row.status == InstanceStatus.DELETING:
            raise Conflict("The instance is being deleted.")
        expires_at = self._expiry(request.ttl, default=None, principal=principal)
        result = db.session.execute(
            update(DBInstance)
            .where(DBInstance.id == instance_id, DBInstance.status != InstanceStatus.DELETING)
            .values(expires_at=expires_at)
            .execution_options(synchronize_session=False)
        )
        db.session.commit()
        if result.rowcount != 1:
            raise Conflict("The instance is being deleted.")
        db.session.refresh(row)
        log.info("instance %s (id %s) now expires at %s", row.postgraas_instance_name, row.id, expires_at)
        return row

    def _expiry(self, ttl: int | None, default: int | None, principal: Principal | None = None) -> datetime | None:
        token_max = principal.max_ttl if principal is not None else None
        if token_max is not None:
            if ttl is not None and ttl > token_max:
                raise QuotaExceeded(
                    f"Your token allows a ttl of at most {format_duration(token_max)} (its max_ttl).",
                    {"ttl": f"at most {format_duration(token_max)} for this token"},
                )
            # Without a ttl of its own, an instance of a limited token lives as long as allowed.
            default = min(default, token_max) if default is not None else token_max
        ttl = ttl if ttl is not None else default
        maximum = self.lifecycle.max_ttl
        if ttl is None:
            if maximum is not None:
                raise InvalidRequest(
                    f"A ttl is required: instances live at most {format_duration(maximum)} here.",
                    {"ttl": f"required, at most {format_duration(maximum)}"},
                )
            return None
        if maximum is not None and ttl > maximum:
            raise InvalidRequest(
                f"The ttl may be at most {format_duration(maximum)}.", {"ttl": f"at most {format_duration(maximum)}"}
            )
        return utcnow() + timedelta(seconds=ttl)

    # -- helpers -----------------------------------------------------------------------------

    def _authorize(self, row: DBInstance, password: str | None, principal: Principal | None) -> None:
        """With a token, seeing the instance is enough (its owner or an admin); a db_pwd, if
        sent, must still match. Without one, the db_pwd is the proof (postgraas_server 2.x)."""
        if password is None:
            if principal is None:
                raise InvalidRequest("The request has invalid fields: db_pwd is required.", {"db_pwd": "is required"})
            return
        self._check_password(row, password)

    def _enforce_quotas(
        self, instance_id: int, owner: str, backend_name: str, principal: Principal | None, release: bool = True
    ) -> None:
        """Counted after the row is reserved, so concurrent creates can only undershoot a limit.
        Over a limit the row is released (``release``), else the caller gives it back."""
        owner_limit = principal.max_instances if principal is not None else None
        if owner_limit is not None:
            # What the owner asked to delete is no longer the owner's to count while its removal
            # waits for the reaper (on a lock nobody of the owner's holds), up to as many again as
            # the limit: past that, deletes that do not finish count, so none can be a way around
            # the limit. The backend's capacity counts them all, below.
            deleting = DBInstance.status == InstanceStatus.DELETING
            everything, being_deleted = db.session.execute(
                select(func.count(), func.count().filter(deleting)).where(DBInstance.owner == owner)
            ).one()
            owned = everything - being_deleted + max(0, being_deleted - owner_limit)
            if owned > owner_limit:
                if release:
                    self._release(instance_id)
                raise QuotaExceeded(
                    f"Owner {owner!r} already has {owned - 1} instance(s), the most its token allows "
                    f"(max_instances {owner_limit}).",
                    {"postgraas_instance_name": "over the max_instances of your token"},
                )
        backend_limit = self.backends.limits.get(backend_name)
        if backend_limit is not None:
            held = self._count(DBInstance.backend == backend_name)
            if held > backend_limit:
                if release:
                    self._release(instance_id)
                raise CapacityExhausted(
                    f"Backend {backend_name!r} is at its capacity of {backend_limit} instances; try again later."
                )

    @staticmethod
    def _count(condition: Any) -> int:
        return db.session.execute(select(func.count()).select_from(DBInstance).where(condition)).scalar_one()

    def _check_password(self, row: DBInstance, password: str) -> None:
        if not self._password_matches(row, password):
            raise WrongPassword("The password does not match this instance's db_pwd.", {"db_pwd": "does not match"})

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

    def _claim(self, row: DBInstance, expected: tuple[str, ...], new: str, detail: str | None = None) -> None:
        """Move the row from one of ``expected`` to ``new``, or raise Conflict if another
        request moved it first: a conditional UPDATE, so exactly one request wins."""
        if not move_status(row.id, expected, new, detail):
            db.session.refresh(row)
            raise Conflict(f"The instance is {row.status} and cannot be changed by this request now.")
        db.session.refresh(row)

    @staticmethod
    def _set_status(instance_id: int, expected: str, new: str, detail: str | None = None) -> None:
        db.session.rollback()
        move_status(instance_id, expected, new, detail)

    def _reserve(
        self,
        request: CreateInstanceRequest,
        password_hash: str,
        backend_name: str,
        expires_at: datetime | None,
        owner: str,
    ) -> DBInstance:
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
        )
        db.session.add(row)
        try:
            db.session.commit()
        except IntegrityError:
            db.session.rollback()
            raise _name_taken(request) from None
        return row

    def _release(self, instance_id: int) -> None:
        """Drop a reserved row after a failed create. Its own failure must not hide the first one."""
        try:
            db.session.rollback()
            self._forget(instance_id)
        except Exception:
            db.session.rollback()
            log.exception("could not remove the meta row of failed instance id %s", instance_id)

    def _forget(self, instance_id: int) -> None:
        row = db.session.get(DBInstance, instance_id)
        if row is not None:
            db.session.delete(row)
            db.session.commit()

    @staticmethod
    def _remove_quietly(backend: Backend, ref: str, credentials: Credentials, instance_id: int) -> None:
        try:
            backend.delete(ref, credentials, instance_id=instance_id, force=True)
        except Exception:
            # The reaper finds it again by its deployment and instance id.
            log.exception("could not remove %s object %s", backend.type_name, ref)


def _after_response(action: Callable[[], None]) -> None:
    """Run ``action`` once the answer to the current request is sent (at once outside a request):
    making a pooled instance's replacement competes for the cores the answer still needs."""
    if not has_request_context():
        action()
        return

    @after_this_request
    def _on_close(response: Response) -> Response:
        response.call_on_close(action)
        return response


@contextmanager
def _failures_counted(backend_name: str) -> Iterator[None]:
    try:
        yield
    except Exception as e:
        CREATE_FAILURES.labels(backend_name, failure_reason(e)).inc()
        raise


def _name_taken(request: CreateInstanceRequest) -> Conflict:
    return Conflict(
        f"An instance named {request.postgraas_instance_name!r} already exists.",
        {"postgraas_instance_name": "already exists"},
    )
