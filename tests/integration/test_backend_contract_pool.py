"""The backend contract's warm pool (claim, can_claim, keep_ready) against every backend of
CONTRACT_BACKENDS, as test_backend_contract.py does the rest: an object made ahead with throwaway
names (``DatabaseSpec.pooled``) is handed over to a create's names and password."""

from __future__ import annotations

import psycopg
import pytest

from postgraas_server.backends import ObjectDescription, ObjectState
from postgraas_server.errors import Conflict

from .databases import Creator, new_spec

# Where a server restarted with a new secret in this variable cannot claim what it pooled before.
POOL_SECRET_ENV = "POSTGRAAS_POOL_SECRET"
# Backends whose claims log in with a password derived from that secret.
CLAIMS_NEED_THE_POOL_SECRET = {"docker", "swarm"}


@pytest.fixture
def pool(create, contract_name) -> Creator:
    """``create``, for a backend that has a warm pool: every backend of the suite is configured
    with one (docker with prepare_image, swarm with a registry too)."""
    why = create.backend.why_no_pool()
    assert why is None, f"the {contract_name} backend has no warm pool: {why}"
    return create


def test_a_claim_hands_a_pooled_object_over_to_new_names_and_password(pool):
    backend = pool.backend
    pooled = pool.pooled()
    claimed = pool.claim(pooled)
    assert claimed.whoami() == claimed.tenant
    # The pool's names and its password are gone with the hand-over.
    for old_login in (
        {"user": pooled.spec.db_username, "password": pooled.spec.db_pwd, "dbname": pooled.spec.db_name},
        {"user": pooled.spec.db_username},
        {"password": pooled.spec.db_pwd},
    ):
        with pytest.raises(psycopg.OperationalError):
            claimed.connect(**old_login)

    # From now on it is the instance's object, as if created for it.
    assert backend.exists(claimed.ref)
    assert backend.describe(claimed.ref) == ObjectDescription(ObjectState.RUNNING, claimed.host, claimed.port)
    listed = {o.ref: o.instance_id for o in backend.list_objects()}
    assert listed.get(claimed.ref) == claimed.spec.instance_id
    assert pool.delete(claimed) is None
    assert not backend.exists(claimed.ref)


def test_a_claimed_object_refuses_open_sessions_on_delete_unless_forced(pool):
    claimed = pool.claim(pool.pooled())
    with claimed.connect():
        with pytest.raises(Conflict):
            pool.delete(claimed)
        pool.delete(claimed, force=True)
    assert not pool.backend.exists(claimed.ref)


def test_can_claim_answers_true_for_ordinary_names_and_what_it_refuses_is_made_anew(pool):
    fresh = new_spec(0)
    assert pool.backend.can_claim(fresh.db_name, fresh.db_username) is True
    # The name a backend most likely keeps for itself (docker: the image's own database). A create
    # that may not claim is made anew, and that must work.
    if not pool.backend.can_claim("postgres", fresh.db_username):
        db = pool(db_name="postgres")
        assert db.whoami() == (db.spec.db_username, "postgres")


def test_keep_ready_returns_none_of_the_objects_it_can_claim(pool):
    backend = pool.backend
    first, second = pool.pooled(), pool.pooled()
    assert backend.keep_ready([first.ref, second.ref]) == []
    # Each round with the pooled objects of the moment; holding them again changes nothing.
    assert backend.keep_ready([first.ref, second.ref]) == []
    # A claim then uses what was held; the next round lets go of it.
    claimed = pool.claim(first)
    assert claimed.whoami() == claimed.tenant
    assert backend.keep_ready([second.ref]) == []
    assert backend.keep_ready([]) == []
    # Let go of, it is still claimed as any other.
    claimed = pool.claim(second)
    assert claimed.whoami() == claimed.tenant


def test_keep_ready_returns_what_this_process_can_never_claim(pool, contract_name, creator_for, monkeypatch):
    """A server restarted with a new pool secret finds what it pooled before. Where claims need the
    secret, keep_ready names those objects (the caller removes them); elsewhere they are claimed as
    any other."""
    if contract_name == "fake":
        # The fake has no secret: it is told which objects another secret made.
        before = pool.pooled()
        pool.backend.unclaimable.add(before.ref)
        needs_the_secret = True
    else:
        with monkeypatch.context() as restarted:
            restarted.setenv(POOL_SECRET_ENV, "the secret of the server before the restart")
            before_restart = creator_for(contract_name)
            before = before_restart.pooled()
        # Whatever becomes of it, this test's backend deletes it.
        before_restart.made.remove(before)
        pool.made.append(before)
        needs_the_secret = contract_name in CLAIMS_NEED_THE_POOL_SECRET
    mine = pool.pooled()
    if needs_the_secret:
        assert pool.backend.keep_ready([mine.ref, before.ref]) == [before.ref]
    else:
        assert pool.backend.keep_ready([mine.ref, before.ref]) == []
        claimed = pool.claim(before)
        assert claimed.whoami() == claimed.tenant
    claimed = pool.claim(mine)
    assert claimed.whoami() == claimed.tenant
