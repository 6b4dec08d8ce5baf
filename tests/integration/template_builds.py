"""Templates built through a backend directly, as the service builds them, for the tests of the
backends' freeze and clone: a builder made as one (``template_builder``), a table ``items`` filled
with rows, and a freeze with the names alone (the service keeps no builder password)."""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

from postgraas_server.backends import Credentials, FrozenTemplate

from .databases import Creator, Made

ROWS = 1000
# One counter for every test of the session: template ids name artifacts (a docker tag, a local
# directory) that tests of one deployment must not share.
_template_ids = itertools.count(700000)


def next_template_id() -> int:
    return next(_template_ids)


class TemplateBuilds:
    """Builds templates through ``create``'s backend; ``cleanup`` removes the clones, then the templates."""

    def __init__(self, create: Creator, rows: int = ROWS) -> None:
        self.create = create
        self.backend = create.backend
        self.rows = rows
        self.frozen: list[FrozenTemplate] = []

    def builder(self, *statements: str, **spec: Any) -> Made:
        """A builder's database (where the backend can freeze it: on swarm not a service) holding
        ``items`` with ``rows`` rows, then ``statements``."""
        builder = self.create(template_builder=True, **spec)
        with builder.connect() as conn:
            conn.execute("create table items (id serial primary key, v text not null)")
            conn.execute("insert into items (v) select 'item ' || i from generate_series(1, %s) as i", (self.rows,))
            for statement in statements:
                conn.execute(statement)
            conn.commit()
        return builder

    def freeze(
        self, builder: Made, template_id: int | None = None, credentials: Credentials | None = None
    ) -> FrozenTemplate:
        frozen = self.backend.freeze(
            builder.ref,
            credentials or replace(builder.spec.credentials, db_pwd=""),
            template_id=next_template_id() if template_id is None else template_id,
        )
        # Gone into the template: nothing for the creator to delete.
        self.create.made.remove(builder)
        self.frozen.append(frozen)
        return frozen

    def build(self, *statements: str) -> tuple[FrozenTemplate, int, Made]:
        """A template of a new builder: the frozen template, its id, the builder (gone now)."""
        builder = self.builder(*statements)
        template_id = next_template_id()
        return self.freeze(builder, template_id), template_id, builder

    def cleanup(self) -> None:
        # Clones first: Docker keeps a template's image while containers of it exist.
        self.create.cleanup()
        self.create.made.clear()
        for frozen in self.frozen:
            self.backend.drop_template(frozen.artifact)
