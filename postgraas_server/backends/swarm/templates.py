"""The swarm backend's templates: a builder on the manager's own engine, committed and pushed.

The manager's API cannot commit a task's container; only the engine of the task's node can. So a
template's builder is no service: it is a plain container of the prepared image on the manager's
own Docker engine (the API the backend talks to is that engine's; a drained manager runs no tasks,
and still runs containers), published on a host port of the manager and reached at the manager
node's address. It is made, frozen and removed by the docker backend's own code (ManagerEngine, a
DockerBackend on that engine). Its ref is ``container:<id>``, which no service id looks like.

``freeze`` commits it as the docker backend does, into ``<registry>/postgraas/template:<deployment>-<id>``,
and pushes that; the artifact is the pushed reference by digest, so every node pulls exactly that
image. A clone is a service of it (backend.py). ``drop_template`` removes the manager's image (left
while a container uses it, as on docker) and deletes the manifest through the registry's HTTP API.
The nodes that pulled the image keep their copy until it is pruned there; a registry keeps the
layers until its garbage collection.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any

import docker.errors

from ...backend_settings import DockerBackendSettings, SwarmBackendSettings
from ...errors import BackendError, BackendUnavailable
from ..contract import (
    Credentials,
    DatabaseSpec,
    FrozenTemplate,
    ManagedObject,
    ObjectDescription,
    ProvisionedDatabase,
)
from ..docker.backend import DockerBackend
from ..docker.templates import IMAGE_ID, REPOSITORY, TEMPLATE_DEPLOYMENT_LABEL, TEMPLATE_ID_LABEL, TemplateImages
from ..docker.templates import template_tag as docker_template_tag
from .registry_api import RegistryApi
from .service_image import PushRefused, push_image
from .services import Node, NodeBook

log = logging.getLogger(__name__)

BUILDER_PREFIX = "container:"
# On every builder container, so that its listing leaves out the containers of tasks (which carry
# the instance labels too) on a manager that is not drained.
BUILDER_LABEL = "postgraas.swarm.template_builder"


def builder_container(ref: str) -> str | None:
    """The container id of a builder's ref; None for a service's."""
    return ref.removeprefix(BUILDER_PREFIX) if ref.startswith(BUILDER_PREFIX) else None


class PushedTemplateImages(TemplateImages):
    """Template images committed into the registry's repository and pushed there."""

    # Else a clone's container would inherit it from the image, and pass for a builder.
    builder_labels = (BUILDER_LABEL,)

    def __init__(self, deployment: str, registry: RegistryApi) -> None:
        super().__init__(deployment, f"{registry.registry}/{REPOSITORY}")
        self.registry = registry

    def _publish(self, client: Any, image: Any, template_id: int) -> str:
        repository, tag = docker_template_tag(self.deployment, template_id, self.repository).rsplit(":", 1)
        try:
            return push_image(client, repository, tag)
        except PushRefused as e:
            raise BackendError(
                f"The registry {self.registry.registry} (registry) refused the push of the template image "
                f"{repository}:{tag}, which every node pulls its clones from: {e}. The builder runs on."
            ) from e

    def _artifact(self, listed: dict[str, Any]) -> str:
        pushed = (d for d in listed.get("RepoDigests") or [] if d.startswith(f"{self.repository}@"))
        # Not pushed (a server that stopped mid-freeze): the image id, which drop takes too.
        return next(pushed, str(listed["Id"]))

    def _discard(self, client: Any, image_id: str, artifact: str) -> None:
        super()._discard(client, image_id, artifact)
        try:
            self.registry.delete_manifest(*self.pushed_parts(artifact))
        except (BackendError, BackendUnavailable):
            log.exception("could not delete the pushed template %s again", artifact)

    def pushed_parts(self, artifact: str) -> tuple[str, str]:
        """The repository path in the registry and the digest of a pushed template's reference."""
        repository, _, digest = artifact.partition("@")
        if repository != self.repository or not IMAGE_ID.fullmatch(digest):
            raise BackendError(
                f"{artifact!r} is no template of this deployment in {self.repository}; it was left alone."
            )
        return repository.removeprefix(f"{self.registry.registry}/"), digest

    def is_ours(self, labels: dict[str, str]) -> bool:
        return labels.get(TEMPLATE_DEPLOYMENT_LABEL) == self.deployment and TEMPLATE_ID_LABEL in labels


