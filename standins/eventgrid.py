"""A local stand-in for an Event Grid (basic tier) custom topic's publish endpoint.

The real ``azure-eventgrid`` ``EventGridPublisherClient`` publishes to it unmodified,
over HTTPS. What the client sends, as read in azure-eventgrid 4.22.1
(``azure/eventgrid/_legacy/_helpers.py`` and ``_constants.py``):

* ``POST {endpoint}?api-version=2018-01-01``, the endpoint being the topic endpoint
  (``https://<topic>.<region>-1.eventgrid.azure.net/api/events``; here :attr:`endpoint`);
* CloudEvents as a JSON array with ``Content-Type: application/cloudevents-batch+json;
  charset=utf-8``; ``EventGridEvent``s as a JSON array with ``application/json; charset=utf-8``;
* auth: a TokenCredential gives ``Authorization: Bearer <token>`` for the scope
  ``https://eventgrid.azure.net/.default``; an ``AzureKeyCredential`` gives
  ``aeg-sas-key: <key>``; an ``AzureSasCredential`` gives ``aeg-sas-token: r=...&e=...&s=...``
  (``generate_sas``: HMAC-SHA256 with the base64-decoded key).

What the stand-in checks, in this order: the route (only ``POST /api/events``, else 404),
``api-version`` (missing or not ``2018-01-01``: 400), authentication (401), size (a body
over 1 MB: 413, as Event Grid limits a batch to 1 MB), then the batch itself (400): the
content type, JSON, an array, and per event the required attributes -- CloudEvents 1.0
``specversion`` "1.0", ``id``, ``source``, ``type`` (non-empty strings), an RFC 3339
``time``, at most one of ``data``/``data_base64``, extension names of ``a-z0-9``; Event Grid
schema ``id``, ``subject``, ``eventType``, ``eventTime``, ``dataVersion``. A batch is all
or nothing, as in Event Grid. Success is 200 with an empty body; errors carry Event Grid's
``{"error": {"code": ..., "message": ...}}``.

Fidelity choices, on purpose:

* One topic accepts both input schemas, told apart by content type
  (``application/cloudevents-batch+json`` or, for a single structured event,
  ``application/cloudevents+json``: CloudEvents; ``application/json``: Event Grid schema).
  A real topic has one input schema and answers 400 to the other; custom input schemas
  are not emulated. Each accepted batch records the schema it used (:attr:`batches`).
* ``dataVersion`` is required for Event Grid-schema events, as in the 2018-01-01 REST spec
  the SDK is generated from (some docs call it optional); ``data`` is optional.
* Error codes and messages are modelled on Event Grid's but not verbatim; 1 MB is taken as
  1 MiB. A body is read completely before it is judged, so 413 comes after the upload.
* Events are recorded exactly as received -- Event Grid stamps ``topic`` and
  ``metadataVersion`` on delivery, which this stand-in does not do (it delivers nothing).

Quirk of the SDK, worth knowing: for a basic topic, azure-eventgrid 4.22.1's
``EventGridPublisherClient.__init__`` does not pass its ``**kwargs`` on to the pipeline it
builds, so ``connection_verify``, ``retry_*`` or ``transport`` given to the constructor are
silently dropped. Give them to ``send()`` instead (each call), or trust the CA through
``REQUESTS_CA_BUNDLE``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import ssl
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal
from urllib.parse import unquote, urlsplit

from ._http import Request, Response, StandInServer, abort
from .keyvault import DEFAULT_TOKEN, static_credential

__all__ = [
    "API_VERSION",
    "DEFAULT_TOKEN",
    "MAX_BATCH_BYTES",
    "SCOPE",
    "EventGridTopicStandIn",
    "PublishedBatch",
    "Schema",
    "static_credential",
]

Schema = Literal["cloudevents", "eventgrid"]
AuthKind = Literal["bearer", "key", "sas"]

SCOPE: Final = "https://eventgrid.azure.net/.default"  # what the SDK asks a TokenCredential for
API_VERSION: Final = "2018-01-01"  # the only data-plane version of basic topics; the SDK's default
PATH: Final = "/api/events"
MAX_BATCH_BYTES: Final = 1024 * 1024

CLOUDEVENTS_BATCH: Final = "application/cloudevents-batch+json"
CLOUDEVENT_SINGLE: Final = "application/cloudevents+json"
EVENTGRID_JSON: Final = "application/json"

_CLOUDEVENT_REQUIRED: Final = ("id", "source", "type")
_CLOUDEVENT_OPTIONAL_STRINGS: Final = ("subject", "datacontenttype", "dataschema", "time")
_EVENTGRID_REQUIRED: Final = ("id", "subject", "eventType", "eventTime", "dataVersion")
_EXTENSION_NAME = re.compile(r"^[a-z0-9]+$")

_ERROR_CODES: Final[Mapping[int, str]] = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    408: "RequestTimeout",
    413: "RequestEntityTooLarge",
    429: "TooManyRequests",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}
_ERROR_MESSAGES: Final[Mapping[int, str]] = {
    429: "The request rate exceeds the limit of this topic. Please retry after some time.",
    500: "An internal server error occurred. Please try again.",
    503: "The service is temporarily unavailable. Please try again later.",
}


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _bad_request(message: str) -> Exception:
    return abort(400, _error("BadRequest", message))


def _unauthorized(message: str) -> Exception:
    return abort(401, _error("Unauthorized", message))


def _parse_time(value: str) -> datetime | None:
    """An RFC 3339 / ISO 8601 timestamp, or None. Naive values count as UTC."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class PublishedBatch:
    """One accepted publish request."""

    schema: Schema
    events: tuple[dict[str, Any], ...]
    auth: AuthKind
    content_type: str  # as sent, parameters included


