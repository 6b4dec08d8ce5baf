"""What the service does with instances: meta-db transactions around backend calls. No HTTP here.

The caller (the API) passes what it needs of HTTP as plain values: the principal, and a way to run
work after the answer is sent. Status changes go through transitions.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import SimpleNamespace

from ..backends import Backend, BackendRegistry, Credentials, DatabaseSpec, ObjectState
from ..config import LifecycleSettings
from ..errors import Conflict, NotFound, PostgraasError
from ..models import INSTANCES, POOL_OWNER, DBInstance, InstanceStatus, db
from ..passwords import generate_password, password_hashes
from ..schemas import CreateInstanceRequest, DeleteInstanceRequest, ExtendInstanceRequest
from ..tokens import Principal
from .background import Background, Context
from .heartbeats import Heartbeats
from .policy import Policy
from .pool import WarmPool
from .provisioning import Provisioner, failures_counted
from .template_lookup import ChosenTemplate, find_template, still_ready
from .transitions import forget, release, transition, update_row

log = logging.getLogger(__name__)

# Runs a callable once the answer to the current request is sent (the API's); by default at once.
AfterResponse = Callable[[Callable[[], None]], None]

# Statuses a delete may start from; "creating" is a cancellation, handled apart.
DELETABLE = (InstanceStatus.READY, InstanceStatus.FAILED, InstanceStatus.LOST)


def _at_once(action: Callable[[], None]) -> None:
    action()


def _no_template(request: CreateInstanceRequest) -> NotFound:
    where = f" in backend {request.backend!r}" if request.backend else ""
    return NotFound(
        f"There is no ready template named {request.template!r}{where}.",
        {"template": "no ready template of that name"},
    )


class InstanceService:
    def __init__(self, backends: BackendRegistry, lifecycle: LifecycleSettings, context: Context) -> None:
        self.backends = backends
        self.lifecycle = lifecycle
        self.background = Background(context)
        self.heartbeats = Heartbeats.of_meta_db(lifecycle.heartbeat_timeout)
        self.policy = Policy(backends, lifecycle)
        self.provisioner = Provisioner(self.heartbeats)
        self.pool = WarmPool(backends, self.provisioner, self.policy)

    # -- reading -----------------------------------------------------------------------------

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
        self,
        request: CreateInstanceRequest,
        principal: Principal | None = None,
        after_response: AfterResponse = _at_once,
        *,
        template_builder: bool = False,
    ) -> DBInstance | SimpleNamespace:
        """Reserve the name, create the database, mark the row ready; returns the row (a snapshot
        of its columns once ready).

        With ``request.wait`` (the default) this returns once the database is ready, and any
        failure removes the row again. Otherwise it returns the row still creating and goes on
        in the background; a failure then leaves the row as ``failed``, saying why.
        No failure leaves a backend object behind. ``template_builder``: made for a template's
        builder, to be frozen (see DatabaseSpec.template_builder).
        """
        owner = principal.owner if principal else ""
        template = self._template_of(request, owner)
        backend_name, backend = self.backends.choose(request.backend)
        with failures_counted(backend_name):
            # Where no Postgraas template has the name: a database a cluster's admin designated.
            if request.template is not None and template is None and not backend.takes_designated_templates:
                raise _no_template(request)
            expires_at = self.policy.expiry(request.ttl, default=self.lifecycle.default_ttl, principal=principal)
            if request.db_pwd is None:
                # The caller returns request.db_pwd once, in the answer to this create.
                request.db_pwd = generate_password()
            hashes = password_hashes(request.db_pwd)
            template_id = template.id if template is not None else None
            if request.wait and not template_builder and self.pool.serves(backend_name, backend, request, template):
                taken = self.pool.take(
                    request, hashes, backend_name, backend, expires_at, owner, principal, template_id
                )
                if taken is not None:
                    if self.pool.taken is not None:
                        # Making the replacement competes for the cores the answer still needs.
                        after_response(self.pool.taken)
                    return taken
            row = self.provisioner.reserve(request, hashes.meta_hash, backend_name, expires_at, owner, template_id)
            if template is not None and not still_ready(template):
                # Deleted or replaced since it was chosen; its removal did not see this row.
                release(row.id)
                raise _no_template(request)
            self.policy.enforce_quotas(row.id, row.owner, backend_name, principal)
            spec = DatabaseSpec(
                instance_id=row.id,
                instance_name=row.postgraas_instance_name,
                db_name=request.db_name,
                db_username=request.db_username,
                db_pwd=request.db_pwd,
                template=request.template if template is None else None,
                from_template=template.frozen if template is not None else None,
                ephemeral=request.durability == "ephemeral",
                db_pwd_verifier=hashes.scram_verifier,
                template_builder=template_builder,
            )
            if not request.wait:
                self._provision_in_background(row.id, backend_name, backend, spec)
                return row
            try:
                return self.provisioner.provision(backend_name, backend, spec)
            except BaseException:
                # A no-op where provision already forgot the row (a creation cancelled meanwhile).
                release(row.id)
                raise

    @staticmethod
    def _template_of(request: CreateInstanceRequest, owner: str) -> ChosenTemplate | None:
        """The owner's ready Postgraas template the request names, if any (read now: it may go
        meanwhile); the create then goes to its backend."""
        if request.template is None:
            return None
        template = find_template(request.template, owner, request.backend)
        if template is not None:
            request.backend = template.backend
        return template

    def _provision_in_background(
        self, instance_id: int, backend_name: str, backend: Backend, spec: DatabaseSpec
    ) -> None:
        # Say no now rather than accept a creation that cannot start (an engine that is down).
        try:
            backend.health()
        except BaseException:
            release(instance_id)
            raise

        def provision() -> None:
            try:
                with failures_counted(backend_name):
                    self.provisioner.provision(backend_name, backend, spec)
            except PostgraasError as e:
                self.provisioner.fail(spec.instance_id, e.msg)
            except Exception as e:
                log.exception("creating instance %s failed", spec.instance_name)
                self.provisioner.fail(spec.instance_id, f"Internal error: {type(e).__name__}")

        self.background.run(f"create-{instance_id}", provision)

    # -- deleting ----------------------------------------------------------------------------

    def delete(self, instance_id: int, request: DeleteInstanceRequest, principal: Principal | None = None) -> str:
        """Remove the instance; returns a sentence saying what happened."""
        row = self.get(instance_id, principal)
        self.policy.authorize(row, request.db_pwd, principal)
        name = row.postgraas_instance_name
        if row.status == InstanceStatus.CREATING:
            self._transition(row, (InstanceStatus.CREATING,), InstanceStatus.DELETING, "creation cancelled")
            return f"Cancelled the creation of instance {name!r} (id {instance_id}); what was made is removed."
        previous = row.status
        self._transition(row, DELETABLE, InstanceStatus.DELETING)
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
            db.session.rollback()
            transition(instance_id, InstanceStatus.DELETING, previous)
            raise
        except PostgraasError as e:
            # The user asked for it to go: keep it "deleting" and let the reaper retry.
            db.session.rollback()
            detail = f"delete failed, will be retried: {e.msg}"
            transition(instance_id, InstanceStatus.DELETING, InstanceStatus.DELETING, detail)
            raise
        forget(instance_id)
        log.info("instance %s (id %s) deleted (force=%s)", name, instance_id, request.force)
        return f"Deleted instance {name!r} (id {instance_id})." + (f" {left}" if left else "")

    # -- time to live ------------------------------------------------------------------------

    def extend(
        self, instance_id: int, request: ExtendInstanceRequest, principal: Principal | None = None
    ) -> DBInstance:
        """Set a new expiry, ``ttl`` from now (None: never, where no maximum is configured)."""
        row = self.get(instance_id, principal)
        self.policy.authorize(row, request.db_pwd, principal)
        if row.status == InstanceStatus.DELETING:
            raise Conflict("The instance is being deleted.")
        expires_at = self.policy.expiry(request.ttl, default=None, principal=principal)
        if not update_row(instance_id, INSTANCES.c.status != InstanceStatus.DELETING, expires_at=expires_at):
            raise Conflict("The instance is being deleted.")
        db.session.refresh(row)
        log.info("instance %s (id %s) now expires at %s", row.postgraas_instance_name, row.id, expires_at)
        return row

    # -- helpers -----------------------------------------------------------------------------

    @staticmethod
    def _transition(row: DBInstance, expected: tuple[str, ...], new: str, detail: str | None = None) -> None:
        """Move the row from one of ``expected`` to ``new``, or raise Conflict if another
        request moved it first."""
        if not transition(row.id, expected, new, detail):
            db.session.refresh(row)
            raise Conflict(f"The instance is {row.status} and cannot be changed by this request now.")
        db.session.refresh(row)
