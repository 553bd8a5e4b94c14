"""Stopping ``serve`` and ``worker`` without losing anything (v2 contract, "Durability").

On SIGTERM or SIGINT a process stops taking new work (the worker claims nothing more;
leases it claimed but had not sent to a provider are given back), lets every refresh
already at a provider finish and persist, then exits, all within
``GRANTKEEPER_SHUTDOWN_TIMEOUT`` seconds of the signal. Refreshes run in tasks no caller
cancels (``refresh.engine``); one still at the provider when time is up keeps its lease
(the outcome is unknown), which then expires by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from grantkeeper.refresh.engine import drain
from grantkeeper.runtime import Runtime

__all__ = ["Shutdown"]

log = logging.getLogger(__name__)


class Shutdown:
    """The stop signal of one process and the deadline it starts."""

    def __init__(self, rt: Runtime, timeout: float) -> None:
        self._rt = rt
        self._timeout = timeout
        self._started: float | None = None
        #: set when the process should stop taking new work
        self.stop = asyncio.Event()

    def begin(self) -> None:
        """Stop taking new work (idempotent); the drain deadline starts now."""
        if self._started is None:
            self._started = time.monotonic()
            log.info("stopping: no new work; up to %.1fs to finish refreshes", self._timeout)
        self._rt.draining = True
        self.stop.set()

    def remaining(self) -> float:
        if self._started is None:
            return self._timeout
        return max(self._timeout - (time.monotonic() - self._started), 0.0)

    async def finish(self, worker: asyncio.Task[None] | None) -> None:
        """Wait for the worker's loops and every refresh in flight, up to the deadline."""
        self.begin()
        if worker is not None:
            done, _ = await asyncio.wait({worker}, timeout=self.remaining())
            if not done:
                worker.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await worker
        left = await drain(self._rt, self.remaining())
        if left:
            log.warning("stopped with %d refresh(es) still at a provider", left)
        else:
            log.info("stopped cleanly")
