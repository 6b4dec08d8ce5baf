"""The contract every backend implements. These docstrings are the spec."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import ClassVar

from ..scram import scram_sha256_verifier


@dataclass(frozen=True)
class DatabaseSpec:
    """What a user asked for, with the meta-db id it was reserved under."""

    instance_id: int
    instance_name: str
    db_name: str
    db_username: str
    db_pwd: str
    # Create the database from this existing database (backends whose why_no_template() is None only).
    template: str | None = None
    # True: the database may lose its last commits, or all of itself, in a crash; in return it
    # writes without waiting for the disk (fsync, synchronous_commit, full_page_writes off where
    # the backend controls them). For throwaway databases of tests.
    ephemeral: bool = False
    # db_pwd's SCRAM-SHA-256 verifier where the caller derived one already (with its meta-db hash).
    db_pwd_verifier: str | None = None
    # Made ahead for the warm pool: names and password are throwaway, and a backend whose claims
    # need to log in again may pick the password itself.
    pooled: bool = False
    # A clone of this Postgraas template (``Backend.clone``), not a new empty database.
    from_template: FrozenTemplate | None = None
    # A template's builder: ``freeze`` will be asked of it, so a backend makes it where it can
    # freeze it (never taken from a warm pool).
    template_builder: bool = False

    def __repr__(self) -> str:  # keep the password out of logs and tracebacks
        return f"DatabaseSpec(instance_id={self.instance_id}, instance_name={self.instance_name!r})"

    def scram_verifier(self) -> str:
        """What a server is told of db_pwd: never the password itself."""
        return self.db_pwd_verifier or scram_sha256_verifier(self.db_pwd)

    @property
    def credentials(self) -> Credentials:
        return Credentials(self.db_name, self.db_username, self.db_pwd)


@dataclass(frozen=True)
class Credentials:
    """A login to an instance's database, used to count its sessions before a delete."""

    db_name: str
    db_username: str
    db_pwd: str

    def __repr__(self) -> str:
        return f"Credentials(db_name={self.db_name!r}, db_username={self.db_username!r})"


@dataclass(frozen=True)
class ProvisionedDatabase:
    """Where a created database can be reached. ``ref`` names the backend object (a container id)."""

    ref: str
    host: str
    port: int


@dataclass(frozen=True)
class FrozenTemplate:
    """What a finished template build became (``freeze``), and what each of its clones starts as."""

    # The backend's reference to the template (a data directory, a database, an image).
    artifact: str
    # The tenant inside it (the builder's role and database, by name); a clone hands them over to
    # its own spec's names and password. No password: nobody logs in to a template.
    tenant: Credentials


class ObjectState(StrEnum):
    RUNNING = "running"
    # The object exists but its server does not run (a container exited, a process died).
    STOPPED = "stopped"
    MISSING = "missing"


@dataclass(frozen=True)
class ObjectDescription:
    """What ``describe`` tells of a backend object: whether its server runs, and where."""

    state: ObjectState
    host: str | None = None
    port: int | None = None


# Not frozen: a listing makes one per object, and a frozen dataclass's __init__ took five times as
# long, most of a reaper pass's listing at a hundred thousand instances. Nobody changes one.
@dataclass(slots=True)
class ManagedObject:
    """A backend object this deployment made, as the backend lists it (for the reaper)."""

    ref: str
    instance_id: int
    created_at: datetime
    # What delete(force=True) needs besides ref: for a cluster, the role to drop.
    credentials: Credentials
    # Where it listens now, where the backend knows (a restarted container may get a new port).
    port: int | None = None
    # The instance name it was made for, where the backend keeps it (for the reaper's log).
    name: str | None = None
    # Set when the object is there but its database is gone for good (a swarm service whose node
    # went down): why, for the instance's status_detail. The reaper marks it lost and removes it.
    lost: str | None = None


