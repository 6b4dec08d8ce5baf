"""The content hash of what builds a template (migrations, fixtures): the same files give the same
hash on every machine, so that every CI job and xdist worker asks for the same template."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path, PurePath

# Written by Python whenever a migration is imported: not content, and different on every machine.
SKIPPED_DIRECTORIES = frozenset({"__pycache__"})


class MissingPath(ValueError):
    """A path to hash that does not exist."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{path!r} does not exist")
        self.path = path


def _files_under(path: Path) -> Iterable[Path]:
    if not path.is_dir():
        yield path
        return
    for directory, subdirectories, files in os.walk(path):
        subdirectories[:] = [d for d in subdirectories if d not in SKIPPED_DIRECTORIES]
        for file in files:
            yield Path(directory, file)


def content_hash(paths: Iterable[str | Path], base: Path) -> str:
    """sha256 (hex) of every file given or under a directory given, each as its path relative to
    ``base`` (relative ``paths`` are taken from there) and its bytes, in the order of those paths.
    Directories named __pycache__ are left out. MissingPath for a path that does not exist."""
    files: dict[str, Path] = {}
    for given in paths:
        path = base / given
        if not path.exists():
            raise MissingPath(str(given))
        for file in _files_under(path):
            files[PurePath(os.path.relpath(file, base)).as_posix()] = file
    digest = hashlib.sha256()
    for relative in sorted(files):
        data = files[relative].read_bytes()
        # Lengths keep the boundaries unambiguous: no two different sets of files hash alike.
        name = relative.encode("utf-8", "surrogateescape")
        digest.update(b"%d:%s%d:" % (len(name), name, len(data)))
        digest.update(data)
    return digest.hexdigest()
