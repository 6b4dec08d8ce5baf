"""Removing templates: a deleted, expired or replaced template's builder, pooled clones and
artifact, then its row; and the older hashes of a name once a newer one is ready.

A template is removed only once no create is cloning it: a create records the template's id on
its row before it looks at the template again (``still_ready``), and a removal marks the
template ``deleting`` before it looks for such rows, so one of the two always sees the other.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import exists, select, update

from ..backends import BackendRegistry, Credentials
from ..errors import PostgraasError
from ..models import INSTANCES, TEMPLATES, DBInstance, InstanceStatus, Template, TemplateStatus, db, utcnow
from .transitions import execute_dml, forget, transition

log = logging.getLogger(__name__)


def remove_template(backends: BackendRegistry, template_id: int) -> bool:
    """Remove a deleting template's builder, pooled clones and artifact, then its row; False when
    that cannot be done yet (a create still clones it, or the backend failed): the row stays
    deleting, for the reaper to try again."""
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
        _remove_pooled_clones(backends, template_id)
        if artifact:
            backends.holding(backend_name).drop_template(artifact)
    except PostgraasError as e:
        log.warning("could not remove template %s (id %s) yet: %s", name, template_id, e.msg)
        return False
    execute_dml(TEMPLATES.delete().where(TEMPLATES.c.id == template_id, TEMPLATES.c.status == TemplateStatus.DELETING))
    db.session.commit()
    return True


def retire_replaced(backends: BackendRegistry, template: Template) -> list[int]:
    """Once ``template`` is ready, the owner's other ready templates of its name in its backend
    (older contents) go, each as soon as no create clones it; returns their ids."""
    older = db.session.scalars(
        select(Template.id).where(
            Template.owner == template.owner,
            Template.name == template.name,
            Template.backend == template.backend,
            Template.status == TemplateStatus.READY,
            Template.id != template.id,
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
            remove_template(backends, template_id)
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


def _remove_pooled_clones(backends: BackendRegistry, template_id: int) -> None:
    """Clones made ahead for the template: nobody can take them once it goes."""
    rows = db.session.execute(
        select(
            INSTANCES.c.id, INSTANCES.c.backend, INSTANCES.c.container_id, INSTANCES.c.db_name, INSTANCES.c.username
        ).where(INSTANCES.c.template_id == template_id, INSTANCES.c.status == InstanceStatus.POOLED)
    ).all()
    db.session.rollback()
    for row in rows:
        if not transition(row.id, InstanceStatus.POOLED, InstanceStatus.DELETING, "its template was removed"):
            continue  # a create took it meanwhile: it is that create's instance now
        if row.container_id:
            credentials = Credentials(row.db_name, row.username, "")
            backends.holding(row.backend).delete(row.container_id, credentials, instance_id=row.id, force=True)
        forget(row.id, InstanceStatus.DELETING)
