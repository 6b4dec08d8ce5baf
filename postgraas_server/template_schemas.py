"""What the template resources take and answer (see schemas.py for the instances')."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, StrictInt, StrictStr, WithJsonSchema
from pydantic_core import PydanticCustomError

from .models import Template
from .schemas import BackendName, InstanceName, Ttl, _Request, _whole_number, connection_uri

HASH_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"


def _content_hash(value: str) -> str:
    if not re.fullmatch(HASH_PATTERN, value):
        raise PydanticCustomError("invalid", "must be 1 to 128 characters: letters, digits, '_', '.', ':' or '-'")
    return value


ContentHash = Annotated[
    StrictStr, AfterValidator(_content_hash), WithJsonSchema({"type": "string", "pattern": HASH_PATTERN})
]


# JSON does not tell 4 from 4.0; a bool is no number here.
WholeNumber = Annotated[StrictInt, BeforeValidator(_whole_number)]


class EnsureTemplateRequest(_Request):
    # Template names follow instance names; "NAME@HASH" names one content of it in a create.
    name: InstanceName
    # What identifies the content: a hash of what builds it (migrations, fixtures).
    hash: ContentHash
    backend: BackendName | None = None
    # Clones made ahead (not served yet: accepted and kept).
    pool_size: WholeNumber = Field(default=0, ge=0, le=100)
    ttl: Ttl | None = None
    # Seconds a build may go without the builder's heartbeat before it is given up.
    build_timeout: WholeNumber = Field(default=1800, ge=10, le=86400)


class BuilderRequest(_Request):
    """Finalize and heartbeat: the builder's instance (from the 201), and without a token its db_pwd."""

    instance_id: WholeNumber
    db_pwd: StrictStr | None = None


class TemplateOut(BaseModel):
    id: int
    name: str
    hash: str
    backend: str
    status: str
    status_detail: str | None
    created_at: datetime
    expires_at: datetime | None

    @classmethod
    def from_row(cls, row: Template) -> TemplateOut:
        return cls(
            id=row.id,
            name=row.name,
            hash=row.content_hash,
            backend=row.backend,
            status=row.status,
            status_detail=row.status_detail,
            created_at=row.created_at,
            expires_at=row.expires_at,
        )


class BuildingTemplateOut(TemplateOut):
    """The builder's answer (201): where to build, shown once."""

    instance_id: int
    host: str
    port: int
    db_name: str
    db_username: str
    db_pwd: str
    connection_uri: str

    @classmethod
    def for_builder(cls, row: Template, builder: Any, db_pwd: str) -> BuildingTemplateOut:
        return cls(
            **TemplateOut.from_row(row).model_dump(),
            instance_id=builder.id,
            host=builder.hostname,
            port=builder.port,
            db_name=builder.db_name,
            db_username=builder.username,
            db_pwd=db_pwd,
            connection_uri=connection_uri(builder.username, db_pwd, builder.hostname, builder.port, builder.db_name),
        )
