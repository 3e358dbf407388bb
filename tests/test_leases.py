"""The lease protocol (kvlink_core.leases) on real Azurite rows, driven by an injected clock: no sleeps."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from kvlink_core.errors import LeaseBusyError, TransientError
from kvlink_core.leases import Holding, Leases, Round
from kvlink_core.model import GroupKey, SecretState
from kvlink_core.registry import LeaseLostError, Observation, Registry

pytestmark = pytest.mark.integration

LEASE = 60.0


@pytest.fixture
def instances(estate, fake_time):
    """Two kvlink instances' registries on the same Azurite and the same (fake) time."""
    made: list[Registry] = []

    def instance(sleep=None) -> Registry:
        registry = Registry(estate.settings(), lease_seconds=LEASE, clock=fake_time.clock(sleep))
        made.append(registry)
        return registry

    yield instance
    for registry in made:
        registry.close()


def round_of(*names: str) -> Round:
    work = Round()
    work.merge(Observation(SecretState(name)) for name in names)
    return work


class Recorder:
    """An ``apply`` that records each round's secret names (and runs ``then`` after the first)."""

    def __init__(self, then=None) -> None:
        self.rounds: list[list[str]] = []
        self.holdings: list[Holding] = []
        self.then = then

    def __call__(self, work: Round, holding: Holding) -> str:
        self.rounds.append(sorted(work.observations))
        self.holdings.append(holding)
        if self.then is not None and len(self.rounds) == 1:
            self.then(holding)
        return f"round {len(self.rounds)}"


def run(leases: Leases, key, work: Round, apply, busy="hand-off"):
    return leases.run(key, work, apply, default="nothing", queued="queued", busy=busy)


class TestExpiry:
    def test_a_waiter_takes_over_once_the_lease_expires(self, estate, instances, fake_time):
        """A dead holder blocks a waiter only until ExpiresAt by the injected clock; then the waiter writes."""
        key = GroupKey(estate.org, 1)
        assert instances().try_acquire(key) is not None  # a holder that never comes back
        apply = Recorder()

        assert run(Leases(instances(), max_wait=3 * LEASE), key, round_of("a"), apply, busy="wait") == "round 1"

        assert apply.rounds == [["a"]]
        assert apply.holdings[0].lease.took_over
        assert LEASE <= fake_time.now < LEASE + 2  # taken within a poll of the expiry

    def test_a_waiter_gives_up_within_its_bound(self, estate, instances, fake_time):
        """A lease that stays held makes a waiter give up after max_wait (a transient failure), not later."""
        key = GroupKey(estate.org, 2)
        assert instances().try_acquire(key) is not None
        apply = Recorder()

        with pytest.raises(LeaseBusyError, match="stayed locked"):
            run(Leases(instances(), max_wait=5.0), key, round_of("a"), apply, busy="wait")

        assert apply.rounds == []
        assert 5.0 <= fake_time.now <= 5.0 + max(fake_time.sleeps)

    def test_renewal_fails_after_a_takeover_and_nothing_is_written(self, estate, instances, fake_time):
        """A holder whose lease expired mid-round and was taken over learns it when it renews before its write."""
        key = GroupKey(estate.org, 3)
        other = instances()
        taken = []
        written = []

        def slow_round(work: Round, holding: Holding) -> str:
            fake_time.advance(LEASE + 1)  # the read took longer than the lease
            taken.append(other.try_acquire(key))
            holding.renew()  # what the writer does between its read and its PUT
            written.append(work)
            return "written"

        with pytest.raises(LeaseLostError) as raised:
            run(Leases(instances()), key, round_of("a"), slow_round)

        assert isinstance(raised.value, TransientError)  # the event is redelivered
        assert written == []
        assert taken[0] is not None and taken[0].took_over
        assert other.release(taken[0]) is True  # the loser did not touch the new holder's lease


