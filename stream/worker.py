"""The worker process: Faust's Worker, with recstream's logging and a graceful stop.

On SIGTERM or SIGINT Faust stops the app by waiting until every consumed record is acked.
Records in open windows are acked only when their window flushes, so the stop first closes
every open window (:func:`stream.app.create_app`'s ``close_all_windows``): their events
reach the store and their recommendations are sent before the consumer commits and leaves.
"""

from __future__ import annotations

import logging
from typing import Any

import faust

from stream.app import WorkerContext, create_app
from stream.config import Settings
from stream.logs import configure_logging

__all__ = ["Worker", "run_worker"]

log = logging.getLogger(__name__)


class Worker(faust.Worker):
    """``faust.Worker`` whose stop flushes the open windows before the app stops consuming."""

    def __init__(self, app: faust.App, ctx: WorkerContext, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.ctx = ctx
        self.spinner = None  # Faust's terminal spinner writes escape codes into the log stream

    async def on_stop(self) -> None:
        # mode's Service.stop runs on_stop before stopping children (the app, its agents).
        if self.ctx.close_all_windows is not None and self.ctx.opened:
            pending = self.ctx.buffer.pending
            try:
                await self.ctx.close_all_windows()
                log.info("shutdown: flushed %d pending events", pending)
            except Exception:  # un-acked records are redelivered: nothing is lost
                log.exception("shutdown: flushing open windows failed")
        await super().on_stop()


def run_worker(settings: Settings) -> None:
    """Configure logging, build the app and run it until a signal stops it."""
    configure_logging(settings.log_level, settings.log_format)
    app, ctx = create_app(settings)
    Worker(app, ctx, loglevel=settings.log_level, quiet=True, override_logging=False).execute_from_commandline()
