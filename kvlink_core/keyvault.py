"""Key Vault, read through ``azure-keyvault-secrets``: secret *properties* only.

kvlink lists secrets and the versions of one secret; it never calls an endpoint
that returns a value, so the List permission (or Key Vault Reader) is all it needs.
This is the only module that imports ``azure.keyvault``.

Whole-vault listings (the audit, /api/sync, links) go through the SDK's *async* pipeline on one
event loop with aiohttp: the same challenge auth and retry policies at about half the CPU per page
of requests/urllib3. Everything else (an event's version list) stays on the sync pipeline, so the
event path never imports asyncio or aiohttp.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar
from urllib.parse import quote, urlsplit

from .errors import TransientError, UpstreamError
from .model import NO_TAGS, SecretState
from .tls import azure_transport_options, shared_session, ssl_context

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken, AccessTokenInfo, TokenCredential
    from azure.core.pipeline.transport import AsyncHttpTransport, HttpTransport
    from azure.keyvault.secrets import SecretClient
    from azure.keyvault.secrets.aio import SecretClient as AsyncSecretClient

    from .settings import Settings

logger = logging.getLogger(__name__)
T = TypeVar("T")


class Listed(NamedTuple):
    """A whole vault's listing, when its first page was asked for (``time.time_ns()``), and its pages."""

    states: dict[str, SecretState]
    started: int
    pages: int


