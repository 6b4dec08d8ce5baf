"""Issue 19's soak: the load held. Concurrent clients run create -> login -> write -> delete cycles
against one server (``serve``, 2 gunicorn workers) over local (a warm pool and cold), cluster and
docker backends, with bad requests and wrong-password deletes thrown in; then it checks that no
answer was a 5xx, that the backends' objects and the meta db's rows match (nothing lost or leaked),
the warm creates' p99, and how the workers' resident memory grew.

It measures and reports, it does not assert: the exit code is 0 whatever the figures, 2 when
something needed is missing, 1 when the run failed, 130 when interrupted.

    .venv/bin/python benchmarks/soak.py [--quick] [--cycles 2000] [--clients 8] [--mix ...] ...
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    # Run as a file: make the repository root importable, so that `benchmarks.*` resolves.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import docker  # noqa: E402
import docker.errors  # noqa: E402
import psycopg  # noqa: E402

from benchmarks import infra, machine, measure, report, soak_checks, soak_report  # noqa: E402
from benchmarks.infra import REPO_ROOT, CannotRun, say  # noqa: E402
from benchmarks.soak_load import Load, plan  # noqa: E402

# The backends a cycle may go to, by the name the server is configured with.
BACKENDS = {"localwarm": "local", "localcold": "local", "cluster": "cluster", "docker": "docker"}
DEFAULT_MIX = "localwarm=40,localcold=10,cluster=30,docker=20"
FULL = {"cycles": 2000, "clients": 8}
QUICK = {"cycles": 60, "clients": 4}


def _mix(value: str) -> dict[str, int]:
    mix = {}
    for item in value.split(","):
        name, _, weight = item.strip().partition("=")
        if name not in BACKENDS or not weight.isdigit():
            raise argparse.ArgumentTypeError(f"NAME=WEIGHT,... with NAME one of {', '.join(BACKENDS)}")
        if int(weight):
            mix[name] = int(weight)
    if not mix:
        raise argparse.ArgumentTypeError("give at least one backend a weight above 0")
    return mix


def _names(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    if any(n not in BACKENDS for n in names):
        raise argparse.ArgumentTypeError(f"choose from {', '.join(BACKENDS)} (comma-separated)")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"test-suite size: {QUICK}")
    parser.add_argument("--cycles", type=int, help=f"counted cycles (default {FULL['cycles']})")
    parser.add_argument("--clients", type=int, help=f"concurrent clients (default {FULL['clients']})")
    parser.add_argument(
        "--warmup",
        type=int,
        help="cycles before the counted ones, round-robin over the backends (default 2 per backend)",
    )
    parser.add_argument("--mix", type=_mix, default=DEFAULT_MIX, help=f"backend weights (default {DEFAULT_MIX})")
    parser.add_argument(
        "--pooled", type=_names, default=["localwarm"], help="backends with a warm pool (default localwarm)"
    )
    parser.add_argument("--pool-size", type=int, default=6, help="pool_size of each pooled backend (default 6)")
    parser.add_argument("--pool-timeout", type=float, default=120, help="seconds to wait for full pools at the start")
    parser.add_argument(
        "--bad-share", type=float, default=0.05, help="share of cycles with a bad request (default 0.05)"
    )
    parser.add_argument(
        "--wrong-password-share",
        type=float,
        default=0.05,
        help="share of cycles whose delete first sends a wrong password",
    )
    parser.add_argument("--seed", type=int, default=19, help="of the plan: which backend, where the bad requests go")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    parser.add_argument(
        "--metadb",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="the server's meta db: a SQLite file (default), or PostgreSQL on a throwaway server of its own",
    )
    parser.add_argument(
        "--reaper-interval",
        type=float,
        default=10,
        help="lifecycle.reaper_interval: seconds between reaper passes during the load (default 10; 30 as shipped)",
    )
    parser.add_argument("--settle-timeout", type=float, default=180, help="seconds for the pools to refill at the end")
    parser.add_argument("--image", default=infra.DEFAULT_IMAGE, help=f"postgres image (default {infra.DEFAULT_IMAGE})")
    parser.add_argument(
        "--scratch",
        type=Path,
        default=Path("/var/tmp"),
        help="where the run's scratch directory goes (default /var/tmp)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=REPO_ROOT / "benchmarks" / "results" / "soak.json",
        help="where to write all figures",
    )
    parser.add_argument(
        "--server-log",
        type=Path,
        default=REPO_ROOT / "benchmarks" / "results" / "soak-server.log",
        help="where to keep the server's log (the run's directory is removed); a 5xx's lines are in the JSON too",
    )
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.warmup is None:
        args.warmup = 2 * len(args.mix)
    if args.cycles < 1 or args.clients < 1 or args.warmup < 0 or not 1 <= args.pool_size <= 100:
        parser.error("--cycles and --clients must be at least 1, --warmup at least 0, --pool-size 1 to 100")
    if not (0 <= args.bad_share <= 1 and 0 <= args.wrong_password_share <= 1):
        parser.error("--bad-share and --wrong-password-share are shares between 0 and 1")
    args.pooled = [name for name in args.pooled if name in args.mix]
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
    # --metadb postgresql: the meta db's own server (database "postgraas").
    meta_pg: infra.ThrowawayPostgres | None = None
    baseline: soak_checks.ClusterBaseline | None = None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = Run(args)
    run.results = {
        "run_id": infra.RUN_ID,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    status = infra.guarded(
        lambda: soak(run), run.cleanup, run.results, lambda problems: infra.leftovers(run.client, run.root, problems)
    )
    if "targets" in run.results:
        report.write_json(run.results, args.json)
        print(soak_report.table(run.results))
        print(f"json: {args.json}\nserver log: {args.server_log}")
    return status


def prepare(run: Run) -> None:
    """Check what is needed before starting anything, then make the scratch dir and the cluster's server."""
    from postgraas_server.backends.local import find_bin_dir
    from postgraas_server.errors import BackendUnavailable

    args = run.args
    kinds = {BACKENDS[name] for name in args.mix}
    if kinds & {"local", "cluster"} or args.metadb == "postgresql":
        try:
            run.bin_dir = find_bin_dir(None)
        except BackendUnavailable as e:
            raise CannotRun(f"{e} (the cluster and local backends need them; see --mix)") from e
    if "docker" in kinds:
        run.client = infra.require_docker(args.image)
        if removed := infra.remove_dead_runs_containers(run.client):
            say(f"removed {len(removed)} container(s) left by earlier runs that died: {', '.join(removed)}")
        client = run.client
        run.cleanup.add("remove this run's containers", lambda: infra.remove_run_containers(client))
        run.cleanup.add("remove this run's images", lambda: infra.remove_run_images(client))
    run.root = root = infra.make_scratch_root(args.scratch)
    run.cleanup.add(f"remove {root}", lambda: shutil.rmtree(root, ignore_errors=True))
    bin_dir = run.bin_dir
    run.cleanup.add("stop postgres processes", lambda: infra.stop_postgres_under(root, bin_dir))
    if "cluster" in kinds:
        run.pg = infra.ThrowawayPostgres(root / "pg", run.bin_dir)
        run.cleanup.add("stop the cluster backend's server", run.pg.stop)
        run.pg.start()
        run.pg.check()
        run.baseline = soak_checks.ClusterBaseline(run.pg).take()
        say(f"throwaway PostgreSQL for the cluster backend on port {run.pg.port}")
    if args.metadb == "postgresql":
        run.meta_pg = meta = infra.ThrowawayPostgres(root / "meta", run.bin_dir)
        run.cleanup.add("stop the meta db's server", meta.stop)
        meta.start()
        with psycopg.connect(
            host=meta.host, port=meta.port, user=meta.username, password=meta.password, autocommit=True
        ) as conn:
            conn.execute("create database postgraas")
        say(f"throwaway PostgreSQL for the meta db on port {meta.port}")


