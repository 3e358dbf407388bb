"""Key Vault diagnostic logs (``AuditEvent``) from Event Hubs: the only push path for deletes.

Event Grid announces new versions and expiry, never a delete, disable, recover or
restore. Those only show up in the vault's audit log, streamed by a diagnostic setting
to Event Hubs as ``{"records": [...]}`` envelopes -- several records per message, several
messages per trigger batch, up to ~10 minutes late. A record's ``resultType`` says
"Success" even for refused calls, so success is judged from ``httpStatusCode`` alone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .names import check_secret, check_vault

# The writes that change whether a mapped name still works. SecretSet (a new version) is
# Event Grid's job; SecretPurge needs nothing once the delete was handled.
ACTIONS = frozenset({"SecretDelete", "SecretUpdate", "SecretRecover", "SecretRestore"})
_VAULT_ID = re.compile(r"/providers/microsoft\.keyvault/vaults/([^/]+)/?$", re.IGNORECASE)


class _MalformedError(Exception):
    """A record that cannot be read; it is skipped and logged with its position."""


@dataclass(frozen=True, slots=True)
class LogRecord:
    vault: str  # lower-cased
    secret: str
    operation: str
    position: str  # "message 3, record 7": where a log line can point


@dataclass
class LogBatch:
    records: list[LogRecord] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (position, reason) -- malformed only
    ignored: int = 0  # well-formed records that need nothing (reads, failures, other vaults)

    def by_vault(self) -> dict[str, list[str]]:
        """Distinct secret names per vault, in first-seen order: many records, one decision each."""
        grouped: dict[str, dict[str, str]] = {}
        for record in self.records:
            grouped.setdefault(record.vault, {}).setdefault(record.secret.lower(), record.secret)
        return {vault: list(names.values()) for vault, names in grouped.items()}


def parse_log_batch(bodies: Iterable[bytes | str], *, vault_allowed: Callable[[str], bool]) -> LogBatch:
    """Every actionable record of a trigger batch; malformed parts are skipped with their position."""
    batch = LogBatch()
    for m, body in enumerate(bodies, start=1):
        try:
            envelope = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            batch.skipped.append((f"message {m}", "not JSON"))
            continue
        records = envelope.get("records") if isinstance(envelope, Mapping) else None
        if not isinstance(records, list):
            batch.skipped.append((f"message {m}", 'not a {"records": [...]} envelope'))
            continue
        for r, raw in enumerate(records, start=1):
            position = f"message {m}, record {r}"
            try:
                record = _record(raw, position, vault_allowed)
            except _MalformedError as err:
                batch.skipped.append((position, str(err)))
                continue
            if record is None:
                batch.ignored += 1
            else:
                batch.records.append(record)
    return batch


def _record(raw: Any, position: str, vault_allowed: Callable[[str], bool]) -> LogRecord | None:
    """One record: a :class:`LogRecord` to act on, None to ignore; malformed records raise."""
    if not isinstance(raw, Mapping):
        raise _MalformedError("record is not an object")
    record = {str(k).lower(): v for k, v in raw.items()}
    if str(record.get("category") or "").lower() != "auditevent":
        return None
    operation = str(record.get("operationname") or "")
    if operation not in ACTIONS:
        return None
    props = record.get("properties")
    props = {str(k).lower(): v for k, v in props.items()} if isinstance(props, Mapping) else {}
    status = _status(props.get("httpstatuscode"))
    if status is None:
        raise _MalformedError(f"{operation} without a usable httpStatusCode")
    if not 200 <= status < 300:
        return None  # refused or failed: resultType says "Success" anyway
    vault, secret = _target(record, props, operation)
    if vault is None:
        raise _MalformedError(f"{operation} names no vault in resourceId or the object URI")
    if problem := check_vault(vault):
        raise _MalformedError(problem)
    if not vault_allowed(vault):
        return None
    if secret is None:
        raise _MalformedError(f"{operation} names no secret in properties.id or requestUri")
    if problem := check_secret(secret):
        raise _MalformedError(problem)
    return LogRecord(vault.lower(), secret, operation, position)


def _status(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(str(value).strip())
    except ValueError:
        return None


def _target(record: Mapping[str, Any], props: Mapping[str, Any], operation: str) -> tuple[str | None, str | None]:
    """Vault from resourceId (upper-cased in real logs) or the object's host; secret from the URIs."""
    vault = None
    match = _VAULT_ID.search(str(record.get("resourceid") or ""))
    if match:
        vault = match.group(1)
    secret = None
    # The restore call is POST /secrets/restore: its requestUri names no secret, its id does.
    uris = [props.get("id")] if operation == "SecretRestore" else [props.get("id"), props.get("requesturi")]
    for uri in uris:
        host, name = _secret_from_uri(uri)
        vault = vault or host
        secret = secret or name
    return vault, secret


def _secret_from_uri(uri: Any) -> tuple[str | None, str | None]:
    """``https://{vault}.vault.azure.net/(secrets|deletedsecrets)/{name}[/...]``."""
    if not isinstance(uri, str) or not uri:
        return None, None
    parts = urlsplit(uri)
    host = parts.hostname.split(".", 1)[0] if parts.hostname and ".vault." in parts.hostname else None
    segments = [s for s in parts.path.split("/") if s]
    if len(segments) >= 2 and segments[0].lower() in ("secrets", "deletedsecrets"):
        return host, segments[1]
    return host, None
