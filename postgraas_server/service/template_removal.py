"""Removing templates: a deleted, expired or replaced template's builder, pooled clones and
artifact, then its row; and the older hashes of a name once a newer one is ready.

A template is removed only once no create is cloning it: a create records the template's id on
its row before it looks at the template again (``still_ready``), and a removal marks the
template ``deleting`` before it looks for such rows, so one of the two always sees the other.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import exists, or_, select, update

from ..backends import BackendRegistry, Credentials
from ..errors import PostgraasError
from ..models import INSTANCES, TEMPLATES, DBInstance, InstanceStatus, Template, TemplateStatus, db, utcnow
from .transitions import execute_dml, forget, transition

log = logging.getLogger(__name__)


# Runs a task in a thread of its own, inside the app's context (InstanceService.background.run).
RunLater = Callable[[str, Callable[[], None]], object]


def remove_template(backends: BackendRegistry, template_id: int, run_later: RunLater | None = None) -> bool:
    """Remove a deleting template's builder, pooled clones and artifact, then its row; False when
    that cannot be done yet (a create still clones it, or the backend failed): the row stays
    deleting, for the reaper to try again. With ``run_later``, the pooled clones (as many as the
    template's pool_size, each a server or a container to remove) are removed in a thread of their
    own, so that a request does not wait for them; a clone whose removal does not finish is
    deleting, for the reaper."""
    row = db.session.get(Template, template_id)
    if row is None:
        return True
    builder_id, artifact, backend_name, name = row.builder_instance_id, row.artifact, row.backend, row.name
    if _being_cloned(template_id):
        log.info("template %s (id %s) is removed once the creates cloning it are done", name, template_id)
        return False
    try:
        if builder_id is not None:
            remove_builder(backends, builder_id)
        clones = _take_pooled_clones(template_id)
        if run_later is None:
            _remove_clones(backends, clones)
        elif clones:
            run_later(f"template-{template_id}-clones", lambda: _remove_clones(backends, clones))
        if artifact:
            backends.holding(backend_name).drop_template(artifact)
    except PostgraasError as e:
        log.warning("could not remove template %s (id %s) yet: %s", name, template_id, e.msg)
        return False
    execute_dml(TEMPLATES.delete().where(TEMPLATES.c.id == template_id, TEMPLATES.c.status == TemplateStatus.DELETING))
    db.session.commit()
    return True


def retire_replaced(backends: BackendRegistry, template: Template, run_later: RunLater | None = None) -> list[int]:
    """Once ``template`` is ready, the owner's templates of its name in its backend that became
    ready before it (older contents) go, each as soon as no create clones it; returns their ids.
    Of two contents finalized at once, the one ready last stays: neither retires it."""
    ready_at = template.status_changed_at
    became_ready_before = or_(
        Template.status_changed_at < ready_at, (Template.status_changed_at == ready_at) & (Template.id < template.id)
    )
    older = db.session.scalars(
        select(Template.id).where(
            Template.owner == template.owner,
            Template.name == template.name,
            Template.backend == template.backend,
            Template.status == TemplateStatus.READY,
            Template.id != template.id,
            became_ready_before,
        )
    ).all()
    detail = f"replaced by {template.name}@{template.content_hash} (id {template.id})"
    retired = []
    for template_id in older:
        if update_row_of(
            template_id,
            TEMPLATES.c.status == TemplateStatus.READY,
            status=TemplateStatus.DELETING,
            status_detail=detail,
            status_changed_at=utcnow(),
        ):
            retired.append(template_id)
            remove_template(backends, template_id, run_later)
    return retired


def remove_builder(backends: BackendRegistry, instance_id: int) -> None:
    """The builder's instance goes with its build (force: the builder may still be connected),
    unless another request has it: a finalize freezing it, a delete, or a create still making it
    (whose request then removes what it made, as for any instance deleted while being created)."""
    builder = db.session.get(DBInstance, instance_id)
    if builder is None:
        return
    if transition(instance_id, InstanceStatus.CREATING, InstanceStatus.DELETING, "its template's build ended"):
        return
    settled = (InstanceStatus.READY, InstanceStatus.FAILED, InstanceStatus.LOST)
    if not transition(instance_id, settled, InstanceStatus.DELETING, "its template's build ended"):
        return
    ref, credentials = builder.container_id, Credentials(builder.db_name, builder.username, "")
    remove_own_builder(backends, instance_id, builder.backend, ref, credentials)


def remove_own_builder(
    backends: BackendRegistry, instance_id: int, backend_name: str, ref: str | None, credentials: Credentials
) -> None:
    """A builder instance this request moved to deleting: its object, then its row."""
    if ref:
        backends.holding(backend_name).delete(ref, credentials, instance_id=instance_id, force=True)
    forget(instance_id, InstanceStatus.DELETING)


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


def _being_cloned(template_id: int) -> bool:
    """Whether a create (or a pool's fill) is making a clone of the template now."""
    cloning = exists().where(INSTANCES.c.template_id == template_id, INSTANCES.c.status == InstanceStatus.CREATING)
    found = bool(db.session.execute(select(cloning)).scalar())
    db.session.rollback()
    return found


def _take_pooled_clones(template_id: int) -> list[Any]:
    """The template's clones made ahead, moved from pooled to deleting (one a create took
    meanwhile is that create's instance now): nobody can take them once the template goes."""
    rows = db.session.execute(
        select(
            INSTANCES.c.id, INSTANCES.c.backend, INSTANCES.c.container_id, INSTANCES.c.db_name, INSTANCES.c.username
        ).where(INSTANCES.c.template_id == template_id, INSTANCES.c.status == InstanceStatus.POOLED)
    ).all()
    db.session.rollback()
    went = "its template went"
    return [row for row in rows if transition(row.id, InstanceStatus.POOLED, InstanceStatus.DELETING, went)]


def _remove_clones(backends: BackendRegistry, clones: list[Any]) -> None:
    for row in clones:
        try:
            if row.container_id:
                credentials = Credentials(row.db_name, row.username, "")
                backends.holding(row.backend).delete(row.container_id, credentials, instance_id=row.id, force=True)
        except PostgraasError as e:
            log.warning("could not remove pooled clone %s yet (the reaper retries): %s", row.id, e.msg)
            continue
        forget(row.id, InstanceStatus.DELETING)
