"""Issue 7's benchmark: how long from "I want a database" to the first query, with Postgraas and without.

Times, on this machine and in this one process:
  1. per Postgraas backend, POST /postgraas_instances -> first ``select 1``, "cold" (config as shipped) and
     "warm" (``pool_size`` in each backend's config; each run starts with a full pool);
  2. the peers a user would pick instead: testcontainers' PostgresContainer, a plain ``docker run``,
     a bare ``initdb`` + ``pg_ctl start``, and in the existing cluster a hand-made CREATE ROLE +
     CREATE DATABASE over an open admin connection;
  3. a burst of concurrent creates per backend;
  4. GET /postgraas_instances with many instances in the meta db.
It measures, it does not assert: the exit code is 0 whatever the figures, non-zero only when it could not run.

    .venv/bin/python benchmarks/bench.py [--quick] [--modes cold,warm] [--backends docker,cluster,local] ...
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    # Run as a file: make the repository root importable, so that `benchmarks.*` resolves.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import docker  # noqa: E402
import docker.errors  # noqa: E402
import psycopg  # noqa: E402

from benchmarks import alternatives, infra, machine, measure, report  # noqa: E402
from benchmarks.infra import REPO_ROOT, CannotRun, say  # noqa: E402

BACKENDS = ("docker", "cluster", "local")
MODES = ("cold", "warm")
QUICK = {"runs": 2, "burst": 3, "list_rows": 100, "list_requests": 20}
FULL = {"runs": 20, "burst": 20, "list_rows": 1000, "list_requests": 200}


def _csv(allowed: tuple[str, ...]):
    def parse(value: str) -> list[str]:
        items = [item.strip() for item in value.split(",") if item.strip()]
        unknown = [item for item in items if item not in allowed]
        if unknown or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)} (comma-separated)")
        return [item for item in allowed if item in items]

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/bench.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="CI size: 2 runs, burst of 3, list of 100 x 20 requests.")
    parser.add_argument("--runs", type=int, help="creates per path (default 20; --quick 2)")
    parser.add_argument("--burst", type=int, help="concurrent creates per backend (default 20; --quick 3); 0 skips")
    parser.add_argument("--list-rows", type=int, help="instances in the meta db (default 1000; --quick 100); 0 skips")
    parser.add_argument("--list-requests", type=int, help="timed GET requests (default 200; --quick 20)")
    parser.add_argument("--modes", type=_csv(MODES), default=list(MODES), help="cold,warm (default both)")
    parser.add_argument("--backends", type=_csv(BACKENDS), default=list(BACKENDS), help="default: all three")
    parser.add_argument(
        "--scratch",
        type=Path,
        default=Path("/var/tmp"),
        help="where local clusters, peers' data and the cluster backend's server live (default /var/tmp: "
        "on these machines file creation in /tmp slowed down 25-fold after a day of test runs)",
    )
    parser.add_argument(
        "--skip-peers", action="store_true", help="do not time testcontainers, docker run, initdb, CREATE DATABASE"
    )
    parser.add_argument("--pool-size", type=int, default=4, help="warm mode: pool_size of each backend (default 4)")
    parser.add_argument(
        "--pool-timeout", type=float, default=120, help="warm mode: seconds to wait for a full pool (default 120)"
    )
    parser.add_argument("--durability", choices=["ephemeral"], help='send "durability" with every create')
    parser.add_argument("--image", default=infra.DEFAULT_IMAGE, help=f"postgres image (default {infra.DEFAULT_IMAGE})")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers of each server (default 2)")
    results_dir = REPO_ROOT / "benchmarks" / "results"
    parser.add_argument("--json", type=Path, default=results_dir / "latest.json", help="where to write all figures")
    parser.add_argument("--png", type=Path, default=results_dir / "latest.png", help="where to draw the chart")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.runs < 1 or args.burst < 0 or args.list_rows < 0 or args.list_requests < 1 or args.pool_size < 1:
        parser.error("--runs, --list-requests and --pool-size must be at least 1; --burst and --list-rows at least 0")
    return args


@dataclass
class Run:
    args: argparse.Namespace
    cleanup: infra.Cleanup = field(default_factory=infra.Cleanup)
    results: dict = field(default_factory=dict)
    client: docker.DockerClient | None = None
    bin_dir: Path | None = None
    root: Path | None = None
    pg: infra.ThrowawayPostgres | None = None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # There is no registry to pull Ryuk from, and this script removes its containers itself.
    os.environ["TESTCONTAINERS_RYUK_DISABLED"] = "true"
    run = Run(args)
    run.results = {
        "run_id": infra.RUN_ID,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "notes": [],
    }
    outcome: list[int] = []
    status = infra.guarded(
        lambda: outcome.append(benchmark(run)),
        run.cleanup,
        run.results,
        lambda problems: infra.leftovers(run.client, run.root, problems),
    )
    status = status or (outcome[0] if outcome else 0)
    if status in (0, 1) and "postgraas" in run.results:
        finish(run)
    return status


def benchmark(run: Run) -> int:
    args = run.args
    prepare(run)
    run.results["machine"] = machine_info(run)
    creates_before, cpu_before = machine.time_file_creates(run.root), machine.time_cpu()
    durability = measure.Durability(args.durability)
    run.results["postgraas"], run.results["burst"] = {}, {}
    peers = {} if args.skip_peers else make_peers(run)
    if peers and "cold" in args.modes:
        run.results["notes"].append(
            "each cold path alternates run by run with its peers, so that both meet the machine in the same state"
        )
    for mode in args.modes:
        section, bursts = measure_mode(run, mode, durability, peers if mode == "cold" else {})
        run.results["postgraas"][mode] = section
        if bursts:
            run.results["burst"][mode] = bursts
    run.results["durability"] = durability.as_dict()
    if peers:
        run.results["peers"] = measure_peers(run, peers)
    if args.list_rows:
        run.results["list"] = measure_list(run)
    creates_after, cpu_after = machine.time_file_creates(run.root), machine.time_cpu()
    run.results["machine"]["file_creates_500_s"] = {"before": creates_before, "after": creates_after}
    run.results["machine"]["pbkdf2_4096_s"] = {"before": cpu_before, "after": cpu_after}
    run.results["notes"].append(
        f"the disk made 500 small files in {creates_before * 1000:.0f} ms before the run and "
        f"{creates_after * 1000:.0f} ms after it (the local backend's cold path copies about 1,270)"
    )
    run.results["notes"].append(
        f"one PBKDF2-SHA256 of 4096 iterations (a SCRAM derivation) took {cpu_before * 1000:.2f} ms of CPU "
        f"before the run and {cpu_after * 1000:.2f} ms after it: the shared machine's speed of the moment"
    )
    cold = run.results["postgraas"].get("cold")
    return 1 if cold and cold["status"] != "ok" else 0


def prepare(run: Run) -> None:
    """Check what is needed before starting anything, then make the scratch dir and the cluster's server."""
    from postgraas_server.backends.local import find_bin_dir
    from postgraas_server.errors import BackendUnavailable

    args = run.args
    try:
        run.bin_dir = find_bin_dir(None)
    except BackendUnavailable as e:
        if {"cluster", "local"} & set(args.backends):
            raise CannotRun(f"{e} (the cluster and local backends need them; see --backends)") from e
    if "docker" in args.backends:
        run.client = infra.require_docker(args.image)
        if removed := infra.remove_dead_runs_containers(run.client):
            say(f"removed {len(removed)} container(s) left by earlier runs that died: {', '.join(removed)}")
        client = run.client
        run.cleanup.add("remove this run's containers", lambda: infra.remove_run_containers(client))
    run.root = root = infra.make_scratch_root(args.scratch)
    run.cleanup.add(f"remove {root}", lambda: shutil.rmtree(root, ignore_errors=True))
    bin_dir = run.bin_dir
    run.cleanup.add("stop postgres processes", lambda: infra.stop_postgres_under(root, bin_dir))
    if "cluster" in args.backends:
        run.pg = infra.ThrowawayPostgres(root / "pg", run.bin_dir)
        run.cleanup.add("stop the cluster backend's server", run.pg.stop)
        run.pg.start()
        run.pg.check()
        say(f"throwaway PostgreSQL for the cluster backend on port {run.pg.port}")
        marked = "marked" if run.pg.base_marked else "could not mark"
        run.results["notes"].append(
            f"the cluster backend's throwaway server: {marked} its base/ with chattr +T (FS_TOPDIR_FL), as "
            "docs/backends.md advises for a cluster serving Postgraas on ext4; the CREATE DATABASE peer runs on it too"
        )


