"""The docker backend's templates: a builder's container committed into an image.

A builder is a container of the prepared image (prepared_image.py), whose cluster lives in the
container's own layer, which ``docker commit`` keeps (a VOLUME's content it would not). ``freeze``
takes the builder's password off its role, stops it with the image's stop signal (PostgreSQL's
fast shutdown: every session ends, the cluster is left clean), and commits it with a clone
wrapper as entrypoint, the builder's secrets emptied out of its environment, and labels naming
the deployment and the template. The image is tagged ``postgraas/template:<deployment>-<id>``, so
that a prune of dangling images leaves it; the artifact is the image's id, which a later image of
the same tag (a template id used again) cannot take over.

A clone is a container of that image. On its first start the clone wrapper renames the builder's
role and database to the clone's and sets its password, in a single-user postgres as the prepared
wrapper creates a tenant, then hands over to the prepared wrapper, which starts postgres at once:
no initdb, no copy, no restart. Docker refuses to remove an image that containers still use, so
``drop_template`` leaves one with clones; the reaper's sweep of templates no row holds removes it
once they are gone.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shlex
import time
from typing import Any

import docker.errors
import requests

from ...errors import BackendError, Conflict
from ..contract import Credentials, DatabaseSpec
from .containers import environment_of, log_tail
from .prepared_backend import DEPLOYMENT_LABEL, INSTANCE_ID_LABEL, MANAGED_LABEL, NAME_LABEL
from .prepared_image import (
    ADMIN_VERIFIER_ENV,
    BOOTSTRAP_USER,
    DATA_DIR,
    VERIFIER_ENV,
    WRAPPER_PATH,
    script_archive,
)

log = logging.getLogger(__name__)

REPOSITORY = "postgraas/template"
TEMPLATE_DEPLOYMENT_LABEL = "postgraas.template.deployment"
TEMPLATE_ID_LABEL = "postgraas.template.id"
CLONE_WRAPPER_PATH = "/usr/local/bin/postgraas-clone-entrypoint.sh"
# What a builder's environment may hold that no image may: its password, as a verifier or not.
SECRET_ENV = (VERIFIER_ENV, ADMIN_VERIFIER_ENV, "POSTGRES_PASSWORD")
# A fast shutdown takes well under a second; only a wedged server needs the SIGKILL after this.
STOP_TIMEOUT_S = 30
# The builder's server, started again after a failed freeze, accepts its password back within this.
RESUME_TIMEOUT_S = 60.0
IMAGE_ID = re.compile(r"sha256:[0-9a-f]{64}")

_CLONE_WRAPPER_TEMPLATE = r"""#!/bin/sh
# Entrypoint of a postgraas template image (postgraas_server/backends/docker/templates.py): a
# container of the prepared image, stopped cleanly and committed. On a clone's first start this
# hands the template's tenant (the builder's role and database) over to POSTGRES_USER and
# POSTGRES_DB, with the password whose SCRAM verifier is in POSTGRAAS_PASSWORD_VERIFIER, in a
# single-user postgres: the tenant keeps owning every object the builder made (and, where
# POSTGRAAS_ADMIN_VERIFIER is set, the bootstrap superuser gets that password). Then the prepared
# image's entrypoint, which finds its tenant made, starts postgres at once.
set -eu

prepared=@PREPARED@
template_user=@TEMPLATE_USER@
template_db=@TEMPLATE_DB@

case "${1:-postgres}" in
    postgres | -*) ;;
    *) exec "$prepared" "$@" ;;
esac

# Per template: a clone frozen into another template hands over again in that one's clones.
marker="$PGDATA/postgraas-clone-of-template-@TEMPLATE_ID@"

say() { echo "postgraas-clone-entrypoint: $*" >&2; }

# Quoted for SQL here (single-user postgres has no psql variables).
ident() { printf '"%s"' "$(printf '%s' "$1" | sed 's/"/""/g')"; }
literal() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/''/g")"; }

# -j below: a statement ends with a semicolon and an empty line.
statement() { printf '%s;\n\n' "$@"; }

