"""Parsing Key Vault AuditEvent envelopes from Event Hubs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvlink_core.logs import parse_log_batch
from standins.logs import audit_record, envelopes

PAYLOADS = Path(__file__).parent / "payloads"


def parse(*bodies, allowed=lambda vault: True):
    return parse_log_batch(bodies, vault_allowed=allowed)


def one(record: dict) -> bytes:
    return json.dumps({"records": [record]}).encode()


class TestOfficialPayloads:
    def test_key_vault_doc_record_needs_nothing(self):
        """The logging doc's VaultGet record is well-formed and needs no action."""
        batch = parse((PAYLOADS / "keyvault-auditevent-record.logging-doc.json").read_bytes())
        assert (batch.records, batch.skipped, batch.ignored) == ([], [], 1)

    def test_other_services_records_are_ignored(self):
        """The resource-logs doc's envelope (Logic Apps records) is read and ignored."""
        batch = parse((PAYLOADS / "azure-monitor-resource-logs-eventhub-envelope.resource-logs-doc.json").read_bytes())
        assert batch.records == [] and batch.skipped == []
        assert batch.ignored == 2


class TestActions:
    @pytest.mark.parametrize("operation", ["SecretDelete", "SecretUpdate", "SecretRecover", "SecretRestore"])
    def test_actionable_operations(self, operation):
        """Deletes, updates, recoveries and restores are acted on."""
        path = {"SecretRecover": "/deletedsecrets/db-pass/recover", "SecretRestore": "/secrets/restore"}.get(operation)
        record = audit_record("KV-Prod", operation, secret="db-pass", request_path=path)
        (parsed,) = parse(one(record)).records
        assert (parsed.vault, parsed.secret, parsed.operation) == ("kv-prod", "db-pass", operation)

    @pytest.mark.parametrize(
        "operation",
        [
            "SecretGet",
            "SecretList",
            "SecretListVersions",
            "SecretSet",
            "SecretPurge",
            "SecretBackup",
            "VaultGet",
        ],
    )
    def test_reads_and_other_writes_are_ignored(self, operation):
        """Reads need nothing; new versions are Event Grid's job; a purge follows a handled delete."""
        batch = parse(one(audit_record("kv-prod", operation, secret="db-pass")))
        assert (batch.records, batch.ignored) == ([], 1)

    @pytest.mark.parametrize("status", [403, 404, 409, 500])
    def test_failed_calls_are_ignored_despite_result_type(self, status):
        """resultType says Success even for refused calls; httpStatusCode decides."""
        record = audit_record("kv-prod", "SecretDelete", secret="db-pass", status=status)
        assert record["resultType"] == "Success"
        assert parse(one(record)).records == []

    def test_status_as_string_and_keys_in_any_case(self):
        """httpStatusCode may be a string; keys are matched case-insensitively."""
        record = audit_record("kv-prod", "SecretDelete", secret="db-pass")
        record = {k.upper() if k == "properties" else k: v for k, v in record.items()}
        record["PROPERTIES"]["httpStatusCode"] = "204"
        record["OperationName"] = record.pop("operationName")
        assert [r.secret for r in parse(one(record)).records] == ["db-pass"]

    def test_vault_from_object_uri_when_resource_id_missing(self):
        """Without resourceId, the vault comes from the object URI's host."""
        record = audit_record("kv-prod", "SecretDelete", secret="db-pass")
        del record["resourceId"]
        assert parse(one(record)).records[0].vault == "kv-prod"

    def test_vault_outside_allow_list(self):
        """Records of vaults outside KVLINK_ALLOWED_VAULTS are ignored."""
        batch = parse(one(audit_record("kv-other", "SecretDelete", secret="x")), allowed=lambda v: v == "kv-prod")
        assert (batch.records, batch.ignored) == ([], 1)

    def test_secret_called_restore(self):
        """A secret literally named "restore" is still a secret outside the restore call."""
        (parsed,) = parse(one(audit_record("kv-prod", "SecretDelete", secret="restore"))).records
        assert parsed.secret == "restore"


class TestBatches:
    def test_many_records_collapse_to_one_decision_per_secret(self):
        """200 records over 20 secrets in several messages become 20 names, first-seen order."""
        records = [audit_record("kv-prod", "SecretUpdate", secret=f"s-{i % 20:02d}") for i in range(200)]
        batch = parse(*envelopes(records, per_message=30))
        assert len(batch.records) == 200
        assert batch.by_vault() == {"kv-prod": [f"s-{i:02d}" for i in range(20)]}

    def test_malformed_parts_are_skipped_with_their_position(self):
        """A bad message or record is skipped, named by position; the rest is kept."""
        good = audit_record("kv-prod", "SecretDelete", secret="ok")
        no_status = audit_record("kv-prod", "SecretDelete", secret="x")
        del no_status["properties"]["httpStatusCode"]
        bad_name = audit_record("kv-prod", "SecretDelete", secret="bad_name")
        bodies = [
            b"{not json",
            json.dumps({"value": []}).encode(),
            json.dumps({"records": [42, no_status, bad_name, good]}).encode(),
        ]
        batch = parse(*bodies)
        assert [r.secret for r in batch.records] == ["ok"]
        positions = [p for p, _ in batch.skipped]
        assert positions == [
            "message 1",
            "message 2",
            "message 3, record 1",
            "message 3, record 2",
            "message 3, record 3",
        ]
        reasons = " ".join(r for _, r in batch.skipped)
        assert "not JSON" in reasons and "httpStatusCode" in reasons and "not valid" in reasons
