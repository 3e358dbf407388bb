"""Official Azure DevOps REST examples replayed, unmodified, through kvlink's real ``DevOps`` client.

Each example (``httpExamples`` of MicrosoftDocs/vsts-rest-api-specs; sources in
``payloads/README.md`` and ``recordings/devops/README.md``) answers the one request kvlink
sends through ``httpx.MockTransport``. The test checks that request against the example's
(method, path, the parameters that select the data, the body of a write) and what kvlink
concludes from the answer. The examples were captured with older api-versions (``1.0``,
``4.1-preview.1``, ``6.0-preview.4``, ``7.0``); kvlink always sends ``7.1``, which is asserted
separately: the response shapes are the ones the 7.1 reference shows.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from kvlink_core.devops import API_VERSION, PIPELINE_PERMISSIONS_API_VERSION, DevOps, PipelineAccess, VariableGroup
from kvlink_core.settings import Settings

HERE = Path(__file__).parent
PAYLOADS = HERE / "payloads"
RECORDINGS = HERE / "recordings" / "devops"


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8-sig"))  # the spec repository's files carry a BOM


def settings() -> Settings:
    return Settings.from_env(
        {
            "KVLINK_DEVOPS_ORGS": "fabrikam",
            "KVLINK_ALLOWED_VAULTS": "kv-fabrikam",
            "AZURE_DEVOPS_PAT": "not-a-real-pat",
            "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        }
    )


class Replay:
    """Answers every request with the example's 200 response, and keeps what kvlink sent."""

    def __init__(self, example: dict[str, Any]) -> None:
        self.example = example
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        (status, answer), *_ = self.example["responses"].items()
        return httpx.Response(int(status), json=answer.get("body"), headers=answer.get("headers") or {})

    @property
    def sent(self) -> httpx.Request:
        assert len(self.requests) == 1, [str(r.url) for r in self.requests]
        return self.requests[0]

    def example_path(self) -> str:
        return urlsplit(self.example["x-ms-vss-request-url"]).path

    def example_query(self) -> dict[str, str]:
        return dict(httpx.URL(self.example["x-ms-vss-request-url"]).params)


@pytest.fixture
def replay():
    clients: list[DevOps] = []

    def run(example: dict[str, Any]) -> tuple[DevOps, Replay]:
        upstream = Replay(example)
        devops = DevOps(settings(), None, attempts=1, transport=httpx.MockTransport(upstream))
        clients.append(devops)
        return devops, upstream

    yield run
    for devops in clients:
        devops.close()


def api_version(request: httpx.Request) -> str:
    return request.url.params["api-version"]


