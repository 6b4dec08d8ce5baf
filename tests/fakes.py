"""An in-memory backend for unit tests of the API and service (integration tests use real ones)."""

from __future__ import annotations

import itertools
import threading
import time
from datetime import UTC, datetime

from postgraas_server.backends import (
    Backend,
    Credentials,
    DatabaseSpec,
    FrozenTemplate,
    ManagedObject,
    ObjectDescription,
    ObjectState,
    ProvisionedDatabase,
)
from postgraas_server.errors import BackendError, Conflict, PostgraasError


class FakeBackend(Backend):
    type_name = "fake"

    def __init__(self) -> None:
        self.objects: dict[str, DatabaseSpec] = {}
        self.sessions: dict[str, int] = {}
        self.fail_create: PostgraasError | None = None
        self.fail_claim: PostgraasError | None = None
        self.claims: list[tuple[str, str, str]] = []
        self.kept_ready: list[str] = []
        # Role names a pooled object cannot be renamed to (a docker image's own superuser, say).
        self.reserved_names: set[str] = set()
        self.pooled_specs: list[DatabaseSpec] = []
        # Pooled objects that refuse this process's claims (made under another pool secret).
        self.unclaimable: set[str] = set()
        self.fail_delete: PostgraasError | None = None
        self.fail_describe: Exception | None = None
        self.fail_list: PostgraasError | None = None
        self.delete_delay = 0.0
        # Set: every delete waits until it is (a removal under way, held open by the test).
        self.delete_gate: threading.Event | None = None
        self.create_delay = 0.0
        self.created_at: dict[str, datetime] = {}
        self.deleted: list[tuple[str, bool]] = []
        self._ports = itertools.count(40000)
        # Where each object listens: describe says so, and a claimed object stays there.
        self.ports: dict[str, int] = {}
        # Templates by id (freeze), and the clones made of them: (artifact, instance id).
        self.templates: dict[int, str] = {}
        self.cloned: list[tuple[str, int]] = []

    def why_no_pool(self) -> str | None:
        return None

    def why_no_template(self) -> str | None:
        return None

    def freeze(self, ref: str, credentials: Credentials, *, template_id: int) -> FrozenTemplate:
        spec = self.objects.pop(ref)
        artifact = f"fake-template-{template_id}"
        self.templates[template_id] = artifact
        return FrozenTemplate(artifact, Credentials(spec.db_name, spec.db_username, ""))

    def clone(self, template: FrozenTemplate, spec: DatabaseSpec) -> ProvisionedDatabase:
        if template.artifact not in self.templates.values():
            raise BackendError(f"no template {template.artifact}")
        self.cloned.append((template.artifact, spec.instance_id))
        return self.create(spec)

    def drop_template(self, artifact: str) -> None:
        self.templates = {i: a for i, a in self.templates.items() if a != artifact}

    def list_templates(self) -> dict[int, str]:
        return dict(self.templates)

    def create(self, spec: DatabaseSpec) -> ProvisionedDatabase:
        time.sleep(self.create_delay)
        if self.fail_create is not None:
            raise self.fail_create
        ref = f"fake-{spec.instance_id}"
        self.objects[ref] = spec
        if spec.pooled:
            self.pooled_specs.append(spec)
        self.ports[ref] = next(self._ports)
        return ProvisionedDatabase(ref=ref, host="db.example", port=self.ports[ref])

    def claim(self, ref: str, pooled: Credentials, spec: DatabaseSpec) -> ProvisionedDatabase:
        if self.fail_claim is not None:
            raise self.fail_claim
        assert self.objects[ref].db_username == pooled.db_username
        self.objects[ref] = spec
        self.claims.append((ref, pooled.db_username, spec.db_username))
        return ProvisionedDatabase(ref=ref, host="db.example", port=self.ports[ref])

    def can_claim(self, db_name: str, db_username: str) -> bool:
        return db_username not in self.reserved_names

    def keep_ready(self, refs: list[str]) -> list[str]:
        self.kept_ready = list(refs)
        return [ref for ref in refs if ref in self.unclaimable]

    def delete(self, ref: str, credentials: Credentials, *, instance_id: int, force: bool = False) -> str | None:
        time.sleep(self.delete_delay)
        if self.delete_gate is not None:
            assert self.delete_gate.wait(30), "the test never let the delete go on"
        if self.fail_delete is not None:
            raise self.fail_delete
        if not force and self.sessions.get(ref):
            raise Conflict("in use")
        held = self.objects.get(ref)
        if held is not None and held.instance_id != instance_id:
            # As a real backend: another instance's object (its name reused) is left alone.
            return f"{ref} was left: it is instance {held.instance_id}'s"
        self.objects.pop(ref, None)
        self.deleted.append((ref, force))
        return None

    def exists(self, ref: str) -> bool:
        return ref in self.objects

    def describe(self, ref: str) -> ObjectDescription:
        if self.fail_describe is not None:
            raise self.fail_describe
        if ref not in self.objects:
            return ObjectDescription(ObjectState.MISSING)
        return ObjectDescription(ObjectState.RUNNING, "db.example", self.ports.get(ref, 40000))

    def health(self) -> None:
        pass

    def list_objects(self) -> list[ManagedObject]:
        if self.fail_list is not None:
            raise self.fail_list
        return [
            ManagedObject(
                ref,
                spec.instance_id,
                self.created_at.get(ref, datetime.now(UTC)),
                Credentials("", "", ""),
                name=spec.instance_name,
            )
            for ref, spec in self.objects.items()
        ]
