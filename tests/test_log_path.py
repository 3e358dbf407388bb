"""Deletes, disables, recoveries and expiry: on_vault_log with real EventHubEvent objects."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import azure.functions as func
import pytest

import function_app
from kvlink_core import app as kvlink_app
from kvlink_core.errors import TransientError
from kvlink_core.model import Policy
from kvlink_core.registry import WORK_TABLE
from standins.events import secret_event
from standins.logs import audit_record, envelopes

pytestmark = pytest.mark.integration


def hub_events(bodies: list[bytes]) -> list[func.EventHubEvent]:
    """What the worker hands a cardinality=many Event Hub trigger: one event per message."""
    now = datetime.now(UTC)
    return [
        func.EventHubEvent(body=body, enqueued_time=now, partition_key=None, sequence_number=i, offset=str(i * 512))
        for i, body in enumerate(bodies)
    ]


@pytest.fixture
def deliver(estate, app_engine):
    """Ship the vault's audit log (or given records) through on_vault_log, as Event Hubs would."""
    engine = app_engine

    def run(records: list[dict] | None = None, *, per_message: int = 10) -> None:
        shipped = estate.kv.drain_audit_log() if records is None else records
        function_app.on_vault_log(hub_events(envelopes(shipped, per_message=per_message)))

    run.engine = engine
    return run


def linked_group(estate, engine, names: list[str], **link) -> int:
    for name in names:
        estate.kv.set_secret(estate.vault, name)
    group = estate.group("payments-kv", names)
    estate.link(engine, group, **link)
    estate.kv.drain_audit_log()  # the seeding is history
    estate.ado.reset_calls()
    return group


class TestDeletes:
    def test_delete_removes_the_name(self, estate, deliver):
        """A deleted secret's name leaves every linked group."""
        group = linked_group(estate, deliver.engine, ["db-password", "api-key", "other"])
        estate.kv.delete_secret(estate.vault, "db-password")
        deliver()
        assert estate.names(group) == ["api-key", "other"]

    @pytest.mark.parametrize("status", [403, 404])
    def test_failed_delete_changes_nothing(self, estate, deliver, status):
        """A refused delete is logged with resultType Success, but kvlink does nothing: no call at all."""
        group = linked_group(estate, deliver.engine, ["db-password", "api-key"])
        estate.kv.log_failed(estate.vault, "SecretDelete", "db-password", status)
        deliver()
        assert estate.names(group) == ["api-key", "db-password"]
        assert estate.ado.calls == []

    def test_delete_then_purge(self, estate, deliver):
        """A purge after the delete needs nothing more."""
        group = linked_group(estate, deliver.engine, ["db-password", "api-key"])
        estate.kv.delete_secret(estate.vault, "db-password")
        estate.kv.purge_secret(estate.vault, "db-password")
        deliver()
        assert estate.names(group) == ["api-key"]


class TestUpdatesAndRecovery:
    def test_disable_then_enable(self, estate, deliver):
        """Disabling removes the name; enabling it again brings it back where the policy matches."""
        group = linked_group(estate, deliver.engine, ["db-password", "api-key"])
        estate.kv.update_secret(estate.vault, "db-password", enabled=False)
        deliver()
        assert estate.names(group) == ["api-key"]
        estate.kv.update_secret(estate.vault, "db-password", enabled=True)
        deliver()
        assert estate.names(group) == ["api-key", "db-password"]

    def test_recover_brings_it_back(self, estate, deliver):
        """A recovered secret is mapped again."""
        group = linked_group(estate, deliver.engine, ["db-password", "api-key"])
        estate.kv.delete_secret(estate.vault, "db-password")
        deliver()
        estate.kv.recover_secret(estate.vault, "db-password")
        deliver()
        assert estate.names(group) == ["api-key", "db-password"]

    def test_restore_brings_it_back(self, estate, deliver):
        """A secret restored from a backup is mapped."""
        group = linked_group(estate, deliver.engine, ["api-key"])
        estate.kv.restore_secret(estate.vault, "db-password")
        deliver()
        assert estate.names(group) == ["api-key", "db-password"]

    def test_recover_outside_the_policy_is_not_added(self, estate, deliver):
        """Recovery adds only where the link's policy matches."""
        group = linked_group(estate, deliver.engine, ["app-key"], policy=Policy(include=("app-*",)))
        estate.kv.set_secret(estate.vault, "db-password")
        estate.kv.delete_secret(estate.vault, "db-password")
        estate.kv.recover_secret(estate.vault, "db-password")
        deliver()
        assert estate.names(group) == ["app-key"]