def backends_config(run: Run, mode: str, pool_size: int | None) -> dict:
    configs: dict[str, dict] = {}
    for name in run.args.backends:
        if name == "docker":
            config = {
                "type": "docker",
                "image": run.args.image,
                "advertised_host": "127.0.0.1",
                "bind_address": "127.0.0.1",
                "labels": infra.container_labels(),
            }
        elif name == "cluster":
            config = run.pg.backend_config()
        else:
            # Own data_root per server: a server never sees another's instances as orphans.
            config = {"type": "local", "data_root": str(run.root / f"l{mode[0]}"), "advertised_host": "127.0.0.1"}
        if pool_size:
            config["pool_size"] = pool_size
        configs[name] = config
    return configs


def server_config(home: Path, backends: dict, lifecycle: dict | None = None) -> dict:
    return {
        "metadb": {"url": f"sqlite:///{home / 'meta.sqlite'}"},
        "backends": backends,
        "application": {"default_backend": next(iter(backends))},
        "lifecycle": lifecycle or {},
    }


def redacted(config: dict) -> dict:
    return {
        **config,
        "backends": {n: {**b, "password": "***"} if "password" in b else b for n, b in config["backends"].items()},
    }


def measure_mode(
    run: Run, mode: str, durability: measure.Durability, peers: dict[str, dict[str, alternatives.Peer]]
) -> tuple[dict, dict]:
    args = run.args
    pool_size = args.pool_size if mode == "warm" else None
    config = server_config(run.root / f"s{mode[0]}", backends_config(run, mode, pool_size))
    section: dict = {"status": "ok", "error": None, "pool_size": pool_size, "server_config": redacted(config)}
    server = infra.PostgraasServer(run.root / f"s{mode[0]}", config, args.workers)
    run.cleanup.add(f"stop the {mode} server", server.stop)
    try:
        server.start()
    except infra.ConfigRefused as e:
        if mode == "warm" and "pool_size" in str(e):
            section.update(status="unsupported", error=f"the server does not accept pool_size yet: {e}")
        else:
            section.update(status="error", error=f"the server refused its configuration: {e}")
        say(f"{mode} mode not measured: {section['error']}")
        return section, {}
    except RuntimeError as e:
        section.update(status="error", error=str(e))
        say(f"{mode} mode not measured: {e}")
        return section, {}
    say(f"{mode} server at {server.url}")
    section["backends"] = {}
    measured = list(args.backends)
    for backend in measured:
        section["backends"][backend] = measure.measure_creates(
            server,
            backend,
            args.runs,
            durability,
            f"{mode} {backend}",
            pool_size,
            args.pool_timeout,
            alongside=list(peers.get(backend, {}).values()),
        )
    bursts = {}
    for backend in measured if args.burst else ():
        if pool_size:
            measure.wait_for_pool(server, backend, pool_size, args.pool_timeout)
        bursts[backend] = burst = measure.measure_burst(server, backend, args.burst, durability)
        say(f"{mode} {backend} burst of {args.burst}: {burst['wall_s']:.2f} s, {burst['failures']} failed")
    server.stop()
    section["left_by_server"] = sweep(run, run.root / f"l{mode[0]}")
    return section, bursts


