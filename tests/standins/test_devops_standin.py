"""The Azure DevOps stand-in, driven over HTTPS with httpx the way kvlink's client talks to it."""

from __future__ import annotations

import itertools
import ssl
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from standins.devops import (
    BEARER_IDENTITY,
    DEFAULT_BEARER_TOKEN,
    DEFAULT_PAT,
    PAT_IDENTITY,
    UI_IDENTITY,
    DevOpsStandIn,
)
from standins.tls import ThrowawayCA

API = {"api-version": "7.1"}
KV_VARIABLE = {"isSecret": True, "value": None, "enabled": True, "contentType": "", "expires": None}
GROUPS = "_apis/distributedtask/variablegroups"

ClientFactory = Callable[..., httpx.Client]
_org_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def server(ca: ThrowawayCA) -> Iterator[DevOpsStandIn]:
    # One server per module: stopping one waits for serve_forever's poll, which adds up.
    with DevOpsStandIn(ssl_context=ca.server_context()) as devops:
        yield devops


@pytest.fixture
def stand_in(server: DevOpsStandIn) -> Iterator[DevOpsStandIn]:
    server.reset_calls()
    server.clear_faults()
    yield server
    server.clear_faults()
    server.latency = 0.0
    server.unauthenticated_status = 401
    server.missing_group_response = "404"
    server.require_api_version_on_get = True
    server.sharing_allowed = True


@pytest.fixture
def org(stand_in: DevOpsStandIn) -> str:
    """A fresh organization per test, so tests share the server but not state."""
    name = f"org{next(_org_numbers)}"
    stand_in.add_project(name, "App")
    return name


@pytest.fixture
def make_client(stand_in: DevOpsStandIn, ca: ThrowawayCA) -> Iterator[ClientFactory]:
    trust = ssl.create_default_context(cafile=str(ca.bundle_path))  # verify=<str> is deprecated in httpx
    made: list[httpx.Client] = []

    def make(*, auth: Any = ("", DEFAULT_PAT), **kwargs: Any) -> httpx.Client:
        made.append(httpx.Client(base_url=stand_in.base_url, verify=trust, auth=auth, timeout=5, **kwargs))
        return made[-1]

    yield make
    for client in made:
        client.close()


@pytest.fixture
def client(make_client: ClientFactory) -> httpx.Client:
    return make_client()


def kv_parameters(
    project_id: str,
    endpoint_id: str,
    *,
    project_name: str = "App",
    name: str = "kv-linked",
    variables: tuple[str, ...] = ("db-password",),
    description: str = "",
) -> dict[str, Any]:
    """A VariableGroupParameters body for a Key Vault group, as kvlink builds it."""
    return {
        "type": "AzureKeyVault",
        "name": name,
        "description": description,
        "providerData": {"serviceEndpointId": endpoint_id, "vault": "kv-contoso"},
        "variables": {v: dict(KV_VARIABLE) for v in variables},
        "variableGroupProjectReferences": [
            {
                "name": name,
                "description": description,
                "projectReference": {"id": project_id, "name": project_name},
            }
        ],
    }


def parameters_from(group: dict[str, Any]) -> dict[str, Any]:
    """The PUT body a careful client derives from a GET: every VariableGroupParameters field."""
    keys = ("name", "description", "type", "providerData", "variables", "variableGroupProjectReferences")
    return {k: group[k] for k in keys if k in group}


def stamp(value: str) -> datetime:
    """Parse modifiedOn; Azure DevOps trims trailing zeros, so the strings do not sort."""
    return datetime.fromisoformat(value)


def assert_ado_error(response: httpx.Response, status: int, type_key: str, text: str = "") -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"$id", "innerException", "message", "typeName", "typeKey", "errorCode", "eventId"}
    assert body["typeKey"] == type_key
    assert text in body["message"]


# -- create ---------------------------------------------------------------------------------


def test_post_creates_key_vault_group(stand_in: DevOpsStandIn, org: str, client: httpx.Client) -> None:
    """An org-level POST creates a Key Vault group and answers it the way GET will."""
    project_id = stand_in.add_project(org, "App")
    endpoint_id = stand_in.add_service_endpoint(org, "App", "arm-conn")

    response = client.post(f"/{org}/{GROUPS}", params=API, json=kv_parameters(project_id, endpoint_id))

    assert response.status_code == 200, response.text
    created = response.json()
    assert created["id"] == 1
    assert created["type"] == "AzureKeyVault"
    assert created["providerData"] == {"serviceEndpointId": endpoint_id, "vault": "kv-contoso"}
    assert created["variables"] == {"db-password": KV_VARIABLE}
    assert created["createdBy"] == PAT_IDENTITY
    assert created["createdOn"] == created["modifiedOn"]
    assert created["createdOn"].endswith("Z")
    assert created["isShared"] is False
    assert created["variableGroupProjectReferences"] == [
        {"projectReference": {"id": project_id, "name": "App"}, "name": "kv-linked", "description": ""}
    ]
    assert stand_in.group(org, 1) == created
    assert client.get(f"/{org}/App/{GROUPS}/1", params=API).json() == created


