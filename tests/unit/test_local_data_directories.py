"""remove_home against another removal of the same home running at once: a delete that races the
create's own clean-up (CI saw the delete answer 502 when the other removal took instance.json first)."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from postgraas_server.backends.local.data_directories import META_FILE, remove_home
from postgraas_server.errors import BackendError


def _home(root: Path, name: str = "7-0a1b2c3d", files: int = 50) -> Path:
    home = root / name
    for sub in ("data/base", "data/pg_wal", "run"):
        (home / sub).mkdir(parents=True)
    for n in range(files):
        (home / "data" / "base" / f"{n}").write_bytes(b"x" * 512)
    (home / "postgres.log").write_text("log\n")
    (home / META_FILE).write_text('{"instance_id": 7}')
    return home


def test_a_home_the_other_removal_took_whole_midway_is_removed(tmp_path):
    home = _home(tmp_path)

    def the_other_removal_finishes_first(path: Path) -> None:
        shutil.rmtree(home)

    remove_home(home, remove_tree=the_other_removal_finishes_first)

    assert not home.exists()


def test_instance_json_taken_by_the_other_removal_is_no_error(tmp_path):
    home = _home(tmp_path)

    def the_other_removal_is_one_step_ahead(path: Path) -> None:
        shutil.rmtree(path)
        (home / META_FILE).unlink(missing_ok=True)

    remove_home(home, remove_tree=the_other_removal_is_one_step_ahead)

    assert not home.exists()


def test_two_removals_of_one_home_at_once_both_succeed(tmp_path):
    failures: list[BaseException] = []
    for round_ in range(40):
        home = _home(tmp_path, f"{round_}-0a1b2c3d", files=20)
        start = threading.Barrier(2)

        def remove(home: Path, start: threading.Barrier) -> None:
            start.wait()
            try:
                remove_home(home)
            except BaseException as e:  # noqa: BLE001 - collected for the assertion below
                failures.append(e)

        threads = [threading.Thread(target=remove, args=(home, start)) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert not home.exists()
    assert failures == []


def test_a_file_written_during_the_removal_still_fails_it_and_keeps_it_listed(tmp_path):
    home = _home(tmp_path)

    def a_postgres_writes_meanwhile(path: Path) -> None:
        shutil.rmtree(path)
        if path.name == "data":
            path.mkdir()
            (path / "postmaster.pid").write_text("")

    with pytest.raises(BackendError, match="data remain"):
        remove_home(home, remove_tree=a_postgres_writes_meanwhile)

    assert (home / META_FILE).exists()
