"""Issue 19's benchmark: how each cost grows with the rows in the meta db.

At each size (1,000, 10,000, 100,000 rows), with a SQLite and with a PostgreSQL meta db, against the
server as users run it (init-db, then serve: gunicorn, 2 workers, token auth):
  1. a page of 100 (``GET ?limit=100``) as an owner and as an admin, and the whole list;
  2. an item GET, a warm-pool create (POST -> 201) and a delete, on the local backend with a pool;
  3. a /metrics scrape;
  4. one reaper pass with nothing to do, and one with 1% of the rows expired;
  5. each gunicorn worker's resident memory after each of them.
The rows are written straight into the meta db (benchmarks/scale_fleet.py says which). It measures,
it does not assert: the exit code is 0 whatever the figures, 2 when something needed is missing, 1 when
the run failed, 130 when interrupted.

    .venv/bin/python benchmarks/scale.py [--quick] [--sizes 1000,10000,100000] [--metadbs sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import create_engine, text  # noqa: E402

from benchmarks import infra, machine, report, scale_fleet, scale_http, scale_report  # noqa: E402
from benchmarks.infra import REPO_ROOT, CannotRun, say  # noqa: E402

METADBS = ("sqlite", "postgresql")
FULL = {"sizes": "1000,10000,100000", "reps": 50, "list_reps": 10, "runs": 20, "gets": 5, "passes": 3}
QUICK = {"sizes": "100,1000", "reps": 5, "list_reps": 3, "runs": 3, "gets": 2, "passes": 1}
POOLED_BACKEND = "local"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks/scale.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"smoke-test sizes {QUICK} (default {FULL})")
    parser.add_argument("--sizes", help="rows in the meta db, comma-separated, ascending")
    parser.add_argument("--metadbs", default=",".join(METADBS), help="sqlite, postgresql or both (default both)")
    parser.add_argument("--reps", type=int, help="timed requests per read figure (a page, /metrics)")
    parser.add_argument("--list-reps", type=int, help="timed whole lists (fewer when one takes long)")
    parser.add_argument("--runs", type=int, help="warm creates (each followed by its item GETs and its delete)")
    parser.add_argument("--gets", type=int, help="item GETs per created instance")
    parser.add_argument("--passes", type=int, help="reaper passes with nothing to do, per size")
    parser.add_argument("--pool-size", type=int, default=2, help="pool_size of the local backend (default 2)")
    parser.add_argument("--pool-timeout", type=float, default=60, help="seconds to wait for a full pool")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    parser.add_argument("--scratch", type=Path, default=Path("/var/tmp"), help="where the run's files live")
    parser.add_argument(
        "--reaper-up-to", type=int, help="no reaper passes at sizes above this (for code whose pass takes hours there)"
    )
    parser.add_argument("--profile", type=Path, help="cProfile each reaper pass into this directory (slows them)")
    results_dir = REPO_ROOT / "benchmarks" / "results"
    parser.add_argument("--json", type=Path, default=results_dir / "scale.json", help="where to write all figures")
    parser.add_argument("--png", type=Path, default=results_dir / "scale.png", help="where to draw the plot")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        args.sizes = [int(size) for size in args.sizes.split(",") if size.strip()]
    except ValueError:
        parser.error("--sizes: whole numbers, comma-separated")
    if not args.sizes or args.sizes != sorted(set(args.sizes)) or args.sizes[0] < 10:
        parser.error("--sizes: ascending, each at least 10")
    args.metadbs = [m.strip() for m in args.metadbs.split(",") if m.strip()]
    if not args.metadbs or set(args.metadbs) - set(METADBS):
        parser.error(f"--metadbs: of {', '.join(METADBS)}")
    if min(args.reps, args.list_reps, args.runs, args.gets, args.passes, args.pool_size) < 1:
        parser.error("--reps, --list-reps, --runs, --gets, --passes and --pool-size must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cleanup = infra.Cleanup()
    options = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    results: dict = {"run_id": infra.RUN_ID, "options": options, "notes": [], "runs": {}}
    state: dict = {}
    status = infra.guarded(
        lambda: benchmark(args, cleanup, results, state),
        cleanup,
        results,
        lambda problems: infra.leftovers(None, state.get("root"), problems),
    )
    if status in (0, 1) and "machine" in results:
        report.write_json(results, args.json)
        scale_report.write_png(results, args.png)
        print(scale_report.table(results))
        for note in results["notes"]:
            print(f"note: {note}")
        print(f"json: {args.json}\npng: {args.png}")
    if status == 0 and any(run.get("error") for run in results["runs"].values()):
        status = 1
    return status


def benchmark(args: argparse.Namespace, cleanup: infra.Cleanup, results: dict, state: dict) -> None:
    from postgraas_server.backends.local import find_bin_dir
    from postgraas_server.errors import BackendUnavailable

    try:
        bin_dir = find_bin_dir(None)
    except BackendUnavailable as e:
        raise CannotRun(f"{e} (the local and cluster backends and a PostgreSQL meta db need them)") from e
    state["root"] = root = infra.make_scratch_root(args.scratch)
    cleanup.add(f"remove {root}", lambda: shutil.rmtree(root, ignore_errors=True))
    cleanup.add("stop postgres processes", lambda: infra.stop_postgres_under(root, bin_dir))
    results["machine"] = machine.describe(None, bin_dir, "")
    results["machine"]["pbkdf2_4096_s"] = {"before": machine.time_cpu()}
    results["notes"] += [
        "the rows are written straight into the meta db (benchmarks/scale_fleet.py); of every 20, 18 are ready "
        "instances of the cluster backend with a marked role each (what its listing finds), 1 failed, 1 lost",
        "a reaper pass is Reaper.run_pass in this process, as `postgraas-server reap --once` runs it, against the "
        "server's meta db and backends; the server's own reaper loop is off",
    ]
    if args.profile:
        results["notes"].append("the reaper passes ran under cProfile (--profile): their times include its overhead")
    for kind in args.metadbs:
        results["runs"][kind] = run = {"sizes": {}, "seed_s": {}, "error": None}
        steps = infra.Cleanup()
        try:
            measure_metadb(args, kind, root / kind[0], bin_dir, run, steps)
        except (KeyboardInterrupt, CannotRun):
            raise
        except Exception as e:
            run["error"] = f"{type(e).__name__}: {e}"
            say(f"{kind}: failed:\n{traceback.format_exc()}")
        finally:
            if problems := steps.run():
                run["cleanup_problems"] = problems
    results["machine"]["pbkdf2_4096_s"]["after"] = machine.time_cpu()
    loads = [
        f"{kind} {int(size):,}: {figures['load_average']:.1f}"
        for kind, run in results["runs"].items()
        for size, figures in run["sizes"].items()
    ]
    results["notes"].append(f"load average (1 min) as each size began: {'; '.join(loads)}")
    cpu = results["machine"]["pbkdf2_4096_s"]
    results["notes"].append(
        f"one PBKDF2-SHA256 of 4096 iterations took {cpu['before'] * 1000:.2f} ms of CPU before the run and "
        f"{cpu['after'] * 1000:.2f} ms after it: the shared machine's speed of the moment"
    )


def server_config(home: Path, cluster: infra.ThrowawayPostgres, meta_url: str | None) -> dict:
    local = {
        "type": "local",
        "data_root": str(home / "local"),
        "advertised_host": "127.0.0.1",
        "pool_size": 0,
        # A shared service limits a backend: a create counts what the backend holds.
        "max_instances": 100,
    }
    return {
        "metadb": {"url": meta_url or f"sqlite:///{home / 'meta.sqlite'}"},
        "backends": {POOLED_BACKEND: local, scale_fleet.FLEET_BACKEND: cluster.backend_config()},
        "application": {"default_backend": POOLED_BACKEND},
        "lifecycle": {"reaper_interval": 0},
        "auth": {"mode": "token"},
    }


def measure_metadb(
    args: argparse.Namespace, kind: str, home: Path, bin_dir: Path, run: dict, steps: infra.Cleanup
) -> None:
    from benchmarks import scale_reaper

    home.mkdir(mode=0o755)
    cluster = infra.ThrowawayPostgres(home / "cluster", bin_dir)
    steps.add("stop the cluster backend's server", cluster.stop)
    cluster.start()
    meta_url = None
    if kind == "postgresql":
        meta = infra.ThrowawayPostgres(home / "metadb", bin_dir)
        steps.add("stop the meta db's server", meta.stop)
        meta.start()
        with psycopg_admin(meta) as conn:
            conn.execute("create database postgraas")
        meta_url = f"postgresql://{meta.username}:{meta.password}@{meta.host}:{meta.port}/postgraas"
    config = server_config(home, cluster, meta_url)
    config["backends"][POOLED_BACKEND]["pool_size"] = args.pool_size
    server = infra.PostgraasServer(home / "server", config, args.workers)
    steps.add("stop the server", server.stop)
    steps.add("stop its local instances", lambda: infra.stop_postgres_under(home / "local", bin_dir))
    server.init_db()
    in_process = scale_reaper.InProcess.of(config)
    steps.add("close the in-process app", in_process.close)
    owner_token = in_process.issue_token(scale_fleet.MEASURED_OWNER)
    client = scale_http.Client(server, owner_token, in_process.issue_token("bench-admin", admin=True))
    steps.add("close the HTTP session", client.close)
    engine = create_engine(in_process.app.config["SQLALCHEMY_DATABASE_URI"])
    steps.add("dispose of the seeding engine", engine.dispose)
    fleet = scale_fleet.Fleet(engine, cluster)
    server.serve()
    say(f"{kind}: server at {server.url}")
    for size in args.sizes:
        started = time.perf_counter()
        added = fleet.grow_to(size)
        if kind == "postgresql":
            # Autovacuum would have done this long since in a meta db that grew to this size.
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("vacuum analyze db_instance"))
        run["seed_s"][str(size)] = seconds = time.perf_counter() - started
        say(f"{kind} {size:,}: {added:,} rows and {fleet.roles():,} marked roles in the cluster ({seconds:.1f} s)")
        run["sizes"][str(size)] = measure_size(args, kind, size, server, client, fleet, in_process)


def psycopg_admin(pg: infra.ThrowawayPostgres):
    import psycopg

    return psycopg.connect(
        host=pg.host, port=pg.port, user=pg.username, password=pg.password, dbname="postgres", autocommit=True
    )


def measure_size(
    args: argparse.Namespace,
    kind: str,
    size: int,
    server: infra.PostgraasServer,
    client: scale_http.Client,
    fleet: scale_fleet.Fleet,
    in_process,
) -> dict:
    # Other work on the machine moves every figure: how much there was.
    figures: dict = {"rows": fleet.count(), "memory": {}, "load_average": os.getloadavg()[0]}

    def done(key: str, measured: dict) -> None:
        figures[key] = measured
        figures["memory"][key] = scale_http.workers_memory(server)
        p50 = report.seconds(measured.get("p50"))
        say(f"{kind} {size:,}: {key} p50 {p50}, workers {figures['memory'][key]} MB")

    machine.settle_machine(max_wait=5)
    done("page_owner", scale_http.page(client, args.reps, admin=False))
    done("page_admin", scale_http.page(client, args.reps, admin=True))
    machine.settle_machine(max_wait=5)
    done("list", scale_http.whole_list(client, args.list_reps))
    machine.settle_machine(max_wait=5)
    done("metrics", scale_http.metrics(client, args.reps))
    machine.settle_machine(max_wait=5)
    made = scale_http.instances(client, POOLED_BACKEND, args.runs, args.gets, args.pool_size, args.pool_timeout)
    figures["pool_wait"] = made.pop("pool_wait")
    for key, measured in made.items():
        done(key, measured)
    if args.reaper_up_to is not None and size > args.reaper_up_to:
        say(f"{kind} {size:,}: no reaper pass (--reaper-up-to {args.reaper_up_to:,})")
        return figures
    # The pool refilled after the last create: a pass must find nothing to do.
    scale_http.wait_for_pool(server, POOLED_BACKEND, args.pool_size, args.pool_timeout)
    machine.settle_machine(max_wait=5)
    idle, idle_cpu = report.Series(), report.Series()
    idle_actions: list[str] = []
    for n in range(args.passes):
        seconds, cpu, _, actions = in_process.one_pass(_profile(args, kind, size, f"idle{n}"))
        idle.samples.append(seconds)
        idle_cpu.samples.append(cpu)
        idle_actions += actions
    # What it did, if anything (nothing is expected): the first few, and how many.
    measured = {**idle.as_dict(), "cpu_p50": idle_cpu.as_dict()["p50"]}
    done("reaper_idle", {**measured, "actions": len(idle_actions), "first_actions": idle_actions[:10]})
    expired = fleet.expire(max(1, size // 100))
    machine.settle_machine(max_wait=5)
    seconds, cpu, removals, actions = in_process.one_pass(_profile(args, kind, size, "expired"))
    measured = report.Series([seconds]).as_dict()
    measured.update(cpu_p50=cpu, expired=expired, actions=len(actions), first_actions=actions[:4])
    done("reaper_expired", measured)
    # The pass queues their removals, which run after it: until the last had run.
    removed = report.Series([removals]).as_dict()
    removed.update(expired=expired, per_expired_s=removals / expired if expired else None)
    done("reaper_removals", removed)
    return figures


def _profile(args: argparse.Namespace, kind: str, size: int, what: str) -> Path | None:
    return args.profile / f"reaper-{kind}-{size}-{what}.prof" if args.profile else None


if __name__ == "__main__":
    sys.exit(main())