@pytest.mark.parametrize("references", [None, []], ids=["missing", "empty"])
def test_post_without_project_references_is_rejected(
    stand_in: DevOpsStandIn, org: str, client: httpx.Client, references: list[Any] | None
) -> None:
    """Without variableGroupProjectReferences the org-level POST is a 400 and nothing is stored."""
    project_id = stand_in.add_project(org, "App")
    body = kv_parameters(project_id, stand_in.add_service_endpoint(org, "App", "arm"))
    if references is None:
        del body["variableGroupProjectReferences"]
    else:
        body["variableGroupProjectReferences"] = references

    response = client.post(f"/{org}/{GROUPS}", params=API, json=body)

    assert_ado_error(response, 400, "InvalidRequestException", "variable group project reference is required")
    assert stand_in.groups(org) == []


@pytest.mark.parametrize(
    ("mutate", "status", "type_key", "text"),
    [
        (
            lambda ref: ref["projectReference"].pop("name"),
            400,
            "ArgumentException",
            "Project information name",
        ),
        (
            lambda ref: ref["projectReference"].update(name="Other"),
            400,
            "ArgumentException",
            "Project information",
        ),
        (
            lambda ref: ref["projectReference"].update(id="0e7a0c4e-3b0b-4ea4-9c1e-7f3c2b1a0d9e"),
            404,
            "ProjectDoesNotExistException",
            "TF200016",
        ),
        (lambda ref: ref.pop("name"), 400, "ArgumentNullException", "group.Name"),
    ],
    ids=["no-project-name", "wrong-project-name", "unknown-project-id", "no-group-name"],
)
def test_post_with_bad_project_reference_is_rejected(
    stand_in: DevOpsStandIn,
    org: str,
    client: httpx.Client,
    mutate: Callable[[dict[str, Any]], Any],
    status: int,
    type_key: str,
    text: str,
) -> None:
    """Each project reference needs an existing project's id and matching name, and the group's name."""
    body = kv_parameters(stand_in.add_project(org, "App"), stand_in.add_service_endpoint(org, "App", "arm"))
    mutate(body["variableGroupProjectReferences"][0])

    assert_ado_error(client.post(f"/{org}/{GROUPS}", params=API, json=body), status, type_key, text)


def test_post_accepts_project_name_in_any_case(stand_in: DevOpsStandIn, org: str, client: httpx.Client) -> None:
    """The projectReference name check is case-insensitive."""
    body = kv_parameters(
        stand_in.add_project(org, "App"), stand_in.add_service_endpoint(org, "App", "arm"), project_name="aPP"
    )

    assert client.post(f"/{org}/{GROUPS}", params=API, json=body).status_code == 200


@pytest.mark.parametrize(
    ("mutate", "text"),
    [
        (lambda body: body["providerData"].pop("serviceEndpointId"), "serviceEndpointId"),
        (lambda body: body["providerData"].update(vault=""), "vault"),
        (lambda body: body["variables"]["db-password"].update(value="hunter2"), "without a value"),
        (lambda body: body["variables"]["db-password"].update(isSecret=False), "must be a secret"),
        (lambda body: body.update(variables={}), "at least one variable"),
        (lambda body: body["variables"].update({"DB-PASSWORD": dict(KV_VARIABLE)}), "duplicate"),
        (lambda body: body["variables"].update({" ": dict(KV_VARIABLE)}), "Key"),
        (lambda body: body.update(name="bad/name"), "is invalid"),
        (lambda body: body.update(type="Custom"), "not supported"),
    ],
    ids=[
        "no-endpoint",
        "no-vault",
        "value",
        "not-secret",
        "no-variables",
        "duplicate-variable",
        "blank-variable",
        "bad-name",
        "bad-type",
    ],
)
def test_post_enforces_group_rules(
    stand_in: DevOpsStandIn,
    org: str,
    client: httpx.Client,
    mutate: Callable[[dict[str, Any]], Any],
    text: str,
) -> None:
    """Key Vault provider data, secret-only variables, names and types are validated like the service does."""
    body = kv_parameters(stand_in.add_project(org, "App"), stand_in.add_service_endpoint(org, "App", "arm"))
    mutate(body)

    response = client.post(f"/{org}/{GROUPS}", params=API, json=body)

    assert response.status_code == 400, response.text
    assert text in response.json()["message"]


