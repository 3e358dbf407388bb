"""Event Grid deliveries as Azure sends them, decoded the way the Functions worker does."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

import azure.functions as func
from azure.functions.eventgrid import EventGridEventInConverter
from azure.functions.meta import Datum

SUBSCRIPTION = "00000000-0000-0000-0000-00000000c0de"


def vault_resource_id(vault: str, resource_group: str = "rg-kvlink") -> str:
    return f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{resource_group}/providers/Microsoft.KeyVault/vaults/{vault}"


def secret_event(
    vault: str,
    secret: str,
    version: str | None = None,
    *,
    kind: str = "SecretNewVersionCreated",
    schema: Literal["eventgrid", "cloudevents"] = "eventgrid",
    event_id: str | None = None,
    expires: int | None = None,
) -> dict[str, Any]:
    """One Key Vault secret event, shaped like the official examples."""
    version = version or uuid.uuid4().hex
    data = {
        "Id": f"https://{vault}.vault.azure.net/secrets/{secret}/{version}",
        "VaultName": vault,
        "ObjectType": "Secret",
        "ObjectName": secret,
        "Version": version,
        "NBF": None,
        "EXP": str(expires) if expires else None,
    }
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")
    event_id = event_id or str(uuid.uuid4())
    if schema == "cloudevents":
        return {
            "source": vault_resource_id(vault),
            "subject": secret,
            "type": f"Microsoft.KeyVault.{kind}",
            "time": now,
            "id": event_id,
            "data": data,
            "specversion": "1.0",
        }
    return {
        "id": event_id,
        "topic": vault_resource_id(vault),
        "subject": secret,
        "eventType": f"Microsoft.KeyVault.{kind}",
        "eventTime": now,
        "data": data,
        "dataVersion": "1",
        "metadataVersion": "1",
    }


def as_trigger_input(body: dict[str, Any]) -> func.EventGridEvent:
    """What the Python worker hands to an Event Grid trigger for this delivery."""
    # A CloudEvent comes back for CloudEvents-schema deliveries, as in the worker.
    return EventGridEventInConverter.decode(  # type: ignore[return-value]
        Datum(type="json", value=json.dumps(body)), trigger_metadata={}
    )
