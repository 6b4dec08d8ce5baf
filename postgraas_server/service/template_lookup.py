"""Finding a ready template by what a create names ("NAME" or "NAME@HASH")."""

from __future__ import annotations

from sqlalchemy import select

from ..backends import Credentials, FrozenTemplate
from ..models import Template, TemplateStatus, db
from ..schemas import TEMPLATE_REF_RE


def find_template(ref: str, owner: str) -> Template | None:
    """The owner's newest ready template of the name in ``ref`` ("NAME" or "NAME@HASH")."""
    match = TEMPLATE_REF_RE.fullmatch(ref)
    if match is None:
        return None
    query = select(Template).where(
        Template.owner == owner, Template.name == match["name"], Template.status == TemplateStatus.READY
    )
    if match["hash"]:
        query = query.where(Template.content_hash == match["hash"])
    return db.session.scalars(query.order_by(Template.id.desc()).limit(1)).first()


def frozen_of(template: Template) -> FrozenTemplate:
    assert template.artifact and template.tenant_db_name and template.tenant_username
    return FrozenTemplate(template.artifact, Credentials(template.tenant_db_name, template.tenant_username, ""))
