"""The prepared image: the configured postgres image with a cluster already initialised in it.

A container of the official image runs initdb, a temporary server, CREATE DATABASE and a restart
before its first login: most of a create's time. The prepared image is made once per engine from
the configured image, by running the image's own entrypoint (so whatever its initialisation does,
/docker-entrypoint-initdb.d included, is kept) with PGDATA outside its VOLUME, then committing it
with a wrapper entrypoint. On a container's first start only, the wrapper creates the requested
tenant in a single-user postgres (no server to wait for, no restart, no connection possible before
the tenant exists), then hands over to the image's own entrypoint, which starts postgres at once.

The tenant matches the official image's: ``POSTGRES_USER`` is a superuser and ``POSTGRES_DB``
exists and is its. Unlike there, the cluster's bootstrap superuser ``postgres`` stays (without a
password: the local socket only), and the data lives in the container's own layer, not in the
image's VOLUME (which is still mounted, empty). The password reaches the container only as a
SCRAM-SHA-256 verifier.

Each made image is checked by a container of it making a tenant before it is tagged; an image that
cannot be prepared (no psql, an entrypoint that ignores PGDATA ...) is used as it is.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import secrets
import shlex
import tarfile
import time
from dataclasses import dataclass
from typing import Any

import docker.errors
import requests

from ...scram import scram_sha256_verifier
from .containers import environment_of, log_tail, remove_quietly

log = logging.getLogger(__name__)

# Part of the tag: bump it when the way images are prepared changes in a way the wrapper's text does not show.
FORMAT_VERSION = 1
REPOSITORY = "postgraas/prepared"
PREPARED_FROM_LABEL = "postgraas.prepared_from"
BUILD_NAME_PREFIX = "postgraas-prepare-"
# Not the image's declared VOLUME (/var/lib/postgresql/data): docker commit keeps no volume's content.
DATA_DIR = "/var/lib/postgraas/data"
WRAPPER_PATH = "/usr/local/bin/postgraas-entrypoint.sh"
# The database initialisation creates; a tenant's first start renames it to POSTGRES_DB (a rename
# costs nothing, a CREATE DATABASE copies and syncs a template).
SPARE_DATABASE = "postgraas_spare"
VERIFIER_ENV = "POSTGRAAS_PASSWORD_VERIFIER"
# Optional: the bootstrap superuser's password, as a SCRAM verifier, for a server that must log in
# to the instance over TCP (a swarm instance has no socket the server can reach).
ADMIN_VERIFIER_ENV = "POSTGRAAS_ADMIN_VERIFIER"
BOOTSTRAP_USER = "postgres"
# initdb, a server start and a commit take seconds; a slow or busy engine gets plenty more.
BUILD_TIMEOUT_S = 180.0
# A build container not running this long after its creation is left from a builder that is gone (an
# engine restart stops it): a live builder's is stopped only between its shutdown and its commit.
STOPPED_BUILD_STALE_S = 30.0

# The text is part of the tag (prepared_tag): any change to it, its comment naming the module's
# former path included, makes every engine build the image again.
_WRAPPER_TEMPLATE = r"""#!/bin/sh
# Entrypoint of a postgraas prepared image (postgraas_server/backends/prepared_image.py). The cluster
# in $PGDATA was initialised when the image was made. On the container's first start this creates the
# tenant as the image's initialisation would have (POSTGRES_USER a superuser whose password has the
# SCRAM verifier in POSTGRAAS_PASSWORD_VERIFIER, owning POSTGRES_DB), in a single-user postgres: no
# server to wait for and no restart, and nobody can connect before the tenant exists. Then the
# image's own entrypoint finds the cluster initialised and starts postgres at once.
set -eu

run_original() {
    exec @ORIGINAL@ "$@"
}

case "${1:-postgres}" in
    postgres | -*) ;;
    *) run_original "$@" ;;
esac

marker="$PGDATA/postgraas-tenant-created"

say() { echo "postgraas-entrypoint: $*" >&2; }

# Quoted for SQL here (single-user postgres has no psql variables).
ident() { printf '"%s"' "$(printf '%s' "$1" | sed 's/"/""/g')"; }
literal() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/''/g")"; }