class TestVariableGroups:
    def test_get_group(self, replay):
        """Variablegroups - Get: GET_VariableGroup (7.2 examples folder, same operation in 7.1)."""
        devops, up = replay(load(PAYLOADS / "ado-variablegroups-GET_VariableGroup.7.2-httpExample.json"))
        group = devops.get_group("fabrikam", "VGDemo", 1)
        assert (up.sent.method, up.sent.url.path) == (up.example["x-ms-vss-request-method"], up.example_path())
        assert api_version(up.sent) == API_VERSION
        assert group is not None
        assert (group.id, group.name, group.type, group.is_key_vault, group.vault) == (
            1,
            "TestVariableGroup1",
            "Vsts",
            False,
            None,
        )
        assert group.variables == {"key1": {"value": "value1"}, "key2": {"value": None, "isSecret": True}}
        assert group.projects == []  # this example predates variableGroupProjectReferences
        assert group.modified_on == datetime(2017, 12, 12, 6, 35, 52, 16666, tzinfo=UTC)

    def test_list_groups_by_name(self, replay):
        """Variablegroups - Get Variable Groups: GET_VariableGroupsByGroupName, one page, no header."""
        devops, up = replay(load(PAYLOADS / "ado-variablegroups-GET_VariableGroupsByGroupName.7.1-httpExample.json"))
        groups = list(devops.list_groups("fabrikam", "DGDemo", name="Test*"))
        sent = up.sent  # two groups, fewer than $top and no continuation header: one request
        assert (sent.method, sent.url.path) == ("GET", up.example_path())
        assert sent.url.params["groupName"] == up.example_query()["groupName"] == "Test*"
        # kvlink asks ascending ids and a page size, so it can page without the header.
        assert (sent.url.params["queryOrder"], sent.url.params["$top"]) == ("IdAscending", "100")
        assert api_version(sent) == API_VERSION
        assert [(g.id, g.name, g.type, sorted(g.variables)) for g in groups] == [
            (2, "TestVariableGroup2", "Vsts", ["key1"]),
            (1, "TestVariableGroup1", "Vsts", ["key1", "key2"]),
        ]
        assert [g.modified_on for g in groups] == [
            datetime(2017, 12, 12, 6, 35, 52, 80000, tzinfo=UTC),
            datetime(2017, 12, 12, 6, 35, 52, 16666, tzinfo=UTC),
        ]

    def test_update_group(self, replay):
        """Variablegroups - Update: the group read by GET_VariableGroup, PUT as PUT_UpdateVariableGroup."""
        read = VariableGroup(
            load(PAYLOADS / "ado-variablegroups-GET_VariableGroup.7.2-httpExample.json")["responses"]["200"]["body"]
        )
        example = load(PAYLOADS / "ado-variablegroups-PUT_UpdateVariableGroup.7.1-httpExample.json")
        devops, up = replay(example)
        wanted = example["parameters"]["body"]
        written = devops.update_group("fabrikam", read, wanted["variables"])
        assert up.sent.method == "PUT"
        # The 7.1 reference's PUT is org-level; the example still shows the legacy project-scoped URL.
        assert up.sent.url.path == "/fabrikam/_apis/distributedtask/variablegroups/1"
        assert up.example_path() == "/fabrikam/DGDemo/_apis/distributedtask/variablegroups/1"
        assert api_version(up.sent) == API_VERSION
        assert json.loads(up.sent.content) == wanted  # every field read is sent back, nothing more
        assert (written.id, written.name, sorted(written.variables)) == (1, "TestVariableGroup1", ["key1", "key2"])
        assert written.modified_on == datetime(2017, 12, 12, 6, 35, 52, 16666, tzinfo=UTC)

    def test_create_group(self, replay):
        """Variablegroups - Add: POST_CreateVariableGroup, org-level with variableGroupProjectReferences."""
        example = load(PAYLOADS / "ado-variablegroups-POST_CreateVariableGroup.7.2-httpExample.json")
        devops, up = replay(example)
        created = devops.create_group("fabrikam", example["parameters"]["body"])
        assert (up.sent.method, up.sent.url.path) == ("POST", up.example_path())
        assert api_version(up.sent) == API_VERSION
        assert json.loads(up.sent.content) == example["parameters"]["body"]
        assert (created.id, created.name, created.type, created.vault) == (12, "SampleGroupName", "Vsts", None)
        assert sorted(created.variables) == ["SampleVariableName1", "SampleVariableName2"]
        assert created.projects == [{"id": "12345678-d7c4-4d14-ac2d-df14acba8d7f", "name": "SampleProject"}]
        assert created.modified_on == datetime(2023, 7, 19, 4, 18, 18, 910000, tzinfo=UTC)


class TestProjects:
    def test_list_projects(self, replay):
        """Projects - List: core 5.1 GET__projects (no 7.x example exists); no header, so one page."""
        devops, up = replay(load(RECORDINGS / "core-5.1-projects-GET__projects.json"))
        projects = list(devops.list_projects("fabrikam"))
        assert (up.sent.method, up.sent.url.path) == ("GET", up.example_path())
        assert api_version(up.sent) == API_VERSION
        assert [(p["id"], p["name"]) for p in projects] == [
            ("eb6e4656-77fc-42a1-9181-4c6d8e9da5d1", "Fabrikam-Fiber-TFVC"),
            ("6ce954b1-ce1f-45d1-b94d-e6bf2464ba2c", "Fabrikam-Fiber-Git"),
            ("281f9a5b-af0d-49b4-a1df-fe6f5e5f84d0", "TestGit"),
        ]

    def test_get_project(self, replay):
        """Projects - Get: core 5.0 GET__projects__projectName_ (no 7.x example exists)."""
        devops, up = replay(load(RECORDINGS / "core-5.0-projects-GET__projects__projectName_.json"))
        project = devops.get_project("fabrikam", "Fabrikam-Fiber-TFVC")
        assert (up.sent.method, up.sent.url.path) == ("GET", up.example_path())
        assert api_version(up.sent) == API_VERSION
        assert project is not None
        # What linking puts in the group's projectReference.
        assert (project["id"], project["name"]) == ("eb6e4656-77fc-42a1-9181-4c6d8e9da5d1", "Fabrikam-Fiber-TFVC")


