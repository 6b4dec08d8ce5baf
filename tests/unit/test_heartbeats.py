"""One heartbeat thread renews every creation of the process."""

import time
from datetime import UTC, datetime

from sqlalchemy import create_engine, insert, select

from postgraas_server.migrations import upgrade
from postgraas_server.models import DBInstance
from postgraas_server.service.heartbeats import Heartbeats

LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)


def test_rows_being_created_are_renewed_and_others_left_alone(tmp_path):
    url = f"sqlite:///{tmp_path / 'meta.sqlite'}"
    upgrade(url)
    engine = create_engine(url)
    with engine.begin() as conn:
        for n, status in enumerate(("creating", "creating", "ready"), start=1):
            conn.execute(
                insert(DBInstance).values(
                    id=n,
                    postgraas_instance_name=f"i{n}",
                    db_name="d",
                    username="u",
                    backend="fake",
                    status=status,
                    owner="",
                    heartbeat_at=LONG_AGO,
                    creation_timestamp=LONG_AGO,
                )
            )

    def beats() -> dict[int, datetime]:
        with engine.connect() as conn:
            return dict(conn.execute(select(DBInstance.id, DBInstance.heartbeat_at)).all())

    heartbeats = Heartbeats(lambda: engine, every=0.1)
    with heartbeats.beating(1), heartbeats.beating(3):
        time.sleep(0.35)
        during = beats()
    assert during[1] > LONG_AGO
    # Not being created here, or not creating any more: untouched.
    assert during[2] == LONG_AGO and during[3] == LONG_AGO
    time.sleep(0.3)
    after = beats()
    assert after[1] == during[1]
