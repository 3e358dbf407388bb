"""When a writer may write: the per-group (and per-vault) lease protocol.

A group is written only by the holder of its lease (a Table row with an ETag and an
ExpiresAt, stored by :mod:`kvlink_core.registry`). The holder writes round after round
until nothing more is queued; a writer that finds the lease busy queues its observations
for the holder and pokes it, then waits for them to be written -- or takes the lease over
once its holder has gone. A lease is renewed between reading a group and writing it, and
every call made under it gets a budget that ends before the renewed lease could expire:
a write lands while its writer still holds the lease, or it does not happen.

:mod:`kvlink_core.sync` says *what* to write; this module says *when*. All waiting goes
through the registry's :class:`~kvlink_core.model.Clock`, so tests drive expiry, takeover
and hand-off without sleeping.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal, TypeVar

from .errors import LeaseBusyError
from .registry import Lease, LeaseLostError, Observation

if TYPE_CHECKING:
    from .model import LeaseKey
    from .registry import Registry

logger = logging.getLogger(__name__)
T = TypeVar("T")

# What a writer does when the lease is busy:
#   wait      -- wait for the lease, then write (a whole-group sync reports its own plan);
#   hand-off  -- queue the observations for the holder and wait until they are written (an event);
#   queue     -- queue them, poke the holder and leave (an event in a burst on a vault's lease).
Busy = Literal["wait", "hand-off", "queue"]


@dataclass
class Round:
    """What one holder round knows: observations keyed by lower-cased secret name."""

    observations: dict[str, Observation] = field(default_factory=dict)
    complete: bool = False  # the observations are a whole vault listing
    own: bool = False  # the caller's own round, not only others' queued work (set by the holder)
    gather: bool = False  # read the queue in this first round too
    always: bool = False  # the caller's round runs even without observations (e.g. to take a marker out)

    def merge(self, more: Iterable[Observation]) -> None:
        for obs in more:
            known = self.observations.get(obs.state.key)
            if known is None or obs.at >= known.at:
                self.observations[obs.state.key] = obs


class Holding:
    """The lease as its holder sees it during a round: how long a call may take, and renewal around I/O."""

    def __init__(self, leases: Leases, lease: Lease) -> None:
        self._leases = leases
        self.lease = lease

    def budget(self) -> float:
        """Seconds a call may still take: what is left of the lease by our clock, less the margin
        for other instances' clocks and for a request still on its way when the budget ends."""
        leases = self._leases
        left = self.lease.renewed + leases.registry.lease_seconds - leases.clock.monotonic()
        return left - leases.margin

    def keep_alive(self) -> float:
        """Renew if a third of the lease has gone (pokes are seen here too); the budget for the next call."""
        leases = self._leases
        if leases.clock.monotonic() - self.lease.renewed > leases.registry.lease_seconds / 3:
            self.lease = leases.registry.refresh(self.lease)
        return self.budget()

    def renew(self) -> float:
        """Before a write: renew now, proving the lease is still ours (:class:`LeaseLostError` if
        another instance took it over), and return the budget the write must fit in."""
        self.lease = self._leases.registry.refresh(self.lease)
        budget = self.budget()
        if budget <= 0:  # the renewal itself took most of the lease: do not start a write now
            raise LeaseLostError(f"the lease on {self.lease.key} has no time left for a write")
        return budget