class ManagerEngine(DockerBackend):
    """The Swarm manager's own Docker engine, holding the swarm backend's template builders as the
    docker backend holds instances, and their template images."""

    api_name = "The Swarm manager's Docker engine"
    api_host_name = "The Swarm manager's Docker engine"

    def __init__(
        self,
        swarm: SwarmBackendSettings,
        deployment: str,
        client_factory: Callable[[], Any],
        manager: Node,
        registry: RegistryApi,
    ) -> None:
        settings = DockerBackendSettings(
            type="docker",
            image=swarm.image,
            base_url=swarm.base_url,
            # Reached from the server at the manager node's address, not over the engine's loopback.
            bind_address="0.0.0.0",
            advertised_host=manager.advertised,
            probe_host=manager.address,
            api_timeout=swarm.api_timeout,
            labels={**swarm.labels, BUILDER_LABEL: "true"},
            memory_limit=swarm.memory_limit,
            cpu_limit=swarm.cpu_limit,
            pids_limit=swarm.pids_limit,
            ready_timeout=swarm.ready_timeout,
            prepare_image=True,
        )
        super().__init__(settings, deployment, client_factory)
        self._pushed = PushedTemplateImages(deployment, registry)
        self._templates = self._pushed

    def create_builder(self, spec: DatabaseSpec, image: str) -> ProvisionedDatabase:
        """A container of the prepared ``image`` (a reference by digest) for spec's tenant."""

        def pull() -> None:
            # The manager's copy went (a prune); the registry has it under that very digest.
            log.info("pulling %s for a template's builder", image)
            self.client.images.pull(image)

        made = self._run_tenant_container(spec, image, pull, " as a template's builder")
        return replace(made, ref=BUILDER_PREFIX + made.ref)

    def drop_template(self, artifact: str) -> None:
        if IMAGE_ID.fullmatch(artifact):
            super().drop_template(artifact)  # committed, never pushed
            return
        name, digest = self._pushed.pushed_parts(artifact)
        with self._api("look up the template image"):
            try:
                local: str | None = self.client.images.get(artifact).id
            except docker.errors.ImageNotFound:
                local = None
        if local is not None:
            # Checks it is this deployment's; one a container still uses stays, for the next drop.
            super().drop_template(local)
        labels = self._pushed.registry.image_labels(name, digest)
        if labels is None:
            return
        if not self._pushed.is_ours(labels):
            raise BackendError(f"The image {artifact} is no template of this deployment; it was left alone.")
        self._pushed.registry.delete_manifest(name, digest)
        log.info("deleted the pushed template %s from the registry", artifact)

    def _listed_labels(self) -> list[str]:
        return [*super()._listed_labels(), f"{BUILDER_LABEL}=true"]


class SwarmTemplates:
    """The swarm backend's template builders and templates, on its manager's engine. ``api`` is the
    backend's translation of the docker SDK's errors."""

    def __init__(
        self,
        settings: SwarmBackendSettings,
        deployment: str,
        client: Callable[[], Any],
        nodes: NodeBook,
        api: Callable[[str], AbstractContextManager[None]],
    ) -> None:
        self.settings = settings
        self.deployment = deployment
        self._client = client
        self._nodes = nodes
        self._api = api
        self._engine: ManagerEngine | None = None
        self._lock = threading.Lock()

    def engine(self) -> ManagerEngine:
        """The manager's engine, found at its node's address once per process."""
        with self._lock:
            if self._engine is not None:
                return self._engine
        if self.settings.registry is None:
            raise BackendError("The swarm backend keeps templates only with a registry (registry).")
        with self._api("find the manager's node"):
            client = self._client()
            node_id = str((client.info().get("Swarm") or {}).get("NodeID") or "")
            manager = self._nodes.get(client, node_id) if node_id else None
        if manager is None:
            raise BackendError("The Swarm manager does not say which node it is, so no builder can be reached on it.")
        registry = RegistryApi(self.settings.registry, self.settings.api_timeout)
        engine = ManagerEngine(self.settings, self.deployment, self._client, manager, registry)
        with self._lock:
            self._engine = self._engine or engine
            return self._engine

    # -- templates --------------------------------------------------------------------------

    def freeze(self, ref: str, credentials: Credentials, template_id: int) -> FrozenTemplate:
        container = builder_container(ref)
        if container is None:
            raise BackendError(
                f"Swarm service {ref[:12]} cannot become a template: only a template's builder can, a container on "
                "the manager's engine (the manager's API cannot commit a task's container)."
            )
        return self.engine().freeze(container, credentials, template_id=template_id)

    def drop(self, artifact: str) -> None:
        self.engine().drop_template(artifact)

    def list(self) -> dict[int, str]:
        return self.engine().list_templates()

    # -- builders, as the instances they are until their freeze --------------------------------

    def delete(self, container: str, credentials: Credentials, instance_id: int, force: bool) -> None:
        self.engine().delete(container, credentials, instance_id=instance_id, force=force)

    def exists(self, container: str) -> bool:
        return self.engine().exists(container)

    def describe(self, container: str) -> ObjectDescription:
        return self.engine().describe(container)

    def list_builders(self) -> Iterator[ManagedObject]:
        for found in self.engine().list_objects():
            yield replace(found, ref=BUILDER_PREFIX + found.ref)