class TestServiceEndpoints:
    def test_get_service_endpoints_by_ids(self, replay):
        """Endpoints - Get Service Endpoints: ListEndpoints (7.2), the same GET; the example filters by type."""
        devops, up = replay(load(RECORDINGS / "serviceEndpoint-7.2-endpoints-ListEndpoints.json"))
        project = "c7e5f0b3-71fa-4429-9fb3-3321963a7c06"
        endpoints = devops.get_service_endpoints("fabrikam", project, ["5e47a0d8-c745-44f8-8f93-784f18ff31c4"])
        assert (up.sent.method, up.sent.url.path) == ("GET", up.example_path())
        assert api_version(up.sent) == API_VERSION
        assert dict(up.sent.url.params) == {
            "endpointIds": "5e47a0d8-c745-44f8-8f93-784f18ff31c4",
            "includeFailed": "true",  # a failed connection is what the audit must see
            "api-version": API_VERSION,
        }
        assert [(e["id"], e["type"], e["isReady"]) for e in endpoints] == [
            ("5e47a0d8-c745-44f8-8f93-784f18ff31c4", "Generic", True)
        ]

    def test_get_service_endpoint(self, replay):
        """Endpoints - Get: GetServiceEndpointDetails (6.1; no 7.x example in the repository)."""
        devops, up = replay(load(RECORDINGS / "serviceEndpoint-6.1-endpoints-GetServiceEndpointDetails.json"))
        endpoint = devops.get_service_endpoint(
            "fabrikam", "DefaultAgileGitProject", "5e47a0d8-c745-44f8-8f93-784f18ff31c4"
        )
        assert (up.sent.method, up.sent.url.path) == (up.example["x-ms-vss-request-method"], up.example_path())
        assert api_version(up.sent) == API_VERSION
        assert endpoint is not None
        assert (endpoint["name"], endpoint["type"], endpoint["isReady"]) == ("MyNewServiceEndpoint", "Generic", True)

    def test_find_service_endpoint_by_name(self, replay):
        """Endpoints - Get Service Endpoints By Names: GetServiceEndpointsByName (7.1)."""
        devops, up = replay(load(PAYLOADS / "ado-serviceendpoint-GetServiceEndpointsByName.7.1-httpExample.json"))
        project = "c7e5f0b3-71fa-4429-9fb3-3321963a7c06"
        endpoint = devops.find_service_endpoint("fabrikam", project, "mynewserviceendpoint")
        assert (up.sent.method, up.sent.url.path) == ("GET", up.example_path())
        assert up.sent.url.params["endpointNames"] == up.example_query()["endpointNames"].lower()
        assert api_version(up.sent) == API_VERSION
        assert endpoint is not None  # names compare case-insensitively, as Azure DevOps does
        assert (endpoint["id"], endpoint["type"], endpoint["isReady"]) == (
            "5e47a0d8-c745-44f8-8f93-784f18ff31c4",
            "Generic",
            True,
        )


class TestPipelinePermissions:
    def test_group_pipeline_access(self, replay):
        """Pipeline Permissions - Get: approvalsAndChecks 7.0 GET__GetPipelinePermissionsForResource.

        The example asks about an agent queue (``queue/1``); kvlink asks the same operation about a
        variable group (``variablegroup/{id}``), with the preview api-version the 7.1 reference requires.
        """
        devops, up = replay(
            load(RECORDINGS / "approvalsAndChecks-7.0-pipelinePermissions-GET__GetPipelinePermissionsForResource.json")
        )
        access = devops.group_pipeline_access("fabrikam", "RM", 1)
        sent = up.sent
        assert sent.method == up.example["x-ms-vss-request-method"] == "GET"
        # The route is case-insensitive; the example writes pipelinePermissions, the reference pipelinepermissions.
        example_base, _, example_resource = up.example_path().lower().rpartition("/queue/")
        assert sent.url.path.lower() == f"{example_base}/variablegroup/1" and example_resource == "1"
        assert sent.url.path.startswith("/fabrikam/RM/")  # the project as given
        assert api_version(sent) == PIPELINE_PERMISSIONS_API_VERSION == "7.1-preview.1"
        assert access == PipelineAccess(all_pipelines=False, pipeline_ids=(6, 15, 16))
