"""Templates: a database built once per content (a name and a hash) and owner, then cloned by the
creates that name it. No HTTP here (the API passes the principal).

Of concurrent identical ensures, the unique index on (owner, name, hash) lets one insert: that
caller builds. Its builder works in an ordinary instance of the template's backend (the builder
instance); finalize freezes that instance into the template (``Backend.freeze``), and the
instance row goes. The others wait until the template is ready or failed.
"""

from __future__ import annotations

import logging
import secrets
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError

from ..backends import Credentials
from ..errors import Conflict, InvalidRequest, NotFound, PostgraasError, QuotaExceeded
from ..models import TEMPLATES, DBInstance, InstanceStatus, Template, TemplateStatus, db, utcnow
from ..passwords import generate_password
from ..schemas import CreateInstanceRequest
from ..template_schemas import BuilderRequest, EnsureTemplateRequest
from ..tokens import Principal
from .instances import InstanceService
from .template_removal import remove_builder, remove_own_builder, remove_template, retire_replaced, update_row_of
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
            if row.status not in (TemplateStatus.BUILDING, TemplateStatus.FINALIZING) or time.monotonic() >= deadline:
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
        self._check_build_timeout(request.build_timeout, principal)
        owner = principal.owner if principal else ""
        row, outcome, build_id, old_builder = self._claim_build(request, backend_name, owner, expires_at, principal)
        if outcome != "build":
            return Ensured(row, outcome)
        template_id = row.id
        if old_builder is not None:
            # The database of the build given up before this one.
            self._remove_builder(old_builder)
        # Names no tenant of a shared cluster can take ahead of time, and no build's again.
        tag = secrets.token_hex(4)
        db_pwd = generate_password()
        builder_request = CreateInstanceRequest(
            postgraas_instance_name=f"template.{template_id}.{tag}",
            db_name=f"template_{template_id}_{tag}",
            db_username=f"builder_{template_id}_{tag}",
            db_pwd=db_pwd,
            backend=backend_name,
            ttl=request.build_timeout,
        )
        try:
            builder = self.instances.create(builder_request, principal, template_builder=True)
        except Exception as e:
            detail = e.msg if isinstance(e, PostgraasError) else f"internal error: {type(e).__name__}"
            self._fail(template_id, build_id, f"the builder's database could not be made: {detail}")
            raise
        builder_id = builder.id
        this_build = (TEMPLATES.c.status == TemplateStatus.BUILDING, TEMPLATES.c.build_id == build_id)
        # From now on the builder's heartbeats count: making its database took time of its own.
        if not update_row_of(template_id, *this_build, builder_instance_id=builder_id, heartbeat_at=utcnow()):
            # Given up or deleted meanwhile: the builder's database has no template to become.
            self._remove_builder(builder_id)
            raise Conflict("The template was deleted (or its build given up) while its builder's database was made.")
        log.info("template %s (id %s) is being built in instance %s", request.name, template_id, builder_id)
        return Ensured(self._reload(template_id), "build", builder, db_pwd)

    def _check_build_timeout(self, build_timeout: int, principal: Principal | None) -> None:
        """The builder's database lives build_timeout from each heartbeat: a ttl the token and the
        server must allow. Refused before anything is made, naming the field the caller sent."""
        try:
            self.instances.policy.expiry(build_timeout, default=None, principal=principal)
        except PostgraasError as e:
            why = e.errors.get("ttl", "too long")
            raise type(e)(f"build_timeout: {e.msg}", {"build_timeout": why}) from None

    def _claim_build(
        self,
        request: EnsureTemplateRequest,
        backend_name: str,
        owner: str,
        expires_at: Any,
        principal: Principal | None,
    ) -> tuple[Template, str, str, int | None]:
        """(the row, "build" / "ready" / "wait", the build's id, the builder of a build given up)."""
        now = utcnow()
        build_id = secrets.token_hex(16)
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
            build_id=build_id,
            pool_size=request.pool_size,
            expires_at=expires_at,
        )
        db.session.add(row)
        try:
            db.session.commit()
        except IntegrityError:
            db.session.rollback()
        else:
            _enforce_template_quota(row, principal)
            return row, "build", build_id, None
        existing = db.session.scalars(
            select(Template).where(
                Template.owner == owner, Template.name == request.name, Template.content_hash == request.hash
            )
        ).one_or_none()
        if existing is None:
            raise Conflict(f"The template {request.name!r} was deleted meanwhile; ask again.")
        existing_id, status, old_builder = existing.id, existing.status, existing.builder_instance_id
        if request.backend is not None and existing.backend != backend_name and status != TemplateStatus.FAILED:
            raise Conflict(
                f"The template {request.name}@{request.hash} is in backend {existing.backend!r}, not {backend_name!r}.",
                {"backend": f"the template is in {existing.backend!r}"},
            )
        if status == TemplateStatus.READY:
            return existing, "ready", "", None
        if status == TemplateStatus.DELETING:
            raise Conflict(f"The template {request.name!r} is being deleted; ask again once it is gone.")
        stale = now - timedelta(seconds=existing.build_timeout)
        # A failed build, or one whose builder went silent: the first to ask builds it anew.
        rebuild = or_(
            TEMPLATES.c.status == TemplateStatus.FAILED,
            (TEMPLATES.c.status == TemplateStatus.BUILDING) & (TEMPLATES.c.heartbeat_at < stale),
        )
        if update_row_of(
            existing_id,
            rebuild,
            status=TemplateStatus.BUILDING,
            status_detail=None,
            status_changed_at=now,
            heartbeat_at=now,
            backend=backend_name,
            build_timeout=request.build_timeout,
            build_id=build_id,
            builder_instance_id=None,
            # This request's, as for a new row: the failed build's are the earlier request's.
            expires_at=expires_at,
            pool_size=request.pool_size,
        ):
            return self._reload(existing_id), "build", build_id, old_builder
        again = self._reload(existing_id)
        return again, "ready" if again.status == TemplateStatus.READY else "wait", "", None

    def heartbeat(self, template_id: int, request: BuilderRequest, principal: Principal | None = None) -> Template:
        """The builder is alive: the build's deadline (and its database's expiry) move on."""
        row = self.get(template_id, principal)
        build_timeout = row.build_timeout
        self._builder_of(row, request, principal)
        now = utcnow()
        this_builder = TEMPLATES.c.builder_instance_id == request.instance_id
        if not update_row_of(
            template_id, TEMPLATES.c.status == TemplateStatus.BUILDING, this_builder, heartbeat_at=now
        ):
            raise Conflict("The template is not being built by this builder any more.")
        update_row(request.instance_id, expires_at=now + timedelta(seconds=build_timeout))
        return self._reload(template_id)

    def finalize(self, template_id: int, request: BuilderRequest, principal: Principal | None = None) -> Template:
        """Freeze the builder's database into the template: its sessions end, and it is ready."""
        row = self.get(template_id, principal)
        if row.status == TemplateStatus.READY and row.builder_instance_id is None:
            return row
        build_id = row.build_id
        builder = self._builder_of(row, request, principal)
        ref, backend_name = builder.container_id, builder.backend
        credentials = Credentials(builder.db_name, builder.username, "")
        if builder.status != InstanceStatus.READY or not ref:
            raise Conflict(f"The builder's database is {builder.status}, not ready to be frozen.")
        # This build's finalize from now on: no give-up, delete or second finalize touches the builder.
        this_build = (TEMPLATES.c.build_id == build_id, TEMPLATES.c.builder_instance_id == request.instance_id)
        now = utcnow()
        if not update_row_of(
            template_id, TEMPLATES.c.status == TemplateStatus.BUILDING, *this_build,
            status=TemplateStatus.FINALIZING, heartbeat_at=now, status_changed_at=now,
        ):  # fmt: skip
            raise Conflict("The template is not being built by this builder any more.")
        if not transition(request.instance_id, InstanceStatus.READY, InstanceStatus.DELETING, "becoming a template"):
            self._fail(template_id, build_id, "the builder's database was being deleted when finalize began")
            raise Conflict("The builder's database is being changed by another request.")
        backend = self.instances.backends.holding(backend_name)
        try:
            with self.instances.heartbeats.beating(request.instance_id):
                frozen = backend.freeze(ref, credentials, template_id=template_id)
        except Exception as e:
            db.session.rollback()
            detail = e.msg if isinstance(e, PostgraasError) else f"internal error: {type(e).__name__}"
            self._fail(template_id, build_id, f"finalize failed: {detail}")
            remove_own_builder(self.instances.backends, request.instance_id, backend_name, ref, credentials)
            raise
        made_ready = update_row_of(
            template_id, TEMPLATES.c.status == TemplateStatus.FINALIZING, *this_build,
            status=TemplateStatus.READY, status_detail=None, status_changed_at=utcnow(), heartbeat_at=None,
            builder_instance_id=None, artifact=frozen.artifact, tenant_db_name=frozen.tenant.db_name,
            tenant_username=frozen.tenant.db_username,
        )  # fmt: skip
        forget(request.instance_id, InstanceStatus.DELETING)
        if not made_ready:
            # Deleted (or given up) while it froze: the template has no row to belong to.
            backend.drop_template(frozen.artifact)
            raise Conflict("The template was deleted while it was finalized.")
        template = self._reload(template_id)
        log.info("template %s (id %s) is ready in backend %s", template.name, template_id, backend_name)
        if retired := retire_replaced(self.instances.backends, template, self.instances.background.run):
            log.info("template %s (id %s) replaces the ids %s", template.name, template_id, retired)
        if template.pool_size and self.instances.pool.taken is not None:
            self.instances.pool.taken()  # its pool is filled now, not at the keeper's next round
        return self._reload(template_id)

    def _builder_of(self, row: Template, request: BuilderRequest, principal: Principal | None) -> DBInstance:
        """The builder instance the request names, if it is this template's current one; its
        db_pwd is the proof without a token, as an instance's is."""
        if row.status not in (TemplateStatus.BUILDING, TemplateStatus.FINALIZING):
            raise Conflict(f"The template is {row.status}, not being built.")
        if row.builder_instance_id != request.instance_id:
            raise Conflict(
                "That is not this template's builder (its build may have been given up and started anew).",
                {"instance_id": "is not the template's builder"},
            )
        builder = db.session.get(DBInstance, request.instance_id)
        if builder is None:
            raise Conflict("The builder's database is gone.")
        self.instances.policy.authorize(builder, request.db_pwd, principal)
        return builder

    # -- deleting ----------------------------------------------------------------------------

    def delete(self, template_id: int, principal: Principal | None = None) -> str:
        """Remove the template (and a build in progress); the instances made from it stay."""
        name = self.get(template_id, principal).name
        expected = (TemplateStatus.READY, TemplateStatus.FAILED, TemplateStatus.BUILDING, TemplateStatus.FINALIZING)
        deleting = {"status": TemplateStatus.DELETING, "status_changed_at": utcnow()}
        if not update_row_of(template_id, TEMPLATES.c.status.in_(expected), **deleting):
            raise Conflict(f"The template is {self._reload(template_id).status} and cannot be deleted now.")
        if not remove_template(self.instances.backends, template_id, self.instances.background.run):
            return f"Deleting template {name!r} (id {template_id}); the reaper finishes what its backend could not."
        return f"Deleted template {name!r} (id {template_id}); instances made from it stay."

    def _fail(self, template_id: int, build_id: str | None, detail: str) -> None:
        """This build failed (a later build, or a delete, is left alone)."""
        update_row_of(
            template_id,
            TEMPLATES.c.status.in_((TemplateStatus.BUILDING, TemplateStatus.FINALIZING)),
            TEMPLATES.c.build_id == build_id,
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

    @staticmethod
    def _reload(template_id: int) -> Template:
        """The row as it is now; NotFound when it was deleted meanwhile."""
        db.session.expire_all()
        row = db.session.get(Template, template_id)
        if row is None:
            raise NotFound(f"There is no template with id {template_id} (any more).")
        return row


def _enforce_template_quota(row: Template, principal: Principal | None) -> None:
    """Counted after the new row is in, so concurrent ensures can only undershoot a limit; over it,
    the row goes again. max_templates counts what the owner holds: not failed builds, nor the
    ready contents of this name that this one is to replace. Pooled clones belong to no owner, so
    the sum of an owner's pool sizes is held within its max_instances."""
    if principal is None:
        return
    owner, template_id = row.owner, row.id
    held = db.session.execute(
        select(func.count(), func.coalesce(func.sum(TEMPLATES.c.pool_size), 0)).where(
            TEMPLATES.c.owner == owner,
            TEMPLATES.c.status.not_in((TemplateStatus.DELETING, TemplateStatus.FAILED)),
            ~((TEMPLATES.c.name == row.name) & (TEMPLATES.c.backend == row.backend) & (TEMPLATES.c.id != template_id)),
        )
    ).one()
    templates, pooled = int(held[0]), int(held[1])
    over: QuotaExceeded | None = None
    if principal.max_templates is not None and templates > principal.max_templates:
        over = QuotaExceeded(
            f"Owner {owner!r} already has {templates - 1} template(s), the most its token allows "
            f"(max_templates {principal.max_templates}).",
            {"name": "over the max_templates of your token"},
        )
    elif principal.max_instances is not None and pooled > principal.max_instances:
        over = QuotaExceeded(
            f"The pools of owner {owner!r}'s templates would hold {pooled} clones, more than its token's "
            f"max_instances ({principal.max_instances}).",
            {"pool_size": f"at most {principal.max_instances} in all of your templates' pools"},
        )
    if over is None:
        return
    execute_dml(TEMPLATES.delete().where(TEMPLATES.c.id == template_id))
    db.session.commit()
    raise over