hand_over_sql() {
    statement "SET exit_on_error = on" "SET log_min_error_statement = panic" "SET log_statement = 'none'"
    if [ "$db" = postgres ] && [ "$template_db" != postgres ]; then
        # As for a create asking for it: the server's own database makes way for the tenant's.
        statement "DROP DATABASE postgres"
    fi
    statement "BEGIN"
    if [ -n "$admin_verifier" ] && [ "$user" != @BOOTSTRAP@ ]; then
        # A swarm clone: the server logs in as the bootstrap superuser over TCP to count sessions
        # (it cannot run a command in a task); the prepared wrapper, finding its tenant made, would not.
        statement "ALTER ROLE $(ident @BOOTSTRAP@) PASSWORD $(literal "$admin_verifier")"
    fi
    if [ "$user" != "$template_user" ]; then
        statement "ALTER ROLE $(ident "$template_user") RENAME TO $(ident "$user")"
    fi
    statement "ALTER ROLE $(ident "$user") PASSWORD $(literal "$verifier")"
    if [ "$db" != "$template_db" ]; then
        statement "ALTER DATABASE $(ident "$template_db") RENAME TO $(ident "$db")"
    fi
    statement "COMMIT"
}

if [ ! -e "$marker" ]; then
    user=${POSTGRES_USER:-$template_user}
    db=${POSTGRES_DB:-$template_db}
    verifier=${POSTGRAAS_PASSWORD_VERIFIER:-}
    admin_verifier=${POSTGRAAS_ADMIN_VERIFIER:-}
    if [ -z "$verifier" ]; then
        say "POSTGRAAS_PASSWORD_VERIFIER is not set: the tenant would have no password"
        exit 1
    fi
    case "$user$db$verifier$admin_verifier" in
        *"
"*)
            say "POSTGRES_USER, POSTGRES_DB and the verifiers must be on one line"
            exit 1
            ;;
    esac
    # The prepared entrypoint runs a `postgres ...` command as the cluster's owner.
    if ! hand_over_sql | ("$prepared" postgres --single -j -D "$PGDATA" template1 >/dev/null); then
        say "could not hand the template's tenant over (see the error above)"
        exit 1
    fi
    : >"$marker"
    say "handed the template's tenant over"
fi
exec "$prepared" "$@"
"""


def clone_wrapper_script(tenant: Credentials, template_id: int) -> str:
    """The template image's entrypoint, the template's tenant written into it (shell-quoted)."""
    return (
        _CLONE_WRAPPER_TEMPLATE.replace("@PREPARED@", shlex.quote(WRAPPER_PATH))
        .replace("@TEMPLATE_USER@", shlex.quote(tenant.db_username))
        .replace("@TEMPLATE_DB@", shlex.quote(tenant.db_name))
        .replace("@TEMPLATE_ID@", str(int(template_id)))
        .replace("@BOOTSTRAP@", shlex.quote(BOOTSTRAP_USER))
    )


def template_tag(deployment: str, template_id: int, repository: str = REPOSITORY) -> str:
    """``postgraas/template:<deployment>-<id>`` (or of another ``repository``); a deployment id a
    tag cannot hold as it is gets a hash of itself appended, so that no two deployments share a tag."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", deployment).lstrip(".-")[:100]
    if safe != deployment:
        safe = f"{safe[:80]}_{hashlib.sha256(deployment.encode()).hexdigest()[:12]}"
    return f"{repository}:{safe}-{template_id}"


def refuse_names_taken(template_tenant: Credentials, spec: DatabaseSpec) -> None:
    """Names every clone's cluster has already, which its tenant cannot be renamed to."""
    if spec.db_username == BOOTSTRAP_USER != template_tenant.db_username:
        raise Conflict(
            f"A role named {spec.db_username!r} already exists in the cluster.", {"db_username": "already exists"}
        )
    if spec.db_name in ("template0", "template1"):
        raise Conflict(
            f"A database named {spec.db_name!r} already exists in the cluster.", {"db_name": "already exists"}
        )


