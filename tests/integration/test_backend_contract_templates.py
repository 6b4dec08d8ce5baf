"""The backend contract's templates (freeze, clone, drop_template, list_templates) against every
backend whose why_no_template() is None, with their real components: a builder's database is made,
filled and frozen, and clones of it are logged in to with psycopg."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from postgraas_server.backends import FrozenTemplate

from .conftest import CONTRACT_TEMPLATE_BACKENDS
from .databases import Made
from .template_builds import TemplateBuilds

ROWS = 1000
# Beside the table: what else a template must carry to its clones.
EXTRAS = ("create index items_v on items (v)", "create view item_count as select count(*) as n from items")


class Templates(TemplateBuilds):
    def build(self, *statements: str) -> tuple[FrozenTemplate, int, Made]:
        return super().build(*EXTRAS, *statements)


@pytest.fixture(params=CONTRACT_TEMPLATE_BACKENDS)
def templates(request, creator_for) -> Iterator[Templates]:
    made = Templates(creator_for(request.param), ROWS)
    yield made
    made.cleanup()


def test_freeze_ends_the_builders_sessions_and_the_object_becomes_the_template(templates):
    builder = templates.create(template_builder=True)
    session = builder.connect()
    try:
        frozen = templates.freeze(builder, credentials=builder.spec.credentials)
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
