"""The event path end to end against the stand-ins and Azurite."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from kvlink_core.errors import TransientError
from kvlink_core.model import Policy, SecretState, VaultKey
from kvlink_core.registry import LEASES_TABLE, Observation
from standins.events import secret_event

pytestmark = pytest.mark.integration


def new_secret(estate, name: str, **attrs) -> dict:
    version = estate.kv.set_secret(estate.vault, name, **attrs)
    return secret_event(estate.vault, name, version)


class TestNewSecret:
    def test_new_secret_reaches_the_group(self, estate):
        """A secret created in the vault appears in the linked group after one event."""
        engine = estate.engine()
        estate.kv.set_secret(estate.vault, "db-password")
        group = estate.group("payments-kv", ["db-password"])
        estate.link(engine, group)

        result = engine.handle_event(new_secret(estate, "api-key", content_type="text/plain"))

        assert result.status == "processed"
        assert [g.status for g in result.groups] == ["applied"]
        assert estate.names(group) == ["api-key", "db-password"]
        variable = estate.ado.group(estate.org, group)["variables"]["api-key"]
        assert variable == {
            "isSecret": True,
            "value": None,
            "enabled": True,
            "contentType": "text/plain",
            "expires": None,
        }

    def test_calls_for_a_new_secret_are_the_minimum(self, estate):
        """A new secret costs 1 Key Vault call, 1 group read + 1 write, and 5 Table calls."""
        engine = estate.engine()
        group = estate.group("payments-kv", [])
        estate.link(engine, group)
        engine.handle_event(new_secret(estate, "warm-up"))  # the first call pays the 401 challenge
        estate.kv.reset_calls()
        estate.ado.reset_calls()
        estate.table_calls.reset()

        engine.handle_event(new_secret(estate, "api-key"))

        assert estate.kv.count("GET", r"/versions$") == 1
        assert len(estate.kv.calls) == 1
        assert [c.method for c in estate.ado.calls] == ["GET", "PUT"]
        # links query + lease create + lease renewed between the read and the PUT + lease delete + write marker
        assert estate.table_calls.by_method == {"GET": 1, "POST": 1, "PUT": 1, "DELETE": 1, "PATCH": 1}

    def test_new_version_of_mapped_secret_writes_nothing(self, estate):
        """Rotating a mapped secret reads the group once and never writes it."""
        engine = estate.engine()
        estate.kv.set_secret(estate.vault, "db-password")
        group = estate.group("payments-kv", ["db-password"])
        estate.link(engine, group)

        result = engine.handle_event(new_secret(estate, "db-password"))

        assert [g.status for g in result.groups] == ["unchanged"]
        assert estate.ado.writes(estate.org) == []
        assert estate.ado.count("GET") == 1

    def test_every_linked_group_in_every_project(self, estate):
        """One event updates every group linked to the vault, across projects."""
        engine = estate.engine()
        second_project = "Platform"
        estate.ado.add_project(estate.org, second_project)
        endpoint = estate.ado.add_service_endpoint(estate.org, second_project, "kv-connection")
        first = estate.group("payments-kv", [])
        other = estate.ado.add_group(
            estate.org,
            second_project,
            "platform-kv",
            vault=estate.vault,
            service_endpoint_id=endpoint,
            variables=[],
        )
        estate.link(engine, first)
        estate.link(engine, other, project=second_project)

        engine.handle_event(new_secret(estate, "shared-key"))

        assert estate.names(first) == ["shared-key"]
        assert estate.names(other) == ["shared-key"]

    def test_policy_filters_without_touching_devops(self, estate):
        """A secret the policy does not want costs no Azure DevOps call at all."""
        engine = estate.engine()
        group = estate.group("payments-kv", [])
        estate.link(engine, group, Policy(include=("app-*",)))

        result = engine.handle_event(new_secret(estate, "db-password"))

        assert [g.status for g in result.groups] == ["unchanged"]
        assert estate.ado.calls == []

    def test_tags_policy(self, estate):
        """Required tags decide whether a new secret is mapped."""
        engine = estate.engine()
        group = estate.group("payments-kv", [])
        estate.link(engine, group, Policy(tags=(("pipeline", "yes"),)))

        engine.handle_event(new_secret(estate, "untagged"))
        engine.handle_event(new_secret(estate, "tagged", tags={"pipeline": "yes"}))

        assert estate.names(group) == ["tagged"]

    def test_disabled_new_version_removes_the_name(self, estate):
        """A new version created disabled makes the mapped name break pipelines, so it goes."""
        engine = estate.engine()
        estate.kv.set_secret(estate.vault, "db-password")
        group = estate.group("payments-kv", ["db-password", "other"])
        estate.link(engine, group)

        engine.handle_event(new_secret(estate, "db-password", enabled=False))

        assert estate.names(group) == ["other"]

    def test_certificate_backed_secret_not_mapped(self, estate):
        """A certificate's backing secret is never added."""
        engine = estate.engine()
        group = estate.group("payments-kv", [])
        estate.link(engine, group)

        engine.handle_event(new_secret(estate, "tls-cert", managed=True))

        assert estate.names(group) == []

    def test_discovered_group_gets_no_additions(self, estate):
        """A group the audit discovered (never linked) is not given new names."""
        engine = estate.engine()
        group = estate.group("found-kv", [])
        estate.link(engine, group, kind="discovered")

        engine.handle_event(new_secret(estate, "api-key"))

        assert estate.names(group) == []
        assert estate.ado.calls == []

    def test_put_keeps_everything_it_does_not_own(self, estate):
        """The full-replace PUT carries description, sharing and other variables' attributes."""
        engine = estate.engine()
        estate.ado.add_project(estate.org, "Shared")
        group = estate.group("payments-kv", ["db-password"])
        estate.ado.share_group(estate.org, group, "Shared")

        def hand_edit(g: dict) -> None:
            g["description"] = "owned by team payments"
            g["variables"]["db-password"].update(contentType="pem", expires="2030-01-01T00:00:00Z")

        estate.ado.edit_group(estate.org, group, hand_edit)
        estate.link(engine, group)

        engine.handle_event(new_secret(estate, "api-key"))

        after = estate.ado.group(estate.org, group)
        # The person's text stays; kvlink's marker (kvlink_core.marker) joins it on a line of its own.
        assert after["description"] == "owned by team payments\n[kvlink v1 mode=merge include=* expired=keep]"
        assert after["variables"]["db-password"]["contentType"] == "pem"
        assert after["variables"]["db-password"]["expires"] == "2030-01-01T00:00:00Z"
        assert {r["projectReference"]["name"] for r in after["variableGroupProjectReferences"]} == {
            "Payments",
            "Shared",
        }
        assert after["providerData"]["vault"] == estate.vault

    def test_report_mode_writes_nothing(self, estate):
        """KVLINK_MODE=report plans and logs but never writes a group or takes a lease."""
        engine = estate.engine(KVLINK_MODE="report")
        group = estate.group("payments-kv", [])
        estate.link(engine, group)

        result = engine.handle_event(new_secret(estate, "api-key"))

        assert [g.status for g in result.groups] == ["planned"]
        assert result.groups[0].plan.added_names == ["api-key"]
        assert estate.ado.writes(estate.org) == []


