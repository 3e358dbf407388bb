"""The Azure DevOps stand-in's paging switches and its lost-answer fault, driven with plain httpx."""

from __future__ import annotations

import itertools
import ssl
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from standins.devops import DevOpsStandIn
from standins.tls import ThrowawayCA

API = {"api-version": "7.1"}
GROUPS = "_apis/distributedtask/variablegroups"
_orgs = itertools.count(1)


@pytest.fixture
def stand_in(devops_server: DevOpsStandIn, monkeypatch: pytest.MonkeyPatch) -> Iterator[DevOpsStandIn]:
    devops_server.clear_faults()
    # monkeypatch puts the session server's switches back after each test
    monkeypatch.setattr(devops_server, "send_continuation_header", True)
    monkeypatch.setattr(devops_server, "continuation_inclusive", True)
    yield devops_server
    devops_server.clear_faults()


@pytest.fixture
def org(stand_in: DevOpsStandIn) -> str:
    name = f"paging-org{next(_orgs)}"
    stand_in.add_project(name, "App")
    for n in range(7):
        stand_in.add_group(name, "App", f"group-{n}", variables={"k": "v"})
    return name


@pytest.fixture
def client(stand_in: DevOpsStandIn, ca: ThrowawayCA) -> Iterator[httpx.Client]:
    trust = ssl.create_default_context(cafile=str(ca.bundle_path))
    with httpx.Client(base_url=stand_in.base_url, verify=trust, auth=("", stand_in.pat), timeout=5) as made:
        yield made


def page(client: httpx.Client, org: str, **params: Any) -> httpx.Response:
    return client.get(f"/{org}/App/{GROUPS}", params={**API, "$top": 3, "queryOrder": "IdAscending", **params})


def ids(response: httpx.Response) -> list[int]:
    return [g["id"] for g in response.json()["value"]]


def test_without_the_header_pages_are_full_and_bare(stand_in, org, client):
    stand_in.send_continuation_header = False
    first = page(client, org)
    assert ids(first) == [1, 2, 3]
    assert "X-MS-ContinuationToken" not in first.headers


@pytest.mark.parametrize(("inclusive", "header", "after_3"), [(True, "4", [3, 4, 5]), (False, "3", [4, 5, 6])])
def test_token_semantics(stand_in, org, client, inclusive, header, after_3):
    """Inclusive: the token's own id comes again; exclusive: strictly after. The header follows suit."""
    stand_in.continuation_inclusive = inclusive
    first = page(client, org)
    assert first.headers["X-MS-ContinuationToken"] == header
    assert ids(page(client, org, continuationToken=3)) == after_3
    assert ids(page(client, org, continuationToken=first.headers["X-MS-ContinuationToken"])) == [4, 5, 6]


def test_an_applied_fault_creates_the_group_then_answers_503(stand_in, org, client):
    project_id = stand_in.add_project(org, "App")
    endpoint = stand_in.add_service_endpoint(org, "App", "conn")
    body = {
        "type": "AzureKeyVault",
        "name": "kv-new",
        "description": "",
        "providerData": {"serviceEndpointId": endpoint, "vault": "kv-contoso"},
        "variables": {"a": {"isSecret": True, "value": None, "enabled": True, "contentType": "", "expires": None}},
        "variableGroupProjectReferences": [
            {"name": "kv-new", "description": "", "projectReference": {"id": project_id, "name": "App"}}
        ],
    }
    stand_in.inject(503, method="POST", path=rf"^/{org}/{GROUPS}$", applied=True)
    response = client.post(f"/{org}/{GROUPS}", params=API, json=body)
    assert response.status_code == 503
    assert [g["name"] for g in stand_in.groups(org) if g["name"] == "kv-new"] == ["kv-new"]
    again = client.post(f"/{org}/{GROUPS}", params=API, json=body)
    assert again.status_code == 409  # the name is taken now: what a blind retry met
