"""Reading a directory's file-system type and inode flags, for tests of top_directory."""

from __future__ import annotations

import array
import fcntl
import os
from pathlib import Path

from postgraas_server.backends.local.top_directory import FS_IOC_GETFLAGS


def file_system_type(path: Path) -> str:
    """The type of the mount holding ``path``, from /proc/self/mounts (the longest mount point that contains it)."""
    best, kind = "", ""
    resolved = str(path.resolve())
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, mount_point, fs_type, *_ = line.split()
        inside = resolved == mount_point or resolved.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, kind = mount_point, fs_type
    return kind


def flags(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        value = array.array("i", [0])
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, value, True)
        return value[0]
    finally:
        os.close(fd)
