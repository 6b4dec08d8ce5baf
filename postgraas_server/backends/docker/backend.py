"""The docker backend: one container of the configured postgres image per instance (by default of
its prepared image, see prepared_image.py). A template is a container committed into an image,
a clone a container of that image (templates.py)."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import docker.errors
import psycopg

from ...backend_settings import DockerBackendSettings
from ...errors import BackendError, BackendTimeout, BackendUnavailable, Conflict, InUse
from ..contract import (
    Credentials,
    DatabaseSpec,
    FrozenTemplate,
    ManagedObject,
    ObjectDescription,
    ObjectState,
    ProvisionedDatabase,
)
from ..postgres.client import OTHER_SESSIONS_SQL, NotReady, count_other_sessions, wait_for_login
from ..postgres.own_server import EPHEMERAL_SETTINGS
from .containers import (
    POSTGRES_PORT,
    created_at,
    environment_of,
    limits,
    log_tail,
    published_port,
    remove_quietly,
)
from .image_preparer import ImagePreparer
from .prepared_backend import DEPLOYMENT_LABEL, INSTANCE_ID_LABEL, NAME_LABEL, ImageBackend
from .prepared_image import VERIFIER_ENV
from .templates import TemplateImages, refuse_names_taken

log = logging.getLogger(__name__)

EXIT_CHECK_INTERVAL_S = 0.5


class ContainerExited(Exception):
    """The container stopped while we waited for it to become ready."""


class DockerBackend(ImageBackend):
    """Creates containers through an injected docker SDK client (a fake one in unit tests)."""

    type_name = "docker"
    api_name = "Docker"
    api_host_name = "The Docker engine"

    def __init__(
        self,
        settings: DockerBackendSettings,
        deployment: str,
        client_factory: Callable[[], Any] | None = None,
    ) -> None:
        super().__init__(settings, deployment, client_factory)
        self.settings = settings
        self._preparer = ImagePreparer(lambda: limits(self.settings))
        self._templates = TemplateImages(deployment)

    def why_no_pool(self) -> str | None:
        # A claim logs in as the pooled tenant and acts as the image's own superuser, which only a
        # prepared image keeps apart from the tenant (the official entrypoint makes them one role).
        if self.settings.prepare_image:
            return None
        return "the docker backend keeps a warm pool of prepared images only (prepare_image: true)"

    def why_no_template(self) -> str | None:
        if self.settings.prepare_image:
            return None
        # docker commit keeps what a container wrote to its own layer, not to a volume.
        return (
            "the docker backend keeps templates of the prepared image only (prepare_image: true): a template is "
            "a container committed into an image, and the plain image keeps its data in a volume, which a commit "
            "leaves out"
        )

    def create(self, spec: DatabaseSpec) -> ProvisionedDatabase:
        spec = self._with_pool_password(spec)
        with self._api("create the container"):
            container, secrets_in_env = self._create_container(spec)
        return self._start(container, spec, secrets_in_env)

    # -- templates (see templates.py) --------------------------------------------------------

    def freeze(self, ref: str, credentials: Credentials, *, template_id: int) -> FrozenTemplate:
        if (why := self.why_no_template()) is not None:
            raise BackendError(f"The docker backend cannot make templates: {why}.")
        with self._api("look up the container"):
            try:
                container = self.client.containers.get(ref)
            except docker.errors.NotFound:
                raise BackendError(f"Container {ref[:12]} does not exist.") from None
        labels = container.attrs.get("Config", {}).get("Labels") or {}
        if labels.get(DEPLOYMENT_LABEL) != self.deployment or not labels.get(INSTANCE_ID_LABEL):
            raise BackendError(f"Container {ref[:12]} is no instance of this deployment; it was left alone.")
        with self._api("commit the container into a template image"):
            artifact = self._templates.freeze(self.client, container, credentials, template_id)
        log.info("froze container %s into template image %s", container.name, artifact)
        return FrozenTemplate(artifact, Credentials(credentials.db_name, credentials.db_username, ""))

    def clone(self, template: FrozenTemplate, spec: DatabaseSpec) -> ProvisionedDatabase:
        refuse_names_taken(template.tenant, spec)

        def image_gone() -> None:
            raise BackendError(f"The template image {template.artifact} does not exist (any more).")

        made = self._run_tenant_container(
            spec, template.artifact, image_gone, f" from template image {template.artifact}"
        )
        if spec.pooled:
            self._open_every_relation(self._probe_host, made.port, self._with_pool_password(spec))
        return made

    def drop_template(self, artifact: str) -> None:
        with self._api("remove the template image"):
            self._templates.drop(self.client, artifact)

    def list_templates(self) -> dict[int, str]:
        with self._api("list the template images"):
            return self._templates.list(self.client)

    # -- instances -----------------------------------------------------------------------------

    def _run_tenant_container(
        self, spec: DatabaseSpec, image: str, image_missing: Callable[[], None], origin: str
    ) -> ProvisionedDatabase:
        """A container of ``image``, the prepared image or one made of it (a template's), for
        spec's tenant, returned once a login works. ``image_missing`` raises, or makes the image
        available again (a pull), when the engine does not have it."""
        spec = self._with_pool_password(spec)
        environment, secrets_in_env = _tenant_environment(spec)
        options = self._container_options(spec, image, environment)
        with self._api("create the container"):
            try:
                container = self.client.containers.create(**options)
            except docker.errors.ImageNotFound:
                image_missing()
                container = self.client.containers.create(**options)
        return self._start(container, spec, secrets_in_env, origin)

    def _with_pool_password(self, spec: DatabaseSpec) -> DatabaseSpec:
        if not spec.pooled:
            return spec
        # A password any process of this server can derive again to claim the container.
        return replace(spec, db_pwd=self._pool_password(spec.instance_id, spec.db_username), db_pwd_verifier=None)

    def _start(
        self, container: Any, spec: DatabaseSpec, secrets_in_env: tuple[str, ...], origin: str = ""
    ) -> ProvisionedDatabase:
        """Start the created ``container`` and return once a TCP login as spec's tenant works; on
        any failure the container is removed."""
        try:
            with self._api("start the container"):
                container.start()
                container.reload()
                port = published_port(container)
            wait_for_login(
                self._probe_host,
                port,
                spec.credentials,
                timeout=self.settings.ready_timeout,
                still_starting=self._exit_watch(container),
            )
        except BaseException as e:
            logs = log_tail(container, secrets_in_env)
            remove_quietly(container, "after a failed create")
            if isinstance(e, NotReady):
                raise BackendTimeout(
                    f"The database in container {container.name} was not ready within "
                    f"{self.settings.ready_timeout:g} s (last error: {e}); it was removed. "
                    f"Last log lines:\n{logs}"
                ) from e
            if isinstance(e, ContainerExited):
                raise BackendError(
                    f"Container {container.name} stopped before its database was ready ({e}); "
                    f"it was removed. Last log lines:\n{logs}"
                ) from e
            raise
        log.info("created container %s%s for instance %s on port %s", container.name, origin, spec.instance_name, port)
        return ProvisionedDatabase(ref=container.id, host=self.settings.advertised_host, port=port)

    def _label(self, ref: str) -> str:
        return f"container {ref[:12]}"

    def delete(self, ref: str, credentials: Credentials, *, instance_id: int, force: bool = False) -> None:
        # A container id is never reused: the ref is this instance's object or none at all.
        with self._api("remove the container"):
            try:
                container = self.client.containers.get(ref)
            except docker.errors.NotFound:
                return None
            if not force and container.status == "running":
                self._refuse_if_in_use(container, credentials)
            try:
                # The data is thrown away anyway, so kill rather than wait for a clean shutdown;
                # v=True removes the anonymous data volume with it.
                container.remove(force=True, v=True)
            except docker.errors.NotFound:
                return None
        log.info("removed container %s (force=%s)", container.name, force)
        return None

    def exists(self, ref: str) -> bool:
        with self._api("look up the container"):
            try:
                self.client.containers.get(ref)
            except docker.errors.NotFound:
                return False
        return True

    def describe(self, ref: str) -> ObjectDescription:
        with self._api("look up the container"):
            try:
                container = self.client.containers.get(ref)
            except docker.errors.NotFound:
                return ObjectDescription(ObjectState.MISSING)
        if container.status != "running":
            return ObjectDescription(ObjectState.STOPPED)
        return ObjectDescription(ObjectState.RUNNING, self.settings.advertised_host, published_port(container))

    def health(self) -> None:
        with self._api("reach the engine"):
            self.client.ping()

    def list_objects(self) -> list[ManagedObject]:
        with self._api("list the containers"):
            # sparse: the list answer has labels and times; no inspect per container, which
            # would also fail the whole listing for one container removed meanwhile.
            containers = self.client.containers.list(all=True, sparse=True, filters={"label": self._listed_labels()})
        objects = []
        for container in containers:
            try:
                instance_id = int((container.attrs.get("Labels") or {})[INSTANCE_ID_LABEL])
            except (KeyError, ValueError):
                continue
            created = created_at(container.attrs.get("Created"))
            ports = [p.get("PublicPort") for p in container.attrs.get("Ports") or [] if p.get("PrivatePort") == 5432]
            port = next((int(p) for p in ports if p), None)
            name = (container.attrs.get("Labels") or {}).get(NAME_LABEL)
            objects.append(ManagedObject(container.id, instance_id, created, Credentials("", "", ""), port, name))
        return objects

    def _listed_labels(self) -> list[str]:
        """The label filters (all of them) this deployment's containers are listed by."""
        return [f"{DEPLOYMENT_LABEL}={self.deployment}"]

    # -- helpers ---------------------------------------------------------------------------

    def _connect_pooled(self, ref: str) -> psycopg.Connection:
        with self._api("look up the pooled container"):
            container = self.client.containers.get(ref)
        labels = container.attrs.get("Config", {}).get("Labels") or {}
        env = environment_of(container.attrs.get("Config") or {})
        instance_id = int(labels.get(INSTANCE_ID_LABEL, "0"))
        return self._login_pooled(ref, self._probe_host, published_port(container), instance_id, env)

    def _create_container(self, spec: DatabaseSpec, *, retry: bool = True) -> tuple[Any, tuple[str, ...]]:
        """The container, not started, and the secrets its environment holds (kept out of logs)."""
        prepared = self._prepared_image() if self.settings.prepare_image else None
        if (spec.pooled or spec.template_builder) and prepared is None:
            # The official entrypoint makes the tenant the bootstrap superuser: no claim could rename
            # it; and it keeps the data in a volume, which no commit into a template would keep.
            use = "A template's builder" if spec.template_builder else "The warm pool"
            raise BackendError(f"{use} needs the prepared image of {self.settings.image}, which is not available.")
        if prepared is not None:
            environment, secrets_in_env = _tenant_environment(spec)
        else:
            environment = {
                "POSTGRES_USER": spec.db_username,
                "POSTGRES_PASSWORD": spec.db_pwd,
                "POSTGRES_DB": spec.db_name,
            }
            secrets_in_env = (spec.db_pwd,)
        options = self._container_options(spec, prepared or self.settings.image, environment)
        try:
            return self.client.containers.create(**options), secrets_in_env
        except docker.errors.ImageNotFound:
            if prepared is not None:
                if not retry:
                    raise
                # Removed since it was found (an image prune, say): find or make it again.
                self._preparer.forget(prepared)
                return self._create_container(spec, retry=False)
            self._pull_image()
            return self.client.containers.create(**options), secrets_in_env

    def _container_options(self, spec: DatabaseSpec, image: str, environment: dict[str, str]) -> dict[str, Any]:
        """What containers.create takes for spec's container of ``image``."""
        options = dict(
            image=image,
            # The random suffix keeps names unique across meta dbs sharing one engine.
            name=f"postgraas-{spec.instance_name}-{secrets.token_hex(3)}",
            environment=environment,
            labels=self._labels(self.settings.labels, spec.instance_id, spec.instance_name),
            # No host port given: Docker picks a free one when it binds, so there is no race.
            ports={POSTGRES_PORT: (self.settings.bind_address, None)},
            detach=True,
            **limits(self.settings),
            # Back by itself after an engine restart; a stopped database is no database.
            restart_policy={"Name": "unless-stopped"},
        )
        if spec.ephemeral:
            # The official entrypoint (and the prepared and clone wrappers) pass "postgres ARGS" through.
            options["command"] = ["postgres", *(f"-c{name}=off" for name in EPHEMERAL_SETTINGS)]
        return options

    def _prepared_image(self) -> str | None:
        """The prepared image's tag, made on first use; None when the configured image cannot be prepared."""
        try:
            image = self.client.images.get(self.settings.image)
        except docker.errors.ImageNotFound:
            self._pull_image()
            image = self.client.images.get(self.settings.image)
        return self._preparer.tag_for(self.client, image)

    def _pull_image(self) -> None:
        log.info("image %s not present; pulling it", self.settings.image)
        try:
            self.client.images.pull(self.settings.image)
        except docker.errors.APIError as e:
            raise BackendUnavailable(
                f"The image {self.settings.image} (backend.image) is not on the Docker engine "
                f"and could not be pulled: {e.explanation or e}"
            ) from e

    def _exit_watch(self, container: Any) -> Callable[[], None]:
        """_raise_if_exited, at most every EXIT_CHECK_INTERVAL_S: an inspect per login attempt (20 a
        second) of every container of a burst of creates would keep the engine itself busy."""
        last_check = -EXIT_CHECK_INTERVAL_S

        def check() -> None:
            nonlocal last_check
            now = time.monotonic()
            if now - last_check >= EXIT_CHECK_INTERVAL_S:
                last_check = now
                self._raise_if_exited(container)

        return check

    def _raise_if_exited(self, container: Any) -> None:
        with self._api("inspect the container"):
            container.reload()
        if container.status not in ("created", "running"):
            code = container.attrs.get("State", {}).get("ExitCode")
            raise ContainerExited(f"status {container.status}, exit code {code}")

    def _refuse_if_in_use(self, container: Any, credentials: Credentials) -> None:
        sessions = self._count_sessions(container, credentials)
        if sessions:
            raise InUse(sessions)

    def _count_sessions(self, container: Any, credentials: Credentials) -> int:
        """Other sessions, counted over TCP with the tenant's password, or, when a token's
        delete brings none, from inside over the container's own socket, which the image's
        contract trusts. Raises Conflict when neither can tell."""
        if credentials.db_pwd:
            container.reload()
            try:
                return count_other_sessions(self._probe_host, published_port(container), credentials)
            except psycopg.Error as e:
                reason = f"with its credentials ({str(e).strip()})"
        else:
            command = ["psql", "-U", credentials.db_username, "-d", credentials.db_name, "-tAc", OTHER_SESSIONS_SQL]
            with self._api("check the container for sessions"):
                code, output = container.exec_run(command)
            text = output.decode("utf-8", "replace").strip()
            if code == 0 and text.isdigit():
                return int(text)
            reason = f"({text[-200:]})"
        raise Conflict(
            f'Could not check the instance for open sessions {reason}; delete with "force": true to remove it anyway.'
        )


def _tenant_environment(spec: DatabaseSpec) -> tuple[dict[str, str], tuple[str, ...]]:
    """A prepared (or template) image's container's environment for spec's tenant, and the
    secrets in it. No plaintext password: the wrapper sets the tenant's SCRAM verifier."""
    verifier = spec.scram_verifier()
    environment = {"POSTGRES_USER": spec.db_username, "POSTGRES_DB": spec.db_name, VERIFIER_ENV: verifier}
    return environment, (spec.db_pwd, verifier)