class TestRefusals:
    def test_vault_outside_allow_list(self, estate):
        """An event from a vault outside KVLINK_ALLOWED_VAULTS is acknowledged and not acted on."""
        engine = estate.engine()
        result = engine.handle_event(secret_event("kv-elsewhere", "api-key"))
        assert result.status == "ignored"
        assert estate.kv.calls == []
        assert estate.ado.calls == []

    def test_vault_without_links_costs_no_key_vault_call(self, estate):
        """With no linked group, the registry query is the only call."""
        engine = estate.engine()
        result = engine.handle_event(new_secret(estate, "api-key"))
        assert result.groups == ()
        assert estate.kv.calls == []

    def test_malformed_event(self, estate, captured_logs):
        """A malformed event is rejected with a log line naming its id, and nothing is called."""
        engine = estate.engine()
        body = secret_event(estate.vault, "bad_name")
        result = engine.handle_event(body)
        assert result.status == "rejected"
        assert body["id"] in captured_logs.text
        assert estate.kv.calls == []

    def test_group_deleted_meanwhile(self, estate):
        """A linked group that no longer exists is reported, not retried forever."""
        engine = estate.engine()
        group = estate.group("payments-kv", [])
        estate.link(engine, group)
        estate.ado.delete_group(estate.org, group)

        result = engine.handle_event(new_secret(estate, "api-key"))

        assert [g.status for g in result.groups] == ["group-missing"]

    def test_group_relinked_to_another_vault(self, estate):
        """If someone points the group at another vault, kvlink does not write it."""
        engine = estate.engine()
        group = estate.group("payments-kv", [])
        estate.link(engine, group)
        estate.ado.edit_group(estate.org, group, lambda g: g["providerData"].update(vault="kv-other"))

        result = engine.handle_event(new_secret(estate, "api-key"))

        assert [g.status for g in result.groups] == ["vault-changed"]
        assert estate.ado.writes(estate.org) == []


