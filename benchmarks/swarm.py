"""Issue 17's benchmark, on the swarm of three Docker engines scripts/swarm.sh brings up here.

Times, side by side in one run:
  1. the swarm backend cold: POST -> first ``select 1``, each deleted before the next; after each
     run, a hand-made ``docker service create`` of the same registry image (the official image's
     contract), its task polled for its port and a login tried every 20 ms;
  2. the docker backend on one engine (this machine's), cold;
  3. the swarm backend with a warm pool: POST -> 201;
  4. a burst of creates at once on the swarm backend: wall time until all are ready, failures, and
     how they split over the two workers.
It measures, it does not assert: the exit code is 0 whatever the figures.

    .venv/bin/python benchmarks/swarm.py [--runs 10] [--burst 20] [--pool-size 4] [--keep-swarm]
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import docker
import psycopg
import requests
from docker import types

from benchmarks import infra
from benchmarks.alternatives import Peer
from benchmarks.infra import Cleanup, PostgraasServer, say
from benchmarks.measure import Created, Durability, create_and_query, delete_instance, measure_creates
from benchmarks.report import percentile

SWARM_SCRIPT = infra.REPO_ROOT / "scripts" / "swarm.sh"
STATE_FILE = Path("/run/pgswarm/swarm.json")
DB_CONSTRAINT = "node.labels.postgraas==db"
TARGET_WARM_201 = 0.015
TARGET_BURST_S = 12.0
TARGET_SPLIT = 0.6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/swarm.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="cold creates per path (default 10)")
    parser.add_argument("--burst", type=int, default=20, help="concurrent creates (default 20)")
    parser.add_argument("--pool-size", type=int, default=4, help="pool_size of the warm swarm backend (default 4)")
    parser.add_argument("--keep-swarm", action="store_true", help="leave the swarm up (it is taken down otherwise)")
    parser.add_argument("--json", type=Path, default=infra.REPO_ROOT / "benchmarks" / "results" / "swarm.json")
    args = parser.parse_args(argv)
    cleanup = Cleanup()
    try:
        results = run(args, cleanup)
    finally:
        for problem in cleanup.run():
            say(f"cleanup: {problem}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(table(results))
    return 0


def run(args: argparse.Namespace, cleanup: Cleanup) -> dict[str, Any]:
    started = time.perf_counter()
    subprocess.run([str(SWARM_SCRIPT), "up"], check=True, capture_output=True, timeout=600)
    if not args.keep_swarm:
        cleanup.add("swarm down", lambda: subprocess.run([str(SWARM_SCRIPT), "down"], check=True, timeout=300))
    fleet = json.loads(STATE_FILE.read_text())
    say(f"swarm up in {time.perf_counter() - started:.1f} s")
    manager = docker.DockerClient(base_url=fleet["manager"], timeout=60)
    cleanup.add("bench services", lambda: remove_services(manager))
    home = Path(infra.make_scratch_root(Path("/tmp")))
    server = PostgraasServer(home, server_config(home, fleet, args.pool_size), workers=2).start()
    cleanup.add("server", server.stop)
    cleanup.add("docker containers", lambda: infra.remove_run_containers(docker.from_env()))
    handmade = Peer("docker service create", lambda i: hand_made_service(manager, fleet))
    warm_up(server, handmade)
    handmade.series.samples.clear()
    durability = Durability()
    results: dict[str, Any] = {"runs": args.runs, "workers": {w: v["address"] for w, v in fleet["workers"].items()}}
    results["swarm_cold"] = measure_creates(server, "swarm", args.runs, durability, "swarm cold", alongside=[handmade])
    results["hand_made_service"] = handmade.series.as_dict()
    results["docker_cold"] = measure_creates(server, "docker", args.runs, durability, "docker cold")
    results["swarm_warm"] = measure_creates(
        server, "swarmwarm", args.runs, durability, "swarm warm", pool_size=args.pool_size
    )
    results["burst"] = burst(server, args.burst, fleet)
    # The pooled services outlive the server on purpose: removed by the run's label.
    server.stop()
    remove_services(manager)
    return results


def server_config(home: Path, fleet: dict, pool_size: int) -> dict:
    swarm = {
        "type": "swarm",
        "base_url": fleet["manager"],
        "image": fleet["image"],
        "registry": fleet["registry"],
        "constraints": [DB_CONSTRAINT],
        "slots_resource": fleet["slots_resource"],
        "labels": infra.container_labels(),
    }
    docker_backend = {
        "type": "docker",
        "image": infra.DEFAULT_IMAGE,
        "advertised_host": "127.0.0.1",
        "bind_address": "127.0.0.1",
        "labels": infra.container_labels(),
    }
    return {
        "metadb": {"url": f"sqlite:///{home / 'meta.sqlite'}"},
        "backends": {"swarm": swarm, "swarmwarm": {**swarm, "pool_size": pool_size}, "docker": docker_backend},
        "application": {"default_backend": "swarm"},
    }


def warm_up(server: PostgraasServer, handmade: Peer) -> None:
    """The images on every node first: a pull is not what is compared (Swarm spreads, so two of each)."""
    say("warming up: prepared image pushed, both images pulled on both workers")
    for backend in ("swarm", "swarm", "docker"):
        created = create_and_query(server.url, backend, Durability())
        if created.error:
            raise RuntimeError(f"warm-up create on {backend} failed: {created.error}")
    for i in range(2):
        handmade.take(i, 2)
    for created in server_instances(server):
        delete_instance(server.url, created)


def server_instances(server: PostgraasServer) -> list[Created]:
    rows = requests.get(f"{server.url}/postgraas_instances", timeout=30).json()
    return [Created(0.0, instance_id=row["id"]) for row in rows if row["status"] == "ready"]


def hand_made_service(manager: docker.DockerClient, fleet: dict) -> float:
    """What a user would do by hand: a service of the image, its port found through the manager, a
    login tried every 20 ms; seconds from the create call to the first query."""
    password = secrets.token_urlsafe(12)
    started = time.perf_counter()
    service = manager.services.create(
        fleet["image"],
        name=f"bench-handmade-{secrets.token_hex(3)}",
        env=[f"POSTGRES_PASSWORD={password}", "POSTGRES_USER=u", "POSTGRES_DB=d"],
        labels=infra.container_labels(),
        constraints=[DB_CONSTRAINT],
        restart_policy=types.RestartPolicy(condition="none"),
        endpoint_spec=types.EndpointSpec(
            mode="dnsrr", ports=[{"Protocol": "tcp", "TargetPort": 5432, "PublishMode": "host"}]
        ),
        stop_signal="SIGINT",
    )
    try:
        address, port = _task_address(manager, service.id, fleet)
        while True:
            try:
                with psycopg.connect(host=address, port=port, user="u", password=password, dbname="d") as conn:
                    conn.execute("select 1")
                return time.perf_counter() - started
            except psycopg.OperationalError:
                if time.perf_counter() - started > 120:
                    raise
                time.sleep(0.02)
    finally:
        service.remove()


def _task_address(manager: docker.DockerClient, service_id: str, fleet: dict) -> tuple[str, int]:
    nodes = {n["ID"]: n["Status"]["Addr"] for n in manager.api.nodes()}
    deadline = time.perf_counter() + 120
    while time.perf_counter() < deadline:
        for task in manager.api.tasks(filters={"service": service_id}):
            ports = ((task.get("Status") or {}).get("PortStatus") or {}).get("Ports") or []
            if task["Status"]["State"] == "running" and ports:
                return nodes[task["NodeID"]], int(ports[0]["PublishedPort"])
        time.sleep(0.02)
    raise TimeoutError("the hand-made service's task did not run within 120 s")


def burst(server: PostgraasServer, size: int, fleet: dict) -> dict[str, Any]:
    barrier = threading.Barrier(size)
    with ThreadPoolExecutor(max_workers=size) as pool:
        made = list(pool.map(lambda _: create_and_query(server.url, "swarm", Durability(), barrier), range(size)))
    wall = max(c.finished for c in made) - min(c.started for c in made)
    workers = {v["address"]: w for w, v in fleet["workers"].items()}
    split = Counter(workers.get(c.host or "", c.host or "?") for c in made if not c.error)
    with ThreadPoolExecutor(max_workers=size) as pool:
        delete_errors = [e for e in pool.map(lambda c: delete_instance(server.url, c), made) if e]
    return {
        "size": size,
        "wall_s": wall,
        "failures": [c.error for c in made if c.error],
        "split": dict(split),
        "delete_errors": delete_errors,
    }


def remove_services(manager: docker.DockerClient) -> None:
    for service in manager.services.list(filters={"label": infra.run_filter()}):
        service.remove()


def table(results: dict[str, Any]) -> str:
    def p(key: str, field: str, q: float) -> float | None:
        return percentile(results[key][field]["samples"] if field else results[key]["samples"], q)

    cold, hand = p("swarm_cold", "post_to_query", 50), p("hand_made_service", "", 50)
    docker_cold = p("docker_cold", "post_to_query", 50)
    warm = p("swarm_warm", "post_to_201", 50)
    burst_ = results["burst"]
    split = sorted(burst_["split"].values(), reverse=True)
    share = split[0] / sum(split) if split else None
    lines = [
        "| path | p50 | p95 | target | verdict |",
        "| --- | --- | --- | --- | --- |",
        _row("swarm cold POST -> first query", cold, p("swarm_cold", "post_to_query", 95),
             f"<= 1.0x hand-made ({_ms(hand)})", cold is not None and hand is not None and cold <= hand),
        _row("hand-made docker service create -> first query", hand, p("hand_made_service", "", 95), "", None),
        _row("docker backend cold (one engine) POST -> first query", docker_cold,
             p("docker_cold", "post_to_query", 95), "", None),
        _row("swarm warm POST -> 201", warm, p("swarm_warm", "post_to_201", 95), "<= 15 ms",
             warm is not None and warm <= TARGET_WARM_201),
        f"| burst of {burst_['size']}: all ready | {burst_['wall_s']:.2f} s | | <= 12 s, none failed, <= 60/40 | "
        f"{_verdict(burst_['wall_s'] <= TARGET_BURST_S and not burst_['failures'] and (share or 1) <= TARGET_SPLIT)} |",
        f"\nburst split over the workers: {burst_['split']}; failures: {len(burst_['failures'])}",
    ]  # fmt: skip
    return "\n".join(lines)


def _row(name: str, p50: float | None, p95: float | None, target: str, met: bool | None) -> str:
    return f"| {name} | {_ms(p50)} | {_ms(p95)} | {target} | {_verdict(met)} |"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _verdict(met: bool | None) -> str:
    return "" if met is None else "pass" if met else "MISS"


if __name__ == "__main__":
    sys.exit(main())