tenant_sql() {
    # -j below: a statement ends with a semicolon and an empty line.
    printf '%s;

'         "SET exit_on_error = on"         "SET log_min_error_statement = panic"         "SET log_statement = 'none'"
    if [ "$db" = postgres ]; then
        printf 'DROP DATABASE IF EXISTS %s;

' "$(ident @SPARE@)"
    fi
    printf 'BEGIN;

'
    if [ -n "$admin_verifier" ] && [ "$user" != @BOOTSTRAP@ ]; then
        printf 'ALTER ROLE %s PASSWORD %s;

' "$(ident @BOOTSTRAP@)" "$(literal "$admin_verifier")"
    fi
    if [ "$user" = @BOOTSTRAP@ ]; then
        printf 'ALTER ROLE %s PASSWORD %s;

' "$(ident "$user")" "$(literal "$verifier")"
    else
        printf 'CREATE ROLE %s SUPERUSER CREATEDB CREATEROLE REPLICATION BYPASSRLS LOGIN PASSWORD %s;

'             "$(ident "$user")" "$(literal "$verifier")"
    fi
    if [ "$db" != postgres ] && [ "$db" != @SPARE@ ]; then
        printf 'ALTER DATABASE %s RENAME TO %s;

' "$(ident @SPARE@)" "$(ident "$db")"
    fi
    printf 'ALTER DATABASE %s OWNER TO %s;

COMMIT;

' "$(ident "$db")" "$(ident "$user")"
}

if [ ! -e "$marker" ]; then
    user=${POSTGRES_USER:-postgres}
    db=${POSTGRES_DB:-$user}
    verifier=${POSTGRAAS_PASSWORD_VERIFIER:-}
    admin_verifier=${POSTGRAAS_ADMIN_VERIFIER:-}
    case "$user$db$verifier$admin_verifier" in
        *"
"*)
            say "POSTGRES_USER, POSTGRES_DB and the verifier must be on one line"
            exit 1
            ;;
    esac
    # Through the image's own entrypoint, which drops to the cluster's owner and runs a `postgres ...`
    # command as given once it found the cluster initialised. exit_on_error makes a failed statement
    # end it with a non-zero status; its output (prompts, the entrypoint's notes) is of no interest.
    if ! tenant_sql | (@ORIGINAL@ postgres --single -j -D "$PGDATA" template1 >/dev/null); then
        say "could not create the tenant (see the error above)"
        exit 1
    fi
    : >"$marker"
    say "created the tenant"
fi
unset POSTGRAAS_PASSWORD_VERIFIER POSTGRAAS_ADMIN_VERIFIER
run_original "$@"
"""


class PrepareFailed(Exception):
    """The configured image cannot be prepared; the message says why."""


class PrepareBusy(Exception):
    """Another server's build did not finish in time: the plain path this once, and try again next time."""


def wrapper_script(original_entrypoint: list[str]) -> str:
    """The prepared image's entrypoint, ending in ``exec`` of the image's own one."""
    original = " ".join(shlex.quote(part) for part in original_entrypoint)
    return (
        _WRAPPER_TEMPLATE.replace("@ORIGINAL@", original)
        .replace("@SPARE@", shlex.quote(SPARE_DATABASE))
        .replace("@BOOTSTRAP@", shlex.quote(BOOTSTRAP_USER))
    )


def prepared_tag(image_id: str) -> str:
    """One tag per configured image id and preparation format: shared by every server on the engine."""
    # Everything that shapes the image: a change to any of it makes a new tag, never a stale reuse.
    shape = [image_id, FORMAT_VERSION, DATA_DIR, WRAPPER_PATH, SPARE_DATABASE, BOOTSTRAP_USER, _WRAPPER_TEMPLATE]
    digest = hashlib.sha256("\n".join(map(str, shape)).encode()).hexdigest()
    return f"{REPOSITORY}:{digest[:16]}"


@dataclass
class _Build:
    container: Any
    # The bootstrap superuser's password while the image is made; removed before the commit.
    password: str


def create_build_container(client: Any, image: Any, name: str, options: dict[str, Any]) -> _Build:
    password = secrets.token_urlsafe(24)
    container = client.containers.create(
        image.id,
        name=name,
        environment={
            "PGDATA": DATA_DIR,
            "POSTGRES_USER": BOOTSTRAP_USER,
            "POSTGRES_PASSWORD": password,
            "POSTGRES_DB": SPARE_DATABASE,
        },
        # Baked into the image with the commit (a container's labels are), which is what marks it.
        labels={PREPARED_FROM_LABEL: image.id},
        # Only docker exec talks to it, over its own loopback.
        network_mode="none",
        detach=True,
        **options,
    )
    return _Build(container, password)