class TestFaults:
    def test_devops_429_with_retry_after(self, estate):
        """A 429 with Retry-After on the write is waited out and the write lands."""
        engine = estate.engine()
        group = estate.group("payments-kv", [])
        estate.link(engine, group)
        estate.ado.inject(429, method="PUT", retry_after=0.2)

        engine.handle_event(new_secret(estate, "api-key"))

        puts = [c for c in estate.ado.calls if c.method == "PUT"]
        assert [c.status for c in puts] == [429, 200]
        assert puts[1].started - puts[0].finished >= 0.2
        assert estate.names(group) == ["api-key"]

    @pytest.mark.parametrize(
        "fault", [{"status": 503}, {"status": 500}, {"reset": True}], ids=["503", "500", "connection-reset"]
    )
    def test_devops_transient_failures_are_retried(self, estate, fault):
        """5xx answers and connection resets on the read are retried, then the write lands."""
        engine = estate.engine()
        group = estate.group("payments-kv", [])
        estate.link(engine, group)
        estate.ado.inject(method="GET", times=2, **fault)

        engine.handle_event(new_secret(estate, "api-key"))

        assert estate.names(group) == ["api-key"]

    def test_keyvault_throttling_is_retried(self, estate):
        """Key Vault's 429 (with Retry-After) and 503 are retried by the SDK."""
        engine = estate.engine()
        group = estate.group("payments-kv", [])
        estate.link(engine, group)
        estate.kv.inject(429, path="/versions", retry_after=0)
        estate.kv.inject(503, path="/versions")

        engine.handle_event(new_secret(estate, "api-key"))

        assert estate.names(group) == ["api-key"]

    def test_persistent_failure_raises_and_writes_nothing(self, estate):
        """When Azure DevOps keeps failing, the event fails (to be redelivered) and the group is untouched."""
        engine = estate.engine()
        group = estate.group("payments-kv", ["db-password"])
        estate.link(engine, group)
        estate.ado.inject(503, method="PUT", times=50)

        with pytest.raises(TransientError):
            engine.handle_event(new_secret(estate, "api-key"))

        assert estate.names(group) == ["db-password"]
        # the lease was released, so the redelivery is not blocked
        assert engine.registry.try_acquire(engine.registry.links_for_vault(estate.vault)[0].key) is not None

    def test_keyvault_unreachable_raises_before_any_write(self, estate):
        """If the secret cannot be read, nothing is written and the event is retried."""
        engine = estate.engine()
        group = estate.group("payments-kv", [])
        estate.link(engine, group)
        estate.kv.inject(503, path="/versions", times=20)

        with pytest.raises(TransientError):
            engine.handle_event(new_secret(estate, "api-key"))
        assert estate.ado.calls == []