def sweep(run: Run, local_data_root: Path) -> dict:
    """What a stopped server left running (pooled instances, say) must not load the machine during later paths."""
    containers = infra.remove_run_containers(run.client) if run.client else []
    processes = infra.pids_mentioning(str(local_data_root))
    infra.stop_postgres_under(local_data_root, run.bin_dir)
    if containers or processes:
        say(f"removed what the stopped server left: {len(containers)} container(s), {len(processes)} process(es)")
    return {"containers": len(containers), "local_processes": len(processes)}


def make_peers(run: Run) -> dict[str, dict[str, alternatives.Peer]]:
    """Per backend, the peers its figures are compared with, keyed as in the JSON's ``peers``."""
    backends = run.args.backends
    if "docker" in backends:
        run.results["notes"].append(
            "testcontainers runs with its defaults: it waits by exec'ing psql in the container, polling every "
            f"{os.environ.get('TC_POOLING_INTERVAL', '1')} s (TC_POOLING_INTERVAL)"
        )
    admin = None
    if "cluster" in backends:
        pg = run.pg
        admin = psycopg.connect(
            host=pg.host, port=pg.port, user=pg.username, password=pg.password, dbname="postgres", autocommit=True
        )
        run.cleanup.add("close the CREATE DATABASE peer's connection", admin.close)
    homes = None
    if "local" in backends:
        homes = run.root / "p"
        homes.mkdir(mode=0o755)
    return alternatives.peers_for(backends, run.client, run.args.image, run.pg, admin, run.bin_dir, homes)


