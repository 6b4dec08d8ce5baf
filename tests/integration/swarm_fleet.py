"""The Docker Swarm of three engines scripts/swarm.sh brings up on this machine, each in a network
namespace of its own (a drained manager, two workers labelled for databases, a registry), as
tests see it: its state file, its engines, and a client in a namespace of its own."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker

SWARM_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "swarm.sh"
STATE_FILE = Path("/run/pgswarm/swarm.json")
# What a swarm instance's service is constrained to: the workers' label.
DB_CONSTRAINT = "node.labels.postgraas==db"


@dataclass(frozen=True)
class Fleet:
    manager: str
    workers: dict[str, dict[str, str]]
    registry: str
    image: str
    client_netns: str
    slots_resource: str
    tiny_resource: str

    @classmethod
    def read(cls) -> Fleet:
        state = json.loads(STATE_FILE.read_text())
        return cls(**{key: state[key] for key in cls.__dataclass_fields__})

    def engine(self, worker: str) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.workers[worker]["base_url"], timeout=30)

    def manager_client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.manager, timeout=30)

    def node_state(self, name: str) -> str:
        """The manager's word on the node ``name`` (ready, down ...)."""
        nodes = self.manager_client().api.nodes(filters={"name": name})
        return str(nodes[0]["Status"]["State"]) if nodes else "absent"

    def worker_at(self, address: str) -> str:
        return next(name for name, worker in self.workers.items() if worker["address"] == address)

    def kill_engine(self, worker: str) -> None:
        script("kill-engine", worker)

    def start_engine(self, worker: str) -> None:
        script("start-engine", worker, timeout=120)

    def client_query(self, host: str, port: int, user: str, password: str, dbname: str, query: str) -> str:
        """``query``'s answer, asked by psql from the client namespace (another host, as it were)."""
        result = subprocess.run(
            ["ip", "netns", "exec", self.client_netns, "psql", "-tAX", "-h", host, "-p", str(port), "-U", user,
             "-d", dbname, "-c", query],
            env={"PGPASSWORD": password, "PGCONNECT_TIMEOUT": "5", "PATH": "/usr/bin:/bin"},
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()


def script(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SWARM_SCRIPT), *args], capture_output=True, text=True, timeout=timeout, check=True)


def running_containers(engine: docker.DockerClient, label: str) -> list[Any]:
    return list(engine.containers.list(filters={"label": label}))


def services_of(fleet: Fleet, instance_name: str) -> list[Any]:
    return list(fleet.manager_client().services.list(filters={"label": f"postgraas.name={instance_name}"}))
