"""The warm pool: each backend's ``pool_size`` instances made ahead under throwaway names, so a
create only takes one and has the backend hand it over (``Backend.claim``) to the request's names.
A template's ``pool_size`` keeps clones of it ready the same way, in a pool of its own (the rows'
``template_id``).

Every server process runs a PoolKeeper; each counts what the meta db holds before it makes more, so
several workers overshoot by a few at most, and the reaper removes the surplus.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace

from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import IntegrityError

from ..backends import Backend, BackendRegistry, Credentials, DatabaseSpec
from ..errors import Conflict, InvalidRequest, PostgraasError
from ..models import (
    INSTANCES,
    POOL_OWNER,
    TEMPLATES,
    DBInstance,
    InstanceStatus,
    Template,
    TemplateStatus,
    db,
    utcnow,
)
from ..passwords import PasswordHashes, generate_password, password_hashes
from ..schemas import CreateInstanceRequest
from ..tokens import Principal
from .policy import Policy
from .provisioning import Provisioner, name_taken, remove_quietly
from .template_lookup import ChosenTemplate, frozen_of, still_ready
from .transitions import count, execute_dml, forget, release, transition, update_row

log = logging.getLogger(__name__)

# How often a create tries the next pooled row when concurrent creates took the previous ones.
TAKE_ATTEMPTS = 20

# Taking a pooled row is two statements, built once: building them per request is a noticeable part
# of a warm create. On the table, not the mapped class: an ORM-enabled statement costs more Python
# for nothing here.
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
_FIRST_POOLED_OF_BACKEND = _FIRST_POOLED.where(INSTANCES.c.template_id.is_(None))
_FIRST_POOLED_CLONE = _FIRST_POOLED.where(INSTANCES.c.template_id == bindparam("template_id"))
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


def pool_sizes(backends: BackendRegistry) -> dict[tuple[str, int | None], int]:
    """How many pooled instances each pool is to hold, by (backend, template id or None)."""
    sizes: dict[tuple[str, int | None], int] = {(name, None): size for name, size in backends.pools.items()}
    ready = select(TEMPLATES.c.id, TEMPLATES.c.backend, TEMPLATES.c.pool_size).where(
        TEMPLATES.c.status == TemplateStatus.READY
    )
    for template_id, backend_name, size in db.session.execute(ready).all():
        sizes[(backend_name, template_id)] = size
    db.session.rollback()
    return sizes


@dataclass(frozen=True)
class _PooledRow:
    """A pooled row as it was before a create took it: what to hand over, or to give back."""

    id: int
    name: str
    db_name: str
    username: str
    password_hash: str | None
    ref: str


class WarmPool:
    def __init__(self, backends: BackendRegistry, provisioner: Provisioner, policy: Policy) -> None:
        self.backends = backends
        self.provisioner = provisioner
        self.policy = policy
        # Set by a PoolKeeper running in this process: a create that took an instance wakes it.
        self.taken: Callable[[], None] | None = None

    def serves(
        self, backend_name: str, backend: Backend, request: CreateInstanceRequest, template: ChosenTemplate | None
    ) -> bool:
        """Whether a pooled instance (a pooled clone of ``template``) can become this request's."""
        if not backend.can_claim(request.db_name, request.db_username):
            return False
        if template is not None:
            return template.pool_size > 0 and backend.why_no_pool() is None
        return request.template is None and backend_name in self.backends.pools

    def take(
        self,
        request: CreateInstanceRequest,
        hashes: PasswordHashes,
        backend_name: str,
        backend: Backend,
        expires_at: datetime | None,
        owner: str,
        principal: Principal | None,
        template_id: int | None = None,
    ) -> SimpleNamespace | None:
        """Hand a pooled instance (a pooled clone of ``template_id``) over to ``request``; None when
        the pool is empty or the pooled object failed (the caller then creates one as usual)."""
        pooled = self._take_row(request, hashes.meta_hash, backend_name, expires_at, owner, template_id)
        if pooled is None:
            return None
        try:
            self.policy.enforce_quotas(pooled.id, owner, backend_name, principal, release_row=False)
        except PostgraasError:
            # The object is untouched: it goes back to the pool.
            self._give_back(pooled)
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
            row = self.provisioner.provision(backend_name, backend, spec, pooled=credentials, ref=pooled.ref)
        except (Conflict, InvalidRequest):
            # The names are taken in the backend, or its password policy refuses db_pwd (a shared
            # cluster): claim() changed nothing.
            self._give_back(pooled)
            raise
        except BaseException as e:
            reason = e.msg if isinstance(e, PostgraasError) else type(e).__name__
            log.warning("pooled object %s of backend %s failed (%s)", pooled.ref, backend_name, reason)
            # claim() left it with the pool's names or removed it: only the pool's role is named here,
            # never the requested one, which in a shared cluster may be another tenant's.
            remove_quietly(backend, pooled.ref, credentials, pooled.id)
            release(pooled.id)
            if not isinstance(e, PostgraasError):
                raise
            return None
        return row

    def _take_row(
        self,
        request: CreateInstanceRequest,
        password_hash: str,
        backend_name: str,
        expires_at: datetime | None,
        owner: str,
        template_id: int | None,
    ) -> _PooledRow | None:
        """Turn one pooled row into the request's, in one conditional UPDATE (exactly one create
        gets each); what it was is read just before, to hand over or give back."""
        # Concurrent creates aim at the same first row; a loser tries the next while there are any.
        for _ in range(TAKE_ATTEMPTS):
            if template_id is None:
                found = db.session.execute(_FIRST_POOLED_OF_BACKEND, {"backend_name": backend_name}).first()
            else:
                found = db.session.execute(
                    _FIRST_POOLED_CLONE, {"backend_name": backend_name, "template_id": template_id}
                ).first()
            if found is None:
                db.session.rollback()
                return None
            pooled = _PooledRow(
                found.id, found.postgraas_instance_name, found.db_name, found.username, found.password_hash,
                ref=found.container_id or "",
            )  # fmt: skip
            values = {
                "pooled_id": pooled.id,
                "now": utcnow(),
                "new_name": request.postgraas_instance_name,
                "new_db_name": request.db_name,
                "new_username": request.db_username,
                "new_password_hash": password_hash,
                "new_owner": owner,
                "new_expires_at": expires_at,
                "new_durability": request.durability,
            }
            try:
                taken = execute_dml(_TAKE_POOLED, values).rowcount == 1
                db.session.commit()
            except IntegrityError:
                db.session.rollback()
                raise name_taken(request) from None
            if taken:
                return pooled
        return None

    @staticmethod
    def _give_back(pooled: _PooledRow) -> None:
        db.session.rollback()
        update_row(
            pooled.id,
            INSTANCES.c.status == InstanceStatus.CREATING,
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

    def pooled_templates(self) -> list[ChosenTemplate]:
        """The ready templates whose pool_size asks for clones made ahead, in a backend that can
        hand clones over."""
        rows = db.session.scalars(
            select(Template).where(Template.status == TemplateStatus.READY, Template.pool_size > 0)
        ).all()
        chosen = [
            ChosenTemplate(row.id, row.backend, row.pool_size, frozen_of(row))
            for row in rows
            if row.backend in self.backends.backends and self.backends.backends[row.backend].why_no_pool() is None
        ]
        db.session.rollback()
        return chosen

    def keep_ready(self, backend_name: str) -> int:
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
            if row.container_id not in unclaimable or not transition(
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
            forget(row.id)
            removed += 1
        return removed

    def pooled_count(self, backend_name: str, template_id: int | None) -> int:
        """The instances of a pool (``template_id``'s clones, or the backend's own), made or being made."""
        of_this_pool = (
            DBInstance.template_id.is_(None) if template_id is None else DBInstance.template_id == template_id
        )
        have = count(
            (DBInstance.backend == backend_name)
            & of_this_pool
            & (DBInstance.owner == POOL_OWNER)
            & DBInstance.status.in_((InstanceStatus.CREATING, InstanceStatus.POOLED))
        )
        db.session.rollback()
        return have

    def fill(self, backend_name: str, size: int, template: ChosenTemplate | None = None) -> int:
        """Create pooled instances (clones of ``template``) until ``backend_name`` (the template)
        has ``size``, made or being made; returns how many were made. Stops at the first failure
        (the next round tries again)."""
        made = 0
        backend = self.backends.holding(backend_name)
        template_id = template.id if template is not None else None
        while True:
            have = self.pooled_count(backend_name, template_id)
            full = self.policy.at_capacity(backend_name)
            db.session.rollback()
            if have >= size or full:
                return made
            tag = secrets.token_hex(6)
            password = generate_password()
            request = CreateInstanceRequest(
                postgraas_instance_name=f"pool-{tag}", db_name=f"pool_{tag}", db_username=f"pool_{tag}", db_pwd=password
            )
            hashes = password_hashes(password)
            row = self.provisioner.reserve(request, hashes.meta_hash, backend_name, None, POOL_OWNER, template_id)
            if template is not None and not still_ready(template):
                # Deleted or replaced meanwhile: its pool goes with it.
                release(row.id)
                return made
            spec = DatabaseSpec(
                row.id,
                row.postgraas_instance_name,
                row.db_name,
                row.username,
                password,
                db_pwd_verifier=hashes.scram_verifier,
                pooled=True,
                from_template=template.frozen if template is not None else None,
            )
            try:
                self.provisioner.provision(backend_name, backend, spec, ready_status=InstanceStatus.POOLED)
            except BaseException as e:
                # The backend removed what it made; a failed row of the pool would help nobody
                # (no request sees it) and hold capacity.
                release(row.id)
                if not isinstance(e, PostgraasError):
                    raise
                log.warning("could not fill the pool of backend %s: %s", backend_name, e.msg)
                return made
            made += 1