class Backend(ABC):
    """Creates and removes PostgreSQL databases.

    Backends never touch the meta db or HTTP; they raise errors from ``postgraas_server.errors``.
    Each is built with the deployment id of its meta db and marks every object it makes with
    it and with the instance id, before anything else can fail, so ``list_objects`` finds it.
    Every method is part of the contract: what a backend cannot do it says so (``why_no_pool``,
    ``why_no_template``), it does not leave a method out.
    """

    # The backend's ``type`` in the configuration (backends.<name>.type).
    type_name: ClassVar[str]
    # True where DatabaseSpec.template may name a database the backend's admin designated as a
    # template (cluster), for creates naming no Postgraas template.
    takes_designated_templates: ClassVar[bool] = False

    @abstractmethod
    def why_no_pool(self) -> str | None:
        """None when ``claim``, ``can_claim`` and ``keep_ready`` work, so a warm pool can be kept
        (``pool_size``); else a sentence saying why not, for the configuration error."""

    @abstractmethod
    def why_no_template(self) -> str | None:
        """None when ``DatabaseSpec.template`` works; else a sentence saying why not."""

    @abstractmethod
    def freeze(self, ref: str, credentials: Credentials, *, template_id: int) -> FrozenTemplate:
        """Turn the object ``ref`` (made by ``create``, where a builder migrated and loaded it, as
        the tenant ``credentials`` whose password may be empty) into template ``template_id`` of
        this deployment: every session ended, its state frozen, the object itself gone into the
        template (``exists(ref)`` is False after it). Only where ``why_no_template()`` is None.

        Raises ``BackendError`` (nothing changed, or the template was removed again),
        ``BackendUnavailable``.
        """

    @abstractmethod
    def clone(self, template: FrozenTemplate, spec: DatabaseSpec) -> ProvisionedDatabase:
        """A new object holding what ``template`` holds, its tenant handed over to ``spec``'s
        names and password (the tenant owns every object in it), returned once a TCP login as
        spec's tenant works. Marked with the deployment and spec.instance_id as ``create``'s
        objects, it is then an instance like any other. Errors as ``create``'s, leaving nothing."""

    @abstractmethod
    def drop_template(self, artifact: str) -> None:
        """Remove a template of this deployment and all its storage; the clones made from it stay.
        Idempotent. Raises ``BackendUnavailable``."""

    @abstractmethod
    def list_templates(self) -> dict[int, str]:
        """Every template of this deployment in the backend: template id -> artifact (for the
        reaper, whose rows may be gone). Where one id has several artifacts (a build frozen again
        after the server lost its first freeze), the oldest: once it is dropped, the next is
        listed. Raises ``BackendUnavailable``."""

    @abstractmethod
    def create(self, spec: DatabaseSpec) -> ProvisionedDatabase:
        """Create the database and return only once a real login as ``spec.db_username`` to
        ``spec.db_name`` over TCP succeeds. A backend whose server runs already (cluster) may
        prove that once, on its first create, for the tenants after it (``login_proof``).

        Raises ``BackendUnavailable`` when the backend cannot be reached, ``Conflict`` when its
        object's name is taken, ``BackendTimeout`` when the database is not ready in time and
        ``BackendError`` for any other failure. On every failure it has removed whatever it
        created: it leaves nothing behind.
        """

    @abstractmethod
    def claim(self, ref: str, pooled: Credentials, spec: DatabaseSpec) -> ProvisionedDatabase:
        """Hand the object ``ref``, made ahead by ``create`` with the throwaway ``pooled``
        credentials, to ``spec``: role and database renamed to spec's, spec's password set (the
        throwaway one is gone with the old name), durability as spec asks. Returns once the
        hand-over is committed on the object's server, which proved a TCP login when it was made
        and runs still (a new login would only prove that again); ``ref`` may change.

        Raises ``Conflict`` when spec's names are taken (nothing was changed), else
        ``BackendError``, ``BackendUnavailable`` or ``BackendTimeout``; after those the object may
        be half handed over, and the caller deletes it.
        """

    @abstractmethod
    def can_claim(self, db_name: str, db_username: str) -> bool:
        """False when a pooled object cannot become these names (ones the backend keeps for
        itself): such a create is made anew instead."""

    @abstractmethod
    def keep_ready(self, refs: list[str]) -> list[str]:
        """Called by the pool keeper of every server process with the pooled objects' refs of the
        moment: hold what their claims need (a connection to each, say) and let go of the rest.
        Returns the refs this process can never claim (the caller removes them if still pooled).
        A backend whose claims need nothing held does nothing."""

    @abstractmethod
    def delete(self, ref: str, credentials: Credentials, *, instance_id: int, force: bool = False) -> str | None:
        """Remove the backend object ``ref`` of instance ``instance_id`` and all its storage.

        Never removes what is not that instance's: where a ref is a name that another instance may
        take once the object is gone (a database in a shared cluster), the object is checked to be
        this instance's, and left alone otherwise. Also removes what the tenant made beside it that
        outlives its object otherwise (databases it created in a shared cluster). Returns None, or
        sentences for the user: what else went with it, what was left and why.

        Unless ``force``, raises ``Conflict`` while other sessions are connected; with ``force``
        they are terminated. Idempotent: an object that is already gone is not an error.
        Raises ``BackendUnavailable`` when the backend cannot be reached (nothing was removed),
        ``BackendTimeout`` when a step waited too long on something outside the instance (the
        caller tries again later).
        """

    @abstractmethod
    def exists(self, ref: str) -> bool:
        """True when the backend object ``ref`` exists (running or not). Raises ``BackendUnavailable``."""

    @abstractmethod
    def describe(self, ref: str) -> ObjectDescription:
        """Where ``ref`` can be reached and whether its server runs; ``MISSING`` when it is gone.
        Raises ``BackendUnavailable``."""

    @abstractmethod
    def health(self) -> None:
        """Return when the backend can create databases; raise ``BackendUnavailable`` saying why not."""

    @abstractmethod
    def list_objects(self) -> list[ManagedObject]:
        """Every object this deployment made in the backend, finished or not (a creation cut
        short by a crash included), each with the instance id it was made for.
        Raises ``BackendUnavailable``."""
