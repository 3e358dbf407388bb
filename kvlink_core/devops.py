"""Azure DevOps REST for variable groups, projects and service connections, over ``httpx``.

Raw REST on purpose: the ``azure-devops`` SDK's models drop the Key Vault fields
(``providerData.vault``, ``enabled``, ``contentType``, ``expires``). The group ``PUT``
replaces the whole group and has no ETag, so :meth:`DevOps.update_group` always
sends back every field it read; callers serialise writers with a lease, and give the
calls made under it a ``budget``: every wait (a slot, a pause, a retry, the request
itself) ends within it, or the call fails transiently without waiting further.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import threading
import time
from collections.abc import Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
import stamina

from .credentials import DEVOPS_SCOPE
from .errors import TransientError, UpstreamError
from .model import parse_timestamp
from .tls import ssl_context

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken, TokenCredential

    from .settings import Settings

logger = logging.getLogger(__name__)

API_VERSION = "7.1"
# Pipeline Permissions - Get exists only as a preview (approvalsAndChecks 7.1 reference).
PIPELINE_PERMISSIONS_API_VERSION = "7.1-preview.1"
KEY_VAULT_TYPE = "AzureKeyVault"
_RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})
NO_SIGN_IN = (
    "no token for Azure DevOps: set AZURE_DEVOPS_PAT, or give kvlink's managed identity access "
    "(in Azure) / run `az login` (elsewhere)"
)
# The fields of VariableGroupParameters, the body of POST and PUT.
_PARAMETER_FIELDS = (
    "name",
    "description",
    "type",
    "providerData",
    "variables",
    "variableGroupProjectReferences",
)


@dataclass(frozen=True, slots=True)
class VariableGroup:
    """A variable group exactly as Azure DevOps returned it, with typed accessors."""

    raw: Mapping[str, Any]

    @property
    def id(self) -> int:
        return int(self.raw["id"])

    @property
    def name(self) -> str:
        return str(self.raw.get("name") or "")

    @property
    def type(self) -> str:
        return str(self.raw.get("type") or "")

    @property
    def is_key_vault(self) -> bool:
        return self.type.lower() == KEY_VAULT_TYPE.lower()

    @property
    def vault(self) -> str | None:
        data = self.raw.get("providerData") or {}
        vault = data.get("vault") if isinstance(data, Mapping) else None
        return str(vault) if vault else None

    @property
    def service_endpoint_id(self) -> str | None:
        data = self.raw.get("providerData") or {}
        endpoint = data.get("serviceEndpointId") if isinstance(data, Mapping) else None
        return str(endpoint) if endpoint else None

    @property
    def variables(self) -> dict[str, Any]:
        return dict(self.raw.get("variables") or {})

    @property
    def projects(self) -> list[dict[str, str]]:
        """The ``projectReference`` of every project the group is shared with."""
        refs = self.raw.get("variableGroupProjectReferences") or []
        return [dict(r["projectReference"]) for r in refs if isinstance(r, Mapping) and r.get("projectReference")]

    @property
    def modified_on(self) -> datetime | None:
        """When Azure DevOps last saw the group change (its own clock)."""
        return parse_timestamp(self.raw.get("modifiedOn"))

    def parameters(self, variables: Mapping[str, Any]) -> dict[str, Any]:
        """The PUT body: everything as read, with new variables. Fields kvlink does not own stay."""
        body = {k: self.raw[k] for k in _PARAMETER_FIELDS if k in self.raw}
        body["variables"] = dict(variables)
        return body


@dataclass(frozen=True, slots=True)
class Pipeline:
    """A pipeline as a person needs it named: id, name, folder and its web page (or API url)."""

    id: int
    name: str | None = None
    folder: str | None = None
    url: str | None = None

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Pipeline:
        links = raw.get("_links") or {}
        web = links.get("web") if isinstance(links, Mapping) else None
        href = web.get("href") if isinstance(web, Mapping) else None
        return cls(int(raw["id"]), _text(raw.get("name")), _text(raw.get("folder")), _text(href or raw.get("url")))

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "folder": self.folder, "url": self.url}


@dataclass(frozen=True, slots=True)
class PipelineAccess:
    """Which pipelines may use a resource (``ResourcePipelinePermissions``)."""

    all_pipelines: bool
    pipeline_ids: tuple[int, ...]


class _RetryableStatusError(Exception):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response.status_code)
        self.response = response
        self.retry_after = _retry_after(response)


class _Auth(httpx.Auth):
    """A PAT as Basic auth, or an Entra token for Azure DevOps, refreshed before it expires."""

    def __init__(self, pat: str | None, credential: TokenCredential | None) -> None:
        self._pat = pat
        self._credential = credential
        self._token: AccessToken | None = None
        self._lock = threading.Lock()

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header()
        yield request

    def _header(self) -> str:
        if self._pat:
            return "Basic " + base64.b64encode(f":{self._pat}".encode()).decode()
        assert self._credential is not None
        from azure.core.exceptions import ClientAuthenticationError

        with self._lock:
            if self._token is None or self._token.expires_on - 300 < time.time():
                try:
                    self._token = self._credential.get_token(DEVOPS_SCOPE)
                except ClientAuthenticationError as err:
                    # The chain's own message runs to dozens of lines: its first says which source failed.
                    cause = (str(err.message or err).strip().splitlines() or [""])[0][:200]
                    raise UpstreamError(
                        "devops", None, f"{NO_SIGN_IN}; the credential said: {cause}" if cause else NO_SIGN_IN
                    ) from err
            return f"Bearer {self._token.token}"


class DevOps:
    """A small Azure DevOps client: only the calls kvlink needs, each retried with care."""

    def __init__(
        self,
        settings: Settings,
        credential: TokenCredential | None,
        *,
        attempts: int = 6,
        retry_timeout: float = 40.0,
        wait_initial: float = 0.5,
        wait_max: float = 10.0,
        max_retry_after: float = 30.0,
        timeout: float = 20.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._settings = settings
        # Every caller in the process shares this bound: Azure DevOps rates per identity.
        self._slots = threading.BoundedSemaphore(settings.devops_concurrency)
        self._attempts = attempts
        self._retry_timeout = retry_timeout
        self._wait_initial = wait_initial
        self._wait_max = wait_max
        self._max_retry_after = max_retry_after
        self._timeout = timeout
        self._pause_until = 0.0
        self._http = httpx.Client(
            auth=_Auth(settings.devops_pat, credential),
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            verify=ssl_context(settings.ca_bundle),
            headers={"Accept": "application/json", "User-Agent": "kvlink"},
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
            follow_redirects=False,  # a redirect means a sign-in page, never data
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    # -- variable groups -------------------------------------------------------------
    def get_group(
        self, organization: str, project: str, group_id: int, *, budget: float | None = None
    ) -> VariableGroup | None:
        """One group, read through a project it is shared with; None when it is not there."""
        url = f"{self._project_url(organization, project)}/_apis/distributedtask/variablegroups/{int(group_id)}"
        body = self._request("GET", url, organization=organization, missing_ok=True, budget=budget)
        if not body:  # Azure DevOps answers a group the project cannot see with 200 and `null`
            return None
        return VariableGroup(body)

    def list_groups(
        self, organization: str, project: str, *, name: str | None = None, page_size: int = 100
    ) -> Iterator[VariableGroup]:
        """Every group of a project, page by page (ids ascending).

        Whether Azure DevOps sends ``X-MS-ContinuationToken`` for this list is undocumented, and
        so is whether the integer ``continuationToken`` is inclusive; see :meth:`_group_pages`.
        """
        url = f"{self._project_url(organization, project)}/_apis/distributedtask/variablegroups"
        params: dict[str, Any] = {"queryOrder": "IdAscending", "$top": page_size}
        if name:
            params["groupName"] = name
        return (VariableGroup(v) for v in self._group_pages(url, organization, params, page_size))

    def update_group(
        self, organization: str, group: VariableGroup, variables: Mapping[str, Any], *, budget: float | None = None
    ) -> VariableGroup:
        """Replace the group's variables; every other field is sent back as it was read.

        ``budget`` (seconds) is what is left of the writer's lease: the PUT, its retries and
        any Retry-After waits end within it, or it fails transiently."""
        url = f"{self._org_url(organization)}/_apis/distributedtask/variablegroups/{group.id}"
        body = self._request("PUT", url, organization=organization, json=group.parameters(variables), budget=budget)
        return VariableGroup(body or {})

    def create_group(self, organization: str, parameters: Mapping[str, Any]) -> VariableGroup:
        """POST a new group; a create that may have happened is looked up before it is retried.

        A 429/5xx/timeout can come after Azure DevOps stored the group, and a blind retry then
        meets "group exists" (names are unique). So after such an answer the group is looked up
        by name: if it is there and is the group asked for, it is the result; if not, the POST is
        retried. A duplicate name on the first try is someone else's group and stays an error.
        """
        url = f"{self._org_url(organization)}/_apis/distributedtask/variablegroups"
        body = dict(parameters)
        if _lookup_project(body) is None:
            # Nowhere to look the group up: send it once, never twice.
            return VariableGroup(
                self._request("POST", url, organization=organization, json=body, idempotent=False) or {}
            )
        uncertain = False  # True once a POST may have been applied without us seeing the answer
        for attempt in stamina.retry_context(
            on=self._create_backoff,
            attempts=self._attempts,
            timeout=self._retry_timeout,
            wait_initial=self._wait_initial,
            wait_max=self._wait_max,
        ):
            with attempt:
                try:
                    created = self._request("POST", url, organization=organization, json=body, idempotent=False)
                except TransientError:
                    uncertain = True
                    found = self._created_meanwhile(organization, body)
                    if found is None:
                        raise  # not there: stamina retries the POST
                    return found
                except UpstreamError as err:
                    # On a retry, "exists" may be our own earlier POST that the lookup missed.
                    found = (
                        self._created_meanwhile(organization, body) if uncertain and err.status in (400, 409) else None
                    )
                    if found is None:
                        raise
                    return found
                return VariableGroup(created or {})
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _created_meanwhile(self, organization: str, body: Mapping[str, Any]) -> VariableGroup | None:
        """The group a POST of ``body`` would have made, if it exists: same name, Key Vault type, vault."""
        name = str(body.get("name") or "")
        project_key = _lookup_project(body)
        if not name or project_key is None:
            return None
        wanted = (
            name.lower(),
            str(body.get("type") or "").lower(),
            str((body.get("providerData") or {}).get("vault") or "").lower(),
        )
        for group in self.list_groups(organization, project_key, name=name):
            if (group.name.lower(), group.type.lower(), (group.vault or "").lower()) == wanted:
                logger.warning(
                    "Create of group %r in %s was answered with an error, but the group exists (id %s): "
                    "taking it as created",
                    name,
                    organization,
                    group.id,
                )
                return group
        return None

    # -- projects and service connections ------------------------------------------------
    def list_projects(self, organization: str, *, page_size: int = 100) -> Iterator[dict[str, Any]]:
        """Every project of the organization, page by page."""
        url = f"{self._org_url(organization)}/_apis/projects"
        return self._pages(url, organization, {"$top": page_size})

    def get_service_endpoints(self, organization: str, project: str, ids: Iterable[str]) -> list[dict[str, Any]]:
        """Service connections by id, failed (not ready) ones included."""
        wanted = sorted(set(ids))
        if not wanted:
            return []
        url = f"{self._project_url(organization, project)}/_apis/serviceendpoint/endpoints"
        params = {"endpointIds": ",".join(wanted), "includeFailed": "true"}
        body = self._request("GET", url, organization=organization, params=params)
        return list((body or {}).get("value") or [])

    def get_project(self, organization: str, project: str) -> dict[str, Any] | None:
        url = f"{self._org_url(organization)}/_apis/projects/{quote(project, safe='')}"
        return self._request("GET", url, organization=organization, missing_ok=True)

    def get_service_endpoint(self, organization: str, project: str, endpoint_id: str) -> dict[str, Any] | None:
        base = self._project_url(organization, project)
        url = f"{base}/_apis/serviceendpoint/endpoints/{quote(endpoint_id, safe='')}"
        return self._request("GET", url, organization=organization, missing_ok=True) or None

    def find_service_endpoint(self, organization: str, project: str, name: str) -> dict[str, Any] | None:
        url = f"{self._project_url(organization, project)}/_apis/serviceendpoint/endpoints"
        body = self._request("GET", url, organization=organization, params={"endpointNames": name})
        matches = [e for e in (body or {}).get("value") or [] if str(e.get("name", "")).lower() == name.lower()]
        return matches[0] if matches else None

    # -- pipelines -------------------------------------------------------------------------
    def group_pipeline_access(self, organization: str, project: str, group_id: int) -> PipelineAccess:
        """Which pipelines of ``project`` are authorized to use the group (Pipeline Permissions - Get).

        ``allPipelines.authorized`` means any pipeline of the project may use it; otherwise only
        the ``pipelines[]`` with ``authorized: true`` may."""
        base = self._project_url(organization, project)
        url = f"{base}/_apis/pipelines/pipelinepermissions/variablegroup/{int(group_id)}"
        body = self._request("GET", url, organization=organization, api_version=PIPELINE_PERMISSIONS_API_VERSION)
        body = body or {}
        everyone = body.get("allPipelines")
        ids = {
            int(p["id"])
            for p in body.get("pipelines") or []
            if isinstance(p, Mapping) and p.get("authorized") is True and p.get("id") is not None
        }
        return PipelineAccess(isinstance(everyone, Mapping) and everyone.get("authorized") is True, tuple(sorted(ids)))

    def list_pipelines(self, organization: str, project: str, *, page_size: int = 1000) -> Iterator[Pipeline]:
        """Every pipeline of a project (Pipelines - List), following ``x-ms-continuationtoken``."""
        url = f"{self._project_url(organization, project)}/_apis/pipelines"
        return (Pipeline.from_json(p) for p in self._pages(url, organization, {"$top": page_size}))

    # -- plumbing ----------------------------------------------------------------------
    def _org_url(self, organization: str) -> str:
        return self._settings.org_url(quote(organization, safe=""))

    def _project_url(self, organization: str, project: str) -> str:
        return f"{self._org_url(organization)}/{quote(project, safe='')}"

    def _pages(self, url: str, organization: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The ``value`` items of a GET, following ``x-ms-continuationtoken`` page by page."""
        while True:
            response = self._send("GET", url, organization=organization, params=params)
            assert response is not None  # only 404 with missing_ok answers None
            values = _json(response, organization).get("value") or []
            yield from values
            token = response.headers.get("x-ms-continuationtoken")
            if not token or not values:
                return
            params = {**params, "continuationToken": token}

    def _group_pages(
        self, url: str, organization: str, params: dict[str, Any], page_size: int
    ) -> Iterator[dict[str, Any]]:
        """Variable groups page by page: the header's token when sent, else after the page's last id.

        The spec's ``continuationToken`` is an integer, "Gets the variable groups after the
        continuation token provided" -- whether "after" includes that id is not stated, and the
        header may not come at all. Continuing from the last id and dropping ids already seen is
        right either way; a page that brings nothing new ends the listing, so it cannot loop.
        """
        seen: set[int] = set()
        while True:
            response = self._send("GET", url, organization=organization, params=params)
            assert response is not None  # only 404 with missing_ok answers None
            values = _json(response, organization).get("value") or []
            fresh = [v for v in values if int(v["id"]) not in seen]
            seen.update(int(v["id"]) for v in fresh)
            yield from fresh
            token = response.headers.get("x-ms-continuationtoken")
            if not token and len(values) >= page_size > 0:
                token = str(values[-1]["id"])  # a full page without a header: there may be more
            if not token or not fresh:
                return
            params = {**params, "continuationToken": token}

    def _request(self, method: str, url: str, *, organization: str, **options: Any) -> dict[str, Any] | None:
        """:meth:`_send`, then the JSON body (None for 404-when-allowed, no body, or ``null``)."""
        response = self._send(method, url, organization=organization, **options)
        if response is None or not response.content:
            return None
        return _json(response, organization, allow_null=True)

    def _send(
        self,
        method: str,
        url: str,
        *,
        organization: str,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        idempotent: bool = True,
        missing_ok: bool = False,
        budget: float | None = None,
        api_version: str = API_VERSION,
    ) -> httpx.Response | None:
        query = {**(params or {}), "api-version": api_version}
        deadline = None if budget is None else time.monotonic() + budget
        try:
            for attempt in stamina.retry_context(
                on=self._backoff_hook(idempotent, deadline),
                attempts=self._attempts,
                timeout=self._retry_timeout if budget is None else max(0.001, min(self._retry_timeout, budget)),
                wait_initial=self._wait_initial,
                wait_max=self._wait_max,
            ):
                with attempt, self._slot(organization, deadline):
                    self._respect_pause(organization, deadline)
                    response = self._http.request(
                        method, url, params=query, json=json, timeout=self._request_timeout(organization, deadline)
                    )
                    if response.status_code in _RETRYABLE:
                        raise _RetryableStatusError(response)  # noqa: TRY301 -- stamina retries on it
        except _RetryableStatusError as err:
            raise TransientError(
                f"Azure DevOps ({organization}) answered HTTP {err.response.status_code} to {method}; "
                "giving up for now",
                retry_after=err.retry_after,
                system="devops",
                status=err.response.status_code,
            ) from err
        except httpx.TransportError as err:
            raise TransientError(
                f"could not reach Azure DevOps ({organization}): {type(err).__name__}", system="devops"
            ) from err
        self._note_retry_after(response)
        return self._check(response, method, organization, missing_ok=missing_ok)

    def _backoff_hook(self, idempotent: bool, deadline: float | None) -> Any:
        def hook(exc: Exception) -> bool | float:
            wait: bool | float = False
            if isinstance(exc, _RetryableStatusError):
                if not idempotent:
                    return False  # the service may have applied it: the caller looks before retrying
                # A long Retry-After is the caller's to honour (Event Grid redelivers later).
                if exc.retry_after is None:
                    wait = True
                elif exc.retry_after <= self._max_retry_after:
                    wait = exc.retry_after
            elif isinstance(exc, httpx.TransportError):
                # A non-idempotent request is only retried when it surely never left.
                wait = idempotent or isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
            if deadline is None or wait is False:
                return wait
            # Under a lease: a wait (the longest backoff, or Retry-After) that would end past it is not made.
            longest = self._wait_max if wait is True else float(wait)
            return wait if time.monotonic() + longest < deadline else False

        return hook

    def _create_backoff(self, exc: Exception) -> bool | float:
        """When :meth:`create_group` retries a POST it has looked up: as a transient error says."""
        if not isinstance(exc, TransientError):
            return False
        if exc.retry_after is None:
            return True
        return exc.retry_after if exc.retry_after <= self._max_retry_after else False

    @contextlib.contextmanager
    def _slot(self, organization: str, deadline: float | None) -> Iterator[None]:
        if not self._slots.acquire(timeout=None if deadline is None else max(0.0, deadline - time.monotonic())):
            raise _out_of_time(organization, "waiting for a free Azure DevOps slot")
        try:
            yield
        finally:
            self._slots.release()

    def _respect_pause(self, organization: str, deadline: float | None) -> None:
        delay = self._pause_until - time.monotonic()
        if deadline is not None and time.monotonic() + max(delay, 0.0) >= deadline:
            raise _out_of_time(organization, f"Azure DevOps asked to pause {delay:.1f}s")
        if delay > 0:
            time.sleep(delay)

    def _request_timeout(self, organization: str, deadline: float | None) -> httpx.Timeout:
        """The client's timeouts, cut short so that a request under a lease gives up before it expires."""
        if deadline is None:
            return self._http.timeout
        left = deadline - time.monotonic()
        if left <= 0:
            raise _out_of_time(organization, "before sending")
        timeout = min(self._timeout, left)
        return httpx.Timeout(timeout, connect=min(timeout, 10.0))

    def _note_retry_after(self, response: httpx.Response) -> None:
        # Azure DevOps may send Retry-After on a 200 when it starts delaying an identity.
        retry_after = _retry_after(response)
        if retry_after:
            self._pause_until = max(self._pause_until, time.monotonic() + min(retry_after, self._max_retry_after))

    def _check(
        self, response: httpx.Response, method: str, organization: str, *, missing_ok: bool
    ) -> httpx.Response | None:
        status = response.status_code
        if status == 404 and missing_ok:
            return None
        if status in (200, 201, 204):
            return response
        if status in (203, 302, 401):
            answer = f"HTTP {status}" if status == 401 else f"HTTP {status}, a sign-in page"
            raise UpstreamError(
                "devops",
                status,
                f"Azure DevOps ({organization}) did not accept kvlink's credentials ({answer}): "
                f"{self._credentials_hint()}",
            )
        message = _error_message(response)
        if status == 403 and method == "GET":
            # A read refused: the credentials themselves (an inactive PAT, a policy), not the Library role.
            raise UpstreamError(
                "devops",
                status,
                f"Azure DevOps ({organization}) refused to let kvlink read (HTTP 403): {message} -- "
                f"{self._credentials_hint()}, with access to the project",
            )
        if status == 403:
            raise UpstreamError(
                "devops",
                status,
                f"Azure DevOps ({organization}) refused {method} (HTTP 403): {message} -- kvlink's identity needs the "
                "Administrator role on the project's Library (or on the variable group)",
            )
        raise UpstreamError("devops", status, f"Azure DevOps ({organization}) answered HTTP {status}: {message}")

    def _credentials_hint(self) -> str:
        if self._settings.devops_pat:
            return "check AZURE_DEVOPS_PAT: it may be wrong, expired, revoked, or not valid for this organization"
        return "check that kvlink's managed identity (or your `az login` account) is a user of the organization"


