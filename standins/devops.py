"""A local stand-in for the Azure DevOps REST API: variable groups, projects, service connections.

It serves the part of Azure DevOps Services (``api-version=7.1``) that kvlink touches,
over HTTPS, with Azure DevOps' auth, error bodies, paging headers and validation rules,
so the real HTTP client code runs against it unmodified. One stand-in hosts many
organizations; the organization URL of ``org`` is ``f"{base_url}/{org}"``, which makes
``KVLINK_DEVOPS_URL`` simply :attr:`~standins._http.StandInServer.base_url`.

Routes (anything else answers 404 with an Azure DevOps error body):

* ``GET  /{org}/{project}/_apis/distributedtask/variablegroups/{groupId}``
* ``GET  /{org}/{project}/_apis/distributedtask/variablegroups`` with ``groupName``,
  ``actionFilter``, ``$top``, ``continuationToken`` and ``queryOrder``, or with ``groupIds=1,2``
* ``POST /{org}/_apis/distributedtask/variablegroups`` (org-level, ``VariableGroupParameters``)
* ``PUT  /{org}/_apis/distributedtask/variablegroups/{groupId}`` (org-level, full replace)
* ``DELETE /{org}/_apis/distributedtask/variablegroups/{groupId}?projectIds=a,b``
* ``GET  /{org}/{project}/_apis/serviceendpoint/endpoints?endpointNames=a,b|endpointIds=x,y[&type=][&includeFailed=]``
  and ``.../endpoints/{endpointId}``
* ``GET  /{org}/_apis/projects[/{projectNameOrId}]``
* ``GET  /{org}/{project}/_apis/pipelines/pipelinepermissions/variablegroup/{groupId}`` (``7.1-preview.1``)
* ``GET  /{org}/{project}/_apis/pipelines`` with ``$top``, ``continuationToken`` (``x-ms-continuationtoken``)

Sources for the behaviour: the 7.1 REST spec extract and examples in
``/work/shared/payloads``; ``azure-facts.md`` sections 3 and 4; the decompiled Azure DevOps
Server 2022 variable-group service and controllers (validation order, the
``X-MS-ContinuationToken`` = id of the first group of the next page, ``$top`` capped at
1000, 409 for a duplicate name); and public reports of live Services behaviour
(terraform-provider-azuredevops PR #359: a missing group GETs as 200 with a ``null`` body;
"Atleast one variable group project reference is required", sic). Where real Azure DevOps
is uncertain or differs, the choice is a switch on the instance and is named in a comment.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import re
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal
from urllib.parse import unquote

from ._http import Call, Fault, Request, Response, StandInServer, abort

__all__ = [
    "BEARER_IDENTITY",
    "DEFAULT_BEARER_TOKEN",
    "DEFAULT_PAT",
    "PAT_IDENTITY",
    "UI_IDENTITY",
    "DevOpsStandIn",
    "ado_error",
]

DEFAULT_PAT: Final = "kvlink-emulator-pat"
DEFAULT_BEARER_TOKEN: Final = "kvlink-emulator-token"

# Identities the stand-in writes into createdBy/modifiedBy, so a test can tell who wrote last.
PAT_IDENTITY: Final = {"displayName": "kvlink emulator (PAT)", "id": "6b1d3c5e-0000-4000-8000-00000000a001"}
BEARER_IDENTITY: Final = {
    "displayName": "kvlink emulator (Entra ID)",
    "id": "6b1d3c5e-0000-4000-8000-00000000a002",
}
UI_IDENTITY: Final = {"displayName": "Someone in the web UI", "id": "6b1d3c5e-0000-4000-8000-00000000a003"}

_TENANT: Final = "72f988bf-86f1-41af-91ab-2d7cd011db47"
# What Azure DevOps sends with a 401; clients that auto-negotiate read the Entra authority from it.
_WWW_AUTHENTICATE: Final = (
    f"Bearer authorization_uri=https://login.microsoftonline.com/{_TENANT}, "
    'Basic realm="https://tfsprodweu2.visualstudio.com/", TFS-Federated'
)
_SIGN_IN_PAGE: Final = (
    "<!DOCTYPE html><html><head><title>Azure DevOps Services | Sign In</title></head>"
    '<body><form action="https://login.microsoftonline.com/common/oauth2/authorize" method="post">'
    "<p>Sign in to Azure DevOps to continue.</p></form></body></html>"
)
_ACCESS_DENIED_PAGE: Final = (
    "<!DOCTYPE html><html><head><title>Access Denied</title></head>"
    "<body><h1>401 - Uh-oh, you do not have access.</h1>"
    "<p>The request requires authentication.</p></body></html>"
)

KEY_VAULT_TYPE: Final = "AzureKeyVault"
VSTS_TYPE: Final = "Vsts"

# api-versions served: 7.0 and 7.1, GA or preview (the Python SDK sends 7.1-preview.2).
_API_VERSION: Final = re.compile(r"7\.[01](?:-preview(?:\.\d+)?)?")
_GUID: Final = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_WRITE_PATH: Final = re.compile(r"/([^/]+)/_apis/distributedtask/variablegroups(?:/(\d+))?/?", re.IGNORECASE)
# SidIdentityHelper.IllegalNameChars, which the server applies to group names (max 128).
_ILLEGAL_NAME_CHARS: Final = frozenset('"/\\[]:|<>+=;?*,')
_MAX_TOP: Final = 1000

_CORE_API: Final = "Microsoft.TeamFoundation.Core.WebApi"
_DT_API: Final = "Microsoft.TeamFoundation.DistributedTask.WebApi"
_SE_API: Final = "Microsoft.VisualStudio.Services.ServiceEndpoints.WebApi"
_VSS_API: Final = "Microsoft.VisualStudio.Services.WebApi"
_FRAMEWORK: Final = "Microsoft.TeamFoundation.Framework.Server"
_TYPE_NAMES: Final = {
    "ArgumentException": "System.ArgumentException, mscorlib",
    "ArgumentNullException": "System.ArgumentNullException, mscorlib",
    "InvalidRequestException": f"{_DT_API}.InvalidRequestException, {_DT_API}",
    "VariableGroupExistsException": f"{_DT_API}.VariableGroupExistsException, {_DT_API}",
    "VariableGroupNotFoundException": f"{_DT_API}.VariableGroupNotFoundException, {_DT_API}",
    "ProjectDoesNotExistException": f"{_CORE_API}.ProjectDoesNotExistException, {_CORE_API}",
    "ProjectDoesNotExistWithNameException": f"{_CORE_API}.ProjectDoesNotExistWithNameException, {_CORE_API}",
    "ServiceEndpointNotFoundException": f"{_SE_API}.ServiceEndpointNotFoundException, {_SE_API}",
    "VssVersionNotSpecifiedException": f"{_VSS_API}.VssVersionNotSpecifiedException, {_VSS_API}",
    "VssVersionOutOfRangeException": f"{_VSS_API}.VssVersionOutOfRangeException, {_VSS_API}",
    "RequestBlockedException": f"{_FRAMEWORK}.RequestBlockedException, {_FRAMEWORK}",
    "VssResourceNotFoundException": f"{_VSS_API}.VssResourceNotFoundException, {_VSS_API}",
    "VssServiceException": f"{_VSS_API}.VssServiceException, {_VSS_API}",
    "VssUnauthorizedException": f"{_VSS_API}.VssUnauthorizedException, {_VSS_API}",
}


def ado_error(message: str, type_key: str, *, event_id: int = 3000) -> dict[str, Any]:
    """The JSON body Azure DevOps sends with an error."""
    return {
        "$id": "1",
        "innerException": None,
        "message": message,
        "typeName": _TYPE_NAMES.get(type_key, f"{_VSS_API}.{type_key}, {_VSS_API}"),
        "typeKey": type_key,
        "errorCode": 0,
        "eventId": event_id,
    }


def _fail(status: int, message: str, type_key: str) -> Exception:
    return abort(status, ado_error(message, type_key))


def _project_missing(name_or_id: str) -> Exception:
    key = "ProjectDoesNotExistException" if _GUID.fullmatch(name_or_id) else "ProjectDoesNotExistWithNameException"
    return _fail(
        404,
        f"TF200016: The following project does not exist: {name_or_id}. Verify that the name of the "
        "project is correct and that the project exists on the specified Azure DevOps Server.",
        key,
    )


def _group_missing(group_id: int) -> Exception:
    return _fail(404, f"Variable group {group_id} could not be found.", "VariableGroupNotFoundException")


# -- state --------------------------------------------------------------------------------


@dataclass
class _Project:
    id: str
    name: str
    created: str


@dataclass
class _Endpoint:
    id: str
    name: str
    type: str
    is_ready: bool
    project_id: str
    created: str


@dataclass
class _Org:
    name: str
    projects: dict[str, _Project] = field(default_factory=dict)  # by id
    endpoints: dict[str, _Endpoint] = field(default_factory=dict)  # by id
    groups: dict[int, dict[str, Any]] = field(default_factory=dict)  # stored GET JSON, by id
    next_group_id: int = 1
    # monotonic time at which a POST created each group, so writes() can attribute the call
    created_by_post: dict[int, float] = field(default_factory=dict)
    pipelines: dict[int, dict[str, Any]] = field(default_factory=dict)  # by id, with "projectId"
    next_pipeline_id: int = 1
    # (project id, "variablegroup", group id) -> (open to all pipelines, authorized pipeline ids)
    permissions: dict[tuple[str, str, str], tuple[bool, set[int]]] = field(default_factory=dict)

    def project(self, name_or_id: str) -> _Project | None:
        found = self.projects.get(name_or_id.lower())
        if found is not None:
            return found
        wanted = name_or_id.casefold()
        return next((p for p in self.projects.values() if p.name.casefold() == wanted), None)


def _project_ids(group: Mapping[str, Any]) -> list[str]:
    return [ref["projectReference"]["id"] for ref in group.get("variableGroupProjectReferences") or []]


def _wildcard(pattern: str) -> re.Pattern[str]:
    # groupName is a SQL LIKE under the hood: '*' matches anything, everything else is literal.
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.IGNORECASE | re.DOTALL)


def _parse_int(raw: str, name: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise _fail(400, f"The value '{raw}' is not valid for {name}.", "ArgumentException") from None


# -- the stand-in -------------------------------------------------------------------------


class DevOpsStandIn(StandInServer):
    """Azure DevOps variable groups, projects and service connections for many organizations.

    Switches for behaviour where real Azure DevOps differs or is uncertain:

    ``unauthenticated_status`` (401)
        401 with ``WWW-Authenticate`` for missing or wrong credentials. Set 203 to get what
        Azure DevOps answers to many REST calls instead: 203 Non-Authoritative Information
        with an HTML sign-in page, which a client must not parse as success. Set 403 for what
        public reports show for a PAT Azure DevOps holds inactive (403 or 203, Stack Overflow
        78298298): a JSON error whose wording is invented here, the real one being undocumented.
    ``missing_group_response`` ("404")
        A single-group GET for an id the project cannot see answers 404
        ``VariableGroupNotFoundException``. Real Azure DevOps answers **200 with a JSON
        ``null`` body** (the Server code returns null; terraform-provider-azuredevops #359;
        a live-verified report), so set ``"null"`` to reproduce that; clients should handle both.
    ``require_api_version_on_get`` (True)
        Real Azure DevOps serves a GET without ``api-version`` at its latest version and
        refuses only writes (400 ``VssVersionNotSpecifiedException``). The stand-in refuses
        GETs too, so a client that forgets the version is caught. ``api-version`` may come
        from the query or from the ``Accept`` header, as the official SDKs send it.
    ``sharing_allowed`` (True)
        A POST or PUT with several project references is accepted (Azure DevOps Server with
        the sharing feature). Public reports say Azure DevOps Services answers
        500 "Sharing of variable group is not allowed." -- set False to get that.
    ``strict_key_vault_variables`` (True)
        Variables of an ``AzureKeyVault`` group must be ``isSecret: true`` without a value;
        anything else is a 400. Stricter than the Server code (no such check found): it
        catches a client that would ship secret values to Azure DevOps.

    ``send_continuation_header`` (True)
        A cut variable-group list answers ``X-MS-ContinuationToken``. Whether Azure DevOps
        Services sends it for this resource is undocumented (azure-facts 3.4a); set False
        to get full pages without it, so a client must page by the last id it saw.
    ``continuation_inclusive`` (True)
        The list's ``continuationToken`` means "this id and after" (as the Server controller
        computes it, the header naming the first group of the next page). The spec says only
        "Gets the variable groups after the continuation token provided"; set False for
        "strictly after", the header then naming the last group of this page.

    Fault ``applied=True`` (see :class:`~standins._http.Fault`) carries a request out and then
    answers the fault: a POST that created the group but whose answer was a 503 or a reset.

    Other choices, fixed: a PUT may
    keep or drop project references but not add one (400 "Variable group is not part of
    project"), and dropping one unshares the group (unverified on Services, where shared
    groups cannot be made); DELETE answers a bodiless 204 (live reports; the spec says 200);
    an unknown organization is a JSON 404 (invented -- see :meth:`handle`); the projects
    list's ``x-ms-continuationtoken`` is an opaque offset into the name-sorted projects.

    Pipelines: the list is sorted by name (the spec's default ``orderBy``, "name asc") and cut
    at ``$top`` or :attr:`pipelines_page_cap`, whichever is smaller (a server may send fewer than
    asked), with an opaque ``x-ms-continuationtoken``. Pipeline permissions answer the
    ``ResourcePipelinePermissions`` shape of the official example (``resource``, ``pipelines[]``
    with ``authorizedBy``/``authorizedOn``) plus ``allPipelines`` when the group is open to every
    pipeline; a group never authorized (or unknown) answers ``resource`` and no pipelines --
    unverified for an unknown id, a client must also take a 404. The route refuses a GA
    ``api-version`` with 400, as Azure DevOps does for a preview-only resource.
    """

    name = "devops-stand-in"

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None,
        pat: str = DEFAULT_PAT,
        bearer_token: str = DEFAULT_BEARER_TOKEN,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(ssl_context=ssl_context, host=host, port=port)
        self.pat = pat
        self.bearer_token = bearer_token
        self.unauthenticated_status: Literal[401, 203, 403] = 401
        self.missing_group_response: Literal["404", "null"] = "404"
        self.require_api_version_on_get = True
        self.sharing_allowed = True
        self.strict_key_vault_variables = True
        self.send_continuation_header = True
        self.continuation_inclusive = True
        self.pipelines_page_cap: int | None = None
        # A second group of an existing name: typeKey VariableGroupExistsException, which the server's
        # exception map answers with 409 Conflict; kvlink users have reported a 400 with the same
        # message too, so tests run both (see tests/test_create_race.py for the sources).
        self.duplicate_name_status: Literal[400, 409] = 409
        self._state_lock = threading.RLock()
        self._orgs: dict[str, _Org] = {}
        self._last_stamp = datetime.min.replace(tzinfo=UTC)

    # -- lifecycle (narrowed return types so callers keep the subclass) -------------------
    def start(self) -> DevOpsStandIn:
        super().start()
        return self

    def __enter__(self) -> DevOpsStandIn:
        return self.start()

    def org_url(self, org: str) -> str:
        """The organization URL, ``https://dev.azure.com/{org}`` in real life."""
        return f"{self.base_url}/{org}"

    # -- seeding and inspection (thread-safe; everything returned is a copy) --------------
    def add_project(self, org: str, name: str) -> str:
        """Create a project (and the organization, if new); return its id. Idempotent by name."""
        with self._state_lock:
            store = self._orgs.setdefault(org.lower(), _Org(org))
            existing = store.project(name)
            if existing is not None and existing.name.casefold() == name.casefold():
                return existing.id
            project = _Project(str(uuid.uuid4()), name, self._stamp())
            store.projects[project.id] = project
            return project.id

    def add_service_endpoint(
        self,
        org: str,
        project: str,
        name: str,
        *,
        type: str = "azurerm",  # noqa: A002 -- the REST field is called "type"
        is_ready: bool = True,
    ) -> str:
        """Create a service connection in ``project`` (name or id, created if missing); return its id."""
        with self._state_lock:
            store = self._orgs.setdefault(org.lower(), _Org(org))
            owner = self._seed_project(store, project, create=True)
            endpoint = _Endpoint(str(uuid.uuid4()), name, type, is_ready, owner.id, self._stamp())
            store.endpoints[endpoint.id] = endpoint
            return endpoint.id

    def add_group(
        self,
        org: str,
        project: str,
        name: str,
        *,
        vault: str | None = None,
        service_endpoint_id: str | None = None,
        variables: Iterable[str] | Mapping[str, Any] | None = None,
        description: str = "",
        type: str | None = None,  # noqa: A002 -- the REST field is called "type"
    ) -> int:
        """Create a group as if in the web UI (no validation); return its id.

        The project is created if missing. A Key Vault group without ``service_endpoint_id``
        uses the project's first service connection, creating ``{vault}-connection`` if none.
        Key Vault variables given by name (or as a mapping to non-dicts) become
        ``{"isSecret": true, "value": null, "enabled": true, "contentType": "", "expires": null}``;
        plain variables given as ``{name: "value"}`` become ``{"value": "value"}``.
        """
        group_type = type or (KEY_VAULT_TYPE if vault is not None else VSTS_TYPE)
        with self._state_lock:
            store = self._orgs.setdefault(org.lower(), _Org(org))
            owner = self._seed_project(store, project, create=True)
            provider: dict[str, Any] | None = None
            if group_type == KEY_VAULT_TYPE:
                if service_endpoint_id is None:
                    service_endpoint_id = next(
                        (e.id for e in store.endpoints.values() if e.project_id == owner.id), None
                    ) or self.add_service_endpoint(org, owner.id, f"{vault}-connection")
                provider = {"serviceEndpointId": service_endpoint_id, "vault": vault or ""}
            stamp = self._stamp()
            group: dict[str, Any] = {
                "variables": _seed_variables(variables, key_vault=group_type == KEY_VAULT_TYPE),
                "id": store.next_group_id,
                "type": group_type,
                "name": name,
                "description": description,
                "createdBy": dict(UI_IDENTITY),
                "createdOn": stamp,
                "modifiedBy": dict(UI_IDENTITY),
                "modifiedOn": stamp,
                "isShared": False,
                "variableGroupProjectReferences": [_reference(owner, name, description)],
            }
            if provider is not None:
                group["providerData"] = provider
            store.groups[group["id"]] = group
            store.next_group_id += 1
            return int(group["id"])

    def share_group(self, org: str, group_id: int, project: str) -> None:
        """Add a project reference to a group (as the Library "share" dialog would)."""
        with self._state_lock:
            store = self._org(org)
            group = self._stored_group(store, group_id)
            target = self._seed_project(store, project)
            if target.id not in _project_ids(group):
                group["variableGroupProjectReferences"].append(
                    _reference(target, group["name"], group.get("description") or "")
                )
            group["isShared"] = len(group["variableGroupProjectReferences"]) > 1

    def add_pipeline(self, org: str, project: str, name: str, *, folder: str = "\\") -> int:
        """Create a pipeline in ``project`` (name or id, created if missing); return its id."""
        with self._state_lock:
            store = self._orgs.setdefault(org.lower(), _Org(org))
            owner = self._seed_project(store, project, create=True)
            pipeline_id = store.next_pipeline_id
            store.next_pipeline_id += 1
            store.pipelines[pipeline_id] = {"id": pipeline_id, "name": name, "folder": folder, "projectId": owner.id}
            return pipeline_id

    def authorize_pipelines(
        self, org: str, project: str, group_id: int, pipeline_ids: Iterable[int] = (), *, all_pipelines: bool = False
    ) -> None:
        """Authorize pipelines (or every pipeline of the project) to use a group, as its Pipeline permissions do."""
        with self._state_lock:
            store = self._org(org)
            owner = self._seed_project(store, project)
            key = (owner.id, "variablegroup", str(group_id))
            everyone, ids = store.permissions.get(key, (False, set()))
            store.permissions[key] = (everyone or all_pipelines, ids | set(pipeline_ids))

    def group(self, org: str, group_id: int) -> dict[str, Any]:
        """The stored group, exactly as a GET returns it."""
        with self._state_lock:
            return copy.deepcopy(self._stored_group(self._org(org), group_id))

    def groups(self, org: str) -> list[dict[str, Any]]:
        """Every group of the organization, by ascending id."""
        with self._state_lock:
            store = self._org(org)
            return [copy.deepcopy(store.groups[i]) for i in sorted(store.groups)]

    def variable_names(self, org: str, group_id: int) -> list[str]:
        """The group's variable names, sorted."""
        return sorted(self.group(org, group_id)["variables"])

    def edit_group(self, org: str, group_id: int, mutate: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Let ``mutate`` change the stored group in place, as a human in the UI would; bumps modifiedOn."""
        with self._state_lock:
            store = self._org(org)
            edited = copy.deepcopy(self._stored_group(store, group_id))
            mutate(edited)
            edited["id"] = group_id
            edited["modifiedBy"] = dict(UI_IDENTITY)
            edited["modifiedOn"] = self._stamp()
            edited["isShared"] = len(edited.get("variableGroupProjectReferences") or []) > 1
            store.groups[group_id] = edited
            return copy.deepcopy(edited)

    def delete_group(self, org: str, group_id: int) -> None:
        """Delete a group from every project."""
        with self._state_lock:
            store = self._org(org)
            self._stored_group(store, group_id)
            del store.groups[group_id]

    def remove_project(self, org: str, project: str) -> None:
        """Delete a project, its service connections and its group references (orphaned groups go too)."""
        with self._state_lock:
            store = self._org(org)
            gone = self._seed_project(store, project)
            del store.projects[gone.id]
            store.endpoints = {k: e for k, e in store.endpoints.items() if e.project_id != gone.id}
            for group_id, group in list(store.groups.items()):
                refs = [r for r in group["variableGroupProjectReferences"] if r["projectReference"]["id"] != gone.id]
                if not refs:
                    del store.groups[group_id]
                else:
                    group["variableGroupProjectReferences"] = refs
                    group["isShared"] = len(refs) > 1

    def writes(self, org: str | None = None, group_id: int | None = None) -> list[Call]:
        """The POST/PUT calls to variable groups (any status), oldest first.

        With ``group_id``, PUTs to that id plus the successful POST that created it.
        """
        with self._lock:
            calls = list(self.calls)
        with self._state_lock:
            created = {(key, gid): at for key, store in self._orgs.items() for gid, at in store.created_by_post.items()}
        picked: list[Call] = []
        for call in calls:
            match = _WRITE_PATH.fullmatch(call.path)
            if call.method not in ("POST", "PUT") or match is None:
                continue
            if (call.method == "POST") != (match.group(2) is None):
                continue
            call_org = unquote(match.group(1)).lower()
            if org is not None and call_org != org.lower():
                continue
            if group_id is not None:
                if call.method == "PUT" and int(match.group(2)) != group_id:
                    continue
                if call.method == "POST":
                    at = created.get((call_org, group_id))
                    if at is None or call.status != 200 or not call.started <= at <= call.finished:
                        continue
            picked.append(call)
        return picked

    # -- faults ----------------------------------------------------------------------------
    def error_body(self, status: int) -> Any:
        if status == 429:
            return ado_error(
                "TF400733: The request has been canceled: Request was blocked due to exceeding usage of "
                "resource 'Core' in namespace 'User'.",
                "RequestBlockedException",
            )
        messages = {
            400: ("The request is invalid (injected fault).", "ArgumentException"),
            401: (
                "TF400813: The user is not authorized to access this resource.",
                "VssUnauthorizedException",
            ),
            404: ("The resource cannot be found (injected fault).", "VssResourceNotFoundException"),
        }
        message, key = messages.get(status, (f"The service answered {status} (injected fault).", "VssServiceException"))
        return ado_error(message, key)

    def _fault_response(self, fault: Fault) -> Response:
        response = super()._fault_response(fault)
        if response.status == 429:
            # Azure DevOps names the throttled resource and the delay with every 429.
            delay = fault.retry_after or 0.0
            response.headers = {
                "X-RateLimit-Resource": "Core",
                "X-RateLimit-Delay": f"{delay:.3f}",
                "X-RateLimit-Limit": "200",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": str(int(time.time() + delay)),
                **response.headers,
            }
        elif response.status == 401:
            response.headers = {"WWW-Authenticate": _WWW_AUTHENTICATE, **response.headers}
        return response

    # -- request handling ------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        identity = self._authenticate(request)
        if isinstance(identity, Response):
            return identity
        segments = [unquote(s) for s in request.path.split("/") if s]
        if not segments:
            raise self._not_found(request)
        with self._state_lock:
            known_org = segments[0].lower() in self._orgs
        if not known_org:
            # Invented: real Azure DevOps answers an unknown organization with 401 (TF400813) or
            # an HTML 404, depending on the credentials. A JSON 404 is the most useful here.
            raise _fail(404, f"The organization '{segments[0]}' does not exist.", "VssResourceNotFoundException")
        route = self._route(request, segments[0], segments[1:], identity)
        if route is None:
            raise self._not_found(request)
        self._check_api_version(request)
        return route()

    def _route(
        self, request: Request, org: str, rest: list[str], identity: Mapping[str, Any]
    ) -> Callable[[], Response] | None:
        method = request.method
        low = [s.lower() for s in rest]
        if low[:1] == ["_apis"]:
            tail = low[1:]
            if tail[:1] == ["projects"] and method == "GET":
                if len(tail) == 1:
                    return lambda: self._list_projects(request, org)
                if len(tail) == 2:
                    return lambda: self._get_project(org, rest[2])
            if tail[:2] == ["distributedtask", "variablegroups"]:
                if len(tail) == 2 and method == "POST":
                    return lambda: self._add_group(request, org, identity)
                if len(tail) == 3 and rest[3].isdigit():
                    group_id = int(rest[3])
                    if method == "PUT":
                        return lambda: self._update_group(request, org, group_id, identity)
                    if method == "DELETE":
                        return lambda: self._delete_group(request, org, group_id)
            return None
        if len(low) >= 2 and low[1] == "_apis" and method == "GET":
            project, tail = rest[0], low[2:]
            if tail[:2] == ["distributedtask", "variablegroups"]:
                if len(tail) == 2:
                    return lambda: self._list_groups(request, org, project)
                if len(tail) == 3 and rest[4].isdigit():
                    return lambda: self._get_group(org, project, int(rest[4]))
            if tail == ["pipelines"]:
                return lambda: self._list_pipelines(request, org, project)
            if tail[:2] == ["pipelines", "pipelinepermissions"] and len(tail) == 4:
                return lambda: self._pipeline_permissions(request, org, project, low[4], rest[5])
            if tail[:2] == ["serviceendpoint", "endpoints"]:
                if len(tail) == 2:
                    return lambda: self._list_endpoints(request, org, project)
                if len(tail) == 3:
                    return lambda: self._get_endpoint(org, project, rest[4])
        return None

    # -- auth and versions -----------------------------------------------------------------
    def _authenticate(self, request: Request) -> Mapping[str, Any] | Response:
        """The caller's identity, or the response Azure DevOps gives a stranger."""
        scheme, _, credential = (request.headers.get("Authorization") or "").partition(" ")
        credential = credential.strip()
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(credential, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            _, colon, password = decoded.partition(":")  # any user name; the PAT is the password
            if colon and password == self.pat:
                return PAT_IDENTITY
        elif scheme.lower() == "bearer" and credential == self.bearer_token:
            return BEARER_IDENTITY
        html = "text/html; charset=utf-8"
        if self.unauthenticated_status == 203:
            return Response(203, _SIGN_IN_PAGE, content_type=html)
        if self.unauthenticated_status == 403:
            return Response(
                403,
                ado_error(
                    "Access denied: the credentials are not active for this organization (stand-in wording).",
                    "VssUnauthorizedException",
                ),
            )
        return Response(
            401,
            _ACCESS_DENIED_PAGE,
            {
                "WWW-Authenticate": _WWW_AUTHENTICATE,
                "X-TFS-FedAuthRealm": "https://app.vssps.visualstudio.com/",
                "X-TFS-FedAuthIssuer": "https://app.vssps.visualstudio.com/",
                "X-VSS-ResourceTenant": _TENANT,
            },
            content_type=html,
        )

    def _check_api_version(self, request: Request) -> str:
        version = request.query.get("api-version")
        if version is None:
            match = re.search(r"api-version\s*=\s*([^;,\s]+)", request.headers.get("Accept") or "")
            version = match.group(1) if match else None
        if not version:
            if request.method == "GET" and not self.require_api_version_on_get:
                return "7.1"
            raise _fail(
                400,
                f'No api-version was supplied for the "{request.method}" request. The version must be '
                'supplied either as part of the Accept header (e.g. "application/json; api-version=1.0") '
                'or as a query parameter (e.g. "?api-version=1.0").',
                "VssVersionNotSpecifiedException",
            )
        if not _API_VERSION.fullmatch(version):
            raise _fail(
                400,
                f"The requested REST API version of {version} is out of range for this server. "
                "This stand-in serves 7.0 and 7.1 (GA or -preview).",
                "VssVersionOutOfRangeException",
            )
        return version

    @staticmethod
    def _not_found(request: Request) -> Exception:
        return _fail(
            404,
            f"The resource cannot be found: {request.method} {request.path}.",
            "VssResourceNotFoundException",
        )

    # -- projects --------------------------------------------------------------------------
    def _project_json(self, org: str, project: _Project) -> dict[str, Any]:
        return {
            "id": project.id,
            "name": project.name,
            "url": f"{self.org_url(org)}/_apis/projects/{project.id}",
            "state": "wellFormed",
            "revision": 1,
            "visibility": "private",
            "lastUpdateTime": project.created,
        }

    def _list_projects(self, request: Request, org: str) -> Response:
        top = _parse_int(request.query["$top"], "$top") if "$top" in request.query else 100
        skip = _parse_int(request.query.get("$skip") or "0", "$skip")
        # The continuation token is opaque to clients; here it is the number of projects already
        # returned (projects are listed by name). A token wins over $skip.
        token = request.query.get("continuationToken")
        if token:
            skip = _parse_int(token, "continuationToken")
        with self._state_lock:
            store = self._orgs[org.lower()]
            ordered = sorted(store.projects.values(), key=lambda p: p.name.casefold())
            page = [self._project_json(org, p) for p in ordered[skip : skip + max(top, 0)]]
        headers = {"x-ms-continuationtoken": str(skip + len(page))} if skip + len(page) < len(ordered) else {}
        return Response(200, {"count": len(page), "value": page}, headers)

    def _get_project(self, org: str, name_or_id: str) -> Response:
        with self._state_lock:
            project = self._orgs[org.lower()].project(name_or_id)
            if project is None:
                raise _project_missing(name_or_id)
            body = self._project_json(org, project)
        body["description"] = ""
        body["_links"] = {"self": {"href": body["url"]}}
        return Response(200, body)

    # -- service endpoints -----------------------------------------------------------------
    def _endpoint_json(self, store: _Org, endpoint: _Endpoint) -> dict[str, Any]:
        project = store.projects[endpoint.project_id]
        is_arm = endpoint.type.lower() == "azurerm"
        return {
            "data": (
                {
                    "subscriptionId": "00000000-0000-4000-8000-000000000000",
                    "subscriptionName": "kvlink-emulated-subscription",
                    "environment": "AzureCloud",
                    "scopeLevel": "Subscription",
                    "creationMode": "Manual",
                }
                if is_arm
                else {}
            ),
            "id": endpoint.id,
            "name": endpoint.name,
            "type": endpoint.type,
            "url": "https://management.azure.com/" if is_arm else "https://example.invalid/",
            "createdBy": dict(UI_IDENTITY),
            "description": "",
            "authorization": {
                "parameters": {
                    "tenantid": _TENANT,
                    "serviceprincipalid": "00000000-0000-4000-8000-0000000000aa",
                    "authenticationType": "spnKey",
                    "serviceprincipalkey": None,
                },
                "scheme": "ServicePrincipal",
            },
            "isShared": False,
            "isReady": endpoint.is_ready,
            "owner": "library",
            "serviceEndpointProjectReferences": [
                {
                    "projectReference": {"id": project.id, "name": project.name},
                    "name": endpoint.name,
                    "description": "",
                }
            ],
        }

    def _list_endpoints(self, request: Request, org: str, project_key: str) -> Response:
        names = {n.strip().casefold() for n in (request.query.get("endpointNames") or "").split(",") if n.strip()}
        ids = {i.strip().lower() for i in (request.query.get("endpointIds") or "").split(",") if i.strip()}
        wanted_type = (request.query.get("type") or "").casefold()
        # Not-ready connections stand for "failed" ones, which Azure DevOps hides unless asked.
        include_failed = (request.query.get("includeFailed") or "").lower() == "true"
        with self._state_lock:
            store = self._orgs[org.lower()]
            project = store.project(project_key)
            if project is None:
                raise _project_missing(project_key)
            found = [
                self._endpoint_json(store, e)
                for e in store.endpoints.values()
                if e.project_id == project.id
                and (not names or e.name.casefold() in names)
                and (not ids or e.id.lower() in ids)
                and (not wanted_type or e.type.casefold() == wanted_type)
                and (e.is_ready or include_failed)
            ]
        return Response(200, {"count": len(found), "value": found})

    def _get_endpoint(self, org: str, project_key: str, endpoint_id: str) -> Response:
        with self._state_lock:
            store = self._orgs[org.lower()]
            project = store.project(project_key)
            if project is None:
                raise _project_missing(project_key)
            endpoint = store.endpoints.get(endpoint_id.lower())
            if endpoint is None or endpoint.project_id != project.id:
                raise _fail(
                    404,
                    f"Service connection with id {endpoint_id} does not exist or you do not have permission.",
                    "ServiceEndpointNotFoundException",
                )
            return Response(200, self._endpoint_json(store, endpoint))

    # -- pipelines -------------------------------------------------------------------------
    def _pipeline_json(self, org: str, pipeline: Mapping[str, Any]) -> dict[str, Any]:
        # The fields of the 7.1 reference's Pipeline: _links (self, web), folder, id, name, revision, url.
        base = f"{self.org_url(org)}/{pipeline['projectId']}"
        pid = pipeline["id"]
        return {
            "_links": {
                "self": {"href": f"{base}/_apis/pipelines/{pid}?revision=1"},
                "web": {"href": f"{base}/_build/definition?definitionId={pid}"},
            },
            "url": f"{base}/_apis/pipelines/{pid}?revision=1",
            "id": pid,
            "revision": 1,
            "name": pipeline["name"],
            "folder": pipeline["folder"],
        }

    def _list_pipelines(self, request: Request, org: str, project_key: str) -> Response:
        query = request.query
        top = _parse_int(query["$top"], "$top") if "$top" in query else _MAX_TOP
        if self.pipelines_page_cap is not None:
            top = min(top, self.pipelines_page_cap)
        skip = _parse_int(query["continuationToken"], "continuationToken") if query.get("continuationToken") else 0
        with self._state_lock:
            store = self._orgs[org.lower()]
            project = store.project(project_key)
            if project is None:
                raise _project_missing(project_key)
            mine = sorted(
                (p for p in store.pipelines.values() if p["projectId"] == project.id),
                key=lambda p: (p["name"].casefold(), p["id"]),
            )
            page = [self._pipeline_json(org, p) for p in mine[skip : skip + max(top, 0)]]
        headers = {"x-ms-continuationtoken": str(skip + len(page))} if skip + len(page) < len(mine) else {}
        return Response(200, {"count": len(page), "value": page}, headers)

    def _pipeline_permissions(self, request: Request, org: str, project_key: str, kind: str, resource: str) -> Response:
        if "-preview" not in (request.query.get("api-version") or ""):
            raise _fail(
                400,
                'The requested version "7.1" of the resource is under preview. The -preview flag must be '
                'supplied in the api-version for such requests. For example: "7.1-preview"',
                "VssInvalidPreviewVersionException",
            )
        with self._state_lock:
            store = self._orgs[org.lower()]
            project = store.project(project_key)
            if project is None:
                raise _project_missing(project_key)
            everyone, ids = store.permissions.get((project.id, kind, resource), (False, set()))
            stamp = self._stamp()
        granted = {"authorized": True, "authorizedBy": dict(UI_IDENTITY), "authorizedOn": stamp}
        body: dict[str, Any] = {
            "resource": {"type": kind, "id": resource},
            "pipelines": [{"id": pid, **granted} for pid in sorted(ids)],
        }
        if everyone:
            body["allPipelines"] = granted
        return Response(200, body)

    # -- variable groups: reads ------------------------------------------------------------
    def _get_group(self, org: str, project_key: str, group_id: int) -> Response:
        with self._state_lock:
            store = self._orgs[org.lower()]
            project = store.project(project_key)
            if project is None:
                raise _project_missing(project_key)
            group = store.groups.get(group_id)
            if group is None or project.id not in _project_ids(group):
                if self.missing_group_response == "null":
                    return Response(200, "null")  # what Azure DevOps really sends
                raise _group_missing(group_id)
            return Response(200, copy.deepcopy(group))

    def _list_groups(self, request: Request, org: str, project_key: str) -> Response:
        query = request.query
        with self._state_lock:
            store = self._orgs[org.lower()]
            project = store.project(project_key)
            if project is None:
                raise _project_missing(project_key)
            visible = {gid: g for gid, g in store.groups.items() if project.id in _project_ids(g)}
            if "groupIds" in query:
                ids = [_parse_int(s.strip(), "groupIds") for s in query["groupIds"].split(",") if s.strip()]
                picked = [copy.deepcopy(visible[i]) for i in dict.fromkeys(ids) if i in visible]
                return Response(200, {"count": len(picked), "value": picked})
            action = (query.get("actionFilter") or "none").lower()
            if action not in ("none", "manage", "use"):
                raise _fail(
                    400,
                    f"The value '{query['actionFilter']}' is not valid for actionFilter.",
                    "ArgumentException",
                )
            order = (query.get("queryOrder") or "IdDescending").lower()
            if order not in ("idascending", "iddescending"):
                raise _fail(
                    400,
                    f"The value '{query['queryOrder']}' is not valid for queryOrder.",
                    "ArgumentException",
                )
            top = min(_parse_int(query["$top"], "$top"), _MAX_TOP) if "$top" in query else -1
            descending = order == "iddescending"
            groups = sorted(visible.values(), key=lambda g: int(g["id"]), reverse=descending)
            if query.get("groupName"):
                pattern = _wildcard(query["groupName"])
                groups = [g for g in groups if pattern.fullmatch(g["name"])]
            if query.get("continuationToken"):
                token = _parse_int(query["continuationToken"], "continuationToken")
                if not self.continuation_inclusive:
                    token += 1 if not descending else -1  # "strictly after" the token's id
                groups = [g for g in groups if (g["id"] <= token if descending else g["id"] >= token)]
            headers: dict[str, str] = {}
            if 0 <= top < len(groups):
                if self.send_continuation_header:
                    # Inclusive: the first group of the next page; exclusive: the last of this one.
                    follow = groups[top] if self.continuation_inclusive or top == 0 else groups[top - 1]
                    headers["X-MS-ContinuationToken"] = str(follow["id"])
                groups = groups[:top]
            # Serialized under the lock, as a copy would be: a large estate's page is megabytes, and a
            # deep copy of it costs the stand-in several times the CPU of the JSON it becomes.
            body = json.dumps({"count": len(groups), "value": groups}).encode("utf-8")
        return Response(200, body, headers)

    # -- variable groups: writes -----------------------------------------------------------
    def _add_group(self, request: Request, org: str, identity: Mapping[str, Any]) -> Response:
        body = _body(request)
        with self._state_lock:
            store = self._orgs[org.lower()]
            group = self._validated(store, body, existing=None)
            group_id = store.next_group_id
            store.next_group_id += 1
            stamp = self._stamp()
            group.update(
                id=group_id,
                createdBy=dict(identity),
                createdOn=stamp,
                modifiedBy=dict(identity),
                modifiedOn=stamp,
            )
            stored = _ordered(group)
            store.groups[group_id] = stored
            store.created_by_post[group_id] = time.monotonic()
            return Response(200, copy.deepcopy(stored))

    def _update_group(self, request: Request, org: str, group_id: int, identity: Mapping[str, Any]) -> Response:
        body = _body(request)
        with self._state_lock:
            store = self._orgs[org.lower()]
            existing = store.groups.get(group_id)
            if existing is None:
                raise _group_missing(group_id)
            group = self._validated(store, body, existing=existing)
            group.update(
                id=group_id,
                createdBy=existing["createdBy"],
                createdOn=existing["createdOn"],
                modifiedBy=dict(identity),
                modifiedOn=self._stamp(),
            )
            # Full replace: whatever the body left out (variables, description, references) is gone.
            stored = _ordered(group)
            store.groups[group_id] = stored
            return Response(200, copy.deepcopy(stored))

    def _delete_group(self, request: Request, org: str, group_id: int) -> Response:
        raw = request.query.get("projectIds") or ""
        ids = [s.strip() for s in raw.split(",") if s.strip()]
        bad = [s for s in ids if not _GUID.fullmatch(s)]
        if bad:
            raise _fail(400, f"Invalid project ids: {', '.join(bad)}.", "ArgumentException")
        if not ids:
            raise _fail(400, "At least one project is required to delete a variable group.", "InvalidRequestException")
        with self._state_lock:
            store = self._orgs[org.lower()]
            group = store.groups.get(group_id)
            if group is None:
                raise _group_missing(group_id)
            present = _project_ids(group)
            for project_id in ids:
                if project_id.lower() not in present:
                    raise _fail(400, f"Variable group is not part of project {project_id}.", "ArgumentException")
            lowered = {i.lower() for i in ids}
            refs = [r for r in group["variableGroupProjectReferences"] if r["projectReference"]["id"] not in lowered]
            if refs:
                group["variableGroupProjectReferences"] = refs
                group["isShared"] = len(refs) > 1
            else:
                del store.groups[group_id]
        return Response(204)  # documented as 200; Services answers a bodiless 204

    def _validated(self, store: _Org, body: Any, *, existing: Mapping[str, Any] | None) -> dict[str, Any]:
        """Check ``VariableGroupParameters`` in the server's order; return the group to store."""
        if not isinstance(body, dict):
            raise _fail(
                400,
                "Value cannot be null.\r\nParameter name: variableGroupParameters",
                "ArgumentNullException",
            )
        raw_refs = body.get("variableGroupProjectReferences")
        if not raw_refs:
            raise _fail(400, "Atleast one variable group project reference is required.", "InvalidRequestException")
        if not isinstance(raw_refs, list) or not all(isinstance(r, dict) for r in raw_refs):
            raise _fail(400, "Project information name is not valid for variable group.", "ArgumentException")
        if len(raw_refs) > 1 and not self.sharing_allowed:
            raise _fail(500, "Sharing of variable group is not allowed.", "InvalidRequestException")

        refs: list[dict[str, Any]] = []
        projects: list[_Project] = []
        for ref in raw_refs:
            project_ref = ref.get("projectReference")
            if not isinstance(project_ref, dict) or not isinstance(project_ref.get("id"), str):
                raise _fail(400, "Project information name is not valid for variable group.", "ArgumentException")
            project = store.projects.get(project_ref["id"].lower()) if _GUID.fullmatch(project_ref["id"]) else None
            if project is None:
                raise _project_missing(project_ref["id"])
            claimed = project_ref.get("name")
            if not isinstance(claimed, str) or claimed.casefold() != project.name.casefold():
                raise _fail(400, "Project information name is not valid for variable group.", "ArgumentException")
            ref_name = _check_name(ref.get("name"), "group.Name")
            if any(p.id == project.id for p in projects):
                raise _fail(
                    400,
                    "Cannot create the same variable group multiple times in a project.",
                    "ArgumentException",
                )
            projects.append(project)
            refs.append(_reference(project, ref_name, _check_description(ref.get("description"))))

        name = _check_name(body.get("name"), "group.Name")
        description = _check_description(body.get("description"))
        variables = body.get("variables")
        if not isinstance(variables, dict) or not variables:
            raise _fail(400, "Variable group must have at least one variable defined.", "ArgumentException")
        group_type = body.get("type") or VSTS_TYPE
        if group_type not in (VSTS_TYPE, KEY_VAULT_TYPE):
            raise _fail(400, f"Variable group type {group_type} is not supported.", "ArgumentException")
        provider: dict[str, Any] | None = None
        if group_type == KEY_VAULT_TYPE:
            provider = _check_provider_data(body.get("providerData"))
        clean_vars = self._check_variables(name, variables, key_vault=group_type == KEY_VAULT_TYPE)

        if existing is not None:
            # A PUT may keep or drop references but not add projects (that is the share call's job).
            present = _project_ids(existing)
            for project in projects:
                if project.id not in present:
                    raise _fail(400, f"Variable group is not part of project {project.id}.", "ArgumentException")
        if provider is not None:
            self._check_endpoint_shared(store, provider, projects, existing)
        for project in projects:
            for other in store.groups.values():
                if existing is not None and other["id"] == existing["id"]:
                    continue
                if project.id in _project_ids(other) and other["name"].casefold() == name.casefold():
                    raise _fail(
                        self.duplicate_name_status,
                        f"Variable group with name {name} already exists.",
                        "VariableGroupExistsException",
                    )

        group: dict[str, Any] = {
            "variables": clean_vars,
            "type": group_type,
            "name": name,
            "description": description,
            "isShared": len(refs) > 1,
            "variableGroupProjectReferences": refs,
        }
        if provider is not None:
            group["providerData"] = copy.deepcopy(provider)
        return group

    @staticmethod
    def _check_endpoint_shared(
        store: _Org, provider: Mapping[str, Any], projects: list[_Project], existing: Mapping[str, Any] | None
    ) -> None:
        endpoint_id = str(provider["serviceEndpointId"]).lower()
        previous = (existing or {}).get("providerData") or {}
        if (
            existing is not None
            and existing.get("type") == KEY_VAULT_TYPE
            and str(previous.get("serviceEndpointId", "")).lower() == endpoint_id
        ):
            return  # the server re-checks the connection only when it changes
        endpoint = store.endpoints.get(endpoint_id)
        for project in projects:
            if endpoint is None or endpoint.project_id != project.id:
                raise _fail(
                    400,
                    f"Service connection {endpoint_id} is not shared with project {project.name}.",
                    "InvalidRequestException",
                )

    def _check_variables(self, group_name: str, variables: dict[str, Any], *, key_vault: bool) -> dict[str, Any]:
        clean: dict[str, Any] = {}
        seen: dict[str, str] = {}
        duplicates: list[str] = []
        for raw_key, value in variables.items():
            key = raw_key.strip()
            if not 1 <= len(key) <= 400:
                raise _fail(
                    400,
                    "The length of the string is not valid. Parameter name: group.variable.Key",
                    "ArgumentException",
                )
            if not isinstance(value, dict):
                raise _fail(400, f"Value cannot be null.\r\nParameter name: {key}", "ArgumentNullException")
            if isinstance(value.get("value"), str) and len(value["value"]) > 4096:
                raise _fail(
                    400,
                    f"The value of variable '{key}' must be between 0 and 4096 characters long.",
                    "ArgumentException",
                )
            if (
                key_vault
                and self.strict_key_vault_variables
                and (value.get("isSecret") is not True or value.get("value") is not None)
            ):
                raise _fail(
                    400,
                    f"Variable '{key}' of an Azure Key Vault variable group must be a secret without a value "
                    "(stand-in rule: Azure DevOps reads the value from the vault at run time).",
                    "ArgumentException",
                )
            if key.casefold() in seen:
                duplicates.append(key)
            seen[key.casefold()] = key
            clean[key] = copy.deepcopy(value)
        if duplicates:
            raise _fail(
                400,
                f"Variable group {group_name} has duplicate variables: {', '.join(duplicates)}.",
                "ArgumentException",
            )
        return clean

    # -- helpers ---------------------------------------------------------------------------
    def _org(self, org: str) -> _Org:
        store = self._orgs.get(org.lower())
        if store is None:
            raise KeyError(f"no organization {org!r}")
        return store

    def _seed_project(self, store: _Org, project: str, *, create: bool = False) -> _Project:
        found = store.project(project)
        if found is None:
            if not create:
                raise KeyError(f"no project {project!r} in {store.name!r}")
            found = store.projects[self.add_project(store.name, project)]
        return found

    @staticmethod
    def _stored_group(store: _Org, group_id: int) -> dict[str, Any]:
        group = store.groups.get(group_id)
        if group is None:
            raise KeyError(f"no variable group {group_id} in {store.name!r}")
        return group

    def _stamp(self) -> str:
        """Now, ISO 8601 UTC; strictly increasing so every write changes modifiedOn."""
        with self._state_lock:
            now = datetime.now(UTC)
            if now <= self._last_stamp:
                now = self._last_stamp + timedelta(microseconds=1)
            self._last_stamp = now
        text = now.strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".")
        return text + "Z"


# -- module helpers -------------------------------------------------------------------------


def _body(request: Request) -> Any:
    # ASP.NET model binding turns unparsable JSON into a null parameter; the controller then 400s.
    try:
        return request.json()
    except (ValueError, UnicodeDecodeError):
        return None


def _check_name(raw: Any, parameter: str) -> str:
    name = raw.strip() if isinstance(raw, str) else ""
    if not name:
        raise _fail(400, f"Value cannot be null.\r\nParameter name: {parameter}", "ArgumentNullException")
    if len(name) > 128 or any(c in _ILLEGAL_NAME_CHARS or ord(c) < 32 for c in name):
        raise _fail(
            400,
            f"The variable group name {name} is invalid. Valid names are at most 128 characters long and "
            "do not contain '\"', '/', '\\', '[', ']', ':', '|', '<', '>', '+', '=', ';', '?', '*', ','.",
            "ArgumentException",
        )
    return name


def _check_description(raw: Any) -> str:
    description = raw.strip() if isinstance(raw, str) else ""
    if len(description) > 1024:
        raise _fail(400, "The description must be at most 1024 characters long.", "ArgumentException")
    return description


def _check_provider_data(provider: Any) -> dict[str, Any]:
    """AzureKeyVaultVariableGroupProviderData.Validate(): a connection id and a vault name."""
    if not isinstance(provider, dict):
        raise _fail(400, "Value cannot be null.\r\nParameter name: providerData", "ArgumentNullException")
    endpoint_id = provider.get("serviceEndpointId")
    if not isinstance(endpoint_id, str) or not _GUID.fullmatch(endpoint_id) or uuid.UUID(endpoint_id).int == 0:
        raise _fail(400, "Value cannot be null.\r\nParameter name: serviceEndpointId", "ArgumentNullException")
    if not isinstance(provider.get("vault"), str) or not provider["vault"].strip():
        raise _fail(400, "Value cannot be null.\r\nParameter name: vault", "ArgumentNullException")
    return provider


def _reference(project: _Project, name: str, description: str) -> dict[str, Any]:
    return {
        "projectReference": {"id": project.id, "name": project.name},
        "name": name,
        "description": description,
    }


def _ordered(group: Mapping[str, Any]) -> dict[str, Any]:
    """Key order of a real response, so dumps read like the payload examples."""
    keys = (
        "variables",
        "id",
        "type",
        "name",
        "description",
        "providerData",
        "createdBy",
        "createdOn",
        "modifiedBy",
        "modifiedOn",
        "isShared",
        "variableGroupProjectReferences",
    )
    return {k: group[k] for k in keys if k in group}


def _seed_variables(variables: Iterable[str] | Mapping[str, Any] | None, *, key_vault: bool) -> dict[str, Any]:
    if variables is None:
        return {}
    items = variables.items() if isinstance(variables, Mapping) else ((n, None) for n in variables)
    seeded: dict[str, Any] = {}
    for name, value in items:
        if isinstance(value, dict):
            seeded[name] = copy.deepcopy(value)
        elif key_vault:
            seeded[name] = {
                "isSecret": True,
                "value": None,
                "enabled": True,
                "contentType": "",
                "expires": None,
            }
        else:
            seeded[name] = {"value": "" if value is None else str(value)}
    return seeded
