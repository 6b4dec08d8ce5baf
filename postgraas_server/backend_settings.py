"""The sections of the configuration that describe a backend, one class per backend ``type``."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

MEMORY_SIZE = r"^[0-9]+[bkmg]?$"
# What Swarm takes: a node or engine attribute, == or !=, a value.
SWARM_CONSTRAINT = re.compile(
    r"(node\.(id|hostname|role|platform\.os|platform\.arch|labels\.[A-Za-z0-9_.-]+)"
    r"|engine\.labels\.[A-Za-z0-9_.-]+)\s*(==|!=)\s*[^\s=!]+"
)


def _swarm_constraint(value: str) -> str:
    if not SWARM_CONSTRAINT.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a Swarm placement constraint: ATTRIBUTE==VALUE or ATTRIBUTE!=VALUE, where "
            "ATTRIBUTE is node.id, node.hostname, node.role, node.platform.os, node.platform.arch, "
            "node.labels.NAME or engine.labels.NAME"
        )
    return value


class _BackendSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Seconds to wait for the first real login to a new database.
    ready_timeout: float = Field(default=60.0, gt=0)
    # At most this many instances in the backend (all owners); None: no limit. Beyond: 503.
    max_instances: int | None = Field(default=None, ge=0)
    # Instances kept made ahead, with throwaway names and passwords; a create takes one and only
    # renames it and sets its password. They count towards max_instances.
    pool_size: int = Field(default=0, ge=0, le=100)
    advertised_host: str = "localhost"
    # Where the server itself connects to prove readiness; defaults to advertised_host.
    probe_host: str | None = None


class DockerBackendSettings(_BackendSection):
    """The docker backend: one container of ``image`` per instance."""

    type: Literal["docker"] = "docker"
    image: str = "postgres:16"
    # None: the environment's Docker settings (DOCKER_HOST, else the local socket).
    base_url: str | None = None
    bind_address: str = "0.0.0.0"
    # Seconds a single Docker API call may take before the engine counts as unreachable.
    api_timeout: float = Field(default=30.0, gt=0)
    # Extra labels put on every container (e.g. to tell environments apart).
    labels: dict[str, str] = Field(default_factory=dict)
    # Per container: memory (docker units: 512m, 2g), CPUs, processes, /dev/shm (postgres
    # uses it for parallel queries; Docker's 64m default is too small for them).
    memory_limit: str = Field(default="1g", pattern=MEMORY_SIZE)
    cpu_limit: float = Field(default=1.0, gt=0, le=256)
    pids_limit: int = Field(default=256, ge=32)
    shm_size: str = Field(default="256m", pattern=MEMORY_SIZE)
    # Run instances from an image made once per engine from ``image`` with its cluster initialised, so a
    # create skips initdb and the entrypoint's restart. False, or an image that cannot be prepared: ``image``
    # as it is, initialised by every container.
    prepare_image: bool = True


class ClusterBackendSettings(_BackendSection):
    """The cluster backend: a role and a database per instance inside an existing server."""

    type: Literal["cluster"]
    # A libpq connection string or URI for the admin login; or the 2.x keys below.
    dsn: str | None = None
    host: str | None = None
    port: int = 5432
    database: str = "postgres"
    username: str | None = None
    password: str | None = None
    # 2.x: Azure-style logins as user@server.
    server: str | None = None
    # What clients are told; default: the admin connection's host and port.
    advertised_host: str | None = None  # type: ignore[assignment]
    advertised_port: int | None = None
    ready_timeout: float = Field(default=10.0, gt=0)
    # "first": a tenant login proves the server lets tenants in on the backend's first create in
    # a process; "every": on each create, for a pg_hba that decides per database or role.
    login_proof: Literal["first", "every"] = "first"
    # The databases a request's "template" may name, designated by the cluster's admin: never
    # template1 (open to every role) nor a tenant's database (a tenant can flag its own as a template).
    templates: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")]] = Field(default_factory=list)
    # Seconds an admin statement may wait for a lock, and run, before it is given up (a delete is
    # then retried by the reaper): a tenant's open transaction must not stall deletes and the reaper.
    lock_timeout: float = Field(default=5.0, gt=0)
    statement_timeout: float = Field(default=300.0, gt=0)
    # Revoke CONNECT and TEMPORARY from PUBLIC on the cluster's postgres and template1 databases
    # (and the admin database), so a tenant reaches only its own. False where other users of the
    # cluster rely on PUBLIC's default rights there (see docs/tenants.md).
    close_shared_databases: bool = True
    # Tenants may create databases of their own (CREATEDB), as test runners do beside the given one.
    # Off by default: on a shared server the admin decides. The databases a tenant made are dropped
    # with its instance (docs/test-suites.md).
    tenant_createdb: bool = False

    @model_validator(mode="after")
    def _admin_login(self) -> ClusterBackendSettings:
        if self.dsn is None and not (self.host and self.username):
            raise ValueError("give either 'dsn' or 'host' and 'username' for the admin connection")
        if any(name.lower() == "template1" for name in self.templates):
            raise ValueError(
                "templates: template1 is open to every role of the cluster; name a database of the admin's"
            )
        return self


class LocalBackendSettings(_BackendSection):
    """The local backend: a postgres cluster per instance, run as processes on this host."""

    type: Literal["local"]
    # None: `pg_config --bindir`, else the newest /usr/lib/postgresql/*/bin.
    bin_dir: str | None = None
    # None: /var/lib/postgraas when the server runs as root (run_as_user must reach it; a
    # checkout under /root would not do), else ./postgraas-data.
    data_root: str | None = None
    listen_address: str = "127.0.0.1"
    # The OS user postgres runs as when the server runs as root (postgres refuses root).
    run_as_user: str = "postgres"
    port_min: int = Field(default=20000, ge=1024, le=65535)
    port_max: int = Field(default=29999, ge=1024, le=65535)
    ready_timeout: float = Field(default=30.0, gt=0)
    # "first": a tenant login proves the copies of a cluster (the initdb one, a template) let tenants
    # in, on the first in a process; "every": on each create.
    login_proof: Literal["first", "every"] = "first"
    # How many nice steps below the API the programs that copy, check on and remove instances run
    # (not the servers), so that its answers do not wait for a core behind them. 0: as the API.
    nice: int = Field(default=10, ge=0, le=19)

    @model_validator(mode="after")
    def _port_range(self) -> LocalBackendSettings:
        if self.port_min > self.port_max:
            raise ValueError("port_min must not be above port_max")
        return self


class SwarmBackendSettings(_BackendSection):
    """The swarm backend: one Docker Swarm service, of one task, per instance, placed by Swarm."""

    type: Literal["swarm"]
    # A manager's Docker API (the docker SDK's base_url); None: the environment's Docker settings.
    base_url: str | None = None
    image: str = "postgres:16"
    api_timeout: float = Field(default=30.0, gt=0)
    # host:port of a registry every node pulls from: the prepared image is pushed there once and
    # services name it by digest. None: ``image`` is used as it is, so it must be on every node.
    registry: str | None = Field(default=None, pattern=r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$")
    prepare_image: bool = True
    # Swarm placement constraints, e.g. "node.labels.postgraas==db".
    constraints: list[Annotated[str, AfterValidator(_swarm_constraint)]] = Field(default_factory=list)
    # Labels to spread instances over, in order ("node.labels.zone"). Empty: Swarm's own spread,
    # over nodes by their number of tasks.
    placement_preferences: list[Annotated[str, Field(pattern=r"^(node|engine)\.labels\.[A-Za-z0-9_.-]+$")]] = Field(
        default_factory=list
    )
    cpu_reservation: float | None = Field(default=None, gt=0, le=256)
    memory_reservation: str | None = Field(default=None, pattern=MEMORY_SIZE)
    cpu_limit: float = Field(default=1.0, gt=0, le=256)
    memory_limit: str = Field(default="1g", pattern=MEMORY_SIZE)
    pids_limit: int = Field(default=256, ge=32)
    # A generic resource every node offers a count of (dockerd --node-generic-resource NAME=N):
    # each instance takes one, so a node holds at most N.
    slots_resource: str | None = Field(default=None, pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
    # Seconds Swarm may take to place the task before the create answers 503 with Swarm's reason.
    placement_timeout: float = Field(default=15.0, gt=0)
    # The first start on a node pulls the image; a login has to wait for that.
    ready_timeout: float = Field(default=90.0, gt=0)
    labels: dict[str, str] = Field(default_factory=dict)
    # The node label whose value clients are told instead of the node's address (for NAT'd nodes).
    advertise_label: str = "postgraas.advertise"

    @model_validator(mode="after")
    def _prepared_image_needs_a_registry(self) -> SwarmBackendSettings:
        if self.prepare_image and self.registry is None:
            raise ValueError(
                "prepare_image needs registry: the prepared image reaches the nodes only through one. Set registry, "
                "or prepare_image: false to run image as it is (its tenant's password is then in the service's "
                "spec, which anyone with the manager's API can read)"
            )
        return self


BackendSettings = Annotated[
    DockerBackendSettings | ClusterBackendSettings | LocalBackendSettings | SwarmBackendSettings,
    Field(discriminator="type"),
]
BACKEND_TYPES = ("docker", "cluster", "local", "swarm")
