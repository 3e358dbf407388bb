"""The Azure DevOps client against the stand-in and the official payloads."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from kvlink_core.credentials import StaticTokenCredential
from kvlink_core.devops import DevOps, VariableGroup
from kvlink_core.errors import TransientError, UpstreamError

PAYLOADS = Path(__file__).parent / "payloads"
pytestmark = pytest.mark.integration


def client(estate, *, pat: bool = True, **tuning) -> DevOps:
    settings = estate.settings() if pat else estate.settings(AZURE_DEVOPS_PAT="")
    options = {"attempts": 4, "retry_timeout": 5.0, "wait_initial": 0.01, "wait_max": 0.05, **tuning}
    return DevOps(settings, None if pat else StaticTokenCredential("kvlink-emulator-token"), **options)


class TestPayloadContract:
    def test_official_group_example_round_trips(self):
        """The official GET example reads as a group, and its PUT body keeps every parameter field."""
        example = json.loads(
            (PAYLOADS / "ado-variablegroups-GET_VariableGroup.7.2-httpExample.json").read_text(encoding="utf-8-sig")
        )
        group = VariableGroup(example["responses"]["200"]["body"])
        assert (group.id, group.name, group.type, group.is_key_vault) == (
            1,
            "TestVariableGroup1",
            "Vsts",
            False,
        )
        body = group.parameters({"key1": {"value": "value1"}})
        assert set(body) == {"name", "description", "type", "variables"}
        assert body["description"] == "Updated variable group"

    def test_parameters_match_the_spec_schema(self):
        """The PUT body only uses VariableGroupParameters fields from the 7.1 spec."""
        spec = json.loads(
            (PAYLOADS / "ado-taskAgent-7.1-variablegroups.spec-extract.json").read_text(encoding="utf-8-sig")
        )
        allowed = set(spec["definitions"]["VariableGroupParameters"]["properties"])
        raw = {
            "id": 3,
            "name": "g",
            "description": "",
            "type": "AzureKeyVault",
            "createdBy": {},
            "isShared": False,
            "providerData": {"serviceEndpointId": "x", "vault": "kv"},
            "variables": {},
            "variableGroupProjectReferences": [{"projectReference": {"id": "p", "name": "P"}, "name": "g"}],
        }
        assert set(VariableGroup(raw).parameters({})) <= allowed


class TestGroups:
    def test_get_by_project_name_and_id(self, estate):
        """A Key Vault group reads the same through the project's name or id."""
        gid = estate.group("payments-kv", ["a"])
        devops = client(estate)
        by_name = devops.get_group(estate.org, estate.project, gid)
        by_id = devops.get_group(estate.org, estate.project_id, gid)
        assert by_name is not None and by_id is not None
        assert by_name.raw == by_id.raw
        assert (by_name.vault, by_name.service_endpoint_id, by_name.is_key_vault) == (
            estate.vault,
            estate.endpoint_id,
            True,
        )
        assert by_name.projects == [{"id": estate.project_id, "name": estate.project}]

    @pytest.mark.parametrize("mode", ["404", "null"])
    def test_missing_group_is_none(self, estate, mode):
        """A group the project cannot see is None, whether Azure DevOps says 404 or 200 null."""
        estate.ado.missing_group_response = mode
        try:
            assert client(estate).get_group(estate.org, estate.project, 999) is None
        finally:
            estate.ado.missing_group_response = "404"

    def test_update_sends_back_everything(self, estate):
        """update_group replaces variables and keeps every other field as read."""
        gid = estate.group("payments-kv", ["a"])
        devops = client(estate)
        group = devops.get_group(estate.org, estate.project, gid)
        assert group is not None
        updated = devops.update_group(estate.org, group, {**group.variables, "b": {"isSecret": True, "value": None}})
        assert sorted(updated.variables) == ["a", "b"]
        put = estate.ado.writes(estate.org, gid)[-1]
        assert put.body["variableGroupProjectReferences"] == group.raw["variableGroupProjectReferences"]
        assert put.body["providerData"] == group.raw["providerData"]

    def test_list_pages_through_every_group(self, estate):
        """Listing follows the continuation token across pages."""
        ids = [estate.group(f"group-{i}", ["a"]) for i in range(7)]
        listed = [g.id for g in client(estate).list_groups(estate.org, estate.project, page_size=3)]
        assert listed == sorted(ids)
        assert estate.ado.count("GET", "variablegroups$") == 3

    def test_validation_errors_are_reported(self, estate):
        """A 400 from Azure DevOps surfaces with its message."""
        with pytest.raises(UpstreamError, match="project reference is required") as info:
            client(estate).create_group(estate.org, {"name": "x", "type": "Vsts", "variables": {"a": {"value": "1"}}})
        assert info.value.status == 400


class TestAuth:
    def test_bearer_token_when_no_pat(self, estate):
        """Without a PAT, an Entra token for Azure DevOps is sent as a bearer token."""
        gid = estate.group("payments-kv", ["a"])
        assert client(estate, pat=False).get_group(estate.org, estate.project, gid) is not None
        assert estate.ado.calls[-1].auth_scheme == "Bearer"

    @pytest.mark.parametrize("status", [401, 203, 403])
    def test_rejected_credentials(self, estate, status):
        """A wrong PAT is a clear error (401, 203 with a sign-in page, 403) that never shows the PAT."""
        estate.ado.unauthenticated_status = status
        try:
            devops = DevOps(estate.settings(AZURE_DEVOPS_PAT="wrong-pat-value"), None)
            with pytest.raises(UpstreamError, match=r"AZURE_DEVOPS_PAT") as info:
                devops.get_group(estate.org, estate.project, 1)
        finally:
            estate.ado.unauthenticated_status = 401
        assert "wrong-pat-value" not in str(info.value)