class TestConcurrency:
    def test_burst_of_30_new_secrets_loses_nothing(self, estate):
        """30 concurrent events for 30 new secrets of one vault end with all 30 names in the group."""
        engine = estate.engine()
        group = estate.group("payments-kv", ["existing"])
        estate.link(engine, group)
        estate.ado.latency = 0.03  # widen every read-modify-write window
        events = [new_secret(estate, f"burst-{i:02d}") for i in range(30)]
        events += random.Random(7).sample(events, 10)  # at-least-once: some arrive twice

        with ThreadPoolExecutor(max_workers=16) as pool:
            results = list(pool.map(engine.handle_event, events))

        assert all(r.status == "processed" for r in results)
        assert estate.names(group) == sorted(["existing", *(f"burst-{i:02d}" for i in range(30))])
        assert len(estate.ado.writes(estate.org, group)) <= 30  # duplicates never cost a write

    def test_events_queued_behind_a_slow_write_share_one_write(self, estate, monkeypatch):
        """While one write is slow, the other 19 events queue and land together in one more write."""
        engine = estate.engine(lease_seconds=60.0)  # the held write never comes near the lease's end
        group = estate.group("payments-kv", ["existing"])
        estate.link(engine, group)
        events = [new_secret(estate, f"queued-{i:02d}") for i in range(20)]
        in_write, all_queued = threading.Event(), threading.Event()
        update, poke = engine.devops.update_group, engine.registry.poke
        pokes = []

        def slow_first_write(*args, **kwargs):
            if not in_write.is_set():  # the first write waits until every other event has queued
                in_write.set()
                assert all_queued.wait(60)
            return update(*args, **kwargs)

        def counted_poke(key):
            pokes.append(key)
            if len(pokes) >= 19:
                all_queued.set()
            return poke(key)

        monkeypatch.setattr(engine.devops, "update_group", slow_first_write)
        monkeypatch.setattr(engine.registry, "poke", counted_poke)

        with ThreadPoolExecutor(max_workers=20) as pool:
            first = pool.submit(engine.handle_event, events[0])
            assert in_write.wait(60)  # the first event now holds the lease, inside its write
            rest = list(pool.map(engine.handle_event, events[1:]))
        first.result()

        statuses = sorted({g.status for r in rest for g in r.groups})
        assert set(statuses) <= {"applied", "queued"}
        assert estate.names(group) == sorted(["existing", *(f"queued-{i:02d}" for i in range(20))])
        writes = estate.ado.writes(estate.org, group)
        assert len(writes) <= 3, [len(c.body["variables"]) for c in writes]

    def test_crashed_holder_blocks_only_until_expiry(self, estate, fake_time):
        """A lease left by a dead holder is taken over once it expires, and queued work is finished."""
        engine = estate.engine(lease_seconds=10.0, max_wait=50.0, clock=fake_time.clock())
        group = estate.group("payments-kv", [])
        link = estate.link(engine, group)
        dead = engine.registry.try_acquire(link.key)  # a holder that never comes back
        assert dead is not None
        # work another instance queued for the dead holder
        engine.registry.add_pending(link.key, [Observation(SecretState("queued-before"))])

        engine.handle_event(new_secret(estate, "api-key"))  # its polls' fake sleeps let the lease expire

        assert estate.names(group) == ["api-key", "queued-before"]
        assert engine.registry.pending(link.key) == []
        assert 10.0 <= fake_time.now <= 50.0  # taken over after expiry, well before the waiter gives up

    def test_waiter_gives_up_and_keeps_its_work_queued(self, estate):
        """If the lease stays busy past the wait, the event fails for a retry and its work stays queued."""
        engine = estate.engine(lease_seconds=30.0, max_wait=0.5)
        group = estate.group("payments-kv", [])
        link = estate.link(engine, group)
        assert engine.registry.try_acquire(link.key) is not None

        with pytest.raises(TransientError, match="stayed locked"):
            engine.handle_event(new_secret(estate, "api-key"))

        assert [row.observation.state.name for row in engine.registry.pending(link.key)] == ["api-key"]
        assert estate.ado.writes(estate.org) == []

    def test_events_for_different_groups_run_in_parallel(self, estate):
        """Two groups of one vault are written concurrently, not one after the other."""
        engine = estate.engine()
        groups = [estate.group(f"g{i}", []) for i in range(4)]
        for g in groups:
            estate.link(engine, g)
        estate.ado.latency = 0.1

        engine.handle_event(new_secret(estate, "api-key"))

        assert all(estate.names(g) == ["api-key"] for g in groups)
        assert estate.ado.max_concurrency >= 2