def test_post_needs_the_service_connection_in_the_project(
    stand_in: DevOpsStandIn, org: str, client: httpx.Client
) -> None:
    """A Key Vault group may only use a service connection of the project it lives in."""
    project_id = stand_in.add_project(org, "App")
    foreign = stand_in.add_service_endpoint(org, "Elsewhere", "arm")

    response = client.post(f"/{org}/{GROUPS}", params=API, json=kv_parameters(project_id, foreign))

    assert_ado_error(response, 400, "InvalidRequestException", "is not shared with project App")


def test_duplicate_group_name_is_a_conflict(stand_in: DevOpsStandIn, org: str, client: httpx.Client) -> None:
    """A second group with the same name (any case) in the project is a 409 VariableGroupExistsException."""
    stand_in.add_group(org, "App", "KV-Linked", vault="kv-contoso", variables=["x"])
    body = kv_parameters(stand_in.add_project(org, "App"), stand_in.add_service_endpoint(org, "App", "arm"))

    assert_ado_error(client.post(f"/{org}/{GROUPS}", params=API, json=body), 409, "VariableGroupExistsException")


def test_sharing_can_be_refused_like_services(stand_in: DevOpsStandIn, org: str, client: httpx.Client) -> None:
    """With sharing_allowed off, a POST with two project references gets Services' 500."""
    stand_in.sharing_allowed = False
    body = kv_parameters(stand_in.add_project(org, "App"), stand_in.add_service_endpoint(org, "App", "arm"))
    other = stand_in.add_project(org, "Other")
    body["variableGroupProjectReferences"].append(
        {"name": "kv-linked", "description": "", "projectReference": {"id": other, "name": "Other"}}
    )

    assert_ado_error(client.post(f"/{org}/{GROUPS}", params=API, json=body), 500, "InvalidRequestException")


# -- read -----------------------------------------------------------------------------------


def test_seeded_key_vault_group_has_the_linked_shape(stand_in: DevOpsStandIn, org: str) -> None:
    """add_group turns names into valueless secrets and links the project's service connection."""
    group_id = stand_in.add_group(org, "App", "kv", vault="kv-contoso", variables=["b", "a"])

    group = stand_in.group(org, group_id)
    assert group["type"] == "AzureKeyVault"
    assert group["variables"] == {"b": KV_VARIABLE, "a": KV_VARIABLE}
    assert group["providerData"]["vault"] == "kv-contoso"
    assert group["createdBy"] == UI_IDENTITY
    assert stand_in.variable_names(org, group_id) == ["a", "b"]
    assert "providerData" not in stand_in.group(org, stand_in.add_group(org, "App", "plain", variables={"k": "v"}))


def test_get_by_project_name_or_id(stand_in: DevOpsStandIn, org: str, client: httpx.Client) -> None:
    """The project segment may be the project's name in any case, or its id."""
    project_id = stand_in.add_project(org, "App")
    group_id = stand_in.add_group(org, "App", "kv", vault="kv-contoso", variables=["a"])

    answers = [client.get(f"/{org}/{p}/{GROUPS}/{group_id}", params=API) for p in ("App", "app", project_id)]

    assert [a.status_code for a in answers] == [200, 200, 200]
    assert all(a.json() == stand_in.group(org, group_id) for a in answers)
    assert_ado_error(
        client.get(f"/{org}/Nope/{GROUPS}/{group_id}", params=API),
        404,
        "ProjectDoesNotExistWithNameException",
        "TF200016: The following project does not exist: Nope",
    )


def test_group_of_another_project_is_not_found(stand_in: DevOpsStandIn, org: str, client: httpx.Client) -> None:
    """A group the project has no reference to is a 404 -- or, switched, the real 200 with a null body."""
    group_id = stand_in.add_group(org, "App", "kv", vault="kv-contoso", variables=["a"])
    stand_in.add_project(org, "Other")
    url = f"/{org}/Other/{GROUPS}/{group_id}"

    assert_ado_error(client.get(url, params=API), 404, "VariableGroupNotFoundException")

    stand_in.missing_group_response = "null"
    response = client.get(url, params=API)
    assert response.status_code == 200
    assert response.json() is None


