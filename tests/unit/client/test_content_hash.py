"""The content hash of `--hash-of` and `--postgraas-template-hash-of`: the same files hash alike
anywhere, any change to them (a byte, a name, a file more) hashes differently."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from postgraas_server.client.content_hash import MissingPath, content_hash


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "one"
    (root / "migrations" / "versions").mkdir(parents=True)
    (root / "migrations" / "env.py").write_text("print('env')\n")
    (root / "migrations" / "versions" / "001.py").write_text("up = 1\n")
    (root / "fixtures.sql").write_text("insert into t values (1);\n")
    return root


def test_the_same_files_hash_alike_wherever_and_however_given(project, tmp_path):
    digest = content_hash(["migrations", "fixtures.sql"], project)
    assert len(digest) == 64 and int(digest, 16) >= 0
    copy = shutil.copytree(project, tmp_path / "elsewhere")
    assert content_hash(["fixtures.sql", "migrations/"], copy) == digest
    assert content_hash([copy / "migrations", "./fixtures.sql", "migrations/env.py"], copy) == digest
    listed = ["migrations/env.py", "migrations/versions/001.py", "fixtures.sql"]
    assert content_hash(listed, project) == digest
    # What Python writes when a migration is imported is no content.
    (project / "migrations" / "__pycache__").mkdir()
    (project / "migrations" / "__pycache__" / "env.cpython-311.pyc").write_bytes(b"\x00bytecode")
    assert content_hash(["migrations", "fixtures.sql"], project) == digest


@pytest.mark.parametrize(
    "change",
    [
        lambda root: (root / "fixtures.sql").write_text("insert into t values (2);\n"),
        lambda root: (root / "migrations" / "versions" / "001.py").rename(root / "migrations" / "versions" / "002.py"),
        lambda root: (root / "migrations" / "versions" / "002.py").write_text(""),
    ],
    ids=["a-byte", "a-name", "an-empty-file-more"],
)
def test_any_change_hashes_differently(project, change):
    before = content_hash(["migrations", "fixtures.sql"], project)
    change(project)
    assert content_hash(["migrations", "fixtures.sql"], project) != before


def test_where_one_file_ends_and_the_next_begins_counts(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x").write_text("12")
    (tmp_path / "a" / "y").write_text("3")
    (tmp_path / "b" / "x").write_text("1")
    (tmp_path / "b" / "y").write_text("23")
    assert content_hash(["."], tmp_path / "a") != content_hash(["."], tmp_path / "b")


def test_a_missing_path_is_named(project):
    with pytest.raises(MissingPath) as raised:
        content_hash(["migrations", "nope.sql"], project)
    assert raised.value.path == "nope.sql"