class TestVaultCoalescing:
    """Several groups on one vault: events coalesce on the vault's lease, not on each group's."""

    def groups(self, estate, engine, n=3):
        ids = [estate.group(f"team-{i}", ["existing"]) for i in range(n)]
        estate.kv.set_secret(estate.vault, "existing")
        for gid in ids:
            estate.link(engine, gid)
        return ids

    @pytest.mark.parametrize("budget", [15.0, 0.05], ids=["normal", "holder-past-its-budget"])
    def test_burst_on_a_vault_with_several_groups(self, estate, budget):
        """40 concurrent events for a vault mapped by 3 groups: every group right, each written a few times --
        also when the vault's holder runs past its budget (its hand-over must not strand queued work)."""
        engine = estate.engine(holder_budget=budget)
        ids = self.groups(estate, engine)
        estate.ado.latency = 0.02
        events = [new_secret(estate, f"burst-{i:02d}") for i in range(40)]

        with ThreadPoolExecutor(max_workers=16) as pool:
            results = list(pool.map(engine.handle_event, events))

        expected = sorted(["existing", *(f"burst-{i:02d}" for i in range(40))])
        assert all(estate.names(gid) == expected for gid in ids)
        assert {g.status for r in results for g in r.groups} <= {"applied", "queued", "unchanged"}
        assert max(len(estate.ado.writes(estate.org, gid)) for gid in ids) <= 10

    def test_dead_vault_holder_work_is_finished_by_the_next_event(self, estate, fake_time):
        """Work queued behind a vault holder that died is written by the next event once the lease expires."""
        engine = estate.engine(lease_seconds=10.0, clock=fake_time.clock())
        ids = self.groups(estate, engine)
        dead = engine.registry.try_acquire(VaultKey(estate.vault))
        assert dead is not None

        first = engine.handle_event(new_secret(estate, "while-dead"))
        assert {g.status for g in first.groups} == {"queued"}  # handed to the (dead) holder
        assert all("while-dead" not in estate.names(gid) for gid in ids)
        fake_time.advance(10.5)
        engine.handle_event(new_secret(estate, "after-expiry"))

        assert all({"while-dead", "after-expiry"} <= set(estate.names(gid)) for gid in ids)
        assert engine.registry.pending(VaultKey(estate.vault)) == []

    def test_audit_drops_queued_work_older_than_its_listing(self, estate):
        """A dead holder's stale queue cannot undo the audit's repairs later."""
        from kvlink_core.audit import run_audit

        engine = estate.engine(lease_seconds=30.0)
        ids = self.groups(estate, engine)
        estate.kv.set_secret(estate.vault, "gone-later")
        stale = Observation(SecretState("gone-later"), at=time.time_ns() - 10**9)
        engine.registry.add_pending(VaultKey(estate.vault), [stale])
        estate.kv.delete_secret(estate.vault, "gone-later")

        run_audit(engine, store=False)

        assert engine.registry.pending(VaultKey(estate.vault)) == []
        engine.handle_event(new_secret(estate, "next"))  # a later holder finds nothing stale to replay
        assert all("gone-later" not in estate.names(gid) for gid in ids)


