"""Vault events, audit-log batches and the timer, delivered by the host to the worker as protobuf.

A successful invocation is what makes Event Grid and Event Hubs move on; a failed one is what
makes them retry. So every test asserts the worker's answer to the host as well as the groups.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvlink_core import app as kvlink_app
from kvlink_core.model import GroupKey
from standins.logs import audit_record, envelopes

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
PAYLOADS = ROOT / "tests" / "payloads"  # verbatim official payloads (tests/payloads/README.md)
SAMPLE_VAULT = "sample-kv"  # the vault the official Event Grid examples come from


def payload(name: str) -> dict:
    return json.loads((PAYLOADS / name).read_text())


def linked_group(estate, names: list[str], *, vault: str | None = None) -> int:
    vault = vault or estate.vault
    for name in names:
        estate.kv.set_secret(vault, name)
    group = estate.group("payments-kv", names, vault=vault)
    estate.link(estate.engine(), group, vault=vault)
    estate.kv.drain_audit_log()  # the seeding is history
    estate.kv.reset_calls()
    estate.ado.reset_calls()
    return group


def failure(worker, response) -> str:
    assert not worker.succeeded(response), "the invocation succeeded"
    return f"{response.result.exception.message}\n{response.result.exception.stack_trace}"


@pytest.fixture
def sample_kv(estate, app_settings, monkeypatch):
    """A group linked to the examples' vault, which the app is allowed to serve."""
    estate.kv.create_vault(SAMPLE_VAULT)
    monkeypatch.setenv("KVLINK_ALLOWED_VAULTS", f"{estate.vault},{SAMPLE_VAULT}")
    kvlink_app.reset()
    group = linked_group(estate, ["db-password"], vault=SAMPLE_VAULT)
    yield group
    estate.engine().registry.delete_link(GroupKey(estate.org.lower(), group))  # the vault outlives the test


class TestEventGrid:
    @pytest.mark.parametrize("schema", ["eventgrid-schema", "cloudevents-schema"])
    def test_official_example_reaches_the_group(self, worker, estate, sample_kv, schema):
        """The documented SecretNewVersionCreated, in either schema, maps the new secret into the linked group."""
        estate.kv.set_secret(SAMPLE_VAULT, "newsecret")
        event = payload(f"eventgrid-keyvault-secret-new-version-created.{schema}.json")

        response = worker.event_grid("on_secret_event", event)

        assert worker.succeeded(response), failure(worker, response)
        assert estate.names(sample_kv) == ["db-password", "newsecret"]
        # Nothing to hand back: a value here would make the worker fail the invocation ($return missing).
        assert not response.HasField("return_value")

    def test_malformed_event_is_acknowledged(self, worker, estate, app_settings):
        """A delivery kvlink cannot read succeeds, so Event Grid does not retry it for 24 hours."""
        group = linked_group(estate, ["db-password"])
        event = payload("eventgrid-keyvault-secret-new-version-created.eventgrid-schema.json")
        event["topic"] = "/subscriptions/x/resourceGroups/y/providers/Microsoft.Storage/storageAccounts/z"

        response = worker.event_grid("on_secret_event", event)

        assert worker.succeeded(response)
        assert estate.kv.calls == []
        assert estate.ado.calls == []
        assert estate.names(group) == ["db-password"]

    def test_event_for_another_vault_is_acknowledged(self, worker, estate, app_settings):
        """The official example names a vault outside KVLINK_ALLOWED_VAULTS: acknowledged, nothing called."""
        response = worker.event_grid(
            "on_secret_event", payload("eventgrid-keyvault-secret-new-version-created.cloudevents-schema.json")
        )
        assert worker.succeeded(response)
        assert estate.kv.calls == []

    def test_transient_failure_fails_the_invocation(self, worker, estate, sample_kv):
        """When Key Vault keeps failing, the invocation fails -- the host tells Event Grid, which redelivers."""
        estate.kv.set_secret(SAMPLE_VAULT, "newsecret")
        estate.kv.inject(503, path="/versions", times=100)

        response = worker.event_grid(
            "on_secret_event", payload("eventgrid-keyvault-secret-new-version-created.eventgrid-schema.json")
        )

        reported = failure(worker, response)
        assert "TransientError" in reported
        assert estate.env["AZURE_DEVOPS_PAT"] not in reported  # the host logs this text
        assert estate.names(sample_kv) == ["db-password"]


def batch_size() -> int:
    """The most events the host hands one invocation: host.json states it, at the extension's default
    (Azure/azure-sdk-for-net, Microsoft.Azure.WebJobs.Extensions.EventHubs CHANGELOG, 6.0.0: "The default
    batch size has changed to 100 events")."""
    return int(json.loads((ROOT / "host.json").read_text())["extensions"]["eventHubs"]["maxEventBatchSize"])


