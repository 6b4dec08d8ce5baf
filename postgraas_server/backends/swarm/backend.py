"""The swarm backend: each instance is a Docker Swarm service of one task, of the (prepared)
image, on a node Swarm chooses, published in host mode on a port Swarm picks. Everything is
done through one manager's API. A template's builder is a container on the manager's own engine,
frozen into an image pushed to the registry; a clone is a service of that image (templates.py)."""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import docker
import docker.errors
import psycopg
import requests

from ...backend_settings import SwarmBackendSettings
from ...errors import BackendError, BackendTimeout, BackendUnavailable, Conflict, InUse
from ...scram import scram_sha256_verifier
from ..contract import (
    Credentials,
    DatabaseSpec,
    FrozenTemplate,
    ManagedObject,
    ObjectDescription,
    ObjectState,
    ProvisionedDatabase,
)
from ..docker.containers import created_at, environment_of
from ..docker.prepared_backend import DEPLOYMENT_LABEL, INSTANCE_ID_LABEL, NAME_LABEL, ImageBackend
from ..docker.prepared_image import ADMIN_VERIFIER_ENV, BOOTSTRAP_USER, VERIFIER_ENV
from ..docker.templates import refuse_names_taken
from ..postgres.client import NotReady, count_other_sessions, wait_for_login
from .service_image import ServiceImage
from .services import NodeBook, service_options, task_place, why_lost
from .tasks import ServiceTasks, TaskEnded
from .templates import SwarmTemplates, builder_container

log = logging.getLogger(__name__)


