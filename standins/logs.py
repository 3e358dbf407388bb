"""Key Vault ``AuditEvent`` records and the Event Hubs envelopes that carry them.

Shaped like the records in Microsoft's logging docs (see tests/payloads) and the raw
samples a SIEM vendor published: ``resourceId`` upper-cased, ``resultType`` "Success"
even when ``properties.httpStatusCode`` says the call failed, ``requestUri`` carrying
``?api-version``, ``properties.id`` the unversioned object URI.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from .events import vault_resource_id

API_VERSION = "7.5"


def audit_record(
    vault: str,
    operation: str,
    *,
    secret: str | None = None,
    status: int = 200,
    request_path: str | None = None,
    object_path: str | None = None,
) -> dict[str, Any]:
    """One AuditEvent record for an operation on ``vault`` (and ``secret``)."""
    host = f"https://{vault.lower()}.vault.azure.net"
    request_path = request_path or (f"/secrets/{secret}" if secret else "/secrets")
    properties: dict[str, Any] = {
        "clientInfo": "azsdk-python-keyvault-secrets/4.12.0 Python/3.11.7 (Linux)",
        "requestUri": f"{host}{request_path}?api-version={API_VERSION}",
        "httpStatusCode": status,
        "isAccessPolicyMatch": status != 403,
        "tlsVersion": "TLS1_3",
    }
    if status < 300 and (object_path or secret):
        properties["id"] = f"{host}{object_path or f'/secrets/{secret}'}"
    return {
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f0Z"),
        "resourceId": vault_resource_id(vault).upper(),
        "operationName": operation,
        "operationVersion": API_VERSION,
        "category": "AuditEvent",
        "resultType": "Success",  # sic: Key Vault writes Success for refused calls too
        "resultSignature": HTTPStatus(status).phrase,
        "resultDescription": "",
        "durationMs": "12",
        "callerIpAddress": "203.0.113.7",
        "correlationId": str(uuid.uuid4()),
        "identity": {"claim": {"oid": "00000000-0000-0000-0000-0000000000aa", "appid": "kvlink-tests"}},
        "properties": properties,
    }


def envelopes(records: Sequence[dict[str, Any]], *, per_message: int = 10) -> list[bytes]:
    """Event Hubs message bodies: ``{"records": [...]}`` with up to ``per_message`` records each."""
    return [
        json.dumps({"records": list(records[i : i + per_message])}).encode()
        for i in range(0, len(records), per_message)
    ]
