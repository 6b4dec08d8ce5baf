"""What Postgraas does, without HTTP: instances, the warm pool, policy and the reaper, over the
meta db and the backends. The API translates requests into calls of ``InstanceService`` and
``TemplateService``;
``start_background_work`` runs the pool keeper and the reaper of a server process."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Settings
from .background import Context
from .instances import InstanceService
from .pool_keeper import PoolKeeper
from .reaper import Reaper
from .reaper_loop import ReaperLoop
from .templates import TemplateService


@dataclass
class BackgroundWork:
    """The threads of one server process that keep pools filled and reconcile the meta db."""

    keeper: PoolKeeper | None
    reaper: ReaperLoop | None

    def stop(self, wait: float = 0) -> None:
        """``wait``: seconds the reaper may take to end its pass and give its lease back."""
        if self.keeper is not None:
            self.keeper.stop()
        if self.reaper is not None:
            self.reaper.stop(wait)


def start_background_work(service: InstanceService, settings: Settings, context: Context) -> BackgroundWork:
    """Start the pool keeper (where a backend has a pool, or may keep templates' pools) and the
    reaper (unless its interval is 0). Every process runs both: keepers count before they fill, and
    the reaper's lease lets one act."""
    keeper = None
    template_pools = any(
        backend.why_no_pool() is None and backend.why_no_template() is None
        for backend in service.backends.backends.values()
    )
    if service.backends.pools or template_pools:
        keeper = PoolKeeper(service.pool)
        keeper.start(context)
    reaper = None
    if settings.lifecycle.reaper_interval > 0:
        reaper = ReaperLoop(Reaper(service.backends, settings.lifecycle, service.heartbeats, context), context)
        reaper.start()
    return BackgroundWork(keeper, reaper)


__all__ = [
    "BackgroundWork",
    "InstanceService",
    "PoolKeeper",
    "Reaper",
    "ReaperLoop",
    "TemplateService",
    "start_background_work",
]