def _sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class TemplateImages:
    """This deployment's template images on one engine, in ``repository``. Methods raise the
    docker SDK's errors for the backend to translate."""

    # Labels only a builder's container has, emptied in its image as the instance labels are.
    builder_labels: tuple[str, ...] = ()

    def __init__(self, deployment: str, repository: str = REPOSITORY) -> None:
        self.deployment = deployment
        self.repository = repository

    def _publish(self, client: Any, image: Any, template_id: int) -> str:
        """The artifact of the committed ``image``: here its id; where the image must reach other
        engines (swarm), a reference in a registry. A failure leaves the builder running."""
        return str(image.id)

    def _artifact(self, listed: dict[str, Any]) -> str:
        """The artifact of an image as the low-level image listing gives it."""
        return str(listed["Id"])

    def freeze(self, client: Any, container: Any, tenant: Credentials, template_id: int) -> str:
        """Commit the running builder ``container`` (checked as this deployment's) into template
        ``template_id``'s image and remove the container; the artifact (``_publish``). On failure
        the builder runs again as it was (or, when only its removal failed, the template is removed
        again)."""
        if (why := self._why_not(container, tenant)) is not None:
            raise BackendError(f"Container {container.name} cannot become a template: {why}.")
        password = self._check_tenant(container, tenant)
        self._psql(
            container,
            "becoming a template",
            # Nobody logs in to a template: its catalog keeps no password (older row versions and
            # the WAL may still hold the builder's verifier, which is no password).
            f"update pg_authid set rolpassword = null where rolname = {_sql_literal(tenant.db_username)}",
            # A builder made ephemeral (claimed so, or asked for so) leaves its clones durable.
            *(f"alter system reset {name}" for name in ("fsync", "synchronous_commit", "full_page_writes")),
        )
        try:
            container.put_archive("/", script_archive(CLONE_WRAPPER_PATH, clone_wrapper_script(tenant, template_id)))
            # The image's stop signal (SIGINT in the postgres image): a fast shutdown, which ends every
            # session and leaves the cluster clean. A stop, not a kill, which the restart policy would undo.
            container.stop(timeout=STOP_TIMEOUT_S)
            code = container.wait(timeout=STOP_TIMEOUT_S).get("StatusCode")
            if code != 0:
                raise BackendError(
                    f"Container {container.name} did not shut down cleanly (exit {code}), so it was not "
                    f"made a template. Last log lines:\n{log_tail(container, ())}"
                )
            image = self._commit(client, container, template_id)
            try:
                artifact = self._publish(client, image, template_id)
            except BaseException:
                self._remove_quietly(client, image.id)
                raise
        except BaseException:
            self._resume(container, tenant, password)
            raise
        try:
            container.remove(force=True, v=True)
        except docker.errors.NotFound:
            pass
        except BaseException:
            # Else the template would exist beside its builder, which the caller then removes too.
            self._discard(client, image.id, artifact)
            raise
        return artifact

    def drop(self, client: Any, artifact: str) -> None:
        """Remove the image ``artifact`` unless clones still use it (their removal lets the next
        drop remove it). Idempotent; refuses any image but this deployment's templates."""
        if not IMAGE_ID.fullmatch(artifact):
            raise BackendError(f"Invalid docker template reference {artifact!r}.")
        try:
            image = client.images.get(artifact)
        except docker.errors.ImageNotFound:
            return
        labels = image.labels or {}
        if labels.get(TEMPLATE_DEPLOYMENT_LABEL) != self.deployment or TEMPLATE_ID_LABEL not in labels:
            raise BackendError(f"The image {artifact} is no template of this deployment; it was left alone.")
        try:
            # Not forced: Docker refuses while a container of it (a clone) exists.
            client.images.remove(artifact)
        except docker.errors.ImageNotFound:
            return
        except docker.errors.APIError as e:
            if e.status_code != 409:
                raise
            log.info("template image %s is still used (%s); it is removed once its clones are gone", artifact, e)
            return
        log.info("removed template image %s", artifact)

    def list(self, client: Any) -> dict[int, str]:
        """Template id -> artifact of this deployment's template images. Of two images of one id
        (an id used again while clones kept the first), the older: the one no row can hold."""
        # The low-level listing: the model's would inspect each image, and fail for one removed meanwhile.
        listed = client.api.images(filters={"label": f"{TEMPLATE_DEPLOYMENT_LABEL}={self.deployment}"})
        found: dict[int, str] = {}
        for image in sorted(listed, key=lambda image: image.get("Created") or 0):
            value = (image.get("Labels") or {}).get(TEMPLATE_ID_LABEL, "")
            if value.isdigit():
                found.setdefault(int(value), self._artifact(image))
        return found

    # -- helpers ---------------------------------------------------------------------------

    @staticmethod
    def _why_not(container: Any, tenant: Credentials) -> str | None:
        if environment_of(container.attrs.get("Config") or {}).get("PGDATA") != DATA_DIR:
            return "it is not of the prepared image, and a commit keeps no data kept in a volume"
        if tenant.db_username == BOOTSTRAP_USER:
            return f"its tenant is the image's own superuser {BOOTSTRAP_USER!r}, which no clone could take over"
        if container.status != "running":
            return f"it is {container.status}, not running"
        return None

    def _check_tenant(self, container: Any, tenant: Credentials) -> str | None:
        """The tenant's password verifier (None: it has none), once its role and database are found."""
        text = self._psql(
            container,
            "looking up its tenant",
            f"select 'password:' || coalesce(rolpassword, '') from pg_authid where rolname = "
            f"{_sql_literal(tenant.db_username)} and exists (select 1 from pg_database where datname = "
            f"{_sql_literal(tenant.db_name)})",
        )
        if not text.startswith("password:"):
            # A template without its tenant would only make clones that fail.
            raise BackendError(f"Container {container.name} has no tenant {tenant.db_username!r}.")
        return text.removeprefix("password:") or None

    @staticmethod
    def _psql(container: Any, doing: str, *statements: str) -> str:
        """Run each statement (on its own: ALTER SYSTEM takes no transaction) as the bootstrap
        superuser over the container's socket, which its pg_hba trusts; the output."""
        command = ["psql", "-X", "-q", "-tA", "--no-password", "-v", "ON_ERROR_STOP=1", "-U", BOOTSTRAP_USER]
        command += ["-d", "postgres"]
        for statement in statements:
            command += ["-c", statement]
        code, output = container.exec_run(command)
        text = output.decode("utf-8", "replace").strip()
        if code != 0:
            raise BackendError(f"Container {container.name} failed {doing} (psql exit {code}): {text[-300:]}")
        return text

    def _commit(self, client: Any, container: Any, template_id: int) -> Any:
        image_config = client.images.get(container.attrs.get("Image")).attrs.get("Config") or {}
        # Given here, these override what the commit takes from the container's own config.
        config = {
            "Entrypoint": [CLONE_WRAPPER_PATH],
            # The image's, not the builder's (an ephemeral one's has durability off).
            "Cmd": image_config.get("Cmd") or ["postgres"],
            # Emptied: the builder's secrets, and its names, which each clone sets anew.
            "Env": [f"{name}=" for name in (*SECRET_ENV, "POSTGRES_USER", "POSTGRES_DB")],
            "Labels": {
                # The builder's, emptied: no container of the image passes for an instance of
                # its own; the backend's clones get theirs.
                MANAGED_LABEL: "",
                DEPLOYMENT_LABEL: "",
                INSTANCE_ID_LABEL: "",
                NAME_LABEL: "",
                **dict.fromkeys(self.builder_labels, ""),
                TEMPLATE_DEPLOYMENT_LABEL: self.deployment,
                TEMPLATE_ID_LABEL: str(template_id),
            },
        }
        repository, tag = template_tag(self.deployment, template_id, self.repository).rsplit(":", 1)
        message = f"postgraas: template {template_id} of deployment {self.deployment}"
        return container.commit(repository, tag, message=message, conf=config, pause=False)

    def _resume(self, container: Any, tenant: Credentials, password: str | None) -> None:
        """After a failed freeze: the builder runs again, its password back (logged, not raised:
        the freeze's own error is the one to tell)."""
        restore = f"update pg_authid set rolpassword = {_sql_literal(password) if password else 'null'} where "
        restore += f"rolname = {_sql_literal(tenant.db_username)}"
        try:
            container.reload()
            if container.status != "running":
                container.start()
            deadline = time.monotonic() + RESUME_TIMEOUT_S
            while True:
                try:
                    self._psql(container, "getting its password back", restore)
                    return
                except BackendError:
                    # The server is still starting (crash recovery, after an unclean stop).
                    if time.monotonic() >= deadline:
                        raise
                time.sleep(0.2)
        except (BackendError, docker.errors.DockerException, requests.RequestException):
            log.exception("container %s could not be resumed after a failed freeze", container.name)

    def _discard(self, client: Any, image_id: str, artifact: str) -> None:
        """Remove a template whose freeze failed after ``_publish`` (logged, not raised)."""
        self._remove_quietly(client, image_id)

    @staticmethod
    def _remove_quietly(client: Any, image_id: str) -> None:
        try:
            client.images.remove(image_id, force=True)
        except (docker.errors.DockerException, requests.RequestException):
            log.exception("could not remove the template image %s again", image_id)