class KeyVault:
    """Reads secret properties from any vault the settings allow; one client per vault."""

    def __init__(
        self,
        settings: Settings,
        credential: TokenCredential,
        *,
        retry_total: int = 4,
        retry_backoff_factor: float = 0.8,
        timeout: float = 10.0,
        connect_timeout: float = 5.0,
        total_timeout: float = 20.0,
        client_options: Mapping[str, Any] | None = None,
        transport_factory: Callable[[], HttpTransport[Any, Any]] | None = None,
        async_transport_factory: Callable[[], AsyncHttpTransport[Any, Any]] | None = None,
    ) -> None:
        """``transport_factory`` builds each vault client's transport (replay tests); by default
        a RequestsTransport over the shared, pre-trusted session. Listings take the async pipeline
        with ``async_transport_factory``'s transport (replay tests), or by default an aiohttp one --
        unless only ``transport_factory`` is given, which then carries listings too."""
        self._settings = settings
        self._transport_factory = transport_factory
        self._async_transport_factory = async_transport_factory
        self._list_async = async_transport_factory is not None or transport_factory is None
        self._loop: _Loop | None = None
        self._credential = credential
        self._trust_env = bool(azure_transport_options(settings.ca_bundle)["use_env_settings"])
        self._session = shared_session(
            settings.ca_bundle, pool_size=settings.vault_concurrency, trust_env=self._trust_env
        )
        # azure-core's transports default to connection_timeout=300 and read_timeout=300 s per attempt
        # (ConnectionConfiguration, azure/core/configuration.py, azure-core 1.41.0), and apply a client's
        # own values only to a transport the client builds itself -- so kvlink gives them to the
        # transports it builds (see _client and _aiohttp_transport), not only to the clients.
        self._timeouts = {"connection_timeout": connect_timeout, "read_timeout": timeout}
        self._client_options: dict[str, Any] = {
            "retry_total": retry_total,
            "retry_backoff_factor": retry_backoff_factor,
            "retry_backoff_max": min(8.0, total_timeout),
            # The retry policy's deadline for one request and its retries (azure-core's default is
            # 604,800 s); the attempt running when it passes may still take one read timeout. So an
            # event's version read ends within about 30 s (Event Grid's wait) even on a silent vault.
            "timeout": total_timeout,
            **self._timeouts,
            "connection_verify": True,  # with the shared session's preloaded trust (tls.shared_session)
            # Stand-ins live on 127.0.0.1, which is not a *.vault.azure.net challenge domain.
            "verify_challenge_resource": not settings.emulator,
            **(client_options or {}),
        }
        self._clients: dict[str, SecretClient] = {}
        self._async_clients: dict[str, AsyncSecretClient] = {}
        self._aiohttp_session: Any = None
        self._lock = threading.Lock()
        # Calls in flight at once on the sync pipeline (KVLINK_VAULT_CONCURRENCY); listings on the
        # listing loop take one of the loop's call slots per page instead (_CallSlots).
        self._slots = threading.BoundedSemaphore(settings.vault_concurrency)
        self._call_slots: _CallSlots | None = None  # made on the listing loop, used there only
        self._fallback: ThreadPoolExecutor | None = None  # start_listing without the async pipeline

    def start_listing(self, vault: str, *, rank: int = 0) -> Future[Listed]:
        """Begin listing ``vault`` and return at once; the future holds :meth:`list_secrets`' answer.

        Every listing started so shares KVLINK_VAULT_CONCURRENCY *calls* in flight, page by page:
        a listing waiting on its own next page (between two calls) holds no slot, so another one
        uses it. A free slot goes to the waiting page of the lowest ``rank`` (ties: first come),
        so a caller that ranks its longest listings first has them finish first, and listings of
        equal rank share the slots fairly. The future fails with kvlink's errors, as list_secrets does.
        """
        if not self._list_async:
            with self._lock:
                if self._fallback is None:
                    self._fallback = ThreadPoolExecutor(self._settings.vault_concurrency, "kvlink-vault")
                pool = self._fallback

            def listing() -> Listed:
                started = time.time_ns()
                states = self.list_secrets(vault)
                return Listed(states, started, max(1, -(-len(states) // 25)))  # 25 a page

            return pool.submit(listing)
        return self._event_loop().submit(self._alist_ranked(vault, rank))

    def prepare_listings(self) -> None:
        """Start the listing loop and its imports and session now, without waiting: a caller that
        reads its own records first (the audit: its links) then starts its listings on a warm loop."""
        if self._list_async:
            self._event_loop().submit(self._aprepare())

    async def _aprepare(self) -> None:
        from azure.keyvault.secrets.aio import SecretClient  # noqa: F401 -- imported here, off the caller's path

        if self._async_transport_factory is None:
            await self._aiohttp_transport()

    async def _alist_ranked(self, vault: str, rank: int) -> Listed:
        try:
            return await self._alist_paged(vault, rank)
        except Exception as err:
            translated = _translated(vault, "list the secrets of", err)
            if translated is err:
                raise
            raise translated from err

    def list_secrets(self, vault: str) -> dict[str, SecretState]:
        """Every secret's current properties, keyed by lower-cased name.

        The whole listing or an error: a listing that fails part-way raises, so no
        caller can mistake a half-read vault for one whose secrets were deleted.
        """

        def listing() -> dict[str, SecretState]:
            states = {}
            for item in self._pages(vault, "/secrets"):
                state = _state(item, versioned=False)
                states[state.key] = state
            return states

        if self._list_async:  # the loop's call slots bound it, page by page
            return _translate(vault, "list the secrets of", lambda: self._event_loop().run(self._alist(vault)))
        with self._slots:
            return _translate(vault, "list the secrets of", listing)

    async def _alist(self, vault: str) -> dict[str, SecretState]:
        """:meth:`list_secrets` on the async pipeline (runs on the listing loop)."""
        return (await self._alist_paged(vault, 0)).states

    async def _alist_paged(self, vault: str, rank: int) -> Listed:
        """One vault's listing, each page sent within one of the loop's call slots."""
        from azure.core.rest import HttpRequest

        if self._call_slots is None:
            self._call_slots = _CallSlots(self._settings.vault_concurrency)
        slots = self._call_slots
        client = await self._async_client(vault)
        origin = _origin(self._settings.vault_url(vault))
        states = {}
        started: int | None = None
        pages = 0
        url: str | None = "/secrets?maxresults=25"
        while url:
            pages += 1
            await slots.acquire(rank)
            try:
                started = started or time.time_ns()
                response = await client.send_request(HttpRequest("GET", url))
            finally:
                slots.release()
            body = _page(response)
            for item in body.get("value") or []:
                state = _state(item, versioned=False)
                states[state.key] = state
            url = _next_link(body, origin, response)
        return Listed(states, started or time.time_ns(), pages)

    def _event_loop(self) -> _Loop:
        with self._lock:
            if self._loop is None:
                self._loop = _Loop()
            return self._loop

    async def _async_client(self, vault: str) -> AsyncSecretClient:
        """One async client per vault, made and used on the listing loop only (so no lock)."""
        key = vault.lower()
        client = self._async_clients.get(key)
        if client is None:
            from azure.keyvault.secrets.aio import SecretClient as AsyncSecretClient

            transport = (
                self._async_transport_factory()
                if self._async_transport_factory is not None
                else await self._aiohttp_transport()
            )
            client = AsyncSecretClient(
                self._settings.vault_url(key),
                _AsyncCredential(self._credential),
                transport=transport,
                **self._client_options,
            )
            self._async_clients[key] = client
        return client

    async def _aiohttp_transport(self) -> AsyncHttpTransport[Any, Any]:
        """An AioHttpTransport over one shared aiohttp session that verifies with the preloaded trust."""
        import aiohttp
        from azure.core.pipeline.transport import AioHttpTransport

        if self._aiohttp_session is None:
            connector = aiohttp.TCPConnector(
                ssl=ssl_context(self._settings.ca_bundle), limit=self._settings.vault_concurrency
            )
            self._aiohttp_session = aiohttp.ClientSession(connector=connector, trust_env=self._trust_env)
        transport: AsyncHttpTransport[Any, Any] = AioHttpTransport(
            session=self._aiohttp_session, session_owner=False, **self._timeouts
        )
        return transport

    async def _aclose(self) -> None:
        for client in self._async_clients.values():
            await client.close()
        self._async_clients.clear()
        if self._aiohttp_session is not None:
            await self._aiohttp_session.close()
            self._aiohttp_session = None

    def secret_state(self, vault: str, name: str, *, version_hint: str | None = None) -> SecretState:
        """One secret's current version, from its version list (never its value).

        The current version is the newest by creation time, which Key Vault keeps in whole
        seconds; when two versions share the newest second, the one an event named wins.
        """
        hint = (version_hint or "").lower()

        def newest() -> SecretState:
            try:
                versions = list(self._pages(vault, f"/secrets/{quote(name, safe='')}/versions"))
            except _NotFoundError:
                return SecretState.missing(name)
            if not versions:
                return SecretState.missing(name)
            current = max(versions, key=lambda item: _version_order(item, hint))
            return _state(current, versioned=True, name=name)

        with self._slots:
            return _translate(vault, f"read the versions of secret {name!r} in", newest)

    def _pages(self, vault: str, path: str) -> Iterator[dict[str, Any]]:
        """The items of a list operation, page by page, through the SDK's own pipeline.

        ``SecretClient.send_request`` keeps everything the SDK does per request (the Key Vault
        auth challenge, tokens, retries honouring Retry-After); kvlink reads the JSON itself
        because the SDK's model layer costs several milliseconds of CPU per page -- the whole
        budget of a large audit -- and kvlink needs five fields of each item.
        """
        from azure.core.rest import HttpRequest

        client = self._client(vault)
        origin = _origin(self._settings.vault_url(vault))
        url: str | None = f"{path}?maxresults=25"
        while url:
            response = client.send_request(HttpRequest("GET", url))
            body = _page(response)
            yield from body.get("value") or []
            url = _next_link(body, origin, response)

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
            if self._fallback is not None:
                self._fallback.shutdown(wait=True, cancel_futures=True)
                self._fallback = None
            for client in self._clients.values():
                client.close()
            self._clients.clear()
            self._session.close()
            loop, self._loop = self._loop, None
        if loop is not None:
            loop.run(self._aclose())
            loop.close()

    def _client(self, vault: str) -> SecretClient:
        key = vault.lower()
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                from azure.core.pipeline.transport import RequestsTransport
                from azure.keyvault.secrets import SecretClient

                transport = (
                    self._transport_factory()
                    if self._transport_factory is not None
                    else RequestsTransport(session=self._session, session_owner=False, **self._timeouts)
                )
                client = SecretClient(
                    self._settings.vault_url(key), self._credential, transport=transport, **self._client_options
                )
                self._clients[key] = client
            return client


def _page(response: Any) -> dict[str, Any]:
    """A list page's JSON, or the error its status means."""
    if response.status_code == 404:
        raise _NotFoundError(response)
    if response.status_code != 200:
        response.raise_for_status()
        raise _UnexpectedError(response)  # a 1xx/3xx: not a Key Vault answer
    body: dict[str, Any] = response.json()
    return body


def _next_link(body: Mapping[str, Any], origin: tuple[str, str, int | None], response: Any) -> str | None:
    url = body.get("nextLink") or None
    if url and _origin(url) != origin:
        # The token would follow the link: only ever to the vault itself.
        raise _UnexpectedError(response, f"nextLink leaves the vault ({_origin(url)})")
    return url


class _Loop:
    """One event loop on a daemon thread: the listings of every vault share it (and its connections)."""

    def __init__(self) -> None:
        import asyncio

        self._asyncio = asyncio
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kvlink-keyvault-loop", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the loop and wait for it from the calling thread."""
        return self.submit(coroutine).result()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        """Start ``coroutine`` on the loop; its future is settled there (done-callbacks run on the loop)."""
        return self._asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


class _CallSlots:
    """At most ``limit`` calls in flight on the listing loop; a freed slot goes to the lowest rank waiting.

    Loop-only (no lock). Waiters of one rank are served first come, first served, so a page that
    just came back queues behind its peers: listings of equal rank advance in turn.
    """

    def __init__(self, limit: int) -> None:
        self._free = limit
        self._waiting: list[tuple[int, int, Any]] = []  # a heap of (rank, arrival, future)
        self._arrivals = itertools.count()

    async def acquire(self, rank: int) -> None:
        import asyncio

        if self._free > 0 and not self._waiting:
            self._free -= 1
            return
        granted = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (rank, next(self._arrivals), granted))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release()  # handed a slot as it was cancelled: pass it on
            raise

    def release(self) -> None:
        while self._waiting:
            _, _, granted = heapq.heappop(self._waiting)
            if not granted.done():
                granted.set_result(None)  # the slot passes straight to the waiter
                return
        self._free += 1


class _AsyncCredential:
    """kvlink's sync credential as the async pipeline wants it; a token fetch runs off the loop.

    The challenge policy caches the token, so this runs about once an hour per vault scope.
    """

    def __init__(self, credential: TokenCredential) -> None:
        self._credential = credential

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        import asyncio

        return await asyncio.to_thread(self._credential.get_token, *scopes, **kwargs)

    async def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        import asyncio

        from azure.core.credentials import AccessTokenInfo

        get_token_info = getattr(self._credential, "get_token_info", None)
        if get_token_info is not None:
            info: AccessTokenInfo = await asyncio.to_thread(get_token_info, *scopes, options=options)
            return info
        token = await asyncio.to_thread(self._credential.get_token, *scopes, **dict(options or {}))
        return AccessTokenInfo(token.token, token.expires_on)

    async def close(self) -> None:
        pass  # the sync credential is the process's own (credentials.get_credential)

    async def __aenter__(self) -> _AsyncCredential:
        return self

    async def __aexit__(self, *args: Any) -> None:
        pass


class _NotFoundError(Exception):
    def __init__(self, response: Any) -> None:
        super().__init__(404)
        self.response = response


class _UnexpectedError(Exception):
    def __init__(self, response: Any, message: str | None = None) -> None:
        super().__init__(message or f"unexpected HTTP {response.status_code}")
        self.response = response


_DEFAULT_PORTS = {"https": 443, "http": 80}


def _origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port, with the default port made explicit.

    Key Vault writes nextLink as ``https://{vault}.vault.azure.net:443/...`` while vault URLs
    carry no port: both name the same origin.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:  # a port that is no number: no origin kvlink would send a token to
        return ("", "", None)
    return (scheme, (parts.hostname or "").lower(), port or _DEFAULT_PORTS.get(scheme))


def _state(item: Mapping[str, Any], *, versioned: bool, name: str | None = None) -> SecretState:
    """A list item (``SecretItem``) as kvlink needs it: never a value, which lists do not carry."""
    # ids are https://{vault}/secrets/{name}[/{version}]; plain splitting is ~10x cheaper than urlsplit
    segments = str(item.get("id") or "").rstrip("/").rsplit("/", 2)
    attributes = item.get("attributes") or {}
    tags = item.get("tags")
    return SecretState(
        name=name or (segments[-2] if versioned else segments[-1]),
        exists=True,
        enabled=attributes.get("enabled") is not False,
        content_type=item.get("contentType") or None,
        expires=_epoch(attributes.get("exp")),
        not_before=_epoch(attributes.get("nbf")),
        tags=dict(tags) if tags else NO_TAGS,
        managed=bool(item.get("managed")),
    )


def _version_order(item: Mapping[str, Any], hint: str) -> tuple[int, bool, int]:
    attributes = item.get("attributes") or {}
    version = str(item.get("id") or "").rstrip("/").rsplit("/", 1)[-1].lower()
    return (int(attributes.get("created") or 0), bool(hint) and version == hint, int(attributes.get("updated") or 0))


def _epoch(value: Any) -> datetime | None:
    return datetime.fromtimestamp(int(value), tz=UTC) if value else None


def _translate(vault: str, action: str, call: Callable[[], T]) -> T:
    """Turn a Key Vault call's failures into kvlink's errors."""
    try:
        return call()
    except Exception as err:
        translated = _translated(vault, action, err)
        if translated is err:
            raise
        raise translated from err


def _translated(vault: str, action: str, err: Exception) -> Exception:
    """kvlink's error for a Key Vault call's failure (``err`` itself when kvlink has none for it)."""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ServiceRequestError,
        ServiceResponseError,
    )

    if isinstance(err, _NotFoundError):
        return UpstreamError("keyvault", 404, f"vault {vault!r} was not found (cannot {action} it)")
    if isinstance(err, _UnexpectedError):
        return UpstreamError("keyvault", err.response.status_code, f"vault {vault!r}: {err} ({action})")
    if isinstance(err, ClientAuthenticationError):
        return UpstreamError(
            "keyvault",
            _status(err),
            f"Key Vault refused kvlink's identity when trying to {action} vault {vault!r}",
        )
    if isinstance(err, ServiceRequestError | ServiceResponseError):
        return TransientError(
            f"could not reach vault {vault!r} to {action} it: {type(err).__name__}", system="keyvault"
        )
    if isinstance(err, HttpResponseError):
        status = _status(err)
        if status == 403:
            return UpstreamError(
                "keyvault",
                403,
                f"kvlink may not {action} vault {vault!r}: grant its identity the secret permission "
                "'List' (access policy) or the role 'Key Vault Reader' (RBAC); it never needs 'Get'",
            )
        if status is not None and (status == 429 or status >= 500):
            return TransientError(
                f"vault {vault!r} answered HTTP {status} while kvlink tried to {action} it",
                retry_after=_retry_after(err),
                system="keyvault",
                status=status,
            )
        return UpstreamError("keyvault", status, f"vault {vault!r} answered HTTP {status} to {action}")
    return err


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


class CanaryVault:
    """The ``smoke`` verb's writes, made with the *operator's* credentials: one canary secret, created,
    deleted and purged. kvlink's functions never use this class (they list properties only), and it
    never reads a value back: existence is judged from metadata listings.
    """

    # What each write needs, said when Key Vault answers 403.
    PERMISSIONS: Mapping[str, str] = {
        "set": "the secret permission 'Set' (access policy) or the role 'Key Vault Secrets Officer' (RBAC)",
        "delete": "the secret permission 'Delete' (access policy) or the role 'Key Vault Secrets Officer' (RBAC)",
        "purge": "the secret permission 'Purge' (access policy) or a role with "
        "Microsoft.KeyVault/vaults/secrets/purge/action (RBAC), and purge protection off",
        "list": "the secret permission 'List' (access policy) or the role 'Key Vault Reader' (RBAC)",
    }

    def __init__(self, settings: Settings, credential: TokenCredential, vault: str, *, timeout: float = 20.0) -> None:
        from azure.keyvault.secrets import SecretClient

        self.vault = vault
        self._client = SecretClient(
            settings.vault_url(vault),
            credential,
            retry_total=2,
            connection_timeout=timeout,
            read_timeout=timeout,
            verify_challenge_resource=not settings.emulator,
            **azure_transport_options(settings.ca_bundle),
        )

    def create(self, name: str, value: str, *, tags: Mapping[str, str]) -> None:
        self._call("set", name, lambda: self._client.set_secret(name, value, tags=dict(tags)))

    def delete(self, name: str) -> None:
        # The DELETE happens now; the poller is never waited on (its polling reads the deleted bundle).
        self._call("delete", name, lambda: self._client.begin_delete_secret(name))

    def exists(self, name: str) -> bool:
        """Whether a live secret has this name (its versions' metadata; never its value)."""
        from azure.core.exceptions import ResourceNotFoundError

        def versions() -> bool:
            try:
                return any(True for _ in self._client.list_properties_of_secret_versions(name))
            except ResourceNotFoundError:
                return False

        return self._call("list", name, versions)

    def deleted(self, name: str) -> bool:
        """Whether the deletion has finished: the name is listed among the deleted secrets (metadata only)."""
        wanted = name.lower()
        return self._call(
            "list",
            name,
            lambda: any((d.name or "").lower() == wanted for d in self._client.list_deleted_secrets()),
        )

    def purge(self, name: str) -> None:
        self._call("purge", name, lambda: self._client.purge_deleted_secret(name))

    def close(self) -> None:
        self._client.close()

    def _call(self, operation: str, name: str, call: Callable[[], T]) -> T:
        from azure.core.exceptions import HttpResponseError

        try:
            return _translate(self.vault, f"{operation} secret {name} in", call)
        except UpstreamError as err:
            cause = err.__cause__
            if err.status == 403 or (isinstance(cause, HttpResponseError) and _status(cause) == 403):
                raise UpstreamError(
                    "keyvault",
                    403,
                    f"vault {self.vault!r} refused to {operation} secret {name}: the operator needs "
                    f"{self.PERMISSIONS[operation]}",
                ) from err
            raise
