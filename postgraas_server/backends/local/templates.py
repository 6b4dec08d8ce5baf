"""The local backend's templates: instance directories frozen for their clones to copy.

``freeze`` moves an instance's directory, its server shut down cleanly, to
``<data_root>/.templates/<deployment>-<template_id>/``: a rename within the data root's file
system, so nothing is copied. The area has a dot name, which ``home_of`` refuses as an instance
ref, and no instance.json, so list_objects (and the reaper) never take it for an instance. Each
template has a ``template.json`` (deployment, template id, the tenant's names; no secret),
written before the move and removed last. The area itself goes with its last template, so a
data root without templates holds nothing of them.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path

from ...errors import BackendError
from ..contract import Credentials
from .data_directories import META_FILE, RunAs, remove_home, write_meta

TEMPLATES_DIR = ".templates"
TEMPLATE_META = "template.json"
# The name a template's directory gets while it is removed (not a template's name any more),
# with the time the removal began.
DROPPING = ".dropping-"
# A directory being removed for longer than this was left by a removal cut short (a crash): another
# removal takes it then, and leaves younger ones to the removal under way.
ABANDONED_AFTER_S = 600
# A drop that takes the emptied area away may race a freeze between its mkdir and its rename.
MOVE_ATTEMPTS = 3


class TemplateStore:
    """The templates of one deployment in one data root; the artifact is the directory's name."""

    def __init__(self, data_root: Path, deployment: str) -> None:
        self.area = data_root / TEMPLATES_DIR
        self.deployment = deployment
        self._artifact = re.compile(re.escape(deployment) + r"-(\d+)")

    def artifact_for(self, template_id: int) -> str:
        return f"{self.deployment}-{template_id}"

    def path_of(self, artifact: str) -> Path:
        """The directory of this deployment's template ``artifact``; refuses every other name, so
        nothing outside the area (nor another deployment's template) is ever touched."""
        path = self.area / artifact
        if not self._artifact.fullmatch(artifact) or Path(artifact).name != artifact or path.parent != self.area:
            raise BackendError(f"Invalid local template reference {artifact!r}.")
        return path

    def move_in(self, home: Path, template_id: int, tenant: Credentials, run_as: RunAs | None) -> str:
        """Turn the instance directory ``home`` (its server stopped) into template ``template_id``;
        its artifact. Raises OSError with ``home`` left where it was."""
        artifact = self.artifact_for(template_id)
        target = self.path_of(artifact)
        meta = {
            "deployment": self.deployment,
            "template_id": template_id,
            "db_name": tenant.db_name,
            "db_username": tenant.db_username,
            "frozen_at": datetime.now(UTC).isoformat(),
        }
        write_meta(home, meta, TEMPLATE_META)
        for attempt in range(MOVE_ATTEMPTS):
            self.area.mkdir(mode=0o700, exist_ok=True)
            if run_as:
                os.chown(self.area, run_as.uid, run_as.gid)
            try:
                home.rename(target)
                break
            except FileNotFoundError:
                if attempt == MOVE_ATTEMPTS - 1 or not home.is_dir():
                    raise
        # No instance any more; the area is not scanned for instances, but leave no doubt.
        with contextlib.suppress(OSError):
            (target / META_FILE).unlink()
        return artifact

    def exists(self, artifact: str) -> bool:
        return self.path_of(artifact).is_dir()

    def data_of(self, artifact: str) -> Path:
        """The template's cluster, for a clone to copy; BackendError when the template is gone."""
        data = self.path_of(artifact) / "data"
        if not data.is_dir():
            raise BackendError(f"The local template {artifact} does not exist.")
        return data

    def remove(self, artifact: str) -> None:
        """Remove the template (idempotent), then the area if it was the last one. Renamed away
        first, in one step: a clone copying it meanwhile then fails (its copy finds files gone)
        instead of starting from a half-removed cluster, and no clone starts from it after."""
        path = self.path_of(artifact)
        self._remove_abandoned()
        if path.exists():
            dropping = self.area / f"{DROPPING}{artifact}-{int(time.time())}-{secrets.token_hex(4)}"
            try:
                path.rename(dropping)
            except FileNotFoundError:
                pass  # another drop took it
            except OSError as e:
                raise BackendError(f"The local template {artifact} could not be removed: {e}.") from e
            else:
                remove_home(dropping, TEMPLATE_META)
        # Not empty (another template, another deployment's, a freeze under way): it stays.
        with contextlib.suppress(OSError):
            self.area.rmdir()

    def _remove_abandoned(self) -> None:
        """Directories of removals cut short: nobody's template any more."""
        pattern = re.compile(re.escape(f"{DROPPING}{self.deployment}-") + r"\d+-(\d+)-[0-9a-f]+")
        for leftover in self.area.glob(f"{DROPPING}{self.deployment}-*") if self.area.exists() else ():
            began = pattern.fullmatch(leftover.name)
            # A name without a time is not one this code writes: nobody removes it but this.
            if began is None or time.time() - int(began.group(1)) > ABANDONED_AFTER_S:
                remove_home(leftover, TEMPLATE_META)

    def list(self) -> dict[int, str]:
        """This deployment's templates by id, from the directories' names."""
        found = {}
        with contextlib.suppress(FileNotFoundError):
            for entry in self.area.iterdir():
                match = self._artifact.fullmatch(entry.name)
                if match and entry.is_dir():
                    found[int(match.group(1))] = entry.name
        return found