class TestLeaseAroundTheWrite:
    """The lease outlives the write: renewed between the read and the PUT, waits bounded inside it."""

    def test_the_lease_is_renewed_between_the_read_and_the_put(self, estate, monkeypatch):
        """Read, renew, PUT -- in that order, on the event path."""
        engine = estate.engine()
        group = estate.group("payments-kv", [])
        estate.link(engine, group)
        steps = []

        def step(name, call):
            def recorded(*args, **kwargs):
                steps.append(name)
                return call(*args, **kwargs)

            return recorded

        monkeypatch.setattr(engine.devops, "get_group", step("read", engine.devops.get_group))
        monkeypatch.setattr(engine.registry, "refresh", step("renew", engine.registry.refresh))
        monkeypatch.setattr(engine.devops, "update_group", step("put", engine.devops.update_group))

        engine.handle_event(new_secret(estate, "api-key"))

        assert steps == ["read", "renew", "put"]
        assert estate.names(group) == ["api-key"]

    def test_a_lease_lost_before_the_put_means_no_put(self, estate, monkeypatch):
        """If another instance took the lease over while the group was being read, nothing is written
        and the event fails for a retry; the new holder's lease is left alone."""
        engine, other = estate.engine(), estate.engine()
        group = estate.group("payments-kv", ["existing"])
        link = estate.link(engine, group)
        read = engine.devops.get_group
        taken = []

        def read_then_lose_the_lease(*args, **kwargs):
            as_read = read(*args, **kwargs)
            # The lease expired meanwhile (its row is gone) and another instance took it.
            engine.registry._table(LEASES_TABLE).delete_entity(link.key.lease_partition, link.key.lease_row)
            taken.append(other.registry.try_acquire(link.key))
            return as_read

        monkeypatch.setattr(engine.devops, "get_group", read_then_lose_the_lease)

        with pytest.raises(TransientError):
            engine.handle_event(new_secret(estate, "api-key"))

        assert estate.ado.writes(estate.org) == []
        assert taken[0] is not None and other.registry.release(taken[0]) is True

    def test_devops_slowed_past_the_lease_loses_no_name(self, estate, fake_time, monkeypatch):
        """A's read takes longer than its lease while B waits for it: B takes over after expiry and writes;
        A finds its lease gone and writes nothing (no stale PUT over B's); redelivered, A's name lands too."""
        b_waiting, go = threading.Event(), threading.Event()

        def b_sleep(seconds: float) -> None:
            b_waiting.set()  # B has queued its secret and poked A
            assert go.wait(60)
            fake_time.advance(seconds)  # B's polls are what move time on while A is stuck

        a = estate.engine(lease_seconds=10.0, clock=fake_time.clock())
        b = estate.engine(lease_seconds=10.0, clock=fake_time.clock(sleep=b_sleep))
        group = estate.group("payments-kv", ["existing"])
        estate.link(a, group)
        from_a, from_b = new_secret(estate, "from-a"), new_secret(estate, "from-b")
        read = a.devops.get_group
        b_results = []

        def slow_read(*args, **kwargs):
            as_read = read(*args, **kwargs)
            if not b_results:  # Azure DevOps is slow to answer A, past its lease, while B waits
                with ThreadPoolExecutor(max_workers=1) as pool:
                    waiter = pool.submit(b.handle_event, from_b)
                    assert b_waiting.wait(60)
                    go.set()
                    b_results.append(waiter.result(timeout=60))
            return as_read

        monkeypatch.setattr(a.devops, "get_group", slow_read)

        with pytest.raises(TransientError):
            a.handle_event(from_a)

        assert [g.status for g in b_results[0].groups] == ["applied"]
        assert estate.names(group) == ["existing", "from-b"]
        assert len(estate.ado.writes(estate.org, group)) == 1  # B's; A's stale PUT never happened
        a.handle_event(from_a)  # Event Grid redelivers
        assert estate.names(group) == ["existing", "from-a", "from-b"]

    def test_a_retry_after_longer_than_the_lease_allows_fails_at_once(self, estate):
        """A 429 whose Retry-After would outlast the lease is not waited out: the event fails for a retry."""
        engine = estate.engine(lease_seconds=10.0)  # a write may take 7.5 s
        group = estate.group("payments-kv", [])
        estate.link(engine, group)
        estate.ado.inject(429, method="PUT", retry_after=8.0)

        with pytest.raises(TransientError, match="429"):
            engine.handle_event(new_secret(estate, "api-key"))

        assert [c.status for c in estate.ado.writes(estate.org)] == [429]
        assert estate.names(group) == []
        engine.handle_event(new_secret(estate, "api-key"))  # the lease was released: the retry lands
        assert estate.names(group) == ["api-key"]
