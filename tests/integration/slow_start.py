"""The PostgreSQL binaries with a server start 5 s late, so that a test can land mid-create: kill
the server then, interrupt the client, or remove the instance while its postgres is on its way."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from postgraas_server.backends.local import find_bin_dir

START_DELAY_S = 5


@pytest.fixture
def slow_start_bin() -> Iterator[Path]:
    """A bin_dir whose ``postgres`` sleeps before starting a server (not before ``--single`` nor
    ``--version``, which build the template cluster); outside private directories, for the
    postgres OS user. The wrapper keeps its name and arguments, as the real start's process does."""
    real = find_bin_dir(None)
    slow = Path(tempfile.mkdtemp(prefix="postgraas-slow-bin-", dir="/tmp"))
    for tool in real.iterdir():
        (slow / tool.name).symlink_to(tool)
    (slow / "postgres").unlink()
    (slow / "postgres").write_text(
        '#!/bin/sh\ncase " $* " in *" --single "* | *" --version "*) ;; '
        f'*) sleep {START_DELAY_S} ;; esac\nexec {real / "postgres"} "$@"\n'
    )
    (slow / "postgres").chmod(0o755)
    slow.chmod(0o755)
    yield slow
    shutil.rmtree(slow)