class TestBatches:
    def test_200_records_over_20_secrets_write_each_group_once(self, estate, deliver):
        """A busy batch costs one vault listing and at most one write per group."""
        names = [f"s-{i:02d}" for i in range(24)]
        groups = []
        for g in range(3):
            for name in names:
                estate.kv.set_secret(estate.vault, name)
            gid = estate.group(f"group-{g}", names)
            estate.link(deliver.engine, gid)
            groups.append(gid)
        estate.kv.drain_audit_log()
        estate.ado.reset_calls()
        records = []
        for i in range(200):
            secret = names[i % 20]
            records.append(audit_record(estate.vault, "SecretUpdate", secret=secret))
        for name in names[:2]:  # two of them really are disabled now
            estate.kv.update_secret(estate.vault, name, enabled=False)
        estate.kv.drain_audit_log()
        estate.kv.reset_calls()

        deliver(records, per_message=25)

        for gid in groups:
            assert len(estate.ado.writes(estate.org, gid)) == 1
            assert estate.names(gid) == names[2:]
        assert sum(1 for c in estate.kv.calls if c.status == 200) == 1  # one listing (24 secrets)

    def test_deletion_storm_is_refused(self, estate, deliver, captured_logs):
        """Deleting every secret of a linked group at once is refused and reported, not applied."""
        names = ["a", "b", "c", "d", "e"]
        group = linked_group(estate, deliver.engine, names)
        for name in names:
            estate.kv.delete_secret(estate.vault, name)
        deliver()
        assert estate.names(group) == names
        assert "refused" in captured_logs.text
        assert deliver.engine.registry.vault_work() == {}  # decided (refused), not retried forever

    def test_malformed_record_does_not_stop_the_batch(self, estate, deliver, captured_logs):
        """A malformed record is logged with its position; the others are applied."""
        group = linked_group(estate, deliver.engine, ["db-password", "api-key"])
        estate.kv.delete_secret(estate.vault, "db-password")
        records = [{"category": "AuditEvent", "operationName": "SecretDelete"}, *estate.kv.drain_audit_log()]
        deliver(records)
        assert estate.names(group) == ["api-key"]
        assert "message 1, record 1" in captured_logs.text


class TestFailures:
    def test_transient_failure_keeps_the_work_for_the_next_batch(self, estate, deliver):
        """When Key Vault fails, the invocation fails and the work survives the checkpoint."""
        group = linked_group(estate, deliver.engine, ["db-password", "api-key"])
        estate.kv.delete_secret(estate.vault, "db-password")
        estate.kv.inject(503, path="/versions", times=20)
        with pytest.raises(TransientError):
            deliver()
        assert estate.names(group) == ["api-key", "db-password"]
        assert [row.name for row in deliver.engine.registry.vault_work()[estate.vault]] == ["db-password"]

        estate.kv.clear_faults()
        deliver([])  # the next batch, about something else entirely, finishes it
        assert estate.names(group) == ["api-key"]
        assert deliver.engine.registry.vault_work() == {}

    def test_work_is_persisted_before_acting(self, estate, deliver, monkeypatch):
        """Even a crash right after parsing leaves the secrets queued in Table storage."""
        group = linked_group(estate, deliver.engine, ["db-password", "api-key"])
        estate.kv.delete_secret(estate.vault, "db-password")

        def crash(*args, **kwargs):
            raise TransientError("simulated crash", system="devops")

        monkeypatch.setattr(deliver.engine, "sync_secrets", crash)
        with pytest.raises(TransientError):
            deliver()
        table = deliver.engine.registry._table(WORK_TABLE)
        assert [e["Name"] for e in table.list_entities()] == ["db-password"]
        assert estate.names(group) == ["api-key", "db-password"]

    def test_missing_permission_is_not_retried_forever(self, estate, deliver, captured_logs):
        """A vault kvlink may not read is logged and dropped (the audit reports it), not a retry loop."""
        linked_group(estate, deliver.engine, ["db-password", "api-key"])
        estate.kv.delete_secret(estate.vault, "db-password")
        estate.kv.deny(estate.vault)
        try:
            deliver()
        finally:
            estate.kv.allow(estate.vault)
        assert "'List'" in captured_logs.text
        assert deliver.engine.registry.vault_work() == {}


