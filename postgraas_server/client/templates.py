"""Templates as the client sees them (``client.templates``): ensure, wait, heartbeat, finalize,
list, delete, and ensure_template, which builds a template here or waits for another caller's build.

A template is built once per name and content hash: of every caller that ensures it, the server
picks one to build (201, with the builder's database); the others wait until it is ready.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .errors import ConflictError, NotFoundError, PostgraasClientError, TemplateFailedError
from .instance import Instance, parse_time

if TYPE_CHECKING:
    from .api import PostgraasClient

TEMPLATES = "/postgraas_templates"
BUILDING = ("building", "finalizing")
# The client's default: a builder that dies is noticed (and its build given up) within 5 minutes.
DEFAULT_BUILD_TIMEOUT = 300
# How long a caller waits for another's build before it gives up.
DEFAULT_WAIT_TIMEOUT = 3600.0
# Seconds an ensure keeps asking while the server answers 409 "being deleted, ask again".
ENSURE_RETRY_SECONDS = 30.0
ENSURE_RETRY_PAUSE = 0.5
HEARTBEAT_THREAD_NAME = "postgraas-template-heartbeat"

BuildStep = Callable[[Instance], None]


@dataclass(frozen=True)
class Template:
    id: int
    name: str
    hash: str
    backend: str
    status: str
    status_detail: str | None
    created_at: datetime | None
    expires_at: datetime | None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Template:
        return cls(
            id=int(data["id"]),
            name=str(data["name"]),
            hash=str(data["hash"]),
            backend=str(data.get("backend", "")),
            status=str(data.get("status", "")),
            status_detail=data.get("status_detail"),
            created_at=parse_time(data.get("created_at")),
            expires_at=parse_time(data.get("expires_at")),
            # Never the builder's credentials: only the 201 has them, and they go to its Instance.
            raw={k: v for k, v in data.items() if k in TEMPLATE_FIELDS},
        )

    @property
    def ref(self) -> str:
        """What a create names to clone exactly this content: NAME@HASH."""
        return f"{self.name}@{self.hash}"

    @property
    def settled(self) -> bool:
        return self.status not in BUILDING

    def as_dict(self) -> dict[str, Any]:
        return dict(self.raw)


TEMPLATE_FIELDS = ("id", "name", "hash", "backend", "status", "status_detail", "created_at", "expires_at")


@dataclass(frozen=True)
class Ensured:
    """The answer to an ensure: the template, and the builder's database when this caller builds
    it (``outcome`` ``build``); else ``ready``, or ``wait`` while another caller builds it."""

    outcome: str
    template: Template
    builder: Instance | None = None


def _builder_of(template: Template, data: Mapping[str, Any]) -> Instance:
    """The builder's database from the 201, password included, shaped as an instance."""
    password = str(data["db_pwd"])
    return Instance(
        id=int(data["instance_id"]),
        name=template.name,
        db_name=str(data["db_name"]),
        db_username=str(data["db_username"]),
        host=str(data["host"]),
        port=int(data["port"]),
        backend=template.backend,
        status="ready",
        status_detail=None,
        expires_at=None,
        created_at=template.created_at,
        password=password,
        raw=dict(data),
    )


class _Heartbeats:
    """While the build runs: a heartbeat every ``interval`` seconds from a thread of its own (and a
    connection pool of its own), so that the server does not give up a build that is alive."""

    def __init__(self, client: PostgraasClient, template_id: int, builder: Instance, interval: float) -> None:
        self._client = client.with_own_session()
        self._template_id, self._builder, self._interval = template_id, builder, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=HEARTBEAT_THREAD_NAME, daemon=True)

    def __enter__(self) -> _Heartbeats:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        # A heartbeat in flight ends within the client's timeout.
        self._thread.join()
        self._client.close()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._client.templates.heartbeat(self._template_id, self._builder)
            except PostgraasClientError:
                # A lost heartbeat is retried at the next beat; a build given up shows in the finalize.
                continue


