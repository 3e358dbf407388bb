"""Recorded Key Vault traffic replayed to kvlink's real ``KeyVault`` through azure-core's transport.

The recordings (``recordings/keyvault/``, sources in its README) are in the Azure SDK test-proxy
format: ``{"Entries": [{"RequestUri", "RequestMethod", "StatusCode", "ResponseHeaders",
"ResponseBody"}]}``. :class:`ReplayTransport` sits where ``RequestsTransport`` would, so the
SDK's own pipeline -- Key Vault's challenge policy with ``verify_challenge_resource``, retries,
headers -- runs unmodified; only the socket is replaced. :class:`AsyncReplayTransport` does the
same for the async pipeline kvlink lists vaults with (``AsyncSecretClient``'s policies), answering
from the same recording.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from azure.core.credentials import AccessToken, AccessTokenInfo
from azure.core.pipeline.transport import AsyncHttpTransport, HttpTransport
from azure.core.rest._http_response_impl_async import RestAsyncHttpClientTransportResponse
from azure.core.rest._requests_basic import RestRequestsTransportResponse

RECORDINGS = Path(__file__).parent / "recordings" / "keyvault"


def recording(name: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads((RECORDINGS / name).read_text())["Entries"]
    return entries


@dataclass(frozen=True)
class Seen:
    """One request the transport was handed."""

    method: str
    url: str
    authorization: str | None


class ReplayTransport(HttpTransport):  # type: ignore[misc]
    """Answers with recorded responses in order and keeps every request it saw.

    A request without ``Authorization`` gets the recording's 401 challenge: Key Vault answers
    any unauthenticated request with it, whatever the path, so the challenge is matched by the
    missing token, not by the request it was recorded for. Every other request must be the next
    recorded page: the first by host and path (the query is the client's own api-version and
    page size), each later one by the previous page's ``nextLink``, character for character.
    """

    def __init__(self, entries: list[dict[str, Any]]) -> None:
        self._challenge = next((e for e in entries if e["StatusCode"] == 401), None)
        self._pages = [e for e in entries if e["StatusCode"] != 401]
        self._next_link: str | None = None
        self.seen: list[Seen] = []

    @property
    def exhausted(self) -> bool:
        return not self._pages

    def send(self, request: Any, **kwargs: Any) -> Any:
        return _response(request, self.answer(request))

    def answer(self, request: Any) -> dict[str, Any]:
        """The recorded entry that answers ``request`` (asserting it is the one the recording expects)."""
        authorization = request.headers.get("Authorization")
        self.seen.append(Seen(request.method, request.url, authorization))
        if authorization is None:
            assert self._challenge is not None, f"unauthenticated request, no challenge recorded: {request.url}"
            return self._challenge
        assert self._pages, f"request beyond the recording: {request.method} {request.url}"
        entry = self._pages.pop(0)
        assert request.method == entry["RequestMethod"], (request.method, entry["RequestMethod"])
        if self._next_link is None:
            asked, recorded = urlsplit(request.url), urlsplit(entry["RequestUri"])
            assert (asked.netloc, asked.path) == (recorded.netloc, recorded.path), (request.url, entry["RequestUri"])
        else:
            assert request.url == self._next_link, (request.url, self._next_link)
        body = entry["ResponseBody"]
        self._next_link = body.get("nextLink") if isinstance(body, dict) else None
        return entry

    def open(self) -> None:
        pass  # nothing to connect

    def close(self) -> None:
        pass  # nothing to release

    def __enter__(self) -> ReplayTransport:
        return self

    def __exit__(self, *args: Any) -> None:
        pass  # the pipeline enters the transport per call


class AsyncReplayTransport(AsyncHttpTransport):  # type: ignore[misc]
    """A :class:`ReplayTransport` (its recording, its record of requests) behind the async pipeline."""

    def __init__(self, replay: ReplayTransport) -> None:
        self.replay = replay

    async def send(self, request: Any, **kwargs: Any) -> Any:
        entry = self.replay.answer(request)
        response = RestAsyncHttpClientTransportResponse(request=request, internal_response=_RawResponse(entry))
        await response.read()
        return response

    async def open(self) -> None:
        pass  # nothing to connect

    async def close(self) -> None:
        pass  # nothing to release

    async def __aenter__(self) -> AsyncReplayTransport:
        return self

    async def __aexit__(self, *args: Any) -> None:
        pass  # the pipeline enters the transport per call


class _RawResponse:
    """A recorded answer in the shape of an ``http.client`` response (what the async rest response wraps)."""

    def __init__(self, entry: dict[str, Any]) -> None:
        self.status = entry["StatusCode"]
        self.reason = HTTPStatus(self.status).phrase
        self._headers = list(entry["ResponseHeaders"].items())
        self._content = _content(entry)

    def getheaders(self) -> list[tuple[str, str]]:
        return self._headers

    def read(self) -> bytes:
        return self._content

    async def close(self) -> None:
        pass  # nothing to release


def _content(entry: dict[str, Any]) -> bytes:
    # Key Vault sends compact JSON; the recordings' Content-Length is that length.
    return b"" if entry["ResponseBody"] is None else json.dumps(entry["ResponseBody"], separators=(",", ":")).encode()


def _response(request: Any, entry: dict[str, Any]) -> Any:
    """The recorded answer as the requests-based transport would build it."""
    raw = requests.Response()
    raw.status_code = entry["StatusCode"]
    raw.headers.update(entry["ResponseHeaders"])
    raw.raw = io.BytesIO(_content(entry))
    raw.url = request.url
    raw.reason = HTTPStatus(raw.status_code).phrase
    response = RestRequestsTransportResponse(request=request, internal_response=raw)
    response.read()
    return response


class RecordingCredential:
    """A TokenCredential handing out one fake token and keeping what each request asked for."""

    token = "replay-token"  # a fake token for recorded traffic

    def __init__(self) -> None:
        self.requests: list[tuple[tuple[str, ...], dict[str, Any]]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.requests.append((scopes, kwargs))
        return AccessToken(self.token, 4_102_444_800)

    def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        self.requests.append((scopes, dict(options or {})))
        return AccessTokenInfo(self.token, 4_102_444_800)
