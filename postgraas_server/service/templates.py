"""Templates: a database built once per content (a name and a hash) and owner, then cloned by the
creates that name it. No HTTP here (the API passes the principal).

Of concurrent identical ensures, the unique index on (owner, name, hash) lets one insert: that
caller builds. Its builder works in an ordinary instance of the template's backend (the builder
instance); finalize freezes that instance into the template (``Backend.freeze``), and the
instance row goes. The others wait until the template is ready or failed.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError

from ..backends import BackendRegistry, Credentials
from ..errors import Conflict, InvalidRequest, NotFound, PostgraasError
from ..models import TEMPLATES, DBInstance, InstanceStatus, Template, TemplateStatus, db, utcnow
from ..passwords import generate_password
from ..schemas import CreateInstanceRequest
from ..template_schemas import EnsureTemplateRequest
from ..tokens import Principal
from .instances import InstanceService
from .transitions import execute_dml, forget, transition, update_row

log = logging.getLogger(__name__)


class Ensured:
    """What an ensure made of a request: ``build`` (with the builder instance and its password),
    ``ready`` or ``wait``."""

    def __init__(self, template: Template, outcome: str, builder: Any = None, db_pwd: str = "") -> None:
        self.template, self.outcome, self.builder, self.db_pwd = template, outcome, builder, db_pwd


class TemplateService:
    def __init__(self, instances: InstanceService) -> None:
        self.instances = instances

    # -- reading -----------------------------------------------------------------------------

    def get(self, template_id: int, principal: Principal | None = None) -> Template:
        """The template, if ``principal`` may see it (another owner's is a 404 like a missing one)."""
        row = db.session.get(Template, template_id)
        if row is None or (principal is not None and not principal.admin and row.owner != principal.owner):
            raise NotFound(f"There is no template with id {template_id}.")
        return row

    def list(self, principal: Principal | None = None) -> list[Template]:
        query = select(Template).order_by(Template.id)
        if principal is not None and not principal.admin:
            query = query.where(Template.owner == principal.owner)
        return list(db.session.scalars(query))

    def wait_until_settled(self, template_id: int, timeout: float, principal: Principal | None = None) -> Template:
        """The template once it is no longer building, or as it is when ``timeout`` runs out."""
        deadline = time.monotonic() + timeout
        while True:
            db.session.expire_all()
            row = self.get(template_id, principal)
            if row.status != TemplateStatus.BUILDING or time.monotonic() >= deadline:
                return row
            db.session.rollback()  # a waiting request holds no pooled connection
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    # -- building ----------------------------------------------------------------------------

    def ensure(self, request: EnsureTemplateRequest, principal: Principal | None = None) -> Ensured:
        """The template of this name and hash: ready, being built by another caller, or to be built
        by this one (a builder instance is made for it)."""
        backend_name, backend = self.instances.backends.choose(request.backend)
        if (why := backend.why_no_template()) is not None:
            raise InvalidRequest(
                f"Backend {backend_name!r} cannot keep templates: {why}.",
                {"backend": f"has no templates ({backend.type_name})"},
            )
        expires_at = self.instances.policy.expiry(request.ttl, default=None, principal=principal)
        owner = principal.owner if principal else ""
        row, outcome = self._claim_build(request, backend_name, owner, expires_at)
        if outcome != "build":
            return Ensured(row, outcome)
        db_pwd = generate_password()
        builder_request = CreateInstanceRequest(
            postgraas_instance_name=f"template.{row.id}",
            db_name=f"template_{row.id}",
            db_username=f"builder_{row.id}",
            db_pwd=db_pwd,
            backend=backend_name,
            ttl=request.build_timeout,
        )
        try:
            builder = self.instances.create(builder_request, principal)
        except PostgraasError as e:
            self._fail(row.id, f"the builder's database could not be made: {e.msg}")
            raise
        if not update_row_of(row.id, TEMPLATES.c.status == TemplateStatus.BUILDING, builder_instance_id=builder.id):
            # Given up or deleted meanwhile: the builder's database has no template to become.
            self._remove_builder(builder.id)
            raise Conflict(f"The template {row.name!r} was deleted while its builder's database was made.")
        db.session.refresh(row)
        log.info("template %s (id %s) is being built in instance %s", row.name, row.id, builder.id)
        return Ensured(row, "build", builder, db_pwd)

    def _claim_build(
        self, request: EnsureTemplateRequest, backend_name: str, owner: str, expires_at: Any
    ) -> tuple[Template, str]:
        now = utcnow()
        row = Template(
            name=request.name,
            content_hash=request.hash,
            backend=backend_name,
            owner=owner,
            status=TemplateStatus.BUILDING,
            status_changed_at=now,
            created_at=now,
            heartbeat_at=now,
            build_timeout=request.build_timeout,
            pool_size=request.pool_size,
            expires_at=expires_at,
        )
        db.session.add(row)
        try:
            db.session.commit()
            return row, "build"
        except IntegrityError:
            db.session.rollback()
        existing = db.session.scalars(
            select(Template).where(
                Template.owner == owner, Template.name == request.name, Template.content_hash == request.hash
            )
        ).one_or_none()
        if existing is None:
            raise Conflict(f"The template {request.name!r} was deleted meanwhile; ask again.")
        if existing.status == TemplateStatus.READY:
            return existing, "ready"
        if existing.status == TemplateStatus.DELETING:
            raise Conflict(f"The template {request.name!r} is being deleted; ask again once it is gone.")
        stale = now - timedelta(seconds=existing.build_timeout)
        # A failed build, or one whose builder went silent: the first to ask builds it anew.
        rebuild = or_(
            TEMPLATES.c.status == TemplateStatus.FAILED,
            (TEMPLATES.c.status == TemplateStatus.BUILDING) & (TEMPLATES.c.heartbeat_at < stale),
        )
        if update_row_of(
            existing.id,
            rebuild,
            status=TemplateStatus.BUILDING,
            status_detail=None,
            status_changed_at=now,
            heartbeat_at=now,
            backend=backend_name,
            build_timeout=request.build_timeout,
            builder_instance_id=None,
        ):
            db.session.refresh(existing)
            return existing, "build"
        db.session.refresh(existing)
        return existing, "ready" if existing.status == TemplateStatus.READY else "wait"

    def heartbeat(self, template_id: int, principal: Principal | None = None) -> Template:
        """The builder is alive: the build's deadline (and its database's expiry) move on."""
        row = self.get(template_id, principal)
        now = utcnow()
        if not update_row_of(row.id, TEMPLATES.c.status == TemplateStatus.BUILDING, heartbeat_at=now):
            raise Conflict(f"The template is {row.status}, not building.")
        if row.builder_instance_id is not None:
            update_row(row.builder_instance_id, expires_at=now + timedelta(seconds=row.build_timeout))
        db.session.refresh(row)
        return row

    def finalize(self, template_id: int, principal: Principal | None = None) -> Template:
        """Freeze the builder's database into the template: its sessions end, and it is ready."""
        row = self.get(template_id, principal)
        if row.status == TemplateStatus.READY:
            return row
        builder = db.session.get(DBInstance, row.builder_instance_id) if row.builder_instance_id else None
        if (
            row.status != TemplateStatus.BUILDING
            or builder is None
            or builder.status != InstanceStatus.READY
            or not builder.container_id
        ):
            raise Conflict(f"The template is {row.status} and has no builder's database to freeze.")
        # The builder instance stops being one: no delete, reaper or expiry acts on it meanwhile.
        if not transition(builder.id, InstanceStatus.READY, InstanceStatus.DELETING, f"becoming template {row.id}"):
            raise Conflict("The builder's database is being changed by another request.")
        backend = self.instances.backends.holding(builder.backend)
        try:
            with self.instances.heartbeats.beating(builder.id):
                frozen = backend.freeze(
                    builder.container_id, Credentials(builder.db_name, builder.username, ""), template_id=row.id
                )
        except PostgraasError as e:
            db.session.rollback()
            self._fail(row.id, f"finalize failed: {e.msg}")
            self._remove_builder(builder.id)
            raise
        made_ready = update_row_of(
            row.id,
            TEMPLATES.c.status == TemplateStatus.BUILDING,
            status=TemplateStatus.READY,
            status_detail=None,
            status_changed_at=utcnow(),
            heartbeat_at=None,
            builder_instance_id=None,
            artifact=frozen.artifact,
            tenant_db_name=frozen.tenant.db_name,
            tenant_username=frozen.tenant.db_username,
        )
        forget(builder.id, InstanceStatus.DELETING)
        if not made_ready:
            # Deleted (or given up) while it froze: the template has no row to belong to.
            backend.drop_template(frozen.artifact)
            raise Conflict("The template was deleted while it was finalized.")
        db.session.refresh(row)
        log.info("template %s (id %s, %s) is ready in backend %s", row.name, row.id, row.content_hash, row.backend)
        return row

    # -- deleting ----------------------------------------------------------------------------

    def delete(self, template_id: int, principal: Principal | None = None) -> str:
        """Remove the template (and a build in progress); the instances made from it stay."""
        row = self.get(template_id, principal)
        name = row.name
        expected = (TemplateStatus.READY, TemplateStatus.FAILED, TemplateStatus.BUILDING)
        if not update_row_of(row.id, TEMPLATES.c.status.in_(expected), status=TemplateStatus.DELETING):
            raise Conflict(f"The template is {row.status} and cannot be deleted by this request now.")
        if not remove_template(self.instances.backends, row.id):
            return f"Deleting template {name!r} (id {template_id}); the reaper finishes what its backend could not."
        return f"Deleted template {name!r} (id {template_id}); instances made from it stay."

    def _fail(self, template_id: int, detail: str) -> None:
        update_row_of(
            template_id,
            TEMPLATES.c.status == TemplateStatus.BUILDING,
            status=TemplateStatus.FAILED,
            status_detail=detail,
            status_changed_at=utcnow(),
        )

    def _remove_builder(self, instance_id: int) -> None:
        try:
            remove_builder(self.instances.backends, instance_id)
        except PostgraasError as e:
            # The reaper retries the builder instance's delete (its row stays deleting).
            log.warning("could not remove builder instance %s: %s", instance_id, e.msg)


def remove_template(backends: BackendRegistry, template_id: int) -> bool:
    """Remove a deleting template's builder and artifact, then its row; False when the backend
    could not (the row stays deleting, for the reaper to try again)."""
    row = db.session.get(Template, template_id)
    if row is None:
        return True
    try:
        if row.builder_instance_id is not None:
            remove_builder(backends, row.builder_instance_id)
        if row.artifact:
            backends.holding(row.backend).drop_template(row.artifact)
    except PostgraasError as e:
        log.warning("could not remove template %s (id %s) yet: %s", row.name, row.id, e.msg)
        return False
    execute_dml(TEMPLATES.delete().where(TEMPLATES.c.id == template_id))
    db.session.commit()
    return True


def remove_builder(backends: BackendRegistry, instance_id: int) -> None:
    """The builder's instance goes with its build (force: the builder may still be connected)."""
    builder = db.session.get(DBInstance, instance_id)
    if builder is None:
        return
    transition(instance_id, (InstanceStatus.READY, InstanceStatus.FAILED, InstanceStatus.LOST), InstanceStatus.DELETING)
    if builder.container_id:
        credentials = Credentials(builder.db_name, builder.username, "")
        backends.holding(builder.backend).delete(builder.container_id, credentials, instance_id=instance_id, force=True)
    forget(instance_id)


def update_row_of(template_id: int, *conditions: Any, **values: Any) -> bool:
    """One conditional UPDATE of a template row; True when it applied."""
    result = execute_dml(
        update(Template)
        .where(Template.id == template_id, *conditions)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    return bool(result.rowcount == 1)