def measure_peers(run: Run, peers: dict[str, dict[str, alternatives.Peer]]) -> dict:
    """The peers' figures; those not taken alongside a cold path (``--modes warm``) are measured now."""
    results = {}
    for by_key in peers.values():
        for key, peer in by_key.items():
            results[key] = peer.series.as_dict() if peer.measured else alternatives.measure_peer(peer, run.args.runs)
    return results


def measure_list(run: Run) -> dict:
    """A server of its own, reaper off (it would find the fake rows' objects missing), rows written straight in."""
    from postgraas_server.config import settings_from_dict

    args = run.args
    home = run.root / "list"
    backends = {"local": {"type": "local", "data_root": str(run.root / "ll"), "advertised_host": "127.0.0.1"}}
    config = server_config(home, backends, {"reaper_interval": 0})
    server = infra.PostgraasServer(home, config, args.workers)
    run.cleanup.add("stop the list server", server.stop)
    try:
        server.init_db()
        measure.fill_meta_db(settings_from_dict(config).metadb.sqlalchemy_url(), "local", args.list_rows)
        server.serve()
        result = measure.measure_list(server, args.list_requests, args.list_rows)
        say(f"GET list of {args.list_rows}: p50 {report.seconds(result['get']['p50'])}")
    except (infra.ConfigRefused, RuntimeError) as e:
        say(f"list not measured: {e}")
        result = {"rows": args.list_rows, "error": str(e)}
    finally:
        server.stop()
        for path in home.glob("meta.sqlite*"):
            path.unlink()
    return result


def machine_info(run: Run) -> dict:
    docker_version = run.client.version().get("Version") if run.client else None
    return machine.describe(docker_version, run.bin_dir, run.args.image)


def finish(run: Run) -> None:
    results, args = run.results, run.args
    results["targets"] = report.evaluate_targets(results)
    report.write_json(results, args.json)
    report.write_png(results, args.png)
    print(report.table(results))
    for note in results["notes"]:
        print(f"note: {note}")
    durability = results.get("durability") or {}
    if durability.get("requested"):
        requested, refused, echoed = durability["requested"], durability["refused"], durability["echoed"]
        print(f"durability {requested!r}: refused by the server: {refused or 'no'}; echoed back: {echoed}")
    print(f"json: {args.json}\npng: {args.png}")


if __name__ == "__main__":
    sys.exit(main())
