"""Marking a directory as the top of directory hierarchies (``chattr +T``, ``FS_TOPDIR_FL``).

Where a backend keeps one independent tree per instance, as ``/home`` keeps one per user, ext4's
Orlov allocator should spread those trees over block groups, and it does so for the children of a
directory with this flag. Without it every instance lands in the block groups next to the data
root, where the instances deleted before it were. On an ext4 without a journal the inode allocator
then steps over every recently freed inode one at a time, so after a few hundred creates and
deletes making the files of a new instance gets many times slower (measured in
``benchmarks/bench.py``, see its README).

Best effort: other file systems refuse the flag or ignore it, and that changes nothing else.
"""

from __future__ import annotations

import array
import fcntl
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

# From <linux/fs.h>: _IOR('f', 1, long) and _IOW('f', 2, long); the kernel reads and writes an int.
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_TOPDIR_FL = 0x00020000


def mark_top_directory(path: Path) -> bool:
    """Set ``FS_TOPDIR_FL`` on the directory ``path``; True if it is set afterwards."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        log.debug("cannot open %s to mark it a top directory: %s", path, e.strerror)
        return False
    try:
        flags = array.array("i", [0])
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags, True)
        if flags[0] & FS_TOPDIR_FL:
            return True
        flags[0] |= FS_TOPDIR_FL
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, flags, False)
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags, True)
        return bool(flags[0] & FS_TOPDIR_FL)
    except OSError as e:
        # ENOTTY / EOPNOTSUPP: a file system without these flags (tmpfs, overlayfs ...);
        # EPERM: a directory we do not own.
        log.debug("%s is not marked a top directory: %s", path, e.strerror)
        return False
    finally:
        os.close(fd)