def test_list_filters_by_group_name_wildcard(stand_in: DevOpsStandIn, org: str, client: httpx.Client) -> None:
    """groupName takes '*' wildcards, case-insensitively; the default order is IdDescending."""
    for name in ("kv-app-dev", "kv-app-prod", "other", "KV-APP-test"):
        stand_in.add_group(org, "App", name, vault="kv-contoso", variables=["a"])
    stand_in.add_group(org, "Elsewhere", "kv-app-elsewhere", vault="kv-contoso", variables=["a"])

    wildcard = client.get(f"/{org}/App/{GROUPS}", params={**API, "groupName": "kv-app-*"}).json()
    exact = client.get(f"/{org}/App/{GROUPS}", params={**API, "groupName": "OTHER"}).json()

    assert wildcard["count"] == 3
    assert [g["name"] for g in wildcard["value"]] == ["KV-APP-test", "kv-app-prod", "kv-app-dev"]
    assert [g["name"] for g in exact["value"]] == ["other"]


@pytest.mark.parametrize(
    ("order", "pages"),
    [("IdAscending", [[1, 2, 3], [4, 5, 6], [7]]), ("IdDescending", [[7, 6, 5], [4, 3, 2], [1]])],
    ids=["ascending", "descending"],
)
def test_list_pages_with_top_and_continuation_token(
    stand_in: DevOpsStandIn, org: str, client: httpx.Client, order: str, pages: list[list[int]]
) -> None:
    """$top cuts a page; X-MS-ContinuationToken is the id of the next page's first group."""
    for n in range(7):
        stand_in.add_group(org, "App", f"group-{n}", variables={"k": "v"})

    seen: list[list[int]] = []
    tokens: list[str | None] = []
    params: dict[str, Any] = {**API, "$top": 3, "queryOrder": order}
    while True:
        response = client.get(f"/{org}/App/{GROUPS}", params=params)
        body = response.json()
        assert body["count"] == len(body["value"])
        seen.append([g["id"] for g in body["value"]])
        tokens.append(response.headers.get("X-MS-ContinuationToken"))
        if tokens[-1] is None:
            break
        params["continuationToken"] = tokens[-1]

    assert seen == pages
    assert tokens == [str(pages[1][0]), str(pages[2][0]), None]


def test_list_by_group_ids(stand_in: DevOpsStandIn, org: str, client: httpx.Client) -> None:
    """groupIds returns the listed groups the project can see and skips the rest."""
    first = stand_in.add_group(org, "App", "one", variables={"k": "v"})
    second = stand_in.add_group(org, "App", "two", variables={"k": "v"})
    hidden = stand_in.add_group(org, "Other", "three", variables={"k": "v"})

    body = client.get(f"/{org}/App/{GROUPS}", params={**API, "groupIds": f"{second},{first},{hidden},99"}).json()

    assert [g["id"] for g in body["value"]] == [second, first]
    assert body["count"] == 2


# -- update and delete ----------------------------------------------------------------------


def test_put_replaces_the_whole_group(stand_in: DevOpsStandIn, org: str, client: httpx.Client) -> None:
    """A PUT is a full replace: a variable left out disappears, a description not sent is emptied."""
    group_id = stand_in.add_group(
        org, "App", "kv", vault="kv-contoso", variables=["a", "b", "c"], description="hand-written"
    )
    before = client.get(f"/{org}/App/{GROUPS}/{group_id}", params=API).json()
    body = parameters_from(before)
    del body["variables"]["c"]
    del body["description"]

    response = client.put(f"/{org}/{GROUPS}/{group_id}", params=API, json=body)

    assert response.status_code == 200, response.text
    after = stand_in.group(org, group_id)
    assert response.json() == after
    assert sorted(after["variables"]) == ["a", "b"]
    assert after["description"] == ""
    assert after["createdOn"] == before["createdOn"]
    assert after["createdBy"] == UI_IDENTITY
    assert after["modifiedBy"] == PAT_IDENTITY
    assert stamp(after["modifiedOn"]) > stamp(before["modifiedOn"])
    [put] = stand_in.writes(org, group_id)
    assert sorted(put.body["variables"]) == ["a", "b"]