class TestRounds:
    def test_a_poke_during_a_round_brings_another_round(self, estate, instances):
        """Work queued (and poked) while the holder writes is written in the holder's next round."""
        key = GroupKey(estate.org, 4)
        other = instances()

        def queue_meanwhile(holding: Holding) -> None:
            other.add_pending(key, [Observation(SecretState("b"))])
            assert other.poke(key)

        apply = Recorder(then=queue_meanwhile)
        registry = instances()

        assert run(Leases(registry), key, round_of("a"), apply) == "round 1"

        assert apply.rounds == [["a"], ["b"]]
        assert registry.pending(key) == []
        assert registry.try_acquire(key) is not None  # released at the end

    def test_the_write_budget_ends_before_the_lease(self, estate, instances, fake_time):
        """A call under the lease gets what is left of it less a margin; renewing restores the full budget."""
        key = GroupKey(estate.org, 5)
        leases = Leases(instances())
        budgets = []

        def apply(work: Round, holding: Holding) -> str:
            budgets.append(holding.budget())
            fake_time.advance(25.0)  # a slow read
            budgets.append(holding.budget())
            budgets.append(holding.renew())
            return "ok"

        run(leases, key, round_of("a"), apply)

        assert budgets == [LEASE - leases.margin, LEASE - leases.margin - 25.0, LEASE - leases.margin]
        assert 0 < leases.margin < LEASE / 2

    def test_waits_inside_a_lease_stay_short_of_it(self, estate, fake_time):
        """However the lease is configured, the holder's gathering windows stay inside the margin."""
        registry = Registry(estate.settings(), lease_seconds=1.2, clock=fake_time.clock())
        leases = Leases(registry, batch_window=0.3, max_batch_window=2.4)
        assert leases.batch_window <= leases.max_batch_window < leases.margin
        registry.close()


class TestHandOff:
    def test_a_waiter_hands_its_work_to_the_holder(self, estate, instances):
        """An event that finds the lease busy queues its observation; the holder writes it in its next round."""
        key = GroupKey(estate.org, 6)
        queued, holder_done = threading.Event(), threading.Event()

        def waiter_sleep(seconds: float) -> None:
            queued.set()  # the waiter sleeps only after queuing and poking
            assert holder_done.wait(60)

        in_round = threading.Event()

        def first_round(holding: Holding) -> None:
            in_round.set()
            assert queued.wait(60)  # the holder is mid-write while the waiter queues

        waiter = Leases(instances(sleep=waiter_sleep))
        apply = Recorder(then=first_round)
        holder = Leases(instances())

        def hold() -> str:
            try:
                return run(holder, key, round_of("a"), apply)
            finally:
                holder_done.set()

        with ThreadPoolExecutor(max_workers=1) as pool:
            held = pool.submit(hold)
            assert in_round.wait(60)
            assert run(waiter, key, round_of("b"), Recorder()) == "queued"
            assert held.result() == "round 1"

        assert apply.rounds == [["a"], ["b"]]

    def test_a_queued_event_left_behind_a_dead_holder_is_finished_by_the_next(self, estate, instances, fake_time):
        """With busy="queue" an event leaves its work to a live holder; after expiry the next one takes it over."""
        key = GroupKey(estate.org, 7)
        assert instances().try_acquire(key) is not None  # dies
        leases = Leases(instances())

        assert run(leases, key, round_of("a"), Recorder(), busy="queue") == "queued"
        fake_time.advance(LEASE + 1)
        apply = Recorder()
        run(leases, key, round_of("b"), apply, busy="queue")

        assert apply.rounds == [["a", "b"]]  # the first event's queued work, with the second's

    def test_a_queued_event_behind_a_holder_here_that_gave_up_waits_and_takes_over(self, estate, instances, fake_time):
        """A holder of this process gave up without releasing (storage failed under it, the release too):
        an event with busy="queue" must not leave its work to nobody -- it waits for the expiry and writes
        it, with what was queued before. (A live holder, or one in another process, is left the queue.)"""
        key = GroupKey(estate.org, 9)
        gave_up = instances()
        dead = gave_up.try_acquire(key)
        assert dead is not None
        gave_up.add_pending(key, [Observation(SecretState("a"))])  # queued behind it before it failed
        gave_up.forget(dead.owner)  # what release_quietly does when the release itself fails
        apply = Recorder()

        result = run(Leases(instances(), max_wait=3 * LEASE), key, round_of("b"), apply, busy="queue")

        assert result == "round 1" and apply.rounds == [["a", "b"]]
        assert apply.holdings[0].lease.took_over
        assert LEASE <= fake_time.now < LEASE + 3  # taken within a few polls of the expiry

    def test_a_holder_whose_lease_is_taken_over_after_its_write_leaves_the_queue(self, estate, instances, fake_time):
        """A round that outlived the lease (e.g. a vault's holder writing many groups) keeps its result;
        what was queued meanwhile is the new holder's, not lost and not written twice."""
        key = GroupKey(estate.org, 8)
        other = instances()
        taken = []

        def long_round(holding: Holding) -> None:
            other.add_pending(key, [Observation(SecretState("b"))])
            assert other.poke(key)
            fake_time.advance(LEASE + 1)
            taken.append(other.try_acquire(key))

        apply = Recorder(then=long_round)

        assert run(Leases(instances()), key, round_of("a"), apply, busy="queue") == "round 1"

        assert apply.rounds == [["a"]]
        assert taken[0] is not None and taken[0].took_over
        assert [row.observation.state.name for row in other.pending(key)] == ["b"]
