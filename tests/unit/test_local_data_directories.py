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


def test_a_file_written_as_the_home_goes_keeps_it_listed(tmp_path, monkeypatch):
    home = _home(tmp_path)
    meta = (home / META_FILE).read_bytes()
    real_rmdir = Path.rmdir

    def a_dying_postgres_writes_first(path: Path) -> None:
        if path == home:
            (home / "postgres.log").write_text("shutting down\n")
        real_rmdir(path)

    monkeypatch.setattr(Path, "rmdir", a_dying_postgres_writes_first)
    with pytest.raises(BackendError, match="could not be removed"):
        remove_home(home)

    assert (home / META_FILE).read_bytes() == meta
    assert sorted(p.name for p in home.iterdir()) == [META_FILE, "postgres.log"]


def test_instance_json_held_by_the_other_removal_is_left_to_it(tmp_path, monkeypatch):
    """The other removal took instance.json, its rmdir failed (a file written meanwhile), and it
    puts instance.json back while this removal runs: this one must not take it again."""
    home = _home(tmp_path)
    meta = (home / META_FILE).read_bytes()
    (home / META_FILE).unlink()
    real_rmdir, real_unlink = Path.rmdir, Path.unlink
    happened: list[bool] = []

    def the_other_puts_it_back() -> None:
        if not happened:
            happened.append(True)
            (home / "postgres.log").write_text("shutting down\n")
            (home / META_FILE).write_bytes(meta)

    def unlink(path: Path, missing_ok: bool = False) -> None:
        if path == home / META_FILE:
            the_other_puts_it_back()
        real_unlink(path, missing_ok=missing_ok)

    def rmdir(path: Path) -> None:
        if path == home:
            the_other_puts_it_back()
        real_rmdir(path)

    monkeypatch.setattr(Path, "unlink", unlink)
    monkeypatch.setattr(Path, "rmdir", rmdir)
    with pytest.raises(BackendError, match="could not be removed"):
        remove_home(home)

    assert (home / META_FILE).read_bytes() == meta


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
