"""The backend contract's templates (freeze, clone, drop_template, list_templates) against every
backend whose why_no_template() is None, with their real components: a builder's database is made,
filled and frozen, and clones of it are logged in to with psycopg."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import replace

import psycopg
import pytest

from postgraas_server.backends import FrozenTemplate

from .conftest import CONTRACT_TEMPLATE_BACKENDS
from .databases import Creator, Made

ROWS = 1000
_template_ids = itertools.count(700000)


class Templates:
    """Builds templates through one backend, as the service does for a builder; drops them after."""

    def __init__(self, create: Creator) -> None:
        self.create = create
        self.backend = create.backend
        self.frozen: list[FrozenTemplate] = []

    def build(self) -> tuple[FrozenTemplate, int, Made]:
        # As the service makes a builder: where the backend can freeze it (swarm: not as a service).
        builder = self.create(template_builder=True)
        with builder.connect() as conn:
            conn.execute("create table items (id serial primary key, v text not null)")
            conn.execute("create index items_v on items (v)")
            conn.execute("create view item_count as select count(*) as n from items")
            conn.execute(f"insert into items (v) select 'item ' || i from generate_series(1, {ROWS}) as i")
            conn.commit()
        template_id = next(_template_ids)
        # The service keeps no builder password: it freezes with the names alone.
        frozen = self.backend.freeze(builder.ref, replace(builder.spec.credentials, db_pwd=""), template_id=template_id)
        # Gone into the template: nothing for the creator to delete.
        self.create.made.remove(builder)
        self.frozen.append(frozen)
        return frozen, template_id, builder

    def cleanup(self) -> None:
        # Clones first: Docker keeps a template's image while containers of it exist.
        self.create.cleanup()
        self.create.made.clear()
        for frozen in self.frozen:
            self.backend.drop_template(frozen.artifact)


@pytest.fixture(params=CONTRACT_TEMPLATE_BACKENDS)
def templates(request, creator_for) -> Iterator[Templates]:
    made = Templates(creator_for(request.param))
    yield made
    made.cleanup()


def test_freeze_ends_the_builders_sessions_and_the_object_becomes_the_template(templates):
    builder = templates.create(template_builder=True)
    session = builder.connect()
    try:
        frozen = templates.backend.freeze(builder.ref, builder.spec.credentials, template_id=next(_template_ids))
        templates.create.made.remove(builder)
        templates.frozen.append(frozen)
        with pytest.raises(psycopg.OperationalError):
            session.execute("select 1")
    finally:
        session.close()
    assert not templates.backend.exists(builder.ref)
    assert builder.ref not in {o.ref for o in templates.backend.list_objects()}
    assert frozen.tenant.db_name == builder.spec.db_name and frozen.tenant.db_username == builder.spec.db_username


def test_list_templates_finds_each_until_it_is_dropped(templates):
    frozen, template_id, _ = templates.build()
    assert templates.backend.list_templates()[template_id] == frozen.artifact
    templates.backend.drop_template(frozen.artifact)
    assert template_id not in templates.backend.list_templates()
    # Idempotent.
    templates.backend.drop_template(frozen.artifact)


def test_a_clone_holds_the_templates_data_and_its_tenant_owns_it(templates):
    frozen, _, builder = templates.build()
    clone = templates.create.clone(frozen)
    assert clone.whoami() == clone.tenant
    with clone.connect() as conn:
        assert conn.execute("select n from item_count").fetchone() == (ROWS,)
        # Its own: it alters, writes and drops what the builder made.
        conn.execute("alter table items add column extra int")
        conn.execute("insert into items (v) values ('mine')")
        conn.execute("drop view item_count")
        conn.execute("drop table items")
        conn.commit()
    # The builder's login is nobody's in a clone.
    with pytest.raises(psycopg.OperationalError):
        clone.connect(user=builder.spec.db_username, password=builder.spec.db_pwd, dbname=builder.spec.db_name)


def test_clones_see_neither_each_others_changes_nor_change_the_template(templates):
    frozen, _, _ = templates.build()
    first, second = templates.create.clone(frozen), templates.create.clone(frozen)
    with first.connect() as conn:
        conn.execute("delete from items where id % 2 = 0")
        conn.commit()
    with second.connect() as conn:
        assert conn.execute("select count(*) from items").fetchone() == (ROWS,)
    third = templates.create.clone(frozen)
    with third.connect() as conn:
        assert conn.execute("select count(*) from items").fetchone() == (ROWS,)
    # Two clones cannot open each other.
    with pytest.raises(psycopg.OperationalError):
        second.connect(dbname=first.spec.db_name)


def test_a_clone_is_an_instance_like_any_other_and_outlives_its_template(templates):
    frozen, _, _ = templates.build()
    clone = templates.create.clone(frozen)
    listed = {o.ref: o for o in templates.backend.list_objects()}
    assert listed[clone.ref].instance_id == clone.spec.instance_id
    templates.backend.drop_template(frozen.artifact)
    assert clone.whoami() == clone.tenant
    templates.create.delete(clone)
    assert not templates.backend.exists(clone.ref)
