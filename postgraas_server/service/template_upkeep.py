"""The reaper's part for templates: builds whose builder went silent, expired templates, deletes
that did not finish, old failed rows, and templates in a backend that no row holds."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from ..backends import BackendRegistry
from ..config import LifecycleSettings
from ..errors import PostgraasError
from ..models import TEMPLATES, TemplateStatus, db
from .templates import remove_builder, remove_template, update_row_of

log = logging.getLogger(__name__)

# Of the rows, only these may own an artifact in a backend (a building one: its finalize is freezing).
HOLDING = (TemplateStatus.BUILDING, TemplateStatus.READY, TemplateStatus.DELETING)


class TemplateUpkeep:
    def __init__(
        self,
        backends: BackendRegistry,
        lifecycle: LifecycleSettings,
        report: Callable[[str, str, str], None],
        keep_lease: Callable[[], None],
    ) -> None:
        self.backends, self.lifecycle = backends, lifecycle
        self.report, self.keep_lease = report, keep_lease

    def run(self, now: datetime) -> None:
        rows = list(db.session.execute(select(TEMPLATES).order_by(TEMPLATES.c.id)).all())
        db.session.rollback()
        for row in rows:
            if row.status == TemplateStatus.BUILDING:
                self._give_up_silent_build(row, now)
            elif (
                row.status in (TemplateStatus.READY, TemplateStatus.FAILED) and row.expires_at and row.expires_at <= now
            ):
                self.keep_lease()
                if update_row_of(row.id, TEMPLATES.c.status == row.status, status=TemplateStatus.DELETING):
                    self._remove(row, "expired")
            elif row.status == TemplateStatus.DELETING:
                self._remove(row, "deleting")
            elif row.status == TemplateStatus.FAILED:
                changed = row.status_changed_at or row.created_at
                if changed <= now - timedelta(seconds=self.lifecycle.failed_retention):
                    self.keep_lease()
                    if update_row_of(
                        row.id, TEMPLATES.c.status == TemplateStatus.FAILED, status=TemplateStatus.DELETING
                    ):
                        self._remove(row, "failed long ago")
        self._drop_orphans({row.id for row in rows if row.status in HOLDING})

    def _give_up_silent_build(self, row: Any, now: datetime) -> None:
        last_sign = row.heartbeat_at or row.created_at
        if last_sign > now - timedelta(seconds=row.build_timeout):
            return
        self.keep_lease()
        detail = f"the builder sent no heartbeat for {row.build_timeout} s; the build was given up"
        still_silent = TEMPLATES.c.heartbeat_at == row.heartbeat_at
        if not update_row_of(
            row.id, TEMPLATES.c.status == TemplateStatus.BUILDING, still_silent, status=TemplateStatus.FAILED,
            status_detail=detail, status_changed_at=now,
        ):  # fmt: skip
            return
        if row.builder_instance_id is not None:
            try:
                remove_builder(self.backends, row.builder_instance_id)
            except PostgraasError as e:
                log.warning(
                    "reaper: builder instance %s of template %s stays for now: %s",
                    row.builder_instance_id,
                    row.id,
                    e.msg,
                )
        self.report("template_build_given_up", row.backend, f"gave up the build of template {row.name} (id {row.id})")

    def _delete(self, row: Any, why: str) -> None:
        self.keep_lease()
        if update_row_of(row.id, TEMPLATES.c.status == row.status, status=TemplateStatus.DELETING):
            self._remove(row, why)

    def _remove(self, row: Any, why: str) -> None:
        self.keep_lease()
        if remove_template(self.backends, row.id):
            self.report("template_removed", row.backend, f"removed template {row.name} (id {row.id}): {why}")

    def _drop_orphans(self, held: set[int]) -> None:
        for name, backend in self.backends.backends.items():
            if backend.why_no_template() is not None:
                continue
            try:
                listed = backend.list_templates()
            except PostgraasError as e:
                log.warning("reaper: cannot list the templates of backend %s: %s", name, e.msg)
                continue
            for template_id, artifact in listed.items():
                if template_id in held:
                    continue
                self.keep_lease()
                try:
                    backend.drop_template(artifact)
                except PostgraasError as e:
                    log.warning("reaper: could not drop orphan template %s in %s: %s", artifact, name, e.msg)
                    continue
                self.report("template_orphan_removed", name, f"removed orphan template {artifact} from backend {name}")