class TestRetries:
    def test_long_retry_after_is_left_to_the_caller(self, estate):
        """A Retry-After beyond the client's budget fails fast with the delay attached."""
        estate.ado.inject(429, method="GET", retry_after=120)
        started = time.monotonic()
        with pytest.raises(TransientError) as info:
            client(estate).get_group(estate.org, estate.project, 1)
        assert info.value.retry_after == 120
        assert time.monotonic() - started < 2

    def test_retry_after_on_success_slows_the_next_call(self, estate):
        """A Retry-After on a 200 (Azure DevOps delaying an identity) pauses the next request."""
        gid = estate.group("payments-kv", ["a"])
        estate.ado.inject(200, method="GET", retry_after=0.3, body={"id": gid, "name": "x"})
        devops = client(estate)
        devops.get_group(estate.org, estate.project, gid)
        devops.get_group(estate.org, estate.project, gid)
        first, second = estate.ado.calls[-2:]
        assert second.started - first.finished >= 0.25

    def test_post_is_not_retried_after_a_timeout(self, estate):
        """A create that timed out may have happened, so it is not sent twice."""
        estate.ado.inject(503, method="POST", delay=1.0)
        with pytest.raises(TransientError):
            client(estate, timeout=0.3).create_group(estate.org, {"name": "x"})
        time.sleep(0.8)
        assert estate.ado.count("POST") == 1

    def test_post_is_retried_when_throttled(self, estate):
        """A 429 means the create did not happen, so it is retried."""
        estate.ado.inject(429, method="POST", retry_after=0)
        body = {
            "name": "new-kv",
            "type": "AzureKeyVault",
            "providerData": {"serviceEndpointId": estate.endpoint_id, "vault": estate.vault},
            "variables": {"a": {"isSecret": True, "value": None, "enabled": True}},
            "variableGroupProjectReferences": [
                {"name": "new-kv", "projectReference": {"id": estate.project_id, "name": estate.project}}
            ],
        }
        created = client(estate).create_group(estate.org, body)
        assert created.name == "new-kv"
        assert [c.status for c in estate.ado.calls if c.method == "POST"] == [429, 200]


class TestLookups:
    def test_service_endpoint_by_name(self, estate):
        """Service connections are found by name, case-insensitively."""
        endpoint = client(estate).find_service_endpoint(estate.org, estate.project, "KV-Connection")
        assert endpoint is not None and endpoint["id"] == estate.endpoint_id
        assert client(estate).find_service_endpoint(estate.org, estate.project, "nope") is None

    def test_project(self, estate):
        """Projects are found by name; an unknown one is None."""
        devops = client(estate)
        project = devops.get_project(estate.org, estate.project)
        assert project is not None and project["id"] == estate.project_id
        assert devops.get_project(estate.org, "Nope") is None


def example(name: str) -> dict:
    return json.loads((PAYLOADS / name).read_text(encoding="utf-8-sig"))


class TestVerbatimResponses:
    """The official example responses, served as they are, go through the client unchanged."""

    def test_list_by_group_name(self, estate):
        """The GET_VariableGroupsByGroupName example lists both groups."""
        body = example("ado-variablegroups-GET_VariableGroupsByGroupName.7.1-httpExample.json")["responses"]["200"]
        estate.ado.inject(200, method="GET", path="variablegroups$", body=body["body"])
        groups = list(client(estate).list_groups(estate.org, estate.project, name="Test*"))
        assert [(g.id, g.name) for g in groups] == [(2, "TestVariableGroup2"), (1, "TestVariableGroup1")]
        assert estate.ado.calls[-1].query["groupName"] == "Test*"

    def test_service_endpoint_by_name(self, estate):
        """The GetServiceEndpointsByName example yields the endpoint's id."""
        body = example("ado-serviceendpoint-GetServiceEndpointsByName.7.1-httpExample.json")["responses"]["200"]
        estate.ado.inject(200, method="GET", path="serviceendpoint", body=body["body"])
        found = client(estate).find_service_endpoint(estate.org, estate.project, "MyNewServiceEndpoint")
        assert found is not None and found["id"] == "5e47a0d8-c745-44f8-8f93-784f18ff31c4"

    def test_update_response(self, estate):
        """The PUT_UpdateVariableGroup example response reads back as the updated group."""
        payload = example("ado-variablegroups-PUT_UpdateVariableGroup.7.1-httpExample.json")
        estate.ado.inject(200, method="PUT", body=payload["responses"]["200"]["body"])
        group = VariableGroup(payload["responses"]["200"]["body"])
        updated = client(estate).update_group(estate.org, group, payload["parameters"]["body"]["variables"])
        assert updated.variables == payload["parameters"]["body"]["variables"]
        sent = estate.ado.calls[-1].body
        assert sent == {**payload["parameters"]["body"]}
