"""The cluster admin's password policy (a password hook such as passwordcheck) holds for every
password Postgraas sets in the shared server: a claim writes the verifier into pg_authid itself
only where no library is loaded that could hook it (postgres/tenants.py, _WRITE_VERIFIER)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from postgraas_server.errors import InvalidRequest

HOOKED_ADMIN = "postgraas_hooked_admin"


@pytest.fixture
def hooked_admin(pg_server) -> Iterator[dict]:
    """A superuser login of the cluster whose sessions load passwordcheck, which refuses a
    password equal to the role's name (all it can tell of a SCRAM verifier)."""
    password = secrets.token_urlsafe(16)
    with pg_server.admin() as admin:
        admin.execute(f"create role {HOOKED_ADMIN} superuser login password '{password}'")
        admin.execute(f"alter role {HOOKED_ADMIN} set session_preload_libraries = 'passwordcheck'")
    try:
        yield {"username": HOOKED_ADMIN, "password": password}
    finally:
        with pg_server.admin() as admin:
            admin.execute(f"drop role {HOOKED_ADMIN}")


def test_a_claim_keeps_to_the_password_hook_of_the_admins_session(
    hooked_admin, cluster_left_as_found, creator_for, pg_server
):
    create = creator_for("cluster", **hooked_admin)
    pooled = create.pooled()
    with pytest.raises(InvalidRequest) as refused:
        create.claim(pooled, db_username="same_as_password", db_pwd="same_as_password")
    assert set(refused.value.errors) == {"db_pwd"}
    assert "password must not equal user name" in refused.value.msg
    # Nothing changed: still the pool's, and claimed with an acceptable password.
    assert pooled.spec.db_username in pg_server.roles()
    claimed = create.claim(pooled)
    assert claimed.whoami() == claimed.tenant


def test_a_create_keeps_to_it_and_leaves_nothing(hooked_admin, cluster_left_as_found, creator_for, pg_server):
    create = creator_for("cluster", **hooked_admin)
    roles = pg_server.roles()
    with pytest.raises(InvalidRequest) as refused:
        create(db_username="same_as_password", db_pwd="same_as_password")
    assert set(refused.value.errors) == {"db_pwd"}
    assert pg_server.roles() == roles