def build(client: Any, image: Any, build: _Build, tag: str, options: dict[str, Any]) -> str:
    started = time.monotonic()
    container, password = build.container, build.password
    log.info("preparing image %s from %s (once per engine)", tag, image.id)
    try:
        container.start()
        _wait_for_login(container, BOOTSTRAP_USER, SPARE_DATABASE, password)
        # The build's password must not stay in the image: the bootstrap superuser keeps only the
        # local socket. This also proves psql works there without a password, as the wrapper needs.
        code, output = container.exec_run(
            [
                "psql",
                "-X",
                "-q",
                "-tA",
                "--no-password",
                "-v",
                "ON_ERROR_STOP=1",
                "-U",
                BOOTSTRAP_USER,
                "-d",
                "postgres",
                "-c",
                "SHOW data_directory",
                "-c",
                f"ALTER ROLE {BOOTSTRAP_USER} PASSWORD NULL",
            ]
        )
        text = output.decode("utf-8", "replace").strip()
        if code != 0:
            raise PrepareFailed(f"psql over the local socket failed (exit {code}): {text[-300:]}")
        if text != DATA_DIR:
            raise PrepareFailed(f"the image ignores PGDATA (its cluster is in {text[-200:]!r})")
        original = original_entrypoint(image)
        container.put_archive("/", script_archive(WRAPPER_PATH, wrapper_script(original)))
        # A clean shutdown: a container of the image then starts without crash recovery.
        container.stop(timeout=60)
        code = container.wait(timeout=60).get("StatusCode")
        if code != 0:
            raise PrepareFailed(f"the server did not shut down cleanly (exit {code}): {_logs(container, password)}")
        # Untagged until a container of it made a tenant: nobody uses it before.
        prepared = container.commit(
            message=f"postgraas: {image.id} with an initialised cluster", changes=_commit_changes(image)
        )
        try:
            _check(client, prepared.id, options)
            prepared.tag(*tag.rsplit(":", 1))
        except BaseException:
            _remove_image_quietly(client, prepared.id)
            raise
    except docker.errors.APIError as e:
        raise PrepareFailed(f"docker failed: {e.explanation or e}") from e
    finally:
        # Last: its name is the lock other builders wait on.
        remove_quietly(container, "after building the prepared image")
    log.info("prepared image %s in %.1f s", tag, time.monotonic() - started)
    return tag


def _check(client: Any, image_id: str, options: dict[str, Any]) -> None:
    """A container of the prepared image makes its tenant, as every instance will: else the image
    (its entrypoint, its tools) does not take the wrapper, and is better used as it is."""
    password = secrets.token_urlsafe(24)
    container = client.containers.create(
        image_id,
        name=f"{BUILD_NAME_PREFIX}check-{secrets.token_hex(4)}",
        environment={
            "POSTGRES_USER": "postgraas_check",
            "POSTGRES_DB": "postgraas_check",
            VERIFIER_ENV: scram_sha256_verifier(password),
        },
        network_mode="none",
        detach=True,
        **options,
    )
    try:
        container.start()
        _wait_for_login(container, "postgraas_check", "postgraas_check", password)
    finally:
        remove_quietly(container, "after checking a prepared image")


def _wait_for_login(container: Any, user: str, database: str, password: str) -> None:
    """Until the image's real server answers over TCP (its temporary init server has no TCP)."""
    command = ["psql", "-X", "-q", "-h", "127.0.0.1", "-U", user, "-d", database, "-c", "select 1"]
    deadline = time.monotonic() + BUILD_TIMEOUT_S
    while True:
        container.reload()
        if container.status != "running":
            raise PrepareFailed(f"its container stopped during initialisation: {_logs(container, password)}")
        code, output = container.exec_run(command, environment={"PGPASSWORD": password})
        if code == 0:
            return
        if code in (126, 127):
            raise PrepareFailed(f"the image has no usable psql: {output.decode('utf-8', 'replace').strip()[-200:]}")
        if time.monotonic() >= deadline:
            raise PrepareFailed(f"no login within {BUILD_TIMEOUT_S:g} s: {_logs(container, password)}")
        time.sleep(0.2)


def original_entrypoint(image: Any) -> list[str]:
    entrypoint = (image.attrs.get("Config") or {}).get("Entrypoint") or []
    return [entrypoint] if isinstance(entrypoint, str) else list(entrypoint)


def _commit_changes(image: Any) -> list[str]:
    config = image.attrs.get("Config") or {}
    original_env = environment_of(config)
    command = config.get("Cmd") or ["postgres"]
    changes = [f"ENV PGDATA={DATA_DIR}"]
    # The build container's values, baked in by the commit, go back to the image's own (mostly
    # none): above all the build's password.
    for name in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"):
        changes.append(f"ENV {name}={json.dumps(original_env.get(name, ''))}")
    changes += [f"ENTRYPOINT {json.dumps([WRAPPER_PATH])}", f"CMD {json.dumps(command)}"]
    return changes


def script_archive(path: str, script: str) -> bytes:
    """A tar archive (for put_archive at "/") holding one executable script at ``path``."""
    data = script.encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(path.lstrip("/"))
        info.size, info.mode, info.mtime = len(data), 0o755, int(time.time())
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _logs(container: Any, password: str) -> str:
    return "last log lines:\n" + log_tail(container, (password,))


def _remove_image_quietly(client: Any, image_id: str) -> None:
    try:
        client.images.remove(image_id, force=True)
    except (docker.errors.DockerException, requests.RequestException):
        log.exception("could not remove the image %s that failed its check", image_id)