class SwarmBackend(ImageBackend):
    type_name = "swarm"
    api_name = "The Swarm manager"
    api_host_name = "The Swarm manager"

    def __init__(
        self, settings: SwarmBackendSettings, deployment: str, client_factory: Callable[[], Any] | None = None
    ) -> None:
        super().__init__(settings, deployment, client_factory)
        self.settings = settings
        self._image = ServiceImage(settings, self._build_options)
        self._nodes = NodeBook(settings.advertise_label)
        self._tasks = ServiceTasks(settings, lambda: self.client, self._nodes, self._api)
        self._templates = SwarmTemplates(settings, deployment, lambda: self.client, self._nodes, self._api)
        # Pooled services' client-facing addresses, found when their hand-over connection was made.
        self._advertised: dict[str, str] = {}
        self._manager_seen = False

    def why_no_pool(self) -> str | None:
        # A claim acts as the image's own superuser, which only the prepared image keeps apart from
        # the tenant; and every node must run that one image, so it comes from the registry.
        if self.settings.prepare_image and self.settings.registry:
            return None
        return "the swarm backend keeps a warm pool of the prepared image only, which needs registry and prepare_image"

    def why_no_template(self) -> str | None:
        # A template is a builder's container committed into an image of the prepared image (whose
        # data is in the container's layer), and the nodes get it from the registry.
        if self.settings.prepare_image and self.settings.registry:
            return None
        return "the swarm backend keeps templates of the prepared image only, which needs registry and prepare_image"

    def create(self, spec: DatabaseSpec) -> ProvisionedDatabase:
        spec = self._with_pool_password(spec)
        if not self._manager_seen:
            # Before an image is made and pushed for nothing: base_url must name a manager.
            self.health()
            self._manager_seen = True
        with self._api("find the image"):
            image, prepared = self._image.resolve(self.client)
        if (spec.pooled or spec.template_builder) and not prepared:
            needs = "The warm pool needs" if spec.pooled else "A template's builder needs"
            raise BackendError(f"{needs} the prepared image of {self.settings.image}, which is not available.")
        if spec.template_builder:
            # Where it can be committed: the manager's own engine.
            return self._templates.engine().create_builder(spec, image)
        if prepared:
            env = self._tenant_environment(spec)
        else:
            env = {"POSTGRES_USER": spec.db_username, "POSTGRES_PASSWORD": spec.db_pwd, "POSTGRES_DB": spec.db_name}
        return self._run_service(spec, image, env)

    # -- templates (see templates.py) --------------------------------------------------------

    def freeze(self, ref: str, credentials: Credentials, *, template_id: int) -> FrozenTemplate:
        if (why := self.why_no_template()) is not None:
            raise BackendError(f"The swarm backend cannot make templates: {why}.")
        frozen = self._templates.freeze(ref, credentials, template_id)
        log.info("froze template builder %s into %s", ref, frozen.artifact)
        return frozen

    def clone(self, template: FrozenTemplate, spec: DatabaseSpec) -> ProvisionedDatabase:
        if (why := self.why_no_template()) is not None:
            raise BackendError(f"The swarm backend cannot make templates: {why}.")
        refuse_names_taken(template.tenant, spec)
        spec = self._with_pool_password(spec)
        made = self._run_service(spec, template.artifact, self._tenant_environment(spec), template.artifact)
        if spec.pooled:
            self._open_every_relation(made.host, made.port, spec)
        return made

    def drop_template(self, artifact: str) -> None:
        self._templates.drop(artifact)

    def list_templates(self) -> dict[int, str]:
        if self.why_no_template() is not None:
            return {}  # it never made one
        return self._templates.list()

    # -- instances -----------------------------------------------------------------------------

    def _with_pool_password(self, spec: DatabaseSpec) -> DatabaseSpec:
        if not spec.pooled:
            return spec
        return replace(spec, db_pwd=self._pool_password(spec.instance_id, spec.db_username), db_pwd_verifier=None)

    def _tenant_environment(self, spec: DatabaseSpec) -> dict[str, str]:
        """A service's environment for spec's tenant, of the prepared image or a template's: no
        plaintext password, the wrappers set the tenant's SCRAM verifier."""
        return {
            "POSTGRES_USER": spec.db_username,
            "POSTGRES_DB": spec.db_name,
            VERIFIER_ENV: spec.scram_verifier(),
            # So that a delete without db_pwd (a token's) can count the open sessions over TCP.
            ADMIN_VERIFIER_ENV: scram_sha256_verifier(self._admin_password(spec.instance_id)),
        }

    def _run_service(
        self, spec: DatabaseSpec, image: str, env: dict[str, str], template: str | None = None
    ) -> ProvisionedDatabase:
        """spec's service of ``image`` (of ``template``, a clone's), returned once a login works;
        removed on any failure."""
        options = service_options(
            self.settings,
            name=f"postgraas-{_service_safe(spec.instance_name)[:45]}-{secrets.token_hex(3)}",
            image=image,
            env=env,
            labels=self._labels(self.settings.labels, spec.instance_id, spec.instance_name),
            ephemeral=spec.ephemeral,
        )
        with self._api("create the service"):
            service_id = self.client.services.create(**options).id
        try:
            node, port = self._tasks.wait_until_running(service_id)
            wait_for_login(
                node.address,
                port,
                spec.credentials,
                timeout=self.settings.ready_timeout,
                still_starting=self._tasks.watch(service_id),
            )
        except BaseException as e:
            self._remove_quietly(service_id, "after a failed create")
            if isinstance(e, NotReady):
                raise BackendTimeout(
                    f"The database of swarm service {service_id[:12]} was not ready within "
                    f"{self.settings.ready_timeout:g} s (last error: {e}); the service was removed."
                ) from e
            if isinstance(e, TaskEnded):
                if "rejected" in str(e) and template is None:
                    # A node could not start it: the image may be gone from the registry; push it again.
                    self._image.forget()
                raise BackendError(
                    f"The task of swarm service {service_id[:12]} stopped before its database was ready ({e}); "
                    "the service was removed."
                ) from e
            raise
        origin = f" from template {template}" if template else ""
        log.info("created swarm service %s%s for %s on node %s, port %s", service_id[:12], origin, spec.instance_name,
                 node.hostname, port)  # fmt: skip
        return ProvisionedDatabase(ref=service_id, host=node.advertised, port=port)

    def delete(self, ref: str, credentials: Credentials, *, instance_id: int, force: bool = False) -> None:
        if (container := builder_container(ref)) is not None:
            self._templates.engine().delete(container, credentials, instance_id=instance_id, force=force)
            return None
        # A service id is never reused: the ref is this instance's service or none at all.
        with self._api("remove the service"):
            try:
                service = self.client.services.get(ref)
            except docker.errors.NotFound:
                return None
            if not force:
                self._refuse_if_in_use(ref, credentials, instance_id)
            self._advertised.pop(ref, None)
            try:
                service.remove()
            except docker.errors.NotFound:
                return None
            self._tasks.wait_until_stopped(ref)
        log.info("removed swarm service %s (force=%s)", ref[:12], force)
        return None

    def exists(self, ref: str) -> bool:
        if (container := builder_container(ref)) is not None:
            return self._templates.engine().exists(container)
        with self._api("look up the service"):
            try:
                self.client.api.inspect_service(ref)
            except docker.errors.NotFound:
                return False
        return True

    def describe(self, ref: str) -> ObjectDescription:
        if (container := builder_container(ref)) is not None:
            return self._templates.engine().describe(container)
        with self._api("look up the service"):
            try:
                self.client.api.inspect_service(ref)
            except docker.errors.NotFound:
                return ObjectDescription(ObjectState.MISSING)
            where = self._tasks.running_at(ref)
        if where is None:
            return ObjectDescription(ObjectState.STOPPED)
        node, port = where
        return ObjectDescription(ObjectState.RUNNING, node.advertised, port)

    def health(self) -> None:
        with self._api("reach the manager"):
            swarm = self.client.info().get("Swarm") or {}
        if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
            raise BackendUnavailable(
                f"The Docker engine at {self.settings.base_url or 'DOCKER_HOST'} (base_url) is not a Swarm manager "
                f"(its swarm state is {swarm.get('LocalNodeState') or 'unknown'}); point base_url at a manager."
            )

    def list_objects(self) -> list[ManagedObject]:
        with self._api("list the services"):
            services = self.client.api.services(filters={"label": f"{DEPLOYMENT_LABEL}={self.deployment}"})
            tasks: dict[str, list[dict[str, Any]]] = {}
            ids = [s["ID"] for s in services]
            for start in range(0, len(ids), 100):
                for task in self._tasks.of(ids[start : start + 100]):
                    tasks.setdefault(task.get("ServiceID", ""), []).append(task)
            nodes = self._nodes.refresh(self.client)
        objects = []
        for service in services:
            labels = (service.get("Spec") or {}).get("Labels") or {}
            try:
                instance_id = int(labels[INSTANCE_ID_LABEL])
            except (KeyError, ValueError):
                continue
            place = task_place(tasks.get(service["ID"], []))
            objects.append(
                ManagedObject(
                    service["ID"],
                    instance_id,
                    created_at(service.get("CreatedAt")),
                    Credentials("", "", ""),
                    port=place.port if place and place.state == "running" else None,
                    name=labels.get(NAME_LABEL),
                    lost=why_lost(place, nodes),
                )
            )
        if self.why_no_template() is None:
            objects.extend(self._templates.list_builders())
        return objects

    # -- the pool's hand-over ----------------------------------------------------------------

    def _connect_pooled(self, ref: str) -> psycopg.Connection:
        with self._api("look up the pooled service"):
            spec = self.client.api.inspect_service(ref).get("Spec") or {}
            where = self._tasks.running_at(ref)
        if where is None:
            raise BackendError(f"The task of pooled swarm service {ref[:12]} does not run")
        node, port = where
        self._advertised[ref] = node.advertised
        env = environment_of((spec.get("TaskTemplate") or {}).get("ContainerSpec") or {})
        instance_id = int((spec.get("Labels") or {}).get(INSTANCE_ID_LABEL, "0"))
        return self._login_pooled(ref, node.address, port, instance_id, env)

    def _client_host(self, ref: str) -> str:
        host = self._advertised.pop(ref, None)
        return host if host is not None else self.describe(ref).host or ""

    def _label(self, ref: str) -> str:
        return f"swarm service {ref[:12]}"

    # -- helpers ------------------------------------------------------------------------------

    def _refuse_if_in_use(self, ref: str, credentials: Credentials, instance_id: int) -> None:
        where = self._tasks.running_at(ref)
        if where is None:
            return  # nothing runs, so nobody is connected
        node, port = where
        if credentials.db_pwd:
            login, how = credentials, "with its credentials"
        else:
            # A token's delete brings no password: the image's superuser, whose password this
            # server derives (the manager's API cannot run a command in the task).
            admin_password = self._admin_password(instance_id)
            login, how = Credentials(BOOTSTRAP_USER, BOOTSTRAP_USER, admin_password), "as its superuser"
        try:
            sessions = count_other_sessions(node.address, port, login)
        except psycopg.Error as e:
            raise Conflict(
                f"Could not check the instance for open sessions {how} ({str(e).strip()}); "
                'delete with "force": true to remove it anyway.'
            ) from e
        if sessions:
            raise InUse(sessions)

    def _admin_password(self, instance_id: int) -> str:
        return self._pool_password(instance_id, BOOTSTRAP_USER)

    def _remove_quietly(self, service_id: str, why: str) -> None:
        try:
            self.client.services.get(service_id).remove()
        except docker.errors.NotFound:
            pass
        except (docker.errors.DockerException, requests.RequestException):
            log.exception("could not remove swarm service %s %s", service_id[:12], why)

    def _build_options(self) -> dict[str, Any]:
        """For the prepared image's build container on the manager's engine."""
        return dict(
            mem_limit=self.settings.memory_limit,
            nano_cpus=int(self.settings.cpu_limit * 1e9),
            security_opt=["no-new-privileges"],
        )


def _service_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", name)
