"""The reaper's part for templates: builds whose builder went silent, finalizes whose server died,
expired templates, deletes that did not finish, old failed rows, and templates in a backend that
no row holds."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from ..backends import BackendRegistry
from ..config import LifecycleSettings
from ..errors import PostgraasError
from ..models import INSTANCES, TEMPLATES, Template, TemplateStatus, db, utcnow
from .template_removal import remove_builder, remove_template, update_row_of

log = logging.getLogger(__name__)

# A row in these holds, or is about to record, the artifact of its id: never an orphan.
LIVE = (TemplateStatus.BUILDING, TemplateStatus.FINALIZING, TemplateStatus.DELETING)


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
        failed_before = now - timedelta(seconds=self.lifecycle.failed_retention)
        for row in rows:
            expired = row.expires_at is not None and row.expires_at <= now
            try:
                if row.status in (TemplateStatus.BUILDING, TemplateStatus.FINALIZING):
                    self._give_up_silent_build(row, now)
                elif row.status == TemplateStatus.DELETING:
                    # A request (or a finalize replacing it) removing it right now is left to finish.
                    if (row.status_changed_at or row.created_at) <= now - timedelta(
                        seconds=self.lifecycle.heartbeat_timeout
                    ):
                        self._remove(row, "deleting")
                elif expired and row.status in (TemplateStatus.READY, TemplateStatus.FAILED):
                    self._delete(row, "expired")
                elif row.status == TemplateStatus.FAILED and (row.status_changed_at or row.created_at) <= failed_before:
                    self._delete(row, "failed long ago")
            except PostgraasError as e:
                log.warning("reaper: template %s (id %s): %s", row.name, row.id, e.msg)
            except Exception:
                # One template must not stop the pass for every other.
                log.exception("reaper: template %s (id %s) failed", row.name, row.id)
        self._drop_orphans()

    def _give_up_silent_build(self, row: Any, now: datetime) -> None:
        """A builder silent for build_timeout, or a finalize whose server died (its heartbeat was
        set when it began): the build fails; what it made goes (the frozen template, if any, is an
        orphan then)."""
        last_sign = row.heartbeat_at or row.created_at
        if last_sign > now - timedelta(seconds=row.build_timeout):
            return
        if row.status == TemplateStatus.FINALIZING and self._freezing(row.builder_instance_id, now):
            return
        self.keep_lease()
        detail = (
            f"the builder sent no heartbeat for {row.build_timeout} s; the build was given up"
            if row.status == TemplateStatus.BUILDING
            else "its finalize stopped with its server; the build was given up"
        )
        this_build = (
            TEMPLATES.c.status == row.status,
            TEMPLATES.c.build_id == row.build_id,
            TEMPLATES.c.heartbeat_at == row.heartbeat_at,
        )
        if not update_row_of(
            row.id, *this_build, status=TemplateStatus.FAILED, status_detail=detail, status_changed_at=now
        ):
            return
        if row.status == TemplateStatus.BUILDING and row.builder_instance_id is not None:
            # A finalizing build's builder is deleting already: the instances' reaper finishes it.
            remove_builder(self.backends, row.builder_instance_id)
        self.report("template_build_given_up", row.backend, f"gave up the build of template {row.name} (id {row.id})")

    def _freezing(self, builder_id: int | None, now: datetime) -> bool:
        """A finalize beats its builder's row while the backend freezes it (which may take longer
        than a build_timeout: a commit and push of a large image): a fresh beat is a live finalize."""
        if builder_id is None:
            return False
        beat = db.session.execute(select(INSTANCES.c.heartbeat_at).where(INSTANCES.c.id == builder_id)).scalar()
        db.session.rollback()
        return beat is not None and beat > now - timedelta(seconds=self.lifecycle.heartbeat_timeout)

    def _delete(self, row: Any, why: str) -> None:
        self.keep_lease()
        if update_row_of(
            row.id, TEMPLATES.c.status == row.status, status=TemplateStatus.DELETING, status_changed_at=utcnow()
        ):
            self._remove(row, why)

    def _remove(self, row: Any, why: str) -> None:
        self.keep_lease()
        if remove_template(self.backends, row.id):
            self.report("template_removed", row.backend, f"removed template {row.name} (id {row.id}): {why}")

    def _drop_orphans(self) -> None:
        for name, backend in self.backends.backends.items():
            if backend.why_no_template() is not None:
                continue
            try:
                listed = backend.list_templates()
            except PostgraasError as e:
                log.warning("reaper: cannot list the templates of backend %s: %s", name, e.msg)
                continue
            for template_id, artifact in listed.items():
                # Read now, after the listing: a row made or finalized since holds it.
                db.session.expire_all()
                row = db.session.get(Template, template_id)
                held = row is not None and (
                    row.status in LIVE or (row.status == TemplateStatus.READY and row.artifact == artifact)
                )
                db.session.rollback()
                if held:
                    continue
                self.keep_lease()
                try:
                    backend.drop_template(artifact)
                except PostgraasError as e:
                    log.warning("reaper: could not drop orphan template %s in %s: %s", artifact, name, e.msg)
                    continue
                self.report("template_orphan_removed", name, f"removed orphan template {artifact} from backend {name}")
