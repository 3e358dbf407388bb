"""Variable-group paging with and without ``X-MS-ContinuationToken`` (issue 11, point 6).

Whether Azure DevOps sends the header for variable groups is undocumented, and so is whether
the integer ``continuationToken`` ("Gets the variable groups after the continuation token
provided") includes the token's own id. kvlink must list every group under each combination.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from kvlink_core.audit import run_audit
from kvlink_core.devops import DevOps
from kvlink_core.model import Policy
from kvlink_core.settings import Settings

ORG = "fabrikam"
PROJECT = "Payments"


def settings() -> Settings:
    return Settings.from_env(
        {
            "KVLINK_DEVOPS_ORGS": ORG,
            "KVLINK_ALLOWED_VAULTS": "kv-fabrikam",
            "AZURE_DEVOPS_PAT": "not-a-real-pat",
            "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        }
    )


def group(gid: int) -> dict[str, Any]:
    return {"id": gid, "name": f"g{gid:03d}", "type": "Vsts", "variables": {}}


class FakeServer:
    """A variable-group list on ``httpx.MockTransport``, ids ascending, with the switches under test."""

    def __init__(self, ids: list[int], *, header: bool, inclusive: bool = True, ignores_token: bool = False) -> None:
        self.ids = sorted(ids)
        self.header = header
        self.inclusive = inclusive
        self.ignores_token = ignores_token
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        query = request.url.params
        top = int(query["$top"])
        ids = self.ids
        if "continuationToken" in query and not self.ignores_token:
            token = int(query["continuationToken"])
            ids = [i for i in ids if (i >= token if self.inclusive else i > token)]
        headers = {"Content-Type": "application/json; charset=utf-8"}
        if len(ids) > top and self.header:
            headers["X-MS-ContinuationToken"] = str(ids[top] if self.inclusive else ids[top - 1])
        page = [group(i) for i in ids[:top]]
        return httpx.Response(200, json={"count": len(page), "value": page}, headers=headers)

    def tokens(self) -> list[str | None]:
        return [r.url.params.get("continuationToken") for r in self.requests]


def listed(server: FakeServer, *, page_size: int = 100) -> list[int]:
    devops = DevOps(settings(), None, attempts=1, transport=httpx.MockTransport(server))
    try:
        return [g.id for g in devops.list_groups(ORG, PROJECT, page_size=page_size)]
    finally:
        devops.close()


# Ids with gaps, as a real project has after deletions: 150 groups between 1 and 300.
IDS = list(range(1, 301, 2))


class TestListGroupsPaging:
    @pytest.mark.parametrize("inclusive", [True, False], ids=["inclusive", "exclusive"])
    @pytest.mark.parametrize("header", [True, False], ids=["header", "no-header"])
    def test_every_group_once(self, header, inclusive):
        """150 groups in pages of 100: all listed, once each, whatever the server's paging."""
        server = FakeServer(IDS, header=header, inclusive=inclusive)
        assert listed(server) == IDS
        first = server.requests[0].url.params
        assert (first["queryOrder"], first["$top"], first["api-version"]) == ("IdAscending", "100", "7.1")

    def test_without_header_continues_after_the_last_id_of_a_full_page(self):
        server = FakeServer(IDS, header=False)
        listed(server)
        # Page 1 ends at id 199; an inclusive server repeats 199 in page 2, which is dropped;
        # page 2 is not full, so the listing ends there.
        assert server.tokens() == [None, "199"]

    def test_with_header_the_header_wins(self):
        server = FakeServer(IDS, header=True)
        listed(server)
        assert server.tokens() == [None, "201"]

    def test_a_page_that_is_not_full_ends_the_listing(self):
        server = FakeServer(list(range(1, 51)), header=False)
        assert listed(server) == list(range(1, 51))
        assert len(server.requests) == 1

    def test_exactly_a_full_page_costs_one_more_request(self):
        server = FakeServer(list(range(1, 101)), header=False)
        assert listed(server) == list(range(1, 101))
        assert server.tokens() == [None, "100"]

    def test_a_server_that_ignores_the_token_cannot_loop(self):
        """A page that brings nothing new ends the listing."""
        server = FakeServer(IDS, header=False, ignores_token=True)
        assert listed(server) == IDS[:100]
        assert len(server.requests) == 2

    def test_small_pages(self):
        server = FakeServer(IDS, header=False, inclusive=True)
        assert listed(server, page_size=7) == IDS


class TestProjectsPaging:
    def test_projects_follow_their_header(self):
        """Projects - List documents an integer offset token; the header is followed as sent."""
        seen: list[str | None] = []

        def handler(request: httpx.Request) -> httpx.Response:
            token = request.url.params.get("continuationToken")
            seen.append(token)
            start = int(token or 0)
            page = [{"id": f"p{i}", "name": f"P{i}"} for i in range(start, min(start + 2, 5))]
            headers = {"x-ms-continuationtoken": str(start + 2)} if start + 2 < 5 else {}
            return httpx.Response(200, json={"count": len(page), "value": page}, headers=headers)

        devops = DevOps(settings(), None, attempts=1, transport=httpx.MockTransport(handler))
        try:
            assert [p["id"] for p in devops.list_projects(ORG, page_size=2)] == [f"p{i}" for i in range(5)]
        finally:
            devops.close()
        assert seen == [None, "2", "4"]


@pytest.mark.integration
class TestAuditOf150Groups:
    @pytest.mark.parametrize(
        ("header", "inclusive"),
        [(True, True), (False, True), (False, False)],
        ids=["header", "no-header", "no-header-exclusive"],
    )
    def test_whole_project_audited(self, estate, monkeypatch, header, inclusive):
        """150 Key Vault groups, linked ones past position 100 too: no link-target-missing, all audited."""
        monkeypatch.setattr(estate.ado, "send_continuation_header", header)
        monkeypatch.setattr(estate.ado, "continuation_inclusive", inclusive)
        estate.kv.set_secret(estate.vault, "db-password")
        ids = [estate.group(f"team-{i:03d}", ["db-password"]) for i in range(150)]
        engine = estate.engine()
        linked = [ids[i] for i in (0, 50, 99, 100, 101, 120, 149)]
        for gid in linked:
            estate.link(engine, gid, Policy(include=("db-*",)))

        report = run_audit(engine)

        assert [f for f in report.findings if f.kind == "link-target-missing"] == []
        assert sorted(g["groupId"] for g in report.groups) == sorted(ids)
        assert report.groups_linked == len(linked)
        assert report.groups_discovered == 150 - len(linked)
        listing = "/distributedtask/variablegroups"
        assert sum(1 for c in estate.ado.calls if c.method == "GET" and c.path.endswith(listing)) == 2