class EventGridTopicStandIn(StandInServer):
    """One Event Grid custom topic: ``POST {base_url}/api/events`` over HTTPS."""

    name = "eventgrid-stand-in"

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None,
        token: str = DEFAULT_TOKEN,
        key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(ssl_context=ssl_context, host=host, port=port)
        if key is not None and not key:
            raise ValueError("key must be a non-empty string (or None to refuse key and SAS auth)")
        self._token = token
        self._key = key
        self._key_bytes = _decode_key(key)
        self._events_lock = threading.Lock()
        self._events: list[tuple[Schema, dict[str, Any]]] = []
        self._batches: list[PublishedBatch] = []

    # -- lifecycle (narrowed return types so callers keep the subclass) ---------------
    def start(self) -> EventGridTopicStandIn:
        super().start()
        return self

    def __enter__(self) -> EventGridTopicStandIn:
        return self.start()

    # -- addresses -------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        """The topic endpoint to give ``EventGridPublisherClient``."""
        return f"{self.base_url}{PATH}"

    # -- what was published ----------------------------------------------------------
    @property
    def events(self) -> list[dict[str, Any]]:
        """Every accepted event, oldest first, as received (a snapshot, safe to iterate)."""
        with self._events_lock:
            return [event for _, event in self._events]

    @property
    def batches(self) -> list[PublishedBatch]:
        """Every accepted publish request, with its schema and auth kind (a snapshot)."""
        with self._events_lock:
            return list(self._batches)

    def events_of_type(self, event_type: str) -> list[dict[str, Any]]:
        """Accepted events whose ``type`` (CloudEvents) or ``eventType`` (Event Grid schema) matches."""
        with self._events_lock:
            return [
                event
                for schema, event in self._events
                if event.get("type" if schema == "cloudevents" else "eventType") == event_type
            ]

    def clear_events(self) -> None:
        """Forget accepted events and batches (``reset_calls`` leaves them alone)."""
        with self._events_lock:
            self._events.clear()
            self._batches.clear()

    # -- request handling ------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        if request.path.rstrip("/") != PATH:
            raise abort(404, _error("NotFound", f"The requested resource {request.path} does not exist."))
        if request.method != "POST":
            # Event Grid has nothing but POST at the publish path.
            raise abort(404, _error("NotFound", f"{request.method} {request.path} is not supported."))
        self._api_version(request)
        auth = self._authenticate(request)
        if len(request.raw_body) > MAX_BATCH_BYTES:
            raise abort(
                413,
                _error(
                    "RequestEntityTooLarge",
                    f"The maximum size ({MAX_BATCH_BYTES}) has been exceeded: the request body is "
                    f"{len(request.raw_body)} bytes.",
                ),
            )
        schema, single = self._schema(request)
        events = self._parse(request, single)
        validate = _validate_cloudevent if schema == "cloudevents" else _validate_eventgrid_event
        for index, event in enumerate(events):
            validate(index, event)
        batch = PublishedBatch(schema, tuple(events), auth, request.headers.get("Content-Type", ""))
        with self._events_lock:
            self._events.extend((schema, event) for event in events)
            self._batches.append(batch)
        return Response(200)  # Event Grid answers an empty 200

    def error_body(self, status: int) -> Any:
        code = _ERROR_CODES.get(status, f"Http{status}")
        return _error(code, _ERROR_MESSAGES.get(status, f"The service answered {status} (injected fault)."))

    # -- helpers ---------------------------------------------------------------------
    @staticmethod
    def _api_version(request: Request) -> None:
        version = request.query.get("api-version")
        if not version:
            raise _bad_request("The api-version query parameter is missing.")
        if version != API_VERSION:
            raise _bad_request(f"The api-version '{version}' is not supported. Supported api-versions: {API_VERSION}.")

    def _authenticate(self, request: Request) -> AuthKind:
        key = request.headers.get("aeg-sas-key")
        sas = request.headers.get("aeg-sas-token")
        authorization = request.headers.get("Authorization")
        if key is not None:
            if self._key is None or not hmac.compare_digest(key.strip().encode(), self._key.encode()):
                raise _unauthorized(
                    "The request authorization key is not authorized for this topic: "
                    "the aeg-sas-key header does not hold one of the topic's access keys."
                )
            return "key"
        if sas is not None:
            self._check_sas(request, sas.strip())
            return "sas"
        if authorization is not None:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._token.encode()):
                raise _unauthorized(
                    "The access token was not accepted (it is not the token of this stand-in, "
                    f"or not a Bearer token for {SCOPE})."
                )
            return "bearer"
        raise _unauthorized(
            "Request must contain one of the following authorization signature: aeg-sas-token, "
            "aeg-sas-key, or an Authorization header with a Bearer token."
        )

    def _check_sas(self, request: Request, token: str) -> None:
        """Verify a token made by ``azure.eventgrid.generate_sas``: ``r=<resource>&e=<expiry>&s=<sig>``."""
        parts: dict[str, str] = {}
        for item in token.split("&"):
            name, sep, value = item.partition("=")
            if sep:
                parts[name] = value
        resource, expiry, signature = parts.get("r"), parts.get("e"), parts.get("s")
        if resource is None or expiry is None or signature is None:
            raise _unauthorized("The aeg-sas-token is malformed: it needs r, e and s.")
        if self._key_bytes is None:
            raise _unauthorized("This topic has no base64 access key, so it accepts no SAS token.")
        expected = base64.b64encode(
            hmac.new(self._key_bytes, f"r={resource}&e={expiry}".encode(), hashlib.sha256).digest()
        )
        if not hmac.compare_digest(unquote(signature).encode(), expected):
            raise _unauthorized("The aeg-sas-token signature does not match the topic's access key.")
        expires = _parse_time(unquote(expiry))
        if expires is None:
            raise _unauthorized(f"The aeg-sas-token expiry '{unquote(expiry)}' is not a valid time.")
        if expires <= datetime.now(UTC):
            raise _unauthorized(f"The aeg-sas-token expired at {expires.isoformat()}.")
        target = urlsplit(unquote(resource))
        host = request.headers.get("Host", "")
        if target.path.rstrip("/") != PATH or target.netloc.lower() != host.lower():
            raise _unauthorized(f"The aeg-sas-token was signed for another resource ({unquote(resource)}).")

    @staticmethod
    def _schema(request: Request) -> tuple[Schema, bool]:
        """The input schema the content type names, and whether the body is one event (not an array)."""
        if request.headers.get("Content-Type") is None:
            raise _bad_request("The Content-Type header is missing.")
        media_type = request.headers.get_content_type()
        charset = request.headers.get_content_charset()
        if charset is not None and charset.replace("-", "") != "utf8":
            raise _bad_request(f"The charset '{charset}' is not supported; use utf-8.")
        if media_type == CLOUDEVENTS_BATCH:
            return "cloudevents", False
        if media_type == CLOUDEVENT_SINGLE:
            return "cloudevents", True
        if media_type == EVENTGRID_JSON:
            return "eventgrid", False
        raise _bad_request(
            f"The Content-Type '{media_type}' is not supported. Use {CLOUDEVENTS_BATCH} or "
            f"{CLOUDEVENT_SINGLE} for CloudEvents, {EVENTGRID_JSON} for the Event Grid schema."
        )

    @staticmethod
    def _parse(request: Request, single: bool) -> list[dict[str, Any]]:
        if not request.raw_body:
            raise _bad_request("The request body is empty.")
        try:
            body = json.loads(request.raw_body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise _bad_request(f"The request body is not valid JSON: {exc}.") from None
        if single:
            if not isinstance(body, dict):
                raise _bad_request(f"A {CLOUDEVENT_SINGLE} body must be one JSON object.")
            return [body]
        if not isinstance(body, list):
            raise _bad_request("The request body must be a JSON array of events.")
        if not body:
            raise _bad_request("The request body must contain at least one event.")
        for index, event in enumerate(body):
            if not isinstance(event, dict):
                raise _bad_request(f"Event {index} is not a JSON object.")
        return body


def _decode_key(key: str | None) -> bytes | None:
    """The HMAC key behind SAS tokens: real access keys are base64 (``generate_sas`` decodes them)."""
    if key is None:
        return None
    try:
        return base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        return None


def _is_base64(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _require_strings(index: int, event: Mapping[str, Any], names: Sequence[str]) -> None:
    for name in names:
        if name not in event or event[name] is None:
            raise _bad_request(f"Event {index}: required property '{name}' was not found.")
        value = event[name]
        if not isinstance(value, str) or not value:
            raise _bad_request(f"Event {index}: property '{name}' must be a non-empty string.")


def _validate_cloudevent(index: int, event: Mapping[str, Any]) -> None:
    if "specversion" not in event:
        raise _bad_request(f"Event {index}: required property 'specversion' was not found.")
    if event["specversion"] != "1.0":
        raise _bad_request(f"Event {index}: specversion {event['specversion']!r} is not supported; only '1.0' is.")
    _require_strings(index, event, _CLOUDEVENT_REQUIRED)
    for name in _CLOUDEVENT_OPTIONAL_STRINGS:
        if event.get(name) is not None and not isinstance(event[name], str):
            raise _bad_request(f"Event {index}: property '{name}' must be a string.")
    time_value = event.get("time")
    if isinstance(time_value, str) and _parse_time(time_value) is None:
        raise _bad_request(f"Event {index}: time '{time_value}' is not an RFC 3339 timestamp.")
    if event.get("data") is not None and event.get("data_base64") is not None:
        raise _bad_request(f"Event {index}: 'data' and 'data_base64' are mutually exclusive.")
    data_base64 = event.get("data_base64")
    if data_base64 is not None and not _is_base64(data_base64):
        raise _bad_request(f"Event {index}: 'data_base64' is not a base64 string.")
    for name in event:
        if name not in ("data", "data_base64") and not _EXTENSION_NAME.fullmatch(name):
            raise _bad_request(
                f"Event {index}: attribute name '{name}' is invalid; CloudEvents attribute names "
                "consist of lower-case letters and digits."
            )


def _validate_eventgrid_event(index: int, event: Mapping[str, Any]) -> None:
    _require_strings(index, event, _EVENTGRID_REQUIRED)
    if _parse_time(event["eventTime"]) is None:
        raise _bad_request(f"Event {index}: eventTime '{event['eventTime']}' is not an ISO 8601 time.")
    topic = event.get("topic")
    if topic is not None and not isinstance(topic, str):
        raise _bad_request(f"Event {index}: property 'topic' must be a string.")
