"""Issue 18's benchmark: templates (migrate once, clone per test), side by side in one run.

  1. the schema: 50 tables with keys and indexes, 10,000 rows, from benchmarks/template_schema/*.sql;
  2. per test, a suite of 50 tests that each take a fresh database and count its rows: with
     pytest-postgresql (its postgresql_proc, --postgresql-load into its template, a copy per test) and
     with Postgraas (its pytest plugin's template options and postgraas_clean_database, on each
     backend that keeps templates), once with a pool of --pool-size and once with a pool of the
     suite's size and its deletes held to the end (--postgraas-defer-deletes);
  3. per backend, a clone of a template from its pool (POST -> 201) and cold (POST -> first query);
     on the cluster backend, a hand-made CREATE DATABASE ... TEMPLATE of the same template beside it;
  4. concurrent identical ensures: how many builds, and the time until all see the template ready.
In the order 3, 4, 2: the suites' hundreds of clones would slow the cold clones' file copies.
A backend whose ensure answers 400 "cannot keep templates" is n/a. It measures, it does not assert:
the exit code is 0 whatever the figures, 2 when something needed is missing, 1 when the run failed.

    .venv/bin/python benchmarks/templates.py [--quick] [--tests 50] [--runs 20] [--backends local,cluster,docker]
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import docker  # noqa: E402
import docker.errors  # noqa: E402
import psycopg  # noqa: E402

from benchmarks import infra, machine, template_clones, template_report, template_runs, template_schema  # noqa: E402
from benchmarks.infra import REPO_ROOT, CannotRun, say  # noqa: E402

BACKENDS = ("local", "cluster", "docker")
FULL = {"tests": 50, "runs": 20, "race": 8, "pool_size": 4, "pool_timeout": 30.0}
QUICK = {"tests": 4, "runs": 2, "race": 3, "pool_size": 2, "pool_timeout": 10.0}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks/templates.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"smoke-test sizes {QUICK} (default {FULL})")
    parser.add_argument("--tests", type=int, help="tests per suite")
    parser.add_argument("--runs", type=int, help="clones per path")
    parser.add_argument("--race", type=int, help="concurrent identical ensures")
    parser.add_argument("--pool-size", type=int, help="pool_size of the pooled templates (the suites' too)")
    parser.add_argument("--pool-timeout", type=float, help="seconds to wait for a full pool before a run")
    parser.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated, of {', '.join(BACKENDS)}")
    parser.add_argument("--image", default=infra.DEFAULT_IMAGE, help="the docker backend's image (never pulled)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers of the server (default 2)")
    parser.add_argument("--scratch", type=Path, default=Path("/var/tmp"), help="where the run's files live")
    parser.add_argument("--skip-suites", action="store_true", help="do not run the two pytest suites")
    default_json = REPO_ROOT / "benchmarks" / "results" / "templates.json"
    parser.add_argument("--json", type=Path, default=default_json, help="where to write all figures")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if unknown := set(args.backends) - set(BACKENDS):
        parser.error(f"unknown backends: {', '.join(sorted(unknown))}")
    if min(args.tests, args.runs, args.race, args.pool_size) < 1:
        parser.error("--tests, --runs, --race and --pool-size must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cleanup = infra.Cleanup()
    results: dict = {"run_id": infra.RUN_ID, "options": {k: str(v) for k, v in vars(args).items()}, "notes": []}
    state: dict = {}
    status = infra.guarded(
        lambda: benchmark(args, cleanup, results, state),
        cleanup,
        results,
        lambda problems: infra.leftovers(state.get("client"), state.get("root"), problems),
    )
    if status in (0, 1) and "schema" in results:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(template_report.table(results))
        print(f"json: {args.json}")
    return status


def benchmark(args: argparse.Namespace, cleanup: infra.Cleanup, results: dict, state: dict) -> None:
    from postgraas_server.backends.local import find_bin_dir
    from postgraas_server.errors import BackendUnavailable

    try:
        bin_dir = find_bin_dir(None)
    except BackendUnavailable as e:
        raise CannotRun(f"{e} (the suites, the local and the cluster backend need them)") from e
    unavailable: dict[str, str] = {}
    if "docker" in args.backends:
        state["client"] = docker_client(args.image, unavailable)
        if client := state["client"]:
            # Last (cleanups run in reverse): after the containers that use them.
            cleanup.add("remove this run's template images", lambda: infra.remove_run_images(client))
            cleanup.add("remove this run's containers", lambda: infra.remove_run_containers(client))
    state["root"] = root = infra.make_scratch_root(args.scratch)
    cleanup.add(f"remove {root}", lambda: shutil.rmtree(root, ignore_errors=True))
    cleanup.add("stop postgres processes", lambda: infra.stop_postgres_under(root, bin_dir))
    pg = None
    if "cluster" in args.backends:
        pg = infra.ThrowawayPostgres(root / "pg", bin_dir)
        cleanup.add("stop the cluster backend's server", pg.stop)
        pg.start()
        pg.check()
    backends = {name: backend_config(name, args, root, pg) for name in args.backends if name not in unavailable}
    config = {
        "metadb": {"url": f"sqlite:///{root / 's' / 'meta.sqlite'}"},
        "backends": backends,
        "application": {"default_backend": next(iter(backends))},
    }
    server = infra.PostgraasServer(root / "s", config, args.workers)
    cleanup.add("stop the server", server.stop)
    server.start()
    say(f"server at {server.url} with backends {', '.join(backends)}")
    results["machine"] = machine.describe(state["client"].version().get("Version") if state.get("client") else None,
                                          bin_dir, args.image)  # fmt: skip
    results["schema"] = {
        "tables": template_schema.TABLES,
        "rows": template_schema.ROWS_TOTAL,
        "files": [str(p.relative_to(REPO_ROOT)) for p in template_schema.SQL_FILES],
        "hash": template_schema.content_hash(),
    }
    # Which backends keep templates: the cold clones' template, made first, tells.
    cold: dict[str, template_clones.Template] = {}
    for name in backends:
        try:
            cold[name] = template_clones.make_template(server.url, f"clone-cold-{name}", name, 0)
            say(f"{name}: template built in {cold[name].seconds:.2f} s")
        except template_clones.NoTemplates as e:
            unavailable[name] = f"ensure answered 400: {e}"
            say(f"{name}: n/a: {e}")
    results["unavailable"] = unavailable
    capable = list(cold)
    results["clones"] = {}
    admin = None
    if pg is not None and "cluster" in capable:
        admin = psycopg.connect(
            host=pg.host, port=pg.port, user=pg.username, password=pg.password, dbname="postgres", autocommit=True
        )
        cleanup.add("close the admin connection", admin.close)
    for name in capable:
        results["clones"][name] = measure_backend(args, server, cold[name], pg, admin)
    results["race"] = {
        name: template_clones.race(server.url, name, args.race, f"race-{name}", f"race-{secrets.token_hex(8)}")
        for name in capable
    }
    # Last: the suites make and delete hundreds of clones, after which this journal-less ext4 makes
    # files slowly for minutes (benchmarks/README.md, "The machine"), which the cold clones would pay.
    if not args.skip_suites:
        results["suites"] = run_suites(args, server, root, bin_dir, capable)
    for template in cold.values():
        template_clones.delete_template(server.url, template.id)
    server.stop()


def docker_client(image: str, unavailable: dict[str, str]) -> docker.DockerClient | None:
    try:
        client = infra.require_docker(image)
    except CannotRun as e:
        # The other backends are measured without it.
        unavailable["docker"] = str(e)
        return None
    if removed := infra.remove_dead_runs_containers(client):
        say(f"removed {len(removed)} container(s) left by earlier runs that died")
    return client


def backend_config(name: str, args: argparse.Namespace, root: Path, pg: infra.ThrowawayPostgres | None) -> dict:
    if name == "cluster":
        assert pg is not None
        return pg.backend_config()
    if name == "docker":
        return {
            "type": "docker",
            "image": args.image,
            "advertised_host": "127.0.0.1",
            "bind_address": "127.0.0.1",
            "labels": infra.container_labels(),
        }
    return {"type": "local", "data_root": str(root / "l"), "advertised_host": "127.0.0.1"}


def run_suites(
    args: argparse.Namespace, server: infra.PostgraasServer, root: Path, bin_dir: Path, capable: list[str]
) -> dict:
    machine.settle_machine()
    suites = {"pytest-postgresql": template_runs.run_peer_suite(root / "peer", bin_dir, args.tests)}
    for name in capable:
        # As --pool-size, each delete sent after its test; and with a pool that holds the suite, the
        # deletes held until its end: the server's work moved out of the tests' time.
        for key, pool_size, defer_deletes in ((name, args.pool_size, 0), (f"{name} held", args.tests, args.tests)):
            machine.settle_machine()
            suites[f"postgraas {key}"] = template_runs.run_postgraas_suite(
                server, root / f"suite-{key.replace(' ', '-')}", name, args.tests, pool_size, args.pool_timeout,
                defer_deletes,
            )  # fmt: skip
    return suites


def measure_backend(
    args: argparse.Namespace,
    server: infra.PostgraasServer,
    cold: template_clones.Template,
    pg: infra.ThrowawayPostgres | None,
    admin: psycopg.Connection | None,
) -> dict:
    """Cold clones (on the cluster alternating with the hand-made copy), then clones from a pool."""
    name = cold.backend
    result: dict = {"template_build_s": cold.seconds}
    peers = []
    if name == "cluster" and pg is not None and admin is not None:
        database = template_clones.template_database(pg, cold.id)
        peers = [template_clones.hand_made_peer(pg, admin, database)]
    result["cold"] = template_clones.measure_clones(server, cold, args.runs, 0, args.pool_timeout, peers)
    if peers:
        result["hand_made"] = peers[0].series.as_dict()
    pooled = template_clones.make_template(server.url, f"clone-pool-{name}", name, args.pool_size)
    try:
        result["pool"] = template_clones.measure_clones(server, pooled, args.runs, args.pool_size, args.pool_timeout)
    finally:
        template_clones.delete_template(server.url, pooled.id)
    return result


if __name__ == "__main__":
    sys.exit(main())
