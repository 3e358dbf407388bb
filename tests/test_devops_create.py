"""A create whose answer was lost is looked up before it is retried (issue 11, point 7).

A 429/5xx/timeout may come after Azure DevOps stored the group; a blind retry then meets
"group exists" (names are unique) and the link was never saved.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import azure.functions as func
import httpx
import pytest

import function_app
from kvlink_core.devops import DevOps
from kvlink_core.errors import TransientError, UpstreamError
from kvlink_core.settings import Settings

ORG = "fabrikam"
PROJECT_ID = "c7e5f0b3-71fa-4429-9fb3-3321963a7c06"
ENDPOINT = "5e47a0d8-c745-44f8-8f93-784f18ff31c4"
VAULT = "kv-fabrikam"
JSON = {"Content-Type": "application/json; charset=utf-8"}


def settings() -> Settings:
    return Settings.from_env(
        {
            "KVLINK_DEVOPS_ORGS": ORG,
            "KVLINK_ALLOWED_VAULTS": VAULT,
            "AZURE_DEVOPS_PAT": "not-a-real-pat",
            "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        }
    )


def parameters(name: str = "payments-kv") -> dict[str, Any]:
    return {
        "name": name,
        "description": "",
        "type": "AzureKeyVault",
        "providerData": {"serviceEndpointId": ENDPOINT, "vault": VAULT},
        "variables": {"db-password": {"isSecret": True, "value": None, "enabled": True}},
        "variableGroupProjectReferences": [
            {"name": name, "description": "", "projectReference": {"id": PROJECT_ID, "name": "Payments"}}
        ],
    }


def stored(gid: int, *, vault: str = VAULT, name: str = "payments-kv", kind: str = "AzureKeyVault") -> dict[str, Any]:
    body = parameters(name)
    body.update(id=gid, type=kind, modifiedOn="2026-01-01T00:00:00Z")
    body["providerData"] = {"serviceEndpointId": ENDPOINT, "vault": vault}
    return body


class Upstream:
    """Answers each POST with the next scripted outcome; GETs list what "exists"."""

    def __init__(self, posts: list[Callable[[dict[str, Any]], httpx.Response]], existing=()) -> None:
        self.posts = list(posts)
        self.groups: list[dict[str, Any]] = list(existing)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.method == "POST":
            return self.posts.pop(0)(json.loads(request.content))
        name = request.url.params.get("groupName", "")
        found = [g for g in self.groups if g["name"].lower() == name.lower()]
        return httpx.Response(200, json={"count": len(found), "value": found}, headers=JSON)

    # scripted POST outcomes
    def created(self, body: dict[str, Any]) -> httpx.Response:
        group = {**body, "id": 7, "modifiedOn": "2026-01-01T00:00:00Z"}
        self.groups.append(group)
        return httpx.Response(200, json=group, headers=JSON)

    def created_then_503(self, body: dict[str, Any]) -> httpx.Response:
        self.created(body)
        return httpx.Response(503, json={"message": "Service Unavailable"}, headers=JSON)

    def created_then_timeout(self, body: dict[str, Any]) -> httpx.Response:
        self.created(body)
        raise httpx.ReadTimeout("the answer never came")

    @staticmethod
    def refused_503(body: dict[str, Any]) -> httpx.Response:
        return httpx.Response(503, json={"message": "Service Unavailable"}, headers=JSON)

    @staticmethod
    def exists_409(body: dict[str, Any]) -> httpx.Response:
        message = f"Variable group with name {body['name']} already exists."
        return httpx.Response(409, json={"message": message, "typeKey": "VariableGroupExistsException"}, headers=JSON)

    def calls(self) -> list[str]:
        return [
            r.method + ("?groupName=" + r.url.params["groupName"] if "groupName" in r.url.params else "")
            for r in self.requests
        ]


def create(upstream: Upstream) -> Any:
    devops = DevOps(settings(), None, attempts=4, transport=httpx.MockTransport(upstream))
    try:
        return devops.create_group(ORG, parameters())
    finally:
        devops.close()


@pytest.mark.usefixtures("fast_retries")
class TestCreateLookupBeforeRetry:
    def test_503_after_the_group_was_stored_takes_it_as_created(self):
        up = Upstream([])
        up.posts = [up.created_then_503]
        group = create(up)
        assert (group.id, group.name, group.vault, group.is_key_vault) == (7, "payments-kv", VAULT, True)
        assert up.calls() == ["POST", "GET?groupName=payments-kv"]  # one POST, then the lookup
        lookup = up.requests[1].url
        assert lookup.path == f"/{ORG}/{PROJECT_ID}/_apis/distributedtask/variablegroups"

    def test_timeout_after_the_group_was_stored_takes_it_as_created(self):
        up = Upstream([])
        up.posts = [up.created_then_timeout]
        assert create(up).id == 7
        assert up.calls() == ["POST", "GET?groupName=payments-kv"]

    def test_503_before_anything_was_stored_retries_the_post(self):
        up = Upstream([])
        up.posts = [up.refused_503, up.created]
        assert create(up).id == 7
        assert up.calls() == ["POST", "GET?groupName=payments-kv", "POST"]
        assert len(up.groups) == 1

    def test_duplicate_name_on_the_first_try_stays_an_error(self):
        """Someone else's group of that name: 409 as before, and no lookup."""
        up = Upstream([Upstream.exists_409], existing=[stored(3)])
        with pytest.raises(UpstreamError) as err:
            create(up)
        assert err.value.status == 409
        assert up.calls() == ["POST"]

    def test_a_same_named_group_on_another_vault_is_not_ours(self):
        up = Upstream([Upstream.refused_503, Upstream.exists_409])
        up.groups.append(stored(3, vault="kv-other"))
        with pytest.raises(UpstreamError) as err:
            create(up)
        assert err.value.status == 409
        assert up.calls() == ["POST", "GET?groupName=payments-kv", "POST", "GET?groupName=payments-kv"]

    def test_a_same_named_plain_group_is_not_ours(self):
        up = Upstream([Upstream.refused_503, Upstream.refused_503, Upstream.refused_503, Upstream.refused_503])
        up.groups.append(stored(3, kind="Vsts"))
        with pytest.raises(TransientError):
            create(up)
        assert up.calls().count("POST") == 4  # every attempt looked up first, none adopted the plain group

    def test_without_a_project_to_look_in_it_is_sent_once(self):
        up = Upstream([Upstream.refused_503, Upstream.refused_503])
        devops = DevOps(settings(), None, attempts=4, transport=httpx.MockTransport(up))
        with pytest.raises(TransientError):
            devops.create_group(ORG, {"name": "x"})
        devops.close()
        assert up.calls() == ["POST"]

    def test_exists_on_a_retry_is_looked_up(self):
        """The lookup missed a POST that did land (or landed just after): the retry's 409 is checked."""
        up = Upstream([])

        def lands_late(body: dict[str, Any]) -> httpx.Response:
            up.posts.insert(0, lambda again: (up.created(body), Upstream.exists_409(again))[1])
            return Upstream.refused_503(body)

        up.posts = [lands_late]
        assert create(up).id == 7
        assert up.calls() == ["POST", "GET?groupName=payments-kv", "POST", "GET?groupName=payments-kv"]


