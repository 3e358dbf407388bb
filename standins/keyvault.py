"""A local stand-in for the Azure Key Vault secrets data plane.

The real ``azure-keyvault-secrets`` ``SecretClient`` runs against it unmodified,
over HTTPS, with Key Vault's challenge authentication, paging and error bodies.
It serves *metadata only*: listing secrets, listing versions and listing deleted
secrets. Every endpoint that would return a secret value is refused with 403 and
recorded in :attr:`KeyVaultStandIn.value_requests`, because kvlink must never
read a value.

One stand-in hosts many vaults on one port. The vault name is the first path
segment, so the vault URL of vault ``v`` is ``{public_url}/v`` (``base_url`` without a default port).

Quirk, kept on purpose: the SDK parses every ``id`` it receives and rejects ids
whose path has more than three segments, so ids cannot carry the ``/v`` prefix.
They are returned exactly as real Azure writes them --
``https://v.vault.azure.net/secrets/{name}`` for list items and
``https://v.vault.azure.net/secrets/{name}/{version}`` for versions -- and
``SecretProperties.vault_url`` is therefore the real-looking
``https://v.vault.azure.net``. ``nextLink`` on the other hand points back at the
stand-in (``{base_url}/v/secrets?api-version=...&$skiptoken=...&maxresults=...``),
because the SDK follows it verbatim. Like Key Vault's, it always carries an explicit
port -- ``:443`` too -- while :meth:`KeyVaultStandIn.vault_url` leaves a default port
out, as vault URLs do; a stand-in bound to port 443 therefore speaks Azure's exact form.

Secrets are seeded with :meth:`KeyVaultStandIn.set_secret` and friends. Of the REST
write operations, the three an operator's ``smoke`` run makes are emulated -- Set Secret
(``PUT /secrets/{name}``), Delete Secret (``DELETE /secrets/{name}``) and Purge Deleted
Secret (``DELETE /deletedsecrets/{name}``) -- and each can be refused per vault with
:meth:`KeyVaultStandIn.forbid`. A set is a write, not a read: the value sent is echoed back
(as Key Vault's SecretBundle does) and never stored. Update, recover, backup and restore answer 405.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import json
import re
import ssl
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import EllipsisType, TracebackType
from typing import Any, Final

from azure.core.credentials import AccessToken, AccessTokenInfo, TokenRequestOptions

from ._http import Fault, Request, Response, StandInServer, abort
from .logs import audit_record

__all__ = ["KeyVaultStandIn", "StaticTokenCredential", "static_credential"]

DEFAULT_TOKEN: Final = "kvlink-emulator-token"

# What real Key Vault sends with every 401 (the tenant is Microsoft's own, as in
# the SDK's recorded tests); ChallengeAuthPolicy needs it to fetch a token.
CHALLENGE: Final = (
    'Bearer authorization="https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47", '
    'resource="https://vault.azure.net"'
)

PAGE_SIZE: Final = 25  # the service maximum and default for maxresults
RECOVERY_LEVEL: Final = "Recoverable+Purgeable"  # soft delete on, purge protection off
RECOVERABLE_DAYS: Final = 90

_SECRET_NAME = re.compile(r"^[0-9a-zA-Z-]{1,127}$")
_VAULT_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{1,22}[a-zA-Z0-9]$")
# Key Vault API versions look like "7.5", "7.6-preview.1" or "2025-07-01(-preview)".
_API_VERSION = re.compile(r"^(\d+\.\d+|\d{4}-\d{2}-\d{2})(-preview(\.\d+)?)?$")
_MAX_TAGS = 15
# The REST writes emulated (an operator's smoke run makes them), by route head and method.
_WRITES: Final[Mapping[tuple[str, str], str]] = {
    ("secrets", "PUT"): "set",
    ("secrets", "DELETE"): "delete",
    ("deletedsecrets", "DELETE"): "purge",
}
_MAX_CONTENT_TYPE = 255

_ERROR_CODES: Final[Mapping[int, str]] = {
    400: "BadParameter",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    408: "RequestTimeout",
    409: "Conflict",
    429: "Throttled",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}
_ERROR_MESSAGES: Final[Mapping[int, str]] = {
    429: "Operations per second limit reached. Please retry after some time.",
    500: "An internal server error occurred. Please try again.",
    503: "The service is temporarily unavailable. Please try again later.",
}


def _error(code: str, message: str, inner: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if inner is not None:
        body["innererror"] = {"code": inner}
    return {"error": body}


def _epoch(value: datetime | int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        # The SDK treats naive datetimes as UTC; so do we.
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return int(aware.timestamp())
    return int(value)


def _check_secret_name(name: str) -> None:
    if not _SECRET_NAME.fullmatch(name):
        raise ValueError(f"invalid Key Vault secret name {name!r}: 1-127 characters of 0-9, a-z, A-Z and -")


def _check_vault_name(vault: str) -> None:
    if not _VAULT_NAME.fullmatch(vault) or "--" in vault:
        raise ValueError(
            f"invalid Key Vault name {vault!r}: 3-24 characters of 0-9, a-z, A-Z and -, "
            "starting with a letter, no consecutive or trailing -"
        )


def _check_metadata(content_type: str | None, tags: Mapping[str, str] | None) -> None:
    if content_type is not None and len(content_type) > _MAX_CONTENT_TYPE:
        raise ValueError(f"contentType is limited to {_MAX_CONTENT_TYPE} characters")
    if tags is not None and len(tags) > _MAX_TAGS:
        raise ValueError(f"a secret has at most {_MAX_TAGS} tags")


@dataclass
class _Version:
    version: str
    seq: int  # creation order; ties in ``created`` (whole seconds) are common in tests
    enabled: bool
    created: int
    updated: int
    content_type: str | None
    tags: dict[str, str] | None
    expires: int | None
    not_before: int | None
    managed: bool


@dataclass
class _Secret:
    name: str  # casing of the first set_secret; ids use it
    versions: list[_Version]  # oldest first, so the current version is the last
    deleted_on: int | None = None

    @property
    def current(self) -> _Version:
        return self.versions[-1]


@dataclass
class _Vault:
    name: str  # lowercased
    secrets: dict[str, _Secret] = field(default_factory=dict)  # keyed by lowercased name
    deleted: dict[str, _Secret] = field(default_factory=dict)
    denied: int | None = None
    denied_rbac: bool = False

    @property
    def id_base(self) -> str:
        return f"https://{self.name}.vault.azure.net"


class KeyVaultStandIn(StandInServer):
    """Key Vault secrets data plane (metadata only) for many vaults on one HTTPS port."""

    name = "keyvault-stand-in"

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None,
        token: str = DEFAULT_TOKEN,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(ssl_context=ssl_context, host=host, port=port)
        self._token = token
        self._vault_lock = threading.RLock()
        self._vaults: dict[str, _Vault] = {}
        self._seq = 0
        self.value_requests: list[str] = []
        self.audit_log: list[dict[str, Any]] = []  # AuditEvent records of changes, for the log path
        self._forbidden: dict[str, set[str]] = {}  # vault -> REST writes refused with 403 (set, delete, purge)
        self.record_audit = True  # benchmarks seeding 100,000 secrets turn this off

    # -- lifecycle (narrowed return types so callers keep the subclass) ---------------
    def start(self) -> KeyVaultStandIn:
        super().start()
        return self

    def __enter__(self) -> KeyVaultStandIn:
        return self.start()

    # -- addresses -------------------------------------------------------------------
    @property
    def public_url(self) -> str:
        """The stand-in's address as vault URLs write it: without the port when it is the default."""
        scheme, _, rest = self.base_url.partition("://")
        default = ":443" if scheme == "https" else ":80"
        return f"{scheme}://{rest.removesuffix(default)}"

    def vault_url(self, vault: str) -> str:
        """The URL to give ``SecretClient`` for ``vault``."""
        return f"{self.public_url}/{vault.lower()}"

    @property
    def vault_url_template(self) -> str:
        """``{public_url}/{vault}``, for configuration that formats vault URLs itself."""
        return f"{self.public_url}/{{vault}}"

    # -- seeding and mutation --------------------------------------------------------
    def create_vault(self, vault: str) -> None:
        """Create an empty vault (no-op if it exists)."""
        _check_vault_name(vault)
        with self._vault_lock:
            self._vaults.setdefault(vault.lower(), _Vault(vault.lower()))

    def set_secret(
        self,
        vault: str,
        name: str,
        *,
        enabled: bool = True,
        content_type: str | None = None,
        tags: Mapping[str, str] | None = None,
        expires: datetime | int | None = None,
        not_before: datetime | int | None = None,
        managed: bool = False,
    ) -> str:
        """Create a secret, or a new current version of an existing one; return the version id."""
        _check_secret_name(name)
        _check_metadata(content_type, tags)
        self.create_vault(vault)
        now = int(time.time())
        with self._vault_lock:
            store = self._vaults[vault.lower()]
            key = name.lower()
            if key in store.deleted:
                # Real Key Vault answers 409 ObjectIsDeletedButRecoverable here.
                raise ValueError(
                    f"Secret {name} is currently in a deleted but recoverable state, and its name cannot be "
                    "reused; in this state, the secret can only be recovered or purged."
                )
            self._seq += 1
            version = _Version(
                version=uuid.uuid4().hex,
                seq=self._seq,
                enabled=enabled,
                created=now,
                updated=now,
                content_type=content_type,
                tags=dict(tags) if tags else None,
                expires=_epoch(expires),
                not_before=_epoch(not_before),
                managed=managed,
            )
            secret = store.secrets.get(key)
            if secret is None:
                store.secrets[key] = _Secret(name, [version])
            else:
                secret.versions.append(version)
            self._audit(
                vault,
                "SecretSet",
                name,
                request_path=f"/secrets/{name}",
                object_path=f"/secrets/{name}/{version.version}",
            )
            return version.version

    def update_secret(
        self,
        vault: str,
        name: str,
        *,
        enabled: bool | None = None,
        content_type: str | EllipsisType | None = ...,
        tags: Mapping[str, str] | EllipsisType | None = ...,
        expires: datetime | int | EllipsisType | None = ...,
        not_before: datetime | int | EllipsisType | None = ...,
    ) -> None:
        """Change the current version's attributes, like SecretUpdate; ``...``/None leaves a field alone.

        For ``content_type``, ``tags``, ``expires`` and ``not_before`` an explicit None clears the field.
        """
        with self._vault_lock:
            current = self._live(vault, name).current
            if enabled is not None:
                current.enabled = enabled
            if not isinstance(content_type, EllipsisType):
                _check_metadata(content_type, None)
                current.content_type = content_type
            if not isinstance(tags, EllipsisType):
                _check_metadata(None, tags)
                current.tags = dict(tags) if tags else None
            if not isinstance(expires, EllipsisType):
                current.expires = _epoch(expires)
            if not isinstance(not_before, EllipsisType):
                current.not_before = _epoch(not_before)
            current.updated = int(time.time())
            secret_name = self._live(vault, name).name
            self._audit(
                vault,
                "SecretUpdate",
                secret_name,
                request_path=f"/secrets/{secret_name}/{current.version}",
                object_path=f"/secrets/{secret_name}/{current.version}",
            )

    def delete_secret(self, vault: str, name: str) -> None:
        """Soft-delete a secret with all its versions."""
        with self._vault_lock:
            store = self._store(vault)
            secret = self._live(vault, name)
            del store.secrets[name.lower()]
            secret.deleted_on = int(time.time())
            store.deleted[name.lower()] = secret
            self._audit(vault, "SecretDelete", secret.name)

    def recover_secret(self, vault: str, name: str) -> None:
        """Bring a soft-deleted secret back, versions and attributes intact."""
        with self._vault_lock:
            store = self._store(vault)
            secret = store.deleted.pop(name.lower(), None)
            if secret is None:
                raise KeyError(f"no deleted secret {name!r} in vault {vault!r}")
            secret.deleted_on = None
            store.secrets[name.lower()] = secret
            self._audit(vault, "SecretRecover", secret.name, request_path=f"/deletedsecrets/{secret.name}/recover")

    def purge_secret(self, vault: str, name: str) -> None:
        """Remove a soft-deleted secret for good."""
        with self._vault_lock:
            secret = self._store(vault).deleted.pop(name.lower(), None)
            if secret is None:
                raise KeyError(f"no deleted secret {name!r} in vault {vault!r}")
            self._audit(
                vault,
                "SecretPurge",
                secret.name,
                request_path=f"/deletedsecrets/{secret.name}",
                object_path=f"/deletedsecrets/{secret.name}",
            )

    def restore_secret(self, vault: str, name: str, **attributes: Any) -> str:
        """Restore a secret from a backup (here: recreate it), logged as SecretRestore."""
        with self._vault_lock:
            audit_before = len(self.audit_log)
            version = self.set_secret(vault, name, **attributes)
            del self.audit_log[audit_before:]  # a restore logs SecretRestore, not SecretSet
            self._audit(vault, "SecretRestore", name, request_path="/secrets/restore", object_path=f"/secrets/{name}")
            return version

    def log_failed(self, vault: str, operation: str, name: str, status: int) -> None:
        """A refused call (403, 404...): still logged, with resultType "Success"."""
        with self._vault_lock:
            self._audit(vault, operation, name, status=status)

    def drain_audit_log(self) -> list[dict[str, Any]]:
        """The AuditEvent records since the last drain, as the diagnostic setting would ship them."""
        with self._vault_lock:
            records, self.audit_log = self.audit_log, []
            return records

    def _audit(self, vault: str, operation: str, name: str, **kwargs: Any) -> None:
        if self.record_audit:
            self.audit_log.append(audit_record(vault, operation, secret=name, **kwargs))

    def secret_names(self, vault: str) -> list[str]:
        """Names of the live secrets, in the order the list endpoint returns them."""
        with self._vault_lock:
            return [s.name for _, s in sorted(self._store(vault).secrets.items())]

    def deleted_secret_names(self, vault: str) -> list[str]:
        """Names of the soft-deleted secrets."""
        with self._vault_lock:
            return [s.name for _, s in sorted(self._store(vault).deleted.items())]

    def deny(self, vault: str, status: int = 403, *, rbac: bool = False) -> None:
        """Answer every authenticated request to ``vault`` with ``status`` (missing permissions).

        ``rbac`` picks the wording of an Azure RBAC vault instead of an access-policy vault.
        """
        self.create_vault(vault)
        with self._vault_lock:
            store = self._vaults[vault.lower()]
            store.denied = status
            store.denied_rbac = rbac

    def allow(self, vault: str) -> None:
        """Undo :meth:`deny` and :meth:`forbid`."""
        with self._vault_lock:
            self._store(vault).denied = None
            self._forbidden.pop(vault.lower(), None)

    def forbid(self, vault: str, *operations: str) -> None:
        """Refuse the REST writes ``set``, ``delete`` or ``purge`` on ``vault`` with 403 (a missing permission)."""
        self.create_vault(vault)
        with self._vault_lock:
            self._forbidden.setdefault(vault.lower(), set()).update(operations)

    # -- value-read guard ------------------------------------------------------------
    def assert_no_value_reads(self) -> None:
        """Fail if any client asked for a secret value."""
        with self._vault_lock:
            paths = list(self.value_requests)
        if paths:
            raise AssertionError(f"secret values were requested: {paths}")

    def reset_value_requests(self) -> None:
        """Forget recorded value reads (``reset_calls`` leaves them, so they cannot be lost by accident)."""
        with self._vault_lock:
            self.value_requests.clear()

    # -- request handling ------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        segments = [s for s in request.path.split("/") if s]
        if not segments:
            raise abort(404, _error("NotFound", "No vault in the request path; use {base_url}/{vault}/secrets."))
        with self._vault_lock:
            store = self._vaults.get(segments[0].lower())
        if store is None:
            # Not a real Key Vault answer: a missing vault fails DNS in Azure. The SDK surfaces
            # this as ResourceNotFoundError, which is close enough for tests.
            raise abort(404, _error("VaultNotFound", f"The vault '{segments[0]}' does not exist in this stand-in."))
        self._authenticate(request)
        route = segments[1:]
        value_read = self._is_value_read(request.method, route)
        with self._vault_lock:
            # Only authenticated attempts count: the SDK's bare challenge request is not a read.
            if value_read:
                self.value_requests.append(request.path)
            denied, rbac = store.denied, store.denied_rbac
        api_version = self._api_version(request)
        if denied is not None:
            raise abort(denied, self._denied_body(store.name, denied, rbac))
        if value_read:
            raise abort(
                403,
                _error(
                    "Forbidden",
                    "Reading secret values is forbidden in the kvlink Key Vault stand-in: "
                    "kvlink must only list secret metadata.",
                    "ForbiddenByPolicy",
                ),
            )
        return self._route(request, store, route, api_version)

    def error_body(self, status: int) -> Any:
        code = _ERROR_CODES.get(status, f"Http{status}")
        return _error(code, _ERROR_MESSAGES.get(status, f"The service answered {status} (injected fault)."))

    def _fault_response(self, fault: Fault) -> Response:
        response = super()._fault_response(fault)
        if response.status == 401 and "WWW-Authenticate" not in response.headers:
            # Real Key Vault challenges on every 401; without it the SDK drops its cached challenge.
            response.headers = {**response.headers, "WWW-Authenticate": CHALLENGE}
        return response

    # -- helpers ---------------------------------------------------------------------
    def _store(self, vault: str) -> _Vault:
        store = self._vaults.get(vault.lower())
        if store is None:
            raise KeyError(f"no vault {vault!r}")
        return store

    def _live(self, vault: str, name: str) -> _Secret:
        secret = self._store(vault).secrets.get(name.lower())
        if secret is None:
            raise KeyError(f"no secret {name!r} in vault {vault!r}")
        return secret

    def _authenticate(self, request: Request) -> None:
        header = request.headers.get("Authorization")
        if not header:
            raise abort(
                401,
                _error("Unauthorized", "AKV10000: Request is missing a Bearer or PoP token."),
                {"WWW-Authenticate": CHALLENGE},
            )
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or token.strip() != self._token:
            raise abort(
                401,
                _error(
                    "Unauthorized",
                    "The access token was not accepted (it is not the token of this stand-in).",
                ),
                {"WWW-Authenticate": CHALLENGE},
            )

    @staticmethod
    def _api_version(request: Request) -> str:
        version = request.query.get("api-version")
        if not version:
            raise abort(400, _error("BadParameter", "The api-version query parameter is missing."))
        if not _API_VERSION.fullmatch(version):
            raise abort(400, _error("BadParameter", f"The specified version ({version}) is not recognized."))
        return version

    @staticmethod
    def _is_value_read(method: str, route: list[str]) -> bool:
        if not route:
            return False
        head, rest = route[0].lower(), route[1:]
        if method == "GET" and head == "secrets" and len(rest) in (1, 2):
            return not (len(rest) == 2 and rest[1].lower() == "versions")
        if method == "GET" and head == "deletedsecrets" and len(rest) == 1:
            return True  # the deleted-secret bundle carries the value
        # A backup blob is the value, encrypted; kvlink has no business taking one.
        return method == "POST" and head == "secrets" and len(rest) == 2 and rest[1].lower() == "backup"

    @staticmethod
    def _denied_body(vault: str, status: int, rbac: bool) -> dict[str, Any]:
        if status != 403:
            return _error(_ERROR_CODES.get(status, f"Http{status}"), f"Vault '{vault}' is set to answer {status}.")
        if rbac:
            return _error(
                "Forbidden",
                "Caller is not authorized to perform action on resource.\r\n"
                "If role assignments, deny assignments or role definitions were changed recently, "
                "please observe propagation time.\r\n"
                "Caller: appid=kvlink-stand-in\r\n"
                "Action: 'Microsoft.KeyVault/vaults/secrets/readMetadata/action'\r\n"
                f"Resource: '/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/rg/providers/"
                f"microsoft.keyvault/vaults/{vault}'\r\n"
                "Assignment: (not found)\r\n",
                "ForbiddenByRbac",
            )
        return _error(
            "Forbidden",
            f"The user, group or application 'appid=kvlink-stand-in' does not have secrets list permission "
            f"on key vault '{vault};location=westeurope'. For help resolving this issue, please see "
            "https://go.microsoft.com/fwlink/?linkid=2125287",
            "AccessDenied",
        )

    def _route(self, request: Request, store: _Vault, route: list[str], api_version: str) -> Response:
        head = route[0].lower() if route else ""
        rest = route[1:]
        if head == "secrets" and not rest:
            self._method(request, "GET")
            return self._list_secrets(request, store, api_version)
        if head == "secrets" and len(rest) == 2 and rest[1].lower() == "versions":
            self._method(request, "GET")
            return self._list_versions(request, store, rest[0], api_version)
        if head == "deletedsecrets" and not rest:
            self._method(request, "GET")
            return self._list_deleted(request, store, api_version)
        if len(rest) == 1 and (head, request.method) in _WRITES:
            operation = _WRITES[head, request.method]
            with self._vault_lock:
                refused = operation in self._forbidden.get(store.name, set())
            if refused:
                raise abort(
                    403,
                    _error(
                        "Forbidden",
                        f"The user, group or application 'appid=kvlink-operator' does not have secrets {operation} "
                        f"permission on key vault '{store.name};location=westeurope'.",
                        "AccessDenied",
                    ),
                )
            handler = {"set": self._rest_set, "delete": self._rest_delete, "purge": self._rest_purge}[operation]
            return handler(request, store, rest[0])
        if head in ("secrets", "deletedsecrets") and len(rest) <= 3:
            # Other write endpoints (update, recover, restore, backup): not emulated.
            raise abort(
                405,
                _error(
                    "MethodNotAllowed",
                    f"{request.method} {request.path} is not emulated; seed the stand-in with set_secret() instead.",
                ),
            )
        raise abort(404, _error("NotFound", f"The requested resource {request.path} does not exist."))

    def _rest_set(self, request: Request, store: _Vault, name: str) -> Response:
        try:
            body = request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("value"), str):
            raise abort(400, _error("BadParameter", "The request body must be a JSON object with a string 'value'."))
        attributes = body.get("attributes") or {}
        try:
            version = self.set_secret(
                store.name,
                name,
                enabled=attributes.get("enabled", True),
                content_type=body.get("contentType"),
                tags=body.get("tags"),
                expires=attributes.get("exp"),
                not_before=attributes.get("nbf"),
            )
        except ValueError as problem:
            if "deleted but recoverable" in str(problem):
                raise abort(409, _error("Conflict", str(problem), "ObjectIsDeletedButRecoverable")) from None
            raise abort(400, _error("BadParameter", str(problem))) from None
        with self._vault_lock:
            secret = store.secrets[name.lower()]
            current = next(v for v in secret.versions if v.version == version)
            bundle = self._item(store, secret, current, versioned=True)
        return Response(200, {"value": body["value"], **bundle})  # echoed, as Key Vault does; never stored

    def _rest_delete(self, request: Request, store: _Vault, name: str) -> Response:
        try:
            self.delete_secret(store.name, name)
        except KeyError:
            message = f"A secret with (name/id) {name} was not found in this key vault."
            raise abort(404, _error("SecretNotFound", message)) from None
        with self._vault_lock:
            secret = store.deleted[name.lower()]
            bundle = self._item(store, secret, secret.current, versioned=True)
            deleted_on = secret.deleted_on or int(time.time())
        return Response(
            200,
            {
                "recoveryId": f"{store.id_base}/deletedsecrets/{secret.name}",
                "deletedDate": deleted_on,
                "scheduledPurgeDate": deleted_on + RECOVERABLE_DAYS * 86400,
                **bundle,
            },
        )

    def _rest_purge(self, request: Request, store: _Vault, name: str) -> Response:
        try:
            self.purge_secret(store.name, name)
        except KeyError:
            raise abort(404, _error("SecretNotFound", f"Deleted Secret not found: {name}")) from None
        return Response(204)

    @staticmethod
    def _method(request: Request, expected: str) -> None:
        if request.method != expected:
            raise abort(
                405,
                _error(
                    "MethodNotAllowed",
                    f"The requested method {request.method} is not allowed on {request.path}.",
                ),
            )

    def _list_secrets(self, request: Request, store: _Vault, api_version: str) -> Response:
        size = _page_size(request.query.get("maxresults"))
        after = _decode_skiptoken(request.query.get("$skiptoken"))
        with self._vault_lock:
            keys = sorted(store.secrets)
            # Build only this page's items: benchmarks list vaults of thousands of secrets.
            start = bisect.bisect_right(keys, after) if after is not None else 0
            rows = [
                (key, self._item(store, store.secrets[key], store.secrets[key].current, versioned=False))
                for key in keys[start : start + size + 1]
            ]
        return self._page(request, rows, f"/{store.name}/secrets", api_version)

    def _list_versions(self, request: Request, store: _Vault, name: str, api_version: str) -> Response:
        if not _SECRET_NAME.fullmatch(name):
            raise abort(400, _error("BadParameter", f"Invalid secret name '{name}'."))
        with self._vault_lock:
            secret = store.secrets.get(name.lower())
            rows = (
                [(f"{v.seq:012d}", self._item(store, secret, v, versioned=True)) for v in secret.versions]
                if secret is not None
                else None
            )
        if rows is None:
            raise abort(
                404,
                _error(
                    "SecretNotFound",
                    f"A secret with (name/id) {name} was not found in this key vault. "
                    "If you recently deleted this secret you may be able to recover it using the correct "
                    "recovery command. For help resolving this issue, please see "
                    "https://go.microsoft.com/fwlink/?linkid=2125182",
                ),
            )
        return self._page(request, rows, f"/{store.name}/secrets/{name}/versions", api_version)

    def _list_deleted(self, request: Request, store: _Vault, api_version: str) -> Response:
        with self._vault_lock:
            rows = []
            for key, secret in sorted(store.deleted.items()):
                item = self._item(store, secret, secret.current, versioned=False)
                deleted_on = secret.deleted_on or 0
                item["recoveryId"] = f"{store.id_base}/deletedsecrets/{secret.name}"
                item["deletedDate"] = deleted_on
                item["scheduledPurgeDate"] = deleted_on + RECOVERABLE_DAYS * 86400
                rows.append((key, item))
        return self._page(request, rows, f"/{store.name}/deletedsecrets", api_version)

    @staticmethod
    def _item(store: _Vault, secret: _Secret, version: _Version, *, versioned: bool) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "enabled": version.enabled,
            "created": version.created,
            "updated": version.updated,
            "recoveryLevel": RECOVERY_LEVEL,
            "recoverableDays": RECOVERABLE_DAYS,
        }
        if version.not_before is not None:
            attributes["nbf"] = version.not_before
        if version.expires is not None:
            attributes["exp"] = version.expires
        item_id = f"{store.id_base}/secrets/{secret.name}"
        item: dict[str, Any] = {"id": f"{item_id}/{version.version}" if versioned else item_id}
        item["attributes"] = attributes
        if version.content_type is not None:
            item["contentType"] = version.content_type
        if version.tags:
            item["tags"] = dict(version.tags)
        if version.managed:
            item["managed"] = True
        return item

    def _page(self, request: Request, rows: list[tuple[str, dict[str, Any]]], path: str, api_version: str) -> Response:
        size = _page_size(request.query.get("maxresults"))
        after = _decode_skiptoken(request.query.get("$skiptoken"))
        remaining = [row for row in rows if after is None or row[0] > after]
        page, more = remaining[:size], len(remaining) > size
        next_link = None
        if more:
            # The stand-in's own address with an explicit port, as Key Vault writes
            # https://{vault}.vault.azure.net:443/...; never the client's Host header.
            next_link = (
                f"{self.base_url}{path}?api-version={api_version}"
                f"&$skiptoken={_encode_skiptoken(page[-1][0])}&maxresults={size}"
            )
        return Response(200, {"value": [item for _, item in page], "nextLink": next_link})


