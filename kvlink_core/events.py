"""Key Vault events from Event Grid, in either delivery schema, as one typed value.

The sources disagree on the data's field names (PascalCase in the examples,
camelCase in the 2018 swagger, ``id`` lower-case in the docs table) and on number
formats (``NBF``/``EXP`` as numbers or numeric strings), so keys are matched
case-insensitively and numbers are accepted in every form seen.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from .errors import InvalidEventError, UnwantedEventError
from .model import parse_timestamp
from .names import check_secret, check_vault

PREFIX = "Microsoft.KeyVault."
SECRET_EVENTS = frozenset({"SecretNewVersionCreated", "SecretNearExpiry", "SecretExpired"})
OTHER_EVENTS = frozenset(
    {
        "KeyNewVersionCreated",
        "KeyNearExpiry",
        "KeyExpired",
        "CertificateNewVersionCreated",
        "CertificateNearExpiry",
        "CertificateExpired",
        "VaultAccessPolicyChanged",
    }
)
_VAULT_ID = re.compile(
    r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.KeyVault/vaults/([^/]+)/?$",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class SecretEvent:
    event_id: str
    kind: str  # the event type without its "Microsoft.KeyVault." prefix
    vault: str  # lower-cased
    secret: str
    version: str | None = None
    event_time: datetime | None = None
    not_before: datetime | None = None
    expires: datetime | None = None


def parse_event(envelope: Mapping[str, Any]) -> SecretEvent:
    """Turn one delivered event (Event Grid or CloudEvents schema) into a :class:`SecretEvent`.

    Raises :class:`UnwantedEventError` for well-formed events kvlink does not act on and
    :class:`InvalidEventError` for malformed ones; both are acknowledged, never retried.
    """
    env = _lower_keys(envelope)
    event_id = _text(env.get("id")) or "<no id>"
    if "specversion" in env:
        event_type, source, when = env.get("type"), env.get("source"), env.get("time")
    else:
        event_type, source, when = env.get("eventtype"), env.get("topic"), env.get("eventtime")

    def invalid(message: str) -> InvalidEventError:
        return InvalidEventError(f"event {event_id}: {message}", event_id=event_id)

    if event_id == "<no id>":
        raise invalid("missing id")
    event_type = _text(event_type)
    if not event_type:
        raise invalid("missing event type")
    if not event_type.startswith(PREFIX):
        raise UnwantedEventError(f"event {event_id}: type {event_type!r} is not a Key Vault event")
    kind = event_type.removeprefix(PREFIX)
    if kind in OTHER_EVENTS:
        raise UnwantedEventError(f"event {event_id}: {kind} is not about a secret", event_id=event_id)
    if kind not in SECRET_EVENTS:
        raise UnwantedEventError(f"event {event_id}: unknown Key Vault event type {kind!r}", event_id=event_id)

    match = _VAULT_ID.match(_text(source) or "")
    if not match:
        raise invalid(f"source/topic {source!r} is not a Key Vault resource id")
    vault = match.group(1)
    if problem := check_vault(vault):
        raise invalid(problem)

    data = env.get("data")
    if not isinstance(data, Mapping):
        raise invalid("data is missing or not an object")
    data = _lower_keys(data)
    object_type = _text(data.get("objecttype"))
    if object_type and object_type.lower() != "secret":
        raise UnwantedEventError(f"event {event_id}: object type {object_type!r} is not a secret")

    named = _text(data.get("vaultname"))
    if named and named.lower() != vault.lower():
        raise invalid(f"data names vault {named!r} but the event comes from vault {vault!r}")

    id_vault, id_name, id_version = _parse_object_id(_text(data.get("id")), invalid)
    if id_vault and id_vault != vault.lower():
        raise invalid(f"object id belongs to vault {id_vault!r}, not {vault!r}")

    names = {n for n in (_text(env.get("subject")), _text(data.get("objectname")), id_name) if n}
    if not names:
        raise invalid("no secret name in subject, ObjectName or Id")
    if len({n.lower() for n in names}) > 1:
        raise invalid(f"subject, ObjectName and Id disagree on the secret name: {sorted(names)}")
    secret = _text(data.get("objectname")) or id_name or _text(env.get("subject")) or ""
    if problem := check_secret(secret):
        raise invalid(problem)

    return SecretEvent(
        event_id=event_id,
        kind=kind,
        vault=vault.lower(),
        secret=secret,
        version=_text(data.get("version")) or id_version,
        event_time=parse_timestamp(when),
        not_before=_epoch(data.get("nbf")),
        expires=_epoch(data.get("exp")),
    )


def _lower_keys(mapping: Mapping[str, Any]) -> dict[str, Any]:
    # strip(): a documented example has the key "ObjectName " with a trailing space
    return {str(k).strip().lower(): v for k, v in mapping.items()}


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _parse_object_id(object_id: str | None, invalid: Any) -> tuple[str | None, str | None, str | None]:
    """Vault, name and version from ``https://{vault}.vault.azure.net/secrets/{name}[/{version}]``."""
    if not object_id:
        return None, None, None
    parts = urlsplit(object_id)
    segments = [s for s in parts.path.split("/") if s]
    if parts.scheme != "https" or not parts.hostname or len(segments) not in (2, 3):
        raise invalid(f"object id {object_id!r} is not a Key Vault secret URL")
    if segments[0].lower() != "secrets":
        raise UnwantedEventError(f"object id {object_id!r} is not a secret")
    version = segments[2] if len(segments) == 3 else None
    return parts.hostname.split(".", 1)[0].lower(), segments[1], version


def _epoch(value: Any) -> datetime | None:
    """NBF/EXP: seconds since 1970 as a number, a numeric string, or absent."""
    if value is None or isinstance(value, bool):
        return None
    try:
        seconds = float(str(value).strip())
    except ValueError:
        return None  # informational only; kvlink re-reads the secret's real attributes
    if seconds <= 0:
        return None
    return datetime.fromtimestamp(seconds, tz=UTC)
