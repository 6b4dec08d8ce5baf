"""GET /postgraas_overview: what a client (the console) needs to offer choices and show load."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from .service.overview import BackendLoad
from .tokens import Principal


class BackendOverviewOut(BaseModel):
    name: str
    # The backend a create that names none goes to.
    default: bool
    # Whether a create may name a template here.
    templates: bool
    # null: no limit. It counts every instance of the backend, of all owners, pooled ones too.
    max_instances: int | None
    instances: int
    # The warm pool: its configured size and how many it holds now.
    pool_size: int
    pooled: int

    @classmethod
    def from_load(cls, load: BackendLoad) -> BackendOverviewOut:
        return cls(
            name=load.name,
            default=load.default,
            templates=load.keeps_templates,
            max_instances=load.max_instances,
            instances=load.instances,
            pool_size=load.pool_size,
            pooled=load.pooled,
        )


class OverviewOut(BaseModel):
    auth_mode: Literal["none", "token"]
    # The token's owner; null without a token.
    owner: str | None
    # An admin token sees and touches every owner's instances.
    admin: bool
    backends: list[BackendOverviewOut]

    @classmethod
    def of(
        cls, auth_mode: Literal["none", "token"], principal: Principal | None, loads: list[BackendLoad]
    ) -> OverviewOut:
        return cls(
            auth_mode=auth_mode,
            owner=principal.owner if principal is not None else None,
            admin=principal.admin if principal is not None else False,
            backends=[BackendOverviewOut.from_load(load) for load in loads],
        )
