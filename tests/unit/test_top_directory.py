"""mark_top_directory against the real file system of the test's temporary directory."""

from __future__ import annotations

from pathlib import Path

from postgraas_server.backends.local.top_directory import FS_TOPDIR_FL, mark_top_directory

from ..file_flags import file_system_type, flags


def test_a_directory_on_ext4_is_marked_and_keeps_its_other_flags(tmp_path):
    if file_system_type(tmp_path) not in ("ext2", "ext3", "ext4"):
        assert mark_top_directory(tmp_path) == bool(flags(tmp_path) & FS_TOPDIR_FL)
        return
    before = flags(tmp_path)
    assert not before & FS_TOPDIR_FL
    assert mark_top_directory(tmp_path)
    assert flags(tmp_path) == before | FS_TOPDIR_FL
    assert mark_top_directory(tmp_path)  # twice is fine
    assert flags(tmp_path) == before | FS_TOPDIR_FL


def test_what_cannot_be_marked_is_reported_not_raised(tmp_path):
    afile = tmp_path / "file"
    afile.write_text("x")
    assert mark_top_directory(afile) is False
    assert mark_top_directory(tmp_path / "missing") is False
    shm = Path("/dev/shm")
    if shm.is_dir() and file_system_type(shm) == "tmpfs":
        # tmpfs has no such flag.
        assert mark_top_directory(shm) is False
