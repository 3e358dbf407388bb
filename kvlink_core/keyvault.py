"""Key Vault, read through ``azure-keyvault-secrets``: secret *properties* only.

kvlink lists secrets and the versions of one secret; it never calls an endpoint
that returns a value, so the List permission (or Key Vault Reader) is all it needs.
This is the only module that imports ``azure.keyvault``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import TransientError, UpstreamError
from .model import SecretState
from .tls import combined_bundle

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.keyvault.secrets import SecretClient, SecretProperties

    from .settings import Settings

logger = logging.getLogger(__name__)
T = TypeVar("T")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class KeyVault:
    """Reads secret properties from any vault the settings allow; one client per vault."""

    def __init__(
        self,
        settings: Settings,
        credential: TokenCredential,
        *,
        retry_total: int = 4,
        retry_backoff_factor: float = 0.8,
        timeout: float = 20.0,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        self._settings = settings
        self._credential = credential
        self._client_options: dict[str, Any] = {
            "retry_total": retry_total,
            "retry_backoff_factor": retry_backoff_factor,
            "connection_timeout": timeout,
            "read_timeout": timeout,
            "connection_verify": combined_bundle(settings.ca_bundle),
            # Stand-ins live on 127.0.0.1, which is not a *.vault.azure.net challenge domain.
            "verify_challenge_resource": not settings.emulator,
            **(client_options or {}),
        }
        self._clients: dict[str, SecretClient] = {}
        self._lock = threading.Lock()
        # Listings in flight at once, across the process (KVLINK_VAULT_CONCURRENCY).
        self._slots = threading.BoundedSemaphore(settings.vault_concurrency)

    def list_secrets(self, vault: str) -> dict[str, SecretState]:
        """Every secret's current properties, keyed by lower-cased name.

        The whole listing or an error: a listing that fails part-way raises, so no
        caller can mistake a half-read vault for one whose secrets were deleted.
        """
        client = self._client(vault)

        def listing() -> dict[str, SecretState]:
            states = {}
            for props in client.list_properties_of_secrets(max_page_size=25):
                state = _state(props)
                states[state.key] = state
            return states

        with self._slots:
            return _translate(vault, "list the secrets of", listing)

    def secret_state(self, vault: str, name: str, *, version_hint: str | None = None) -> SecretState:
        """One secret's current version, from its version list (never its value).

        The current version is the newest by creation time, which Key Vault keeps in whole
        seconds; when two versions share the newest second, the one an event named wins.
        """
        from azure.core.exceptions import ResourceNotFoundError

        client = self._client(vault)

        def newest() -> SecretState:
            try:
                versions = list(client.list_properties_of_secret_versions(name, max_page_size=25))
            except ResourceNotFoundError:
                return SecretState.missing(name)
            if not versions:
                return SecretState.missing(name)
            hint = (version_hint or "").lower()
            current = max(
                versions,
                key=lambda p: (
                    p.created_on or _EPOCH,
                    (p.version or "").lower() == hint,
                    p.updated_on or _EPOCH,
                ),
            )
            return _state(current, name=name)

        with self._slots:
            return _translate(vault, f"read the versions of secret {name!r} in", newest)

    def secret_states(
        self, vault: str, names: Iterable[str], *, version_hints: Mapping[str, str] | None = None
    ) -> dict[str, SecretState]:
        """Several secrets: one version list each, or one vault listing when that is cheaper."""
        wanted = {n.lower(): n for n in names}
        if len(wanted) > 8:
            listing = self.list_secrets(vault)
            return {key: listing.get(key) or SecretState.missing(name) for key, name in wanted.items()}
        hints = {k.lower(): v for k, v in (version_hints or {}).items()}
        return {key: self.secret_state(vault, name, version_hint=hints.get(key)) for key, name in wanted.items()}

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()

    def _client(self, vault: str) -> SecretClient:
        key = vault.lower()
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                from azure.keyvault.secrets import SecretClient

                client = SecretClient(self._settings.vault_url(key), self._credential, **self._client_options)
                self._clients[key] = client
            return client


def _state(props: SecretProperties, *, name: str | None = None) -> SecretState:
    return SecretState(
        name=name or props.name or "",
        exists=True,
        enabled=props.enabled is not False,
        content_type=props.content_type or None,
        expires=props.expires_on,
        not_before=props.not_before,
        tags=dict(props.tags or {}),
        managed=bool(props.managed),
    )


def _translate(vault: str, action: str, call: Callable[[], T]) -> T:
    """Turn a Key Vault call's failures into kvlink's errors."""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceNotFoundError,
        ServiceRequestError,
        ServiceResponseError,
    )

    try:
        return call()
    except ClientAuthenticationError as err:
        raise UpstreamError(
            "keyvault",
            _status(err),
            f"Key Vault refused kvlink's identity when trying to {action} vault {vault!r}",
        ) from err
    except ResourceNotFoundError as err:
        raise UpstreamError("keyvault", 404, f"vault {vault!r} was not found (cannot {action} it)") from err
    except (ServiceRequestError, ServiceResponseError) as err:
        raise TransientError(
            f"could not reach vault {vault!r} to {action} it: {type(err).__name__}", system="keyvault"
        ) from err
    except HttpResponseError as err:
        status = _status(err)
        if status == 403:
            raise UpstreamError(
                "keyvault",
                403,
                f"kvlink may not {action} vault {vault!r}: grant its identity the secret permission "
                "'List' (access policy) or the role 'Key Vault Reader' (RBAC); it never needs 'Get'",
            ) from err
        if status is not None and (status == 429 or status >= 500):
            raise TransientError(
                f"vault {vault!r} answered HTTP {status} while kvlink tried to {action} it",
                retry_after=_retry_after(err),
                system="keyvault",
                status=status,
            ) from err
        raise UpstreamError("keyvault", status, f"vault {vault!r} answered HTTP {status} to {action}") from err


def _status(err: Any) -> int | None:
    status = getattr(err, "status_code", None)
    return int(status) if status is not None else None


def _retry_after(err: Any) -> float | None:
    response = getattr(err, "response", None)
    value = response.headers.get("Retry-After") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