def _page_size(raw: str | None) -> int:
    if raw is None or raw == "":
        return PAGE_SIZE
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= PAGE_SIZE:
        raise abort(
            400,
            _error("BadParameter", f"The value '{raw}' is not valid for maxresults; it must be between 1 and 25."),
        )
    return value


def _encode_skiptoken(last_key: str) -> str:
    # Opaque like Key Vault's base64 JSON marker; urlsafe without padding so the SDK's
    # parse_qs/quote round trip of nextLink leaves it intact.
    raw = json.dumps({"NextMarker": last_key, "TargetLocation": 0}).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _decode_skiptoken(token: str | None) -> str | None:
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        marker = json.loads(raw)["NextMarker"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise abort(400, _error("BadParameter", "The $skiptoken is not valid.")) from None
    if not isinstance(marker, str):
        raise abort(400, _error("BadParameter", "The $skiptoken is not valid."))
    return marker


class StaticTokenCredential:
    """A credential that always hands out one token; both azure-core credential protocols."""

    def __init__(self, token: str, *, lifetime: int = 3600) -> None:
        self.token = token
        self._lifetime = lifetime
        self.scopes: list[tuple[str, ...]] = []  # what was asked for, for assertions

    def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken(self.token, int(time.time()) + self._lifetime)

    def get_token_info(self, *scopes: str, options: TokenRequestOptions | None = None) -> AccessTokenInfo:
        self.scopes.append(scopes)
        return AccessTokenInfo(self.token, int(time.time()) + self._lifetime)

    def close(self) -> None:
        pass  # nothing to release

    def __enter__(self) -> StaticTokenCredential:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def static_credential(token: str = DEFAULT_TOKEN) -> StaticTokenCredential:
    """A TokenCredential (and SupportsTokenInfo) for clients of the stand-in."""
    return StaticTokenCredential(token)
