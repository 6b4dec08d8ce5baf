"""Each backend's load as a console shows it: the instances its ``max_instances`` counts and the fill
of its warm pool, counted in the meta db as the capacity check and /metrics count them."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select

from ..backends import BackendRegistry
from ..models import INSTANCES, InstanceStatus, db


@dataclass(frozen=True)
class BackendLoad:
    name: str
    default: bool
    # Whether a create may name a template here.
    keeps_templates: bool
    max_instances: int | None
    # Every instance of the backend, pooled ones too: what max_instances limits (Policy.at_capacity).
    instances: int
    pool_size: int
    # Of those, the backend's own warm pool (templates' pools of clones are not its pool).
    pooled: int


def backend_loads(backends: BackendRegistry) -> list[BackendLoad]:
    """Every configured backend, in the configuration's order, zero where it holds nothing."""
    own_pool = (INSTANCES.c.status == InstanceStatus.POOLED) & INSTANCES.c.template_id.is_(None)
    query = select(INSTANCES.c.backend, func.count(), func.count().filter(own_pool)).group_by(INSTANCES.c.backend)
    try:
        counts = {backend: (held, pooled) for backend, held, pooled in db.session.execute(query)}
    finally:
        db.session.rollback()
    return [
        BackendLoad(
            name=name,
            default=name == backends.default,
            keeps_templates=backend.why_no_template() is None,
            max_instances=backends.limits.get(name),
            instances=counts.get(name, (0, 0))[0],
            pool_size=backends.pools.get(name, 0),
            pooled=counts.get(name, (0, 0))[1],
        )
        for name, backend in backends.backends.items()
    ]
