"""Event parsing: both Event Grid schemas, every documented field variant, hostile events."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kvlink_core.errors import InvalidEventError, UnwantedEventError
from kvlink_core.events import parse_event

PAYLOADS = Path(__file__).parent / "payloads"
TOPIC = "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/sample-kv"


def payload(name: str) -> dict:
    return json.loads((PAYLOADS / name).read_text(encoding="utf-8-sig"))


@pytest.fixture
def eg_event() -> dict:
    return payload("eventgrid-keyvault-secret-new-version-created.eventgrid-schema.json")


@pytest.fixture
def cloud_event() -> dict:
    return payload("eventgrid-keyvault-secret-new-version-created.cloudevents-schema.json")


class TestOfficialPayloads:
    def test_event_grid_schema(self, eg_event):
        """The verbatim Event Grid-schema example parses into vault, secret, version and times."""
        event = parse_event(eg_event)
        assert event.event_id == "00eccf70-95a7-4e7c-8299-2eb17ee9ad64"
        assert event.kind == "SecretNewVersionCreated"
        assert (event.vault, event.secret) == ("sample-kv", "newsecret")
        assert event.version == "ee059b2bb5bc48398a53b168c6cdcb10"
        assert event.not_before == datetime.fromtimestamp(1559081980, UTC)
        assert event.expires == datetime.fromtimestamp(1559082102, UTC)
        assert event.event_time == datetime(2019, 7, 25, 1, 8, 33, 103673, tzinfo=UTC)

    def test_cloud_events_schema(self, cloud_event, eg_event):
        """The CloudEvents-schema example gives the same value as the Event Grid one."""
        assert parse_event(cloud_event) == parse_event(eg_event)


class TestFieldVariants:
    def test_camel_case_swagger_keys_with_numbers(self, eg_event):
        """The 2018 swagger's camelCase keys and numeric NBF/EXP are accepted."""
        eg_event["data"] = {
            "id": eg_event["data"]["Id"],
            "vaultName": "sample-kv",
            "objectType": "Secret",
            "objectName": "newsecret",
            "version": "ee059b2bb5bc48398a53b168c6cdcb10",
            "nbf": 1559081980,
            "exp": 1559082102.0,
        }
        event = parse_event(eg_event)
        assert event.secret == "newsecret"
        assert event.expires == datetime.fromtimestamp(1559082102, UTC)

    def test_docs_typos_are_tolerated(self, eg_event):
        """The docs' "ObjectName " key and " ee05..." value (stray spaces) still parse."""
        data = eg_event["data"]
        data["ObjectName "] = data.pop("ObjectName")
        data["Version"] = " " + data["Version"]
        assert parse_event(eg_event).version == "ee059b2bb5bc48398a53b168c6cdcb10"

    @pytest.mark.parametrize("value", [None, "", "null-ish", True], ids=["null", "empty", "text", "bool"])
    def test_unusable_expiry_is_ignored(self, eg_event, value):
        """NBF/EXP are informational: odd values become None instead of rejecting the event."""
        eg_event["data"]["EXP"] = value
        assert parse_event(eg_event).expires is None

    def test_missing_optional_fields(self, eg_event):
        """An event with only the subject and topic still names its secret."""
        eg_event["data"] = {"ObjectType": "Secret"}
        event = parse_event(eg_event)
        assert (event.vault, event.secret, event.version) == ("sample-kv", "newsecret", None)

    def test_upper_case_resource_id(self, eg_event):
        """Resource ids are compared case-insensitively; the vault comes back lower-cased."""
        eg_event["topic"] = TOPIC.upper().replace("SAMPLE-KV", "Sample-KV")
        assert parse_event(eg_event).vault == "sample-kv"

    @pytest.mark.parametrize("kind", ["SecretNearExpiry", "SecretExpired"])
    def test_other_secret_events(self, eg_event, kind):
        """Near-expiry and expired events are secret events too."""
        eg_event["eventType"] = f"Microsoft.KeyVault.{kind}"
        assert parse_event(eg_event).kind == kind


class TestUnwanted:
    @pytest.mark.parametrize(
        "kind", ["KeyNewVersionCreated", "CertificateExpired", "VaultAccessPolicyChanged", "SecretDeleted"]
    )
    def test_not_a_secret_event(self, eg_event, kind):
        """Key, certificate, vault and unknown event types are unwanted: acknowledged, not acted on."""
        eg_event["eventType"] = f"Microsoft.KeyVault.{kind}"
        with pytest.raises(UnwantedEventError):
            parse_event(eg_event)

    def test_storage_event(self, eg_event):
        """An event from another service is unwanted."""
        eg_event["eventType"] = "Microsoft.Storage.BlobCreated"
        with pytest.raises(UnwantedEventError):
            parse_event(eg_event)

    def test_key_object_type(self, eg_event):
        """A secret event type whose data says it is a key is unwanted."""
        eg_event["data"]["ObjectType"] = "Key"
        with pytest.raises(UnwantedEventError):
            parse_event(eg_event)


class TestMalformed:
    @pytest.mark.parametrize(
        ("mutate", "message"),
        [
            (lambda e: e.pop("id"), "missing id"),
            (lambda e: e.pop("eventType"), "missing event type"),
            (
                lambda e: e.update(
                    topic="/subscriptions/x/resourceGroups/y/providers/Microsoft.Storage/storageAccounts/z"
                ),
                "not a Key Vault resource id",
            ),
            (lambda e: e.update(data="nope"), "data is missing"),
            (lambda e: e["data"].update(VaultName="other-kv"), "names vault"),
            (
                lambda e: e["data"].update(Id="https://other-kv.vault.azure.net/secrets/newsecret/1"),
                "belongs to vault",
            ),
            (lambda e: e["data"].update(ObjectName="different"), "disagree"),
            (lambda e: e.update(subject="bad_name") or e["data"].clear(), "not valid"),
            (
                lambda e: e["data"].update(Id="ftp://sample-kv.vault.azure.net/secrets/x"),
                "not a Key Vault secret URL",
            ),
        ],
        ids=[
            "no-id",
            "no-type",
            "forged-topic",
            "data-not-object",
            "vault-mismatch",
            "id-vault-mismatch",
            "name-mismatch",
            "bad-secret-name",
            "bad-id-url",
        ],
    )
    def test_rejected_with_reason(self, eg_event, mutate, message):
        """Malformed or forged events are rejected with a reason naming the event."""
        event = copy.deepcopy(eg_event)
        mutate(event)
        with pytest.raises(InvalidEventError, match=message) as info:
            parse_event(event)
        assert not isinstance(info.value, UnwantedEventError)