class Leases:
    """Acquire, hold rounds, hand off, wait and release; the clock is the registry's."""

    def __init__(
        self,
        registry: Registry,
        *,
        max_wait: float | None = None,
        holder_budget: float = 15.0,
        batch_window: float = 0.3,
        max_batch_window: float = 2.4,
    ) -> None:
        self.registry = registry
        self.clock = registry.clock
        lease_seconds = registry.lease_seconds
        # A call under the lease ends this long before the lease would: other instances judge
        # ExpiresAt by their own clocks, and a request may still be on its way when we give up.
        self.margin = lease_seconds / 4
        # A waiter gives up (and lets the event be redelivered) after two lease lifetimes.
        self.max_wait = max_wait if max_wait is not None else 2 * lease_seconds
        # How long one invocation keeps writing others' queued work before handing the lease on.
        self.holder_budget = holder_budget
        # How long a holder lets queued work gather between two writes: a wait inside the lease,
        # so it stays well inside the margin whatever the lease's length.
        self.batch_window = min(batch_window, lease_seconds / 6)
        self.max_batch_window = min(max_batch_window, lease_seconds / 6)

    def run(
        self,
        key: LeaseKey,
        first: Round,
        apply: Callable[[Round, Holding], T],
        *,
        default: T,
        queued: T,
        busy: Busy,
    ) -> T:
        """Run ``apply`` under ``key``'s lease for ``first`` and for whatever others queue meanwhile.

        Returns what ``apply`` returned for the caller's own round (or the first round that had
        work, or ``default``); ``queued`` when the observations were left to another holder.
        """
        waiters_poll = busy != "queue"
        lease = self.registry.try_acquire(key)
        if lease is not None:
            if busy == "queue":
                # Several groups are about to be written for one secret: let a burst's other events queue
                # first, so this write carries theirs too (a lone event pays this short wait, once).
                self.clock.sleep(self.batch_window)
                first.gather = True
            return self._hold(key, lease, first, apply, default, waiters_poll=waiters_poll)
        if busy == "wait":
            return self._hold(key, self._wait_for_lease(key), first, apply, default)
        return self._hand_off(
            key,
            first,
            on_lease=lambda lease: self._hold(key, lease, Round(), apply, default, waiters_poll=waiters_poll),
            queued=queued,
            wait=busy == "hand-off",
        )

    def _hold(
        self,
        key: LeaseKey,
        lease: Lease,
        first: Round,
        apply: Callable[[Round, Holding], T],
        default: T,
        *,
        waiters_poll: bool = True,
    ) -> T:
        """Write as the lease holder, round after round, until nothing more is queued."""
        holding = Holding(self, lease)
        result: T | None = None
        current: Round | None = first
        look_at_queue = lease.took_over or not first.observations or first.gather
        started = self.clock.monotonic()
        window = self.batch_window
        try:
            while True:
                work = current or Round()
                rows = self.registry.pending(key) if look_at_queue else []
                work.merge(row.observation for row in rows)
                if work.observations or (work is first and first.always):
                    holding.keep_alive()
                    work.own = work is first
                    outcome = apply(work, holding)
                    result = outcome if work is first or result is None else result
                if rows:
                    self.registry.remove_pending(key, rows)
                current, look_at_queue = None, True
                if holding.lease.poked:  # seen while renewing, possibly after this round read the queue
                    holding.lease = replace(holding.lease, poked=False)
                    continue
                if self.registry.release(holding.lease):
                    return default if result is None else result
                if waiters_poll and self.clock.monotonic() - started > self.holder_budget:
                    # Under a steady stream this invocation would never finish (and Event Grid wants an
                    # answer within 30 s). Its own work is done; every queued row has a waiter that
                    # polls the lease, so hand it over. (Where waiters hand their work over and leave,
                    # the holder drains the queue: at worst its own event is redelivered, harmlessly.)
                    self.registry.release_quietly(holding.lease)
                    return default if result is None else result
                # Someone queued work. Let more arrive before the next round, a little longer each time
                # the queue refills: in a burst, one write then carries many observations, not one each.
                self.clock.sleep(window)
                window = min(window * 2, self.max_batch_window)
                try:
                    holding.lease = self.registry.refresh(holding.lease)
                except LeaseLostError:
                    if result is None:
                        raise
                    # A long round outlived the lease and someone took it over. What this holder
                    # wrote stands; the queue is the new holder's (a takeover reads it first).
                    logger.warning("%s: the lease was taken over after this holder's writes", key)
                    return result
        except BaseException:
            self.registry.release_quietly(holding.lease)
            raise

    def _hand_off(self, key: LeaseKey, work: Round, *, on_lease: Callable[[Lease], T], queued: T, wait: bool) -> T:
        """Queue the observations for the current holder; with ``wait``, wait until they are written.

        Without ``wait`` the queued work is the holder's once a live holder has been poked: it
        writes everything queued before it lets go, and whoever takes the lease next (or the
        nightly audit) finishes what a holder that died left behind.
        """
        clock = self.clock
        rows = self.registry.add_pending(key, work.observations.values())
        deadline = clock.monotonic() + self.max_wait
        delay = self.batch_window + 0.1
        while clock.monotonic() < deadline:
            if not self.registry.poke(key):
                lease = self.registry.try_acquire(key)
                if lease is not None:
                    return on_lease(lease)
                continue  # another waiter got it first: poke that one
            if not wait:
                if not self.registry.lease_free(key):
                    return queued
                lease = self.registry.try_acquire(key)  # the poked holder had died: take over
                if lease is not None:
                    return on_lease(lease)
                continue
            polls = 0
            while clock.monotonic() < deadline:
                # The holder gathers work for a batch window and then writes: no need to poll faster.
                clock.sleep(delay * (0.5 + clock.jitter()))
                delay = min(delay * 1.5, 2.0)
                polls += 1
                if not self.registry.has_pending(key, rows):
                    logger.info("%s: the lease holder wrote our changes", key)
                    return queued
                if polls % 3 or not self.registry.lease_free(key):
                    continue  # one read per poll; the lease itself is looked at every third poll
                lease = self.registry.try_acquire(key)
                if lease is not None:  # the holder finished or died: finish the queue ourselves
                    return on_lease(lease)
        raise LeaseBusyError(
            f"{key} stayed locked for {self.max_wait:.0f}s; its changes stay queued",
            retry_after=self.registry.lease_seconds,
        )

    def _wait_for_lease(self, key: LeaseKey) -> Lease:
        clock = self.clock
        deadline = clock.monotonic() + self.max_wait
        delay = 0.05
        while clock.monotonic() < deadline:
            clock.sleep(delay * (0.5 + clock.jitter()))
            delay = min(delay * 2, 1.0)
            lease = self.registry.try_acquire(key)
            if lease is not None:
                return lease
        raise LeaseBusyError(f"{key} stayed locked for {self.max_wait:.0f}s", retry_after=5.0)