class TestEventHubs:
    def test_full_batch_of_audit_logs(self, worker, estate, app_settings):
        """A full batch -- the documented envelope, reads of other secrets, one delete -- removes the deleted name."""
        group = linked_group(estate, ["db-password", "api-key", "other"])
        estate.kv.delete_secret(estate.vault, "db-password")
        deletes = envelopes(estate.kv.drain_audit_log())
        reads = envelopes([audit_record(estate.vault, "SecretGet", secret="api-key")])
        official = (PAYLOADS / "keyvault-auditevent-record.logging-doc.json").read_bytes()
        bodies = [official, *reads * (batch_size() - 1 - len(deletes)), *deletes]
        assert len(bodies) == batch_size()

        response = worker.event_hub_batch("on_vault_log", bodies)

        assert worker.succeeded(response), failure(worker, response)
        assert estate.names(group) == ["api-key", "other"]

    def test_transient_failure_fails_the_batch_and_keeps_the_work(self, worker, estate, app_settings):
        """A failed batch fails the invocation (the retry policy re-runs it) and the work survives the checkpoint."""
        group = linked_group(estate, ["db-password", "api-key"])
        estate.kv.delete_secret(estate.vault, "db-password")
        estate.kv.inject(503, path="/versions", times=100)

        response = worker.event_hub_batch("on_vault_log", envelopes(estate.kv.drain_audit_log()))

        assert "TransientError" in failure(worker, response)
        assert estate.names(group) == ["api-key", "db-password"]
        estate.kv.clear_faults()
        response = worker.event_hub_batch("on_vault_log", [b'{"records": []}'])  # the next batch finishes it
        assert worker.succeeded(response), failure(worker, response)
        assert estate.names(group) == ["api-key"]

    def test_malformed_message_is_acknowledged(self, worker, estate, app_settings):
        """A message that is not an audit envelope is skipped; the rest of the batch is applied."""
        group = linked_group(estate, ["db-password", "api-key"])
        estate.kv.delete_secret(estate.vault, "db-password")

        response = worker.event_hub_batch("on_vault_log", [b"not json", *envelopes(estate.kv.drain_audit_log())])

        assert worker.succeeded(response), failure(worker, response)
        assert estate.names(group) == ["api-key"]

    def test_empty_message_fails_the_batch_before_kvlink_runs(self, worker, estate, app_settings):
        """Written down, not fixable in kvlink: the host drops an empty body from the string[] it sends
        (the worker does not ask for IncludeEmptyEntriesInMessagePayload), so the worker finds one body
        fewer than SystemPropertiesArray entries and fails the invocation in azure.functions' decoder
        (eventhub.py, "Number of bodies and metadata mismatched") before on_vault_log is called.
        Azure Monitor never sends an empty message; a stray producer on the hub would stall such batches
        until the retry policy gives up and the nightly audit repairs what they carried.
        """
        group = linked_group(estate, ["db-password", "api-key"])
        estate.kv.delete_secret(estate.vault, "db-password")

        response = worker.event_hub_batch("on_vault_log", [b"", *envelopes(estate.kv.drain_audit_log())])

        assert "mismatched" in failure(worker, response)
        assert estate.kv.calls == []
        assert estate.names(group) == ["api-key", "db-password"]


class TestTimer:
    @pytest.mark.parametrize("past_due", [False, True], ids=["on-time", "past-due"])
    def test_tick_runs_the_audit(self, worker, estate, app_settings, captured_logs, past_due):
        """A tick -- on time or past due after a restart -- reconciles the groups; past due is logged."""
        group = linked_group(estate, ["db-password"])
        estate.kv.set_secret(estate.vault, "api-key")  # no event reached kvlink for this one

        response = worker.timer("nightly_audit", past_due=past_due)

        assert worker.succeeded(response), failure(worker, response)
        assert estate.names(group) == ["api-key", "db-password"]
        assert ("past due" in captured_logs.text) is past_due


class TestWhatTheWorkerHandsOver:
    @pytest.mark.parametrize(
        ("schema", "kind", "time_key"),
        [("eventgrid-schema", "EventGridEvent", "eventTime"), ("cloudevents-schema", "CloudEvent", "time")],
    )
    def test_event_objects_and_times(self, worker, app_settings, monkeypatch, schema, kind, time_key):
        """The worker decodes the JSON itself: a CloudEvent for the CloudEvents schema (azure-functions 2.x
        ``EventGridEventInConverter``), and the time as an aware datetime, not the string on the wire.
        function_app passes both on unchanged and kvlink_core.events reads either."""
        from datetime import UTC, datetime

        import function_app

        seen: list = []
        monkeypatch.setattr(function_app.kvlink, "handle_event_grid", seen.append)
        real_envelope = function_app._envelope
        monkeypatch.setattr(
            function_app, "_envelope", lambda event: seen.append(type(event).__name__) or real_envelope(event)
        )

        response = worker.event_grid(
            "on_secret_event", payload(f"eventgrid-keyvault-secret-new-version-created.{schema}.json")
        )

        assert worker.succeeded(response), failure(worker, response)
        decoded, envelope = seen
        assert decoded == kind
        assert envelope[time_key] == datetime(2019, 7, 25, 1, 8, 33, 103673, tzinfo=UTC)
        assert envelope["data"]["ObjectName"] == "newsecret"
