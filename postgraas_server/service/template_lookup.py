"""Finding a ready template by what a create names ("NAME" or "NAME@HASH")."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

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


def find_template(ref: str, owner: str, backend: str | None = None) -> ChosenTemplate | None:
    """The owner's newest ready template of the name in ``ref`` ("NAME" or "NAME@HASH"), in
    ``backend`` where one is named."""
    match = TEMPLATE_REF_RE.fullmatch(ref)
    if match is None:
        return None
    query = select(Template).where(
        Template.owner == owner, Template.name == match["name"], Template.status == TemplateStatus.READY
    )
    if match["hash"]:
        query = query.where(Template.content_hash == match["hash"])
    if backend is not None:
        query = query.where(Template.backend == backend)
    row = db.session.scalars(query.order_by(Template.id.desc()).limit(1)).first()
    if row is None:
        return None
    return ChosenTemplate(row.id, row.backend, row.pool_size, frozen_of(row))


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