def test_put_dropping_a_project_reference_unshares(stand_in: DevOpsStandIn, org: str, client: httpx.Client) -> None:
    """The stored references become the body's: dropping one unshares the group from that project."""
    group_id = stand_in.add_group(org, "App", "kv", vault="kv-contoso", variables=["a"])
    stand_in.share_group(org, group_id, stand_in.add_project(org, "Other"))
    shared = client.get(f"/{org}/Other/{GROUPS}/{group_id}", params=API).json()
    assert shared["isShared"] is True
    body = parameters_from(shared)
    body["variableGroupProjectReferences"] = [
        r for r in body["variableGroupProjectReferences"] if r["projectReference"]["name"] == "App"
    ]

    assert client.put(f"/{org}/{GROUPS}/{group_id}", params=API, json=body).json()["isShared"] is False

    assert client.get(f"/{org}/Other/{GROUPS}/{group_id}", params=API).status_code == 404
    assert client.get(f"/{org}/App/{GROUPS}/{group_id}", params=API).status_code == 200


def test_put_cannot_add_a_project_or_touch_a_missing_group(
    stand_in: DevOpsStandIn, org: str, client: httpx.Client
) -> None:
    """A PUT may not add a project reference, and a PUT to an unknown id is a 404."""
    group_id = stand_in.add_group(org, "App", "kv", vault="kv-contoso", variables=["a"])
    body = parameters_from(stand_in.group(org, group_id))
    newcomer = stand_in.add_project(org, "Newcomer")
    body["variableGroupProjectReferences"].append(
        {"name": "kv", "description": "", "projectReference": {"id": newcomer, "name": "Newcomer"}}
    )

    assert_ado_error(
        client.put(f"/{org}/{GROUPS}/{group_id}", params=API, json=body),
        400,
        "ArgumentException",
        f"Variable group is not part of project {newcomer}",
    )
    assert_ado_error(client.put(f"/{org}/{GROUPS}/999", params=API, json=body), 404, "VariableGroupNotFoundException")


def test_delete_removes_project_references_then_the_group(
    stand_in: DevOpsStandIn, org: str, client: httpx.Client
) -> None:
    """DELETE needs projectIds; it unshares from those projects and deletes the group with the last one."""
    app = stand_in.add_project(org, "App")
    other = stand_in.add_project(org, "Other")
    group_id = stand_in.add_group(org, "App", "kv", vault="kv-contoso", variables=["a"])
    stand_in.share_group(org, group_id, "Other")
    url = f"/{org}/{GROUPS}/{group_id}"

    assert client.delete(url, params=API).status_code == 400
    assert client.delete(url, params={**API, "projectIds": other}).status_code == 204
    assert stand_in.group(org, group_id)["isShared"] is False
    assert client.delete(url, params={**API, "projectIds": app}).status_code == 204
    assert stand_in.groups(org) == []


def test_edit_group_stands_in_for_a_human(stand_in: DevOpsStandIn, org: str) -> None:
    """edit_group changes the stored group as the UI would and bumps modifiedOn."""
    group_id = stand_in.add_group(org, "App", "kv", vault="kv-contoso", variables=["a"])
    before = stand_in.group(org, group_id)

    after = stand_in.edit_group(org, group_id, lambda g: g["variables"].update(manual=dict(KV_VARIABLE)))

    assert sorted(after["variables"]) == ["a", "manual"]
    assert stamp(after["modifiedOn"]) > stamp(before["modifiedOn"])
    assert after["modifiedBy"] == UI_IDENTITY
    assert stand_in.writes(org) == []  # not a REST write


def test_removing_a_project_orphans_and_deletes_its_groups(stand_in: DevOpsStandIn, org: str) -> None:
    """remove_project drops its references; groups left without a project and delete_group vanish."""
    own = stand_in.add_group(org, "Doomed", "own", vault="kv-contoso", variables=["a"])
    shared = stand_in.add_group(org, "App", "shared", vault="kv-contoso", variables=["a"])
    stand_in.share_group(org, shared, "Doomed")
    kept = stand_in.add_group(org, "App", "kept", variables={"k": "v"})

    stand_in.remove_project(org, "doomed")
    stand_in.delete_group(org, kept)

    assert [g["id"] for g in stand_in.groups(org)] == [shared]
    assert stand_in.group(org, shared)["isShared"] is False
    with pytest.raises(KeyError):
        stand_in.group(org, own)


