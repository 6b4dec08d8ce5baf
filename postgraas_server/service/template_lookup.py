"""Finding a ready template by what a create names ("NAME" or "NAME@HASH")."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import bindparam, select

from ..backends import Credentials, FrozenTemplate
from ..models import TEMPLATES, Template, TemplateStatus, db
from ..schemas import TEMPLATE_REF_RE


@dataclass(frozen=True)
class ChosenTemplate:
    """The ready template a create clones, as read when the create began."""

    id: int
    backend: str
    pool_size: int
    frozen: FrozenTemplate


# On the table, not the mapped class, and built once: a create naming a template pays for this
# lookup on top of a warm create.
_NEWEST_READY = (
    select(
        TEMPLATES.c.id,
        TEMPLATES.c.backend,
        TEMPLATES.c.pool_size,
        TEMPLATES.c.artifact,
        TEMPLATES.c.tenant_db_name,
        TEMPLATES.c.tenant_username,
    )
    .where(
        TEMPLATES.c.owner == bindparam("owner"),
        TEMPLATES.c.name == bindparam("name"),
        TEMPLATES.c.status == TemplateStatus.READY,
    )
    .order_by(TEMPLATES.c.id.desc())
    .limit(1)
)


def find_template(ref: str, owner: str, backend: str | None = None) -> ChosenTemplate | None:
    """The owner's newest ready template of the name in ``ref`` ("NAME" or "NAME@HASH"), in
    ``backend`` where one is named."""
    match = TEMPLATE_REF_RE.fullmatch(ref)
    if match is None:
        return None
    query = _NEWEST_READY
    if match["hash"]:
        query = query.where(TEMPLATES.c.content_hash == match["hash"])
    if backend is not None:
        query = query.where(TEMPLATES.c.backend == backend)
    row = db.session.execute(query, {"owner": owner, "name": match["name"]}).first()
    if row is None:
        return None
    tenant = Credentials(row.tenant_db_name, row.tenant_username, "")
    return ChosenTemplate(row.id, row.backend, row.pool_size, FrozenTemplate(row.artifact, tenant))


def still_ready(chosen: ChosenTemplate) -> bool:
    """Whether the template is ready with the same artifact now. A create asks this after its row
    (with the template's id) is in: a removal that began later sees that row and waits for it."""
    found = db.session.execute(
        select(TEMPLATES.c.status, TEMPLATES.c.artifact).where(TEMPLATES.c.id == chosen.id)
    ).first()
    return found is not None and found.status == TemplateStatus.READY and found.artifact == chosen.frozen.artifact


def frozen_of(template: Template) -> FrozenTemplate:
    assert template.artifact and template.tenant_db_name and template.tenant_username
    return FrozenTemplate(template.artifact, Credentials(template.tenant_db_name, template.tenant_username, ""))
