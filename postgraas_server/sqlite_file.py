"""A SQLite meta db holds the hashes of every password and token: only the server's user may read it.

SQLite gives its -wal, -shm and -journal files the mode of the database file, so making that file
0600 before SQLite creates it (and setting 0600 on files made by an older version) covers them all.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import make_url

PRIVATE = 0o600
SIDE_FILES = ("-wal", "-shm", "-journal")


def keep_private(url: str) -> None:
    """Create the SQLite file at ``url`` as 0600 if it is missing, else make it and its side files
    0600. Other URLs (a PostgreSQL meta db, an in-memory SQLite) are left alone."""
    parsed = make_url(url)
    path = parsed.database
    if parsed.get_backend_name() != "sqlite" or not path or path == ":memory:" or path.startswith("file:"):
        return
    try:
        # O_EXCL: never truncate nor take over a file that appeared meanwhile; an empty file is a
        # valid SQLite database.
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, PRIVATE))
    except FileExistsError:
        pass
    for name in (path, *(path + suffix for suffix in SIDE_FILES)):
        file = Path(name)
        if file.exists() and file.stat().st_mode & 0o777 != PRIVATE:
            file.chmod(PRIVATE)