class TestUnlinkedGroups:
    def test_discovered_group_is_pruned(self, estate, deliver):
        """A discovered group loses the names of deleted secrets (they break pipelines)."""
        group = linked_group(estate, deliver.engine, ["db-password", "api-key"], kind="discovered")
        estate.kv.delete_secret(estate.vault, "db-password")
        deliver()
        assert estate.names(group) == ["api-key"]

    def test_ignore_setting_leaves_discovered_groups_alone(self, estate, deliver, monkeypatch):
        """KVLINK_UNLINKED_GROUPS=ignore: discovered groups are never touched."""
        engine = estate.engine(KVLINK_UNLINKED_GROUPS="ignore")
        monkeypatch.setattr(kvlink_app, "get_engine", lambda: engine)
        group = linked_group(estate, engine, ["db-password", "api-key"], kind="discovered")
        estate.kv.delete_secret(estate.vault, "db-password")
        deliver()
        assert estate.names(group) == ["api-key", "db-password"]
        assert estate.ado.calls == []


class TestExpiry:
    def expire(self, estate, name: str) -> dict:
        version = estate.kv.set_secret(estate.vault, name, expires=datetime.now(UTC) - timedelta(minutes=1))
        return secret_event(estate.vault, name, version, kind="SecretExpired")

    def test_expired_removed_when_policy_says(self, estate, deliver):
        """SecretExpired removes the name where keepExpired is false."""
        group = linked_group(estate, deliver.engine, ["db-password", "api-key"], policy=Policy(keep_expired=False))
        deliver.engine.handle_event(self.expire(estate, "db-password"))
        assert estate.names(group) == ["api-key"]

    def test_expired_kept_by_default(self, estate, deliver):
        """By default an expired secret stays mapped: it still works in pipelines."""
        group = linked_group(estate, deliver.engine, ["db-password", "api-key"])
        deliver.engine.handle_event(self.expire(estate, "db-password"))
        assert estate.names(group) == ["api-key", "db-password"]

    def test_near_expiry_names_the_groups(self, estate, deliver, captured_logs):
        """SecretNearExpiry logs a warning naming each group that maps the secret, and writes nothing."""
        group = linked_group(estate, deliver.engine, ["db-password", "api-key"])
        other = estate.group("unrelated-kv", ["api-key"])
        estate.link(deliver.engine, other)
        soon = int((datetime.now(UTC) + timedelta(days=20)).timestamp())
        event = secret_event(estate.vault, "db-password", kind="SecretNearExpiry", expires=soon)
        result = deliver.engine.handle_event(event)
        assert [g.link.group_id for g in result.groups] == [group]
        warning = next(r for r in captured_logs.records if "expires" in r.getMessage())
        assert "payments-kv" in warning.getMessage() and "unrelated-kv" not in warning.getMessage()
        assert estate.ado.writes(estate.org) == []


class TestRegistration:
    def test_on_vault_log_binding_and_retry(self, registered):
        """on_vault_log is a batched Event Hub trigger on the documented settings, with a retry policy."""
        (binding,) = registered["on_vault_log"]["bindings"]
        assert binding["type"] == "eventHubTrigger"
        assert binding["connection"] == "KVLINK_EVENTHUB"
        assert binding["eventHubName"] == "%KVLINK_EVENTHUB_NAME%"
        assert binding["cardinality"].lower() == "many"
        assert registered["on_vault_log"]["retry"]["strategy"] == "exponential_backoff"