# -- end to end: POST /api/links against the stand-ins ---------------------------------------------


def post_link(estate) -> tuple[int, dict[str, Any]]:
    body = estate.link_body()
    request = func.HttpRequest(
        method="POST",
        url="http://localhost:7071/api/links",
        headers={"Content-Type": "application/json"},
        params={},
        route_params={},
        body=json.dumps(body).encode(),
    )
    response = function_app.links(request)
    return response.status_code, json.loads(response.get_body())


@pytest.mark.integration
class TestLinkWhenTheCreateAnswerIsLost:
    @pytest.mark.parametrize(
        "fault", [{"status": 503}, {"status": 500}, {"reset": True}], ids=["503", "500", "connection-dropped"]
    )
    def test_one_group_and_the_link_is_saved(self, estate, app_engine, fault):
        """The stand-in creates the group, then answers 5xx or drops the connection."""
        estate.kv.set_secret(estate.vault, "db-password")
        estate.ado.inject(method="POST", path=r"/_apis/distributedtask/variablegroups$", applied=True, **fault)

        status, body = post_link(estate)

        assert status == 201, body
        assert body["created"] is True
        groups = [g for g in estate.ado.groups(estate.org) if g["name"] == "payments-kv"]
        assert len(groups) == 1
        assert body["link"]["groupId"] == groups[0]["id"]
        assert sorted(groups[0]["variables"]) == ["db-password"]
        links = app_engine.registry.links_for_vault(estate.vault)
        assert [link.group_id for link in links] == [groups[0]["id"]]
        assert estate.ado.count("POST", r"/_apis/distributedtask/variablegroups$") == 1

    def test_a_create_that_did_not_happen_is_retried(self, estate, app_engine):
        estate.kv.set_secret(estate.vault, "db-password")
        estate.ado.inject(503, method="POST", path=r"/_apis/distributedtask/variablegroups$")

        status, body = post_link(estate)

        assert status == 201, body
        assert len([g for g in estate.ado.groups(estate.org) if g["name"] == "payments-kv"]) == 1
        assert estate.ado.count("POST", r"/_apis/distributedtask/variablegroups$") == 2