def local_root(run: Run, name: str) -> Path:
    # Short (unix socket paths), and one per backend: each sees only its own instances.
    return run.root / {"localwarm": "lw", "localcold": "lc"}[name]


def server_config(run: Run) -> dict:
    args = run.args
    backends: dict[str, dict] = {}
    for name in args.mix:
        kind = BACKENDS[name]
        if kind == "local":
            config = {"type": "local", "data_root": str(local_root(run, name)), "advertised_host": "127.0.0.1"}
        elif kind == "cluster":
            config = run.pg.backend_config()
        else:
            config = {
                "type": "docker",
                "image": args.image,
                "advertised_host": "127.0.0.1",
                "bind_address": "127.0.0.1",
                "labels": infra.container_labels(),
                # A docker pool needs the prepared image; it is the default, said here as the soak relies on it.
                "prepare_image": True,
            }
        if name in args.pooled:
            config["pool_size"] = args.pool_size
        backends[name] = config
    return {
        "metadb": {"url": meta_db_url(run)},
        "backends": backends,
        "application": {"default_backend": next(iter(backends)), "log_level": "INFO"},
        # The reaper runs as in production, but would remove a leaked object after orphan_grace (60 s)
        # before the end's comparison could see it: the soak's leaks must stay visible.
        "lifecycle": {"orphan_grace": "1d", "reaper_interval": args.reaper_interval},
    }


def meta_db_url(run: Run) -> str:
    meta = run.meta_pg
    if meta is None:
        return f"sqlite:///{run.root / 'server' / 'meta.sqlite'}"
    return f"postgresql://{meta.username}:{meta.password}@{meta.host}:{meta.port}/postgraas"


def keep_log(log: Path, to: Path) -> None:
    """Also after a failure: the run's directory goes, and its log is how a 5xx is traced."""
    if log.exists():
        to.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, to)