class TestCallCounts:
    def test_one_delete(self, estate, deliver):
        """One delete: 1 version listing, 1 read + 1 write per group, 8 Table calls (work row in and out)."""
        group = linked_group(estate, deliver.engine, ["db-password", "api-key", "keep"])
        estate.kv.delete_secret(estate.vault, "api-key")
        deliver()  # warm-up: opens the work and lease tables, pays the Key Vault challenge
        estate.kv.delete_secret(estate.vault, "db-password")
        for system in (estate.kv, estate.ado):
            system.reset_calls()
        estate.table_calls.reset()

        deliver()

        assert estate.names(group) == ["keep"]
        assert [c.path.rsplit("/", 1)[-1] for c in estate.kv.calls] == ["versions"]  # 404: deleted
        assert [c.method for c in estate.ado.calls] == ["GET", "PUT"]
        # work upsert (batch POST), work list, links query, lease create + renewal before the PUT + delete,
        # marker, work row delete
        assert estate.table_calls.by_method == {"POST": 2, "GET": 2, "PUT": 1, "DELETE": 2, "PATCH": 1}


# host.json's Event Hubs batching. Microsoft Learn, "Azure Event Hubs bindings for Azure Functions", section
# "host.json settings", tab "Extension v5.x/v6.x+": maxEventBatchSize (default 100 from v6.0.0),
# minEventBatchSize (must be less than maxEventBatchSize) and maxWaitTime (at most 10 minutes; only used when
# minEventBatchSize > 1) need Microsoft.Azure.WebJobs.Extensions.EventHubs 5.3.0 or later; the same page
# installs extension v6.x+ with extension bundle 4.x, the range host.json pins. batchCheckpointFrequency above 1
# "can cause incorrect scaling behavior" on plans with target-based scaling (Flex Consumption is one).
HOST_JSON = json.loads((Path(function_app.__file__).parent / "host.json").read_text())


def wait_seconds(value: str) -> float:
    hours, minutes, seconds = value.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


class TestBatching:
    def test_host_json_batches_the_audit_log_stream(self):
        """A busy vault costs a few invocations a minute: the trigger waits for a batch, bounded in time."""
        assert HOST_JSON["extensionBundle"]["version"] == "[4.*, 5.0.0)"  # extension v6.x: the settings exist
        hubs = HOST_JSON["extensions"]["eventHubs"]
        assert 1 < hubs["minEventBatchSize"] < hubs["maxEventBatchSize"] <= 100
        assert 0 < wait_seconds(hubs["maxWaitTime"]) <= 10 * 60
        # Deletes already reach the log up to 10 minutes late; the wait adds at most this much (twice it
        # on a scale-out, per the same doc). Kept short: a deleted secret breaks pipelines until removed.
        assert wait_seconds(hubs["maxWaitTime"]) <= 2 * 60
        assert hubs.get("batchCheckpointFrequency", 1) == 1

    def test_a_full_batch_is_one_invocation_with_one_write_per_group(self, estate, deliver):
        """maxEventBatchSize messages -- pipeline reads and three deletes -- handled by one call of on_vault_log."""
        size = HOST_JSON["extensions"]["eventHubs"]["maxEventBatchSize"]
        gone = ["old-a", "old-b", "old-c"]
        kept = ["api-key", "cache-url", "db-password", "queue-key"]  # three of seven: under the mass-removal guard
        group = linked_group(estate, deliver.engine, [*kept, *gone])
        for name in gone:
            estate.kv.delete_secret(estate.vault, name)
        estate.kv.drain_audit_log()
        reads = [audit_record(estate.vault, "SecretGet", secret="db-password") for _ in range(size - len(gone))]
        deletes = [audit_record(estate.vault, "SecretDelete", secret=name) for name in gone]
        records = reads[:40] + deletes + reads[40:]
        for system in (estate.kv, estate.ado):
            system.reset_calls()
        events = hub_events(envelopes(records, per_message=1))
        assert len(events) == size

        function_app.on_vault_log(events)

        assert estate.names(group) == kept
        # One decision per deleted secret, and the three removals folded into one read and one write.
        listings = [c.path.split("/")[-2] for c in estate.kv.calls if c.status != 401]  # not the auth challenge
        assert sorted(listings) == gone
        assert [c.method for c in estate.ado.calls] == ["GET", "PUT"]
