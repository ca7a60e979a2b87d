"""Encrypted work shared fairly between clients: :class:`FairScheduler`.

A request is cut into independent *units* (one ciphertext row of a tree model, one row block of a
``bfv`` product). ``workers`` threads take units one at a time, turn by turn across the clients that
have work waiting (and, within a client, request after request), so a client sending the largest
batch a service allows delays another client by about one unit per turn, not by the whole batch
(found: a one-row client waited 125 s behind three 256-row requests). Admission is bounded (requests
in all and per client) and every request has a deadline: units not started by then are dropped and
the request fails with 504.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from veilml.serving.limits import ServiceError, ServiceLimits

__all__ = ["FairScheduler", "RunTimeout"]


class RunTimeout(ServiceError):
    """A request that did not finish within the service's run timeout (HTTP 504)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(
            504,
            f"the encrypted computation did not finish within this server's limit of {seconds:g} s (waiting included) "
            "and was stopped; send fewer rows per request, retry when the server is less busy, or ask the operator "
            "to raise --run-timeout",
            "run-timeout",
        )
        self.seconds = seconds

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.seconds,))


@dataclass(eq=False)
class _Job:
    client: str
    units: Sequence[Callable[[], Any]]
    deadline: float
    timeout: float
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[Any]]
    results: list[Any] = field(default_factory=list)
    next_unit: int = 0
    running: int = 0
    done: int = 0
    failed: bool = False

    def __post_init__(self) -> None:
        self.results = [None] * len(self.units)

    @property
    def pending(self) -> bool:
        return not self.failed and self.next_unit < len(self.units)


class FairScheduler:
    """Runs requests' units on ``workers`` threads, round-robin across clients (see the module docstring).

    Args:
        workers: threads taking units (a unit may itself wait for an isolated process).
        max_queue: requests admitted at once (waiting or running); beyond it 503 (retry).
        max_per_client: the same for one client; beyond it 429.
    """

    def __init__(self, workers: int, max_queue: int, max_per_client: int, name: str = "veilml-work") -> None:
        self.max_queue, self.max_per_client = max_queue, max_per_client
        self._clients: OrderedDict[str, deque[_Job]] = OrderedDict()  # turn order: the first goes next
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True) for i in range(workers)]
        for thread in self._threads:
            thread.start()

    @classmethod
    def for_limits(cls, limits: ServiceLimits, name: str = "veilml-work") -> FairScheduler:
        """The scheduler of a service with these ``limits`` (``workers``, ``max_queue``, ``max_requests_per_client``)."""
        return cls(limits.workers, limits.max_queue, limits.max_requests_per_client, name=name)

    @property
    def admitted(self) -> int:
        """Requests waiting or running now."""
        with self._cond:
            return sum(len(jobs) for jobs in self._clients.values())

    async def run(self, client: str, units: Sequence[Callable[[], Any]], timeout: float) -> list[Any]:
        """The results of ``units`` (in order), run fairly among other clients' work within ``timeout`` seconds.

        The first exception a unit raises fails the request (its other units are dropped) and is raised here.
        """
        loop = asyncio.get_running_loop()
        job = _Job(client, units, time.monotonic() + timeout, timeout, loop, loop.create_future())
        job.future.add_done_callback(_retrieve)  # a request that gave up leaves no unretrieved exception
        with self._cond:
            if self._closed:
                raise ServiceError(503, "the server is shutting down; retry on another", "busy")
            total = sum(len(jobs) for jobs in self._clients.values())
            mine = len(self._clients.get(client, ()))
            if mine >= self.max_per_client:
                raise ServiceError(
                    429,
                    f"you already have {mine} requests waiting or running on this server, its limit per client; "
                    "wait for their answers before sending more",
                    "busy-client",
                )
            if total >= self.max_queue:
                raise ServiceError(503, f"{total} requests are already waiting for encrypted work; retry shortly", "busy")
            if not units:
                job.future.set_result([])
                return []
            self._clients.setdefault(client, deque()).append(job)
            self._cond.notify_all()
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout)
        except TimeoutError:
            self._fail(job, RunTimeout(timeout))
            raise RunTimeout(timeout) from None
        finally:
            if not job.future.done():  # cancelled: the client went away
                self._fail(job, asyncio.CancelledError())

    def close(self) -> None:
        """Stop taking units; requests waiting fail with 503."""
        with self._cond:
            self._closed = True
            jobs = [job for queue in self._clients.values() for job in queue]
            self._cond.notify_all()
        for job in jobs:
            self._fail(job, ServiceError(503, "the server is shutting down; retry", "busy"))

    # ------------------------------------------------------------------------------- threads

    def _next(self) -> tuple[_Job, int] | None:
        """The next unit in turn (called with the lock held); jobs past their deadline fail on the way."""
        now = time.monotonic()
        for client in list(self._clients):
            for job in list(self._clients[client]):  # a job failed here leaves its queue
                if not job.pending:
                    continue
                if now >= job.deadline:
                    self._fail_locked(job, RunTimeout(job.timeout))
                    continue
                index = job.next_unit
                job.next_unit += 1
                job.running += 1
                self._clients.move_to_end(client)  # this client had its turn
                return job, index
        return None

    def _loop(self) -> None:
        while True:
            with self._cond:
                picked = self._next()
                while picked is None:
                    if self._closed:
                        return
                    self._cond.wait()
                    picked = self._next()
            job, index = picked
            try:
                result = job.units[index]()
            except BaseException as error:  # noqa: BLE001 - handed to the waiting request
                self._fail(job, error)
                with self._cond:
                    job.running -= 1
                    self._forget_locked(job)
                continue
            with self._cond:
                job.running -= 1
                job.results[index] = result
                job.done += 1
                finished = job.done == len(job.units) and not job.failed
                if finished or job.failed:
                    self._forget_locked(job)
            if finished:
                job.loop.call_soon_threadsafe(_settle, job.future, job.results, None)

    def _fail(self, job: _Job, error: BaseException) -> None:
        with self._cond:
            self._fail_locked(job, error)

    def _fail_locked(self, job: _Job, error: BaseException) -> None:
        if job.failed:
            return
        job.failed = True
        self._forget_locked(job)
        job.loop.call_soon_threadsafe(_settle, job.future, None, error)

    def _forget_locked(self, job: _Job) -> None:
        """Drop a finished or failed job once none of its units runs any more."""
        if job.running:
            return
        queue = self._clients.get(job.client)
        if queue is not None and job in queue:
            queue.remove(job)
            if not queue:
                del self._clients[job.client]


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)