def soak(run: Run) -> None:
    args = run.args
    prepare(run)
    run.results["machine"] = machine.describe(
        run.client.version().get("Version") if run.client else None, run.bin_dir, args.image
    )
    run.results["machine"]["loadavg_at_start"] = os.getloadavg()
    # The package as it was run: the commit, and what of it was changed and not committed.
    changed = subprocess.run(
        ["git", "status", "--porcelain", "postgraas_server"], capture_output=True, text=True, cwd=REPO_ROOT
    )
    run.results["machine"]["package_uncommitted"] = changed.stdout.splitlines()
    config = server_config(run)
    run.results["server_config"] = {
        **config,
        "backends": {n: {**b, "password": "***"} if "password" in b else b for n, b in config["backends"].items()},
    }
    server = infra.PostgraasServer(run.root / "server", config, args.workers)
    run.cleanup.add("keep the server's log", lambda: keep_log(server.log_path, args.server_log))
    run.cleanup.add("stop the server", server.stop)
    try:
        server.start()
    except infra.ConfigRefused as e:
        raise CannotRun(f"the server refused its configuration: {e}") from e
    say(f"server at {server.url} (pid {server.process.pid}), backends {', '.join(config['backends'])}")
    for name in args.pooled:
        reached, waited, count = measure.wait_for_pool(server, name, args.pool_size, args.pool_timeout)
        say(f"pool of {name}: {count:g} of {args.pool_size} after {waited:.1f} s")
        if not reached:
            raise RuntimeError(f"the pool of {name} did not fill within {args.pool_timeout:g} s:\n{server.log_tail()}")

    metrics_before = soak_checks.metrics(server)
    cycles = plan(args.cycles, args.warmup, args.mix, args.bad_share, args.wrong_password_share, args.seed)
    warmup = Load(server.url, args.clients, [c for c in cycles if not c.counted])
    warmup.run()
    warmup_seconds = warmup.elapsed
    say(f"{len(warmup.cycles)} warm-up cycles in {warmup_seconds:.1f} s")
    for name in args.pooled:
        measure.wait_for_pool(server, name, args.pool_size, args.pool_timeout)
    counted = [c for c in cycles if c.counted]
    step = max(1, len(counted) // 10)
    load = Load(server.url, args.clients, counted)

    def progress(done: int, total: int) -> None:
        if done % step == 0:
            say(f"{done}/{total} cycles, {load.elapsed:.0f} s")

    load.progress = progress
    workers_at_start = soak_checks.worker_pids(server.process.pid)
    sampler = soak_checks.RssSampler(server.process.pid, lambda: load.done).start()
    try:
        load.run()
    finally:
        sampler.stop()
    load_seconds = load.elapsed
    run.results["load"] = {"clients": args.clients, "seconds": load_seconds, "warmup_seconds": warmup_seconds}
    run.results["rss"] = {
        "workers_at_start": workers_at_start,
        "workers_seen": sampler.workers_seen,
        "workers": soak_checks.rss_growth(sampler.samples, len(counted)),
        "samples": sampler.samples,
    }
    run.results["server_metrics"] = soak_checks.metrics_delta(metrics_before, soak_checks.metrics(server))
    run.results["server_metrics_at_end"] = soak_checks.metrics(server)

    backends = soak_checks.Backends(
        {name: BACKENDS[name] for name in args.mix},
        {name: local_root(run, name) for name in args.mix if BACKENDS[name] == "local"},
        run.client,
        run.baseline,
    )
    meta_db = run.meta_pg or run.root / "server" / "meta.sqlite"
    settled, waited = soak_checks.settle(meta_db, {n: args.pool_size for n in args.pooled}, args.settle_timeout)
    say(f"{'settled' if settled else 'NOT settled'} after {waited:.1f} s; comparing rows and objects")
    run.results["at_end"] = {
        "settled": settled,
        "settle_s": waited,
        **soak_checks.compare(soak_checks.meta_rows(meta_db), backends.objects(), backends.types),
    }
    server.stop()
    returncode, output = soak_checks.drain(server, 1.5 * args.reaper_interval)
    after = soak_checks.compare(soak_checks.meta_rows(meta_db), backends.objects(), backends.types, False)
    run.results["after_drain"] = {"status": "ok" if returncode == 0 else f"reap exited {returncode}", "reap": output}
    run.results["after_drain"].update(after)
    run.results["machine"]["loadavg_at_end"] = os.getloadavg()

    log_text = server.log_path.read_text(errors="replace")
    answers = warmup.answers + load.answers
    results = warmup.results + load.results
    figures = soak_report.figures(answers, results, soak_checks.pool_made_ids(log_text), args.pooled)
    for answer in figures["server_errors"]:
        answer["log"] = soak_checks.log_lines_of(log_text, answer["request_id"])
    figures["log_problems"] = soak_checks.log_problems(log_text)
    figures["refusals"] = [vars(a) for a in answers if a.status is not None and 400 <= a.status < 500]
    run.results["figures"] = figures
    run.results["warm_backends"] = args.pooled
    run.results["cycles"] = [r.as_dict() for r in results]
    run.results["targets"] = soak_report.evaluate(run.results)


if __name__ == "__main__":
    sys.exit(main())
