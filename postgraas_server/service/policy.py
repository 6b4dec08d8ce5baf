"""Policy: who may change an instance, how long it may live, how many an owner and a backend hold."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select

from ..backends import BackendRegistry, Credentials, password_accepted
from ..config import LifecycleSettings
from ..durations import format_duration
from ..errors import CapacityExhausted, InvalidRequest, QuotaExceeded, WrongPassword
from ..models import DBInstance, InstanceStatus, db, utcnow
from ..passwords import hash_password, password_matches
from ..tokens import Principal
from .transitions import count, release


class Policy:
    def __init__(self, backends: BackendRegistry, lifecycle: LifecycleSettings) -> None:
        self.backends = backends
        self.lifecycle = lifecycle

    def expiry(self, ttl: int | None, default: int | None, principal: Principal | None = None) -> datetime | None:
        """When an instance asked to live ``ttl`` seconds (None: ``default``) expires, within the
        token's max_ttl and the server's; None: never."""
        token_max = principal.max_ttl if principal is not None else None
        if token_max is not None:
            if ttl is not None and ttl > token_max:
                raise QuotaExceeded(
                    f"Your token allows a ttl of at most {format_duration(token_max)} (its max_ttl).",
                    {"ttl": f"at most {format_duration(token_max)} for this token"},
                )
            # Without a ttl of its own, an instance of a limited token lives as long as allowed.
            default = min(default, token_max) if default is not None else token_max
        ttl = ttl if ttl is not None else default
        maximum = self.lifecycle.max_ttl
        if ttl is None:
            if maximum is not None:
                raise InvalidRequest(
                    f"A ttl is required: instances live at most {format_duration(maximum)} here.",
                    {"ttl": f"required, at most {format_duration(maximum)}"},
                )
            return None
        if maximum is not None and ttl > maximum:
            raise InvalidRequest(
                f"The ttl may be at most {format_duration(maximum)}.", {"ttl": f"at most {format_duration(maximum)}"}
            )
        return utcnow() + timedelta(seconds=ttl)

    def enforce_quotas(
        self, instance_id: int, owner: str, backend_name: str, principal: Principal | None, release_row: bool = True
    ) -> None:
        """Counted after the row is reserved, so concurrent creates can only undershoot a limit.
        Over a limit the row is released (``release_row``), else the caller gives it back."""
        owner_limit = principal.max_instances if principal is not None else None
        if owner_limit is not None:
            # What the owner asked to delete is no longer the owner's to count while its removal
            # waits for the reaper (on a lock nobody of the owner's holds), up to as many again as
            # the limit: past that, deletes that do not finish count, so none can be a way around
            # the limit. The backend's capacity counts them all, below.
            deleting = DBInstance.status == InstanceStatus.DELETING
            everything, being_deleted = db.session.execute(
                select(func.count(), func.count().filter(deleting)).where(DBInstance.owner == owner)
            ).one()
            owned = everything - being_deleted + max(0, being_deleted - owner_limit)
            if owned > owner_limit:
                if release_row:
                    release(instance_id)
                raise QuotaExceeded(
                    f"Owner {owner!r} already has {owned - 1} instance(s), the most its token allows "
                    f"(max_instances {owner_limit}).",
                    {"postgraas_instance_name": "over the max_instances of your token"},
                )
        if self.at_capacity(backend_name, counting_new=True):
            if release_row:
                release(instance_id)
            raise CapacityExhausted(
                f"Backend {backend_name!r} is at its capacity of {self.backends.limits[backend_name]} instances; "
                "try again later."
            )

    def at_capacity(self, backend_name: str, counting_new: bool = False) -> bool:
        """Whether the backend holds its max_instances (more, ``counting_new``: a row just reserved
        is one of those counted)."""
        limit = self.backends.limits.get(backend_name)
        if limit is None:
            return False
        held = count(DBInstance.backend == backend_name)
        return held > limit if counting_new else held >= limit

    def authorize(self, row: DBInstance, password: str | None, principal: Principal | None) -> None:
        """With a token, seeing the instance is enough (its owner or an admin); a db_pwd, if
        sent, must still match. Without one, the db_pwd is the proof (postgraas_server 2.x)."""
        if password is None:
            if principal is None:
                raise InvalidRequest("The request has invalid fields: db_pwd is required.", {"db_pwd": "is required"})
            return
        if not self._password_matches(row, password):
            raise WrongPassword("The password does not match this instance's db_pwd.", {"db_pwd": "does not match"})

    @staticmethod
    def _password_matches(row: DBInstance, password: str) -> bool:
        if row.password_hash is not None:
            return password_matches(row.password_hash, password)
        # A row from a 2.x meta db without a password: check it by a login, as 2.x did, and
        # keep the hash from now on.
        if not row.hostname or not row.port:
            return False
        if not password_accepted(row.hostname, row.port, Credentials(row.db_name, row.username, password)):
            return False
        row.password_hash = hash_password(password)
        db.session.commit()
        return True
