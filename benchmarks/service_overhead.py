"""The service's own cost of a warm create: creates through Flask's test client against the fake
backend (whose hand-over costs nothing), so what is timed is parsing, policy, the meta db (SQLite)
and rendering. Prints p50 and mean; compare runs of two commits back to back, alternating.

    .venv/bin/python benchmarks/service_overhead.py [--creates 300] [--skip 50]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from postgraas_server.app import create_app  # noqa: E402
from postgraas_server.backends import BackendRegistry  # noqa: E402
from postgraas_server.config import settings_from_dict  # noqa: E402
from postgraas_server.migrations import upgrade  # noqa: E402
from postgraas_server.models import db  # noqa: E402
from postgraas_server.service import PoolKeeper  # noqa: E402
from tests.fakes import FakeBackend  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--creates", type=int, default=300, help="warm creates to time")
    parser.add_argument("--skip", type=int, default=50, help="first creates left out (warm-up)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="postgraas-overhead-"))
    settings = settings_from_dict(
        {"metadb": {"url": f"sqlite:///{scratch / 'meta.sqlite'}"}, "lifecycle": {"reaper_interval": 0}}
    )
    upgrade(settings.metadb.sqlalchemy_url())
    registry = BackendRegistry({"fake": FakeBackend()}, "fake", pools={"fake": args.creates})
    app = create_app(settings, backends=registry, background=False)
    with app.app_context():
        PoolKeeper(app.extensions["postgraas"].service.pool).fill()
        db.session.remove()
    client = app.test_client()
    times = []
    for i in range(args.creates):
        body = {"postgraas_instance_name": f"n{i}", "db_name": f"d{i}", "db_username": f"u{i}", "db_pwd": "pw-123456"}
        started = time.perf_counter()
        answer = client.post("/postgraas_instances", json=body)
        times.append(time.perf_counter() - started)
        if answer.status_code != 201:
            raise SystemExit(f"create {i} answered {answer.status_code}: {answer.get_data(as_text=True)}")
    timed = times[args.skip :]
    print(
        f"warm create in process, {len(timed)} timed: p50 {statistics.median(timed) * 1000:.2f} ms, "
        f"mean {statistics.mean(timed) * 1000:.2f} ms"
    )


if __name__ == "__main__":
    main()
