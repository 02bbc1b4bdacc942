"""Bounded concurrency for triage requests: uploads per client, then a few run, a few wait, the rest
are refused at once.

Receiving an upload takes no worker: a client address may have ``per_client`` uploads in progress
(``UploadLimiter``; the next gets a ``TooManyUploadsError``, 429 with Retry-After), and each upload
has its own deadline and minimum rate (``service.uploads``), so slow clients hold only their own
sockets. A study is *admitted* once its whole upload has been received, and stays admitted until
it is answered; at most ``running + queued`` are admitted at a time, and the next one gets an
``OverCapacityError`` (429 with Retry-After). Admitted requests take one of ``running`` slots
for the heavy part (decoding, resampling, inference), which runs in worker threads, so the event
loop stays free for ``/healthz``, ``/readyz`` and ``/metrics`` however busy the workers are. All
of this runs on the event loop's thread, so plain counters need no lock.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from service.errors import OverCapacityError, TooManyUploadsError
from service.text import counted


class StudyLimiter:
    """Admission (running + queued) and the running slots themselves."""

    def __init__(self, running: int, queued: int) -> None:
        if running < 1 or queued < 0:
            raise ValueError("StudyLimiter needs running >= 1 and queued >= 0")
        self.running = running
        self.queued = queued
        self.admitted = 0
        self._slots = anyio.Semaphore(running)
        self._seconds_per_job = 1.0  # moving estimate, for Retry-After

    @property
    def capacity(self) -> int:
        return self.running + self.queued

    def retry_after_s(self) -> int:
        """How long until a slot is likely free: the queue ahead, at the recent job duration."""
        waves = max(1.0, (self.admitted - self.running + 1) / self.running)
        return max(1, math.ceil(waves * self._seconds_per_job))

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        if self.admitted >= self.capacity:
            raise OverCapacityError(
                f"The gateway is busy ({counted(self.running, 'study', 'studies')} running, "
                f"{self.queued} waiting); "
                "retry later.",
                retry_after=self.retry_after_s(),
            )
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self._slots:
            started = anyio.current_time()
            try:
                yield
            finally:
                elapsed = anyio.current_time() - started
                self._seconds_per_job = 0.8 * self._seconds_per_job + 0.2 * elapsed


class UploadLimiter:
    """At most ``per_client`` uploads in progress per client address."""

    RETRY_AFTER_S = 5

    def __init__(self, per_client: int) -> None:
        if per_client < 1:
            raise ValueError("UploadLimiter needs per_client >= 1")
        self.per_client = per_client
        self.receiving: dict[str, int] = {}

    @asynccontextmanager
    async def receiving_from(self, client: str) -> AsyncIterator[None]:
        count = self.receiving.get(client, 0)
        if count >= self.per_client:
            raise TooManyUploadsError(
                f"This client already has {counted(count, 'upload')} in progress; wait for one "
                "to finish.",
                retry_after=self.RETRY_AFTER_S,
            )
        self.receiving[client] = count + 1
        try:
            yield
        finally:
            left = self.receiving[client] - 1
            if left:
                self.receiving[client] = left
            else:
                del self.receiving[client]