def _text(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def _lookup_project(body: Mapping[str, Any]) -> str | None:
    """The project (id, else name) through which a group being created can be looked up."""
    refs = body.get("variableGroupProjectReferences") or []
    first = refs[0] if refs and isinstance(refs[0], Mapping) else {}
    project = first.get("projectReference") or {}
    key = project.get("id") or project.get("name") if isinstance(project, Mapping) else None
    return str(key) if key and body.get("name") else None


def _out_of_time(organization: str, doing: str) -> TransientError:
    return TransientError(
        f"Azure DevOps ({organization}): the call's budget under the lease ran out ({doing}); giving up for now",
        system="devops",
    )


def _json(response: httpx.Response, organization: str, *, allow_null: bool = False) -> dict[str, Any]:
    if "json" not in response.headers.get("content-type", ""):
        # Azure DevOps serves an HTML sign-in page (status 200 or 203) when auth is wrong.
        raise UpstreamError(
            "devops",
            response.status_code,
            f"Azure DevOps ({organization}) answered with a sign-in page, not JSON",
        )
    try:
        body = response.json()
    except ValueError as err:
        raise UpstreamError("devops", response.status_code, f"Azure DevOps ({organization}) sent invalid JSON") from err
    if body is None and allow_null:
        return {}
    if not isinstance(body, dict):
        raise UpstreamError("devops", response.status_code, f"Azure DevOps ({organization}) sent an unexpected body")
    return body


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase or "no details"
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])[:500]
    return response.reason_phrase or "no details"


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare from Azure DevOps; fall back to backoff