def test_writes_counts_posts_and_puts(stand_in: DevOpsStandIn, org: str, client: httpx.Client) -> None:
    """writes() lists the POST/PUT calls, per organization and per group; reads are not writes."""
    project_id = stand_in.add_project(org, "App")
    endpoint_id = stand_in.add_service_endpoint(org, "App", "arm")
    created = client.post(f"/{org}/{GROUPS}", params=API, json=kv_parameters(project_id, endpoint_id)).json()
    other = client.post(
        f"/{org}/{GROUPS}", params=API, json=kv_parameters(project_id, endpoint_id, name="second")
    ).json()
    client.get(f"/{org}/App/{GROUPS}/{created['id']}", params=API)
    client.put(f"/{org}/{GROUPS}/{created['id']}", params=API, json=parameters_from(created))

    assert [c.method for c in stand_in.writes(org, created["id"])] == ["POST", "PUT"]
    assert [c.method for c in stand_in.writes(org, other["id"])] == ["POST"]
    assert len(stand_in.writes(org)) == 3
    assert len(stand_in.writes()) >= 3
    assert stand_in.writes("someone-else") == []


def test_concurrent_read_modify_write_loses_an_update(
    stand_in: DevOpsStandIn, org: str, make_client: ClientFactory
) -> None:
    """Two overlapping GET-then-PUT cycles both succeed, and the first PUT's addition is silently lost."""
    group_id = stand_in.add_group(org, "App", "kv", vault="kv-contoso", variables=["base"])
    stand_in.latency = 0.25  # both GETs are answered before either PUT arrives
    start = threading.Barrier(2)
    statuses: dict[str, int] = {}

    def add_variable(name: str) -> None:
        with make_client() as client:
            start.wait(timeout=5)
            group = client.get(f"/{org}/App/{GROUPS}/{group_id}", params=API).json()
            group["variables"][name] = dict(KV_VARIABLE)
            put = client.put(f"/{org}/{GROUPS}/{group_id}", params=API, json=parameters_from(group))
            statuses[name] = put.status_code

    threads = [threading.Thread(target=add_variable, args=(n,)) for n in ("from-a", "from-b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    assert statuses == {"from-a": 200, "from-b": 200}
    names = stand_in.variable_names(org, group_id)
    assert len(names) == 2  # "base" plus only one of the two additions: last writer wins
    assert "base" in names
    assert len(stand_in.writes(org, group_id)) == 2
    assert stand_in.max_concurrency >= 2


# -- service connections and projects -------------------------------------------------------


def test_service_endpoint_found_by_name(stand_in: DevOpsStandIn, org: str, client: httpx.Client) -> None:
    """endpointNames matches case-insensitively and answers the service-endpoint shape."""
    project_id = stand_in.add_project(org, "App")
    endpoint_id = stand_in.add_service_endpoint(org, "App", "ARM-Prod")
    stand_in.add_service_endpoint(org, "App", "broken", is_ready=False)
    stand_in.add_service_endpoint(org, "Other", "arm-prod")
    url = f"/{org}/App/_apis/serviceendpoint/endpoints"

    body = client.get(url, params={**API, "endpointNames": "arm-prod,missing"}).json()

    assert body["count"] == 1
    [endpoint] = body["value"]
    assert endpoint["id"] == endpoint_id
    assert endpoint["name"] == "ARM-Prod"
    assert (endpoint["type"], endpoint["isReady"], endpoint["owner"]) == ("azurerm", True, "library")
    assert endpoint["authorization"]["scheme"] == "ServicePrincipal"
    assert endpoint["serviceEndpointProjectReferences"][0]["projectReference"] == {
        "id": project_id,
        "name": "App",
    }
    assert client.get(f"{url}/{endpoint_id}", params=API).json() == endpoint
    assert client.get(f"{url}/{stand_in.add_service_endpoint(org, 'Other', 'x')}", params=API).status_code == 404
    assert client.get(url, params={**API, "endpointNames": "broken"}).json()["count"] == 0
    failed = client.get(url, params={**API, "endpointNames": "broken", "includeFailed": "true"}).json()
    assert failed["count"] == 1
    assert client.get(url, params={**API, "endpointNames": "ARM-Prod", "type": "AzureRM"}).json()["count"] == 1


def test_projects_by_name_or_id_and_paged(stand_in: DevOpsStandIn, org: str, client: httpx.Client) -> None:
    """Projects answer by name or id, and the list pages with x-ms-continuationtoken."""
    app = stand_in.add_project(org, "App")
    for name in ("Beta", "Gamma"):
        stand_in.add_project(org, name)

    by_name = client.get(f"/{org}/_apis/projects/app", params=API).json()
    first = client.get(f"/{org}/_apis/projects", params={**API, "$top": 2})
    token = first.headers["x-ms-continuationtoken"]
    rest = client.get(f"/{org}/_apis/projects", params={**API, "$top": 2, "continuationToken": token})

    assert (by_name["id"], by_name["state"], by_name["visibility"]) == (app, "wellFormed", "private")
    assert client.get(f"/{org}/_apis/projects/{app}", params=API).json()["name"] == "App"
    assert [p["name"] for p in first.json()["value"]] == ["App", "Beta"]
    assert [p["name"] for p in rest.json()["value"]] == ["Gamma"]
    assert "x-ms-continuationtoken" not in rest.headers
    assert_ado_error(client.get(f"/{org}/_apis/projects/Nope", params=API), 404, "ProjectDoesNotExistWithNameException")


# -- auth, versions, faults, routing -------------------------------------------------------


def test_wrong_or_missing_credentials_are_401(stand_in: DevOpsStandIn, org: str, make_client: ClientFactory) -> None:
    """A wrong PAT or no credentials get 401 with an Entra challenge; the bearer token is accepted."""
    url = f"/{org}/_apis/projects"
    wrong = make_client(auth=("", "not-the-pat")).get(url, params=API)
    anonymous = make_client(auth=None).get(url, params=API)
    bearer = make_client(auth=None, headers={"Authorization": f"Bearer {DEFAULT_BEARER_TOKEN}"})

    for response in (wrong, anonymous):
        assert response.status_code == 401
        assert "authorization_uri=https://login.microsoftonline.com/" in response.headers["WWW-Authenticate"]
    assert bearer.get(url, params=API).status_code == 200
    assert make_client(auth=("anyone", DEFAULT_PAT)).get(url, params=API).status_code == 200
    body = kv_parameters(stand_in.add_project(org, "App"), stand_in.add_service_endpoint(org, "App", "arm"))
    assert bearer.post(f"/{org}/{GROUPS}", params=API, json=body).json()["createdBy"] == BEARER_IDENTITY
    assert [c.auth_scheme for c in stand_in.calls][-1] == "Bearer"


def test_sign_in_page_mode_answers_203(stand_in: DevOpsStandIn, org: str, make_client: ClientFactory) -> None:
    """With unauthenticated_status = 203 a stranger gets an HTML sign-in page, not JSON."""
    stand_in.unauthenticated_status = 203

    response = make_client(auth=("", "expired-pat")).get(f"/{org}/App/{GROUPS}", params=API)

    assert response.status_code == 203
    assert response.headers["Content-Type"].startswith("text/html")
    assert "Sign In" in response.text


def test_inactive_credentials_mode_answers_403(stand_in: DevOpsStandIn, org: str, make_client: ClientFactory) -> None:
    """With unauthenticated_status = 403 a stranger gets a JSON 403; known credentials still pass."""
    stand_in.unauthenticated_status = 403

    response = make_client(auth=("", "inactive-pat")).get(f"/{org}/App/{GROUPS}", params=API)

    assert response.status_code == 403
    assert response.json()["typeKey"] == "VssUnauthorizedException"
    assert make_client(auth=("", DEFAULT_PAT)).get(f"/{org}/App/{GROUPS}", params=API).status_code == 200


def test_api_version_is_required(stand_in: DevOpsStandIn, org: str, client: httpx.Client) -> None:
    """A missing api-version is a 400; the Accept header form counts; unknown versions are refused."""
    url = f"/{org}/App/{GROUPS}"

    assert_ado_error(client.get(url), 400, "VssVersionNotSpecifiedException", 'for the "GET" request')
    assert_ado_error(client.post(f"/{org}/{GROUPS}", json={}), 400, "VssVersionNotSpecifiedException")
    assert client.get(url, headers={"Accept": "application/json;api-version=7.1-preview.2"}).status_code == 200
    assert client.get(url, params={"api-version": "7.0"}).status_code == 200
    assert_ado_error(client.get(url, params={"api-version": "9.9"}), 400, "VssVersionOutOfRangeException")
    stand_in.require_api_version_on_get = False
    assert client.get(url).status_code == 200


def test_injected_throttle_looks_like_azure_devops(stand_in: DevOpsStandIn, org: str, client: httpx.Client) -> None:
    """An injected 429 carries Retry-After, the rate-limit headers and the TF400733 message."""
    stand_in.inject(429, method="GET", path=r"/variablegroups/", retry_after=3)

    throttled = client.get(f"/{org}/App/{GROUPS}/1", params=API)

    assert_ado_error(throttled, 429, "RequestBlockedException", "TF400733: The request has been canceled")
    assert "exceeding usage of resource 'Core'" in throttled.json()["message"]
    assert throttled.headers["Retry-After"] == "3"
    assert throttled.headers["X-RateLimit-Resource"] == "Core"
    assert float(throttled.headers["X-RateLimit-Delay"]) == 3.0
    assert client.get(f"/{org}/App/{GROUPS}", params=API).status_code == 200  # the fault was used up


def test_unknown_organization_and_route_are_404(stand_in: DevOpsStandIn, org: str, client: httpx.Client) -> None:
    """An unknown organization, an unknown route and a GET on the org-level route answer 404."""
    assert_ado_error(client.get("/nobody/_apis/projects", params=API), 404, "VssResourceNotFoundException")
    assert_ado_error(client.get(f"/{org}/_apis/nothing", params=API), 404, "VssResourceNotFoundException")
    assert client.get(f"/{org}/{GROUPS}/1", params=API).status_code == 404
    assert client.patch(f"/{org}/{GROUPS}", params=API, json=[]).status_code == 404


# -- pipelines and their permissions on a group ---------------------------------------------------
PERMISSIONS_API = {"api-version": "7.1-preview.1"}


def test_pipeline_permissions_have_the_official_example_shape(
    stand_in: DevOpsStandIn, org: str, client: httpx.Client
) -> None:
    """ResourcePipelinePermissions as the official example has it: resource, pipelines[] with who and when."""
    gid = stand_in.add_group(org, "App", "kv", vault="kv-contoso", variables=["a"])
    first = stand_in.add_pipeline(org, "App", "deploy")
    stand_in.add_pipeline(org, "App", "unrelated")
    stand_in.authorize_pipelines(org, "App", gid, [first])
    body = client.get(f"/{org}/App/_apis/pipelines/pipelinepermissions/variablegroup/{gid}", params=PERMISSIONS_API)
    assert body.status_code == 200
    data = body.json()
    assert data["resource"] == {"type": "variablegroup", "id": str(gid)}
    ((entry),) = data["pipelines"]
    assert entry["id"] == first and entry["authorized"] is True
    assert set(entry) == {"id", "authorized", "authorizedBy", "authorizedOn"}
    assert "allPipelines" not in data


def test_pipeline_permissions_open_access_and_unknown_group(
    stand_in: DevOpsStandIn, org: str, client: httpx.Client
) -> None:
    gid = stand_in.add_group(org, "App", "kv-open", vault="kv-contoso", variables=["a"])
    stand_in.authorize_pipelines(org, "App", gid, all_pipelines=True)
    data = client.get(f"/{org}/App/_apis/pipelines/pipelinepermissions/variablegroup/{gid}", params=PERMISSIONS_API)
    assert data.json()["allPipelines"]["authorized"] is True and data.json()["pipelines"] == []
    unknown = client.get(f"/{org}/App/_apis/pipelines/pipelinepermissions/variablegroup/99999", params=PERMISSIONS_API)
    assert unknown.status_code == 200 and unknown.json() == {
        "resource": {"type": "variablegroup", "id": "99999"},
        "pipelines": [],
    }


def test_pipeline_permissions_need_the_preview_version(stand_in: DevOpsStandIn, org: str, client: httpx.Client) -> None:
    answer = client.get(f"/{org}/App/_apis/pipelines/pipelinepermissions/variablegroup/1", params=API)
    assert answer.status_code == 400 and answer.json()["typeKey"] == "VssInvalidPreviewVersionException"


def test_pipeline_list_pages_by_name_with_a_continuation_header(
    stand_in: DevOpsStandIn, org: str, client: httpx.Client
) -> None:
    for name in ("charlie", "alpha", "bravo"):
        stand_in.add_pipeline(org, "App", name, folder="\\team")
    seen: list[dict[str, Any]] = []
    params: dict[str, Any] = {**API, "$top": 2}
    pages = 0
    while True:
        page = client.get(f"/{org}/App/_apis/pipelines", params=params)
        assert page.status_code == 200
        pages += 1
        seen += page.json()["value"]
        token = page.headers.get("x-ms-continuationtoken")
        if not token:
            break
        params = {**params, "continuationToken": token}
    assert pages == 2 and [p["name"] for p in seen] == ["alpha", "bravo", "charlie"]
    pipeline = seen[0]
    assert set(pipeline) == {"_links", "url", "id", "revision", "name", "folder"}
    assert pipeline["folder"] == "\\team" and "_build/definition?definitionId=" in pipeline["_links"]["web"]["href"]