class TemplateApi:
    """The template endpoints of ``client``; reached as ``client.templates``."""

    def __init__(self, client: PostgraasClient) -> None:
        self._client = client

    def ensure(
        self,
        name: str,
        content_hash: str,
        backend: str | None = None,
        ttl: int | str | None = None,
        pool_size: int = 0,
        build_timeout: int = DEFAULT_BUILD_TIMEOUT,
    ) -> Ensured:
        """One POST: build it (with the builder's database), it is ready, or wait for another's build."""
        body: dict[str, Any] = {"name": name, "hash": content_hash, "pool_size": pool_size}
        body["build_timeout"] = build_timeout
        if backend:
            body["backend"] = backend
        if ttl is not None:
            body["ttl"] = ttl
        # The 201 comes once the builder's database takes logins, as a create's does.
        data = self._client._request("POST", TEMPLATES, json=body, timeout=self._client.create_timeout)
        template = Template.from_json(data)
        if "db_pwd" in data:
            return Ensured("build", template, _builder_of(template, data))
        return Ensured("ready" if template.status == "ready" else "wait", template)

    def list(self) -> list[Template]:
        return [Template.from_json(item) for item in self._client._request("GET", TEMPLATES)]

    def get(self, template_id: int) -> Template:
        return Template.from_json(self._client._request("GET", f"{TEMPLATES}/{int(template_id)}"))

    def wait(self, template_id: int, timeout: float, on_progress: Callable[[Template], None] | None = None) -> Template:
        """Wait until the template is no longer building or ``timeout`` seconds passed; it as last seen."""
        path = f"{TEMPLATES}/{int(template_id)}"
        return self._client._long_poll(path, timeout, Template.from_json, on_progress)

    def heartbeat(self, template_id: int, builder: Instance) -> Template:
        """The builder is alive: the server moves the build's deadline on."""
        return self._builder_call(template_id, "heartbeat", builder, self._client.timeout)

    def finalize(self, template_id: int, builder: Instance) -> Template:
        """Freeze the builder's database into the template (its sessions are ended); it is then ready."""
        return self._builder_call(template_id, "finalize", builder, self._client.create_timeout)

    def _builder_call(self, template_id: int, action: str, builder: Instance, timeout: float) -> Template:
        # The password proves the builder on a server without tokens; with a token it is checked too.
        body = {"instance_id": builder.id, "db_pwd": builder.password}
        path = f"{TEMPLATES}/{int(template_id)}/{action}"
        data = self._client._request("POST", path, json=body, timeout=timeout, secret=builder.password)
        return Template.from_json(data)

    def delete(self, template_id: int) -> str:
        """Delete a template; a build in progress goes with its builder's database. Clones stay."""
        path = f"{TEMPLATES}/{int(template_id)}"
        data = self._client._request("DELETE", path, timeout=self._client.create_timeout)
        return str(data.get("msg", "")) if isinstance(data, dict) else ""

    # -- build here, or wait ---------------------------------------------------------------------

    def ensure_template(
        self,
        name: str,
        content_hash: str,
        build: BuildStep,
        backend: str | None = None,
        ttl: int | str | None = None,
        pool_size: int = 0,
        build_timeout: int = DEFAULT_BUILD_TIMEOUT,
        wait_timeout: float = DEFAULT_WAIT_TIMEOUT,
        on_wait: Callable[[Template], None] | None = None,
    ) -> Template:
        """The ready template of ``name`` and ``content_hash``, built by this caller or another.

        When this caller builds, ``build`` gets the builder's database (an Instance, password
        included) to migrate and load; heartbeats go out every ``build_timeout / 3`` seconds
        meanwhile, and then the template is finalized. When ``build`` raises, the template is
        deleted (its builder's database with it) and the exception re-raised. When another caller
        builds, this one waits (``on_wait`` gets the template while it waits). A build that failed
        elsewhere is asked for once more, since the server then lets this caller build it anew;
        TemplateFailedError when it failed again or did not get ready within ``wait_timeout``."""
        options: dict[str, Any] = {"backend": backend, "ttl": ttl, "pool_size": pool_size}
        options["build_timeout"] = build_timeout
        seen: Template | None = None
        for _ in range(2):
            ensured = self._ensure_asking_again(name, content_hash, options)
            if ensured.builder is not None:
                return self._build(ensured.template, ensured.builder, build, build_timeout)
            seen = ensured.template
            if seen.status != "ready":
                if on_wait is not None:
                    on_wait(seen)
                seen = self._wait_for_build(seen, wait_timeout, on_wait)
            if seen is not None and seen.status == "ready":
                return seen
            if seen is not None and not seen.settled:
                raise TemplateFailedError(
                    f"Template {name}@{content_hash} (id {seen.id}) is still {seen.status} "
                    f"after {wait_timeout:g} s of waiting for another caller's build."
                )
        if seen is None:
            why = "another caller's build failed, and that caller deleted it"
        else:
            why = f"it is {seen.status}" + (f": {seen.status_detail}" if seen.status_detail else "")
        raise TemplateFailedError(f"Template {name}@{content_hash} could not be made ready: {why}.")

    def _ensure_asking_again(self, name: str, content_hash: str, options: dict[str, Any]) -> Ensured:
        """An ensure, asked again while the server says the template is being deleted (409)."""
        deadline = time.monotonic() + ENSURE_RETRY_SECONDS
        while True:
            try:
                return self.ensure(name, content_hash, **options)
            except ConflictError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(ENSURE_RETRY_PAUSE)

    def _wait_for_build(
        self, template: Template, timeout: float, on_wait: Callable[[Template], None] | None
    ) -> Template | None:
        """The template once another caller's build settled it; None when that caller deleted it."""
        try:
            return self.wait(template.id, timeout, on_progress=on_wait)
        except NotFoundError:
            return None

    def _build(self, template: Template, builder: Instance, build: BuildStep, build_timeout: int) -> Template:
        try:
            with _Heartbeats(self._client, template.id, builder, interval=build_timeout / 3):
                build(builder)
        except BaseException as e:
            self._delete_after_failed_build(template, e)
            raise
        return self.finalize(template.id, builder)

    def _delete_after_failed_build(self, template: Template, error: BaseException) -> None:
        try:
            self.delete(template.id)
        except (PostgraasClientError, KeyboardInterrupt) as e:
            reason = str(e) if isinstance(e, PostgraasClientError) else "interrupted again"
            error.add_note(
                f"Template {template.ref} (id {template.id}) could not be deleted after its build failed "
                f"({reason}); the server gives its build up once no heartbeat came for its build_timeout."
            )
