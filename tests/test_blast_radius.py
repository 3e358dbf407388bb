"""Blast radius: the audit names the pipelines each broken group stops, cheaply and never fatally.

Against the Azure DevOps stand-in (Pipeline Permissions - Get, Pipelines - List), Azurite and
the Key Vault stand-in; the CloudEvents go to the Event Grid topic stand-in.
"""

from __future__ import annotations

import io
import json
import uuid

import pytest

from kvlink_core.audit import BREAKING, PIPELINES_DENIED, run_audit
from kvlink_core.cli import main as cli_main
from kvlink_core.model import Policy
from kvlink_core.report_page import render_report
from standins.eventgrid import EventGridTopicStandIn

pytestmark = pytest.mark.integration

PERMISSIONS = r"/_apis/pipelines/pipelinepermissions/"
LISTING = r"/_apis/pipelines$"


def lookups(ado) -> tuple[int, int]:
    """(permission calls, pipeline-list calls) the stand-in served since its last reset."""
    return ado.count("GET", PERMISSIONS), ado.count("GET", LISTING)


def by_kind(report) -> dict[str, list]:
    found: dict[str, list] = {}
    for f in report.findings:
        found.setdefault(f.kind, []).append(f)
    return found


def names(finding) -> list[str]:
    return [p.name for p in finding.pipelines]


class Seeded:
    """One broken group per breaking finding kind, each authorized for its own pipeline."""

    def __init__(self, estate, engine) -> None:
        kv, ado, org, project = estate.kv, estate.ado, estate.org, estate.project
        self.locked = f"{estate.vault}-locked"
        kv.create_vault(self.locked)
        kv.set_secret(self.locked, "locked")
        kv.deny(self.locked)
        for name in ("ok", "off"):
            kv.set_secret(estate.vault, name)
        kv.update_secret(estate.vault, "off", enabled=False)
        broken_conn = ado.add_service_endpoint(org, project, "broken-connection", is_ready=False)

        def group(name, variables, *, vault=None, endpoint=None, link=True):
            gid = ado.add_group(
                org,
                project,
                name,
                vault=vault or estate.vault,
                service_endpoint_id=endpoint or estate.endpoint_id,
                variables=variables,
            )
            if link:
                estate.link(engine, gid, vault=vault or estate.vault)
            pipeline = ado.add_pipeline(org, project, f"deploy-{name}", folder="\\payments")
            ado.authorize_pipelines(org, project, gid, [pipeline])
            return gid

        self.deleted = group("deleted", ["ok", "gone"])
        self.disabled = group("disabled", ["ok", "off"])
        self.unmappable = group("unmappable", ["ok", "bad_name"])
        self.unreadable = group("unreadable", ["locked"], vault=self.locked)
        self.missing_conn = group("no-connection", ["ok"], endpoint=str(uuid.uuid4()))
        self.not_ready = group("not-ready", ["ok"], endpoint=broken_conn)
        self.healthy = group("healthy", ["ok"])


def test_every_breaking_kind_names_its_pipelines(estate):
    """Each open breaking finding carries the pipelines authorized to use its group (a dry run: nothing repaired)."""
    engine = estate.engine(KVLINK_ALLOWED_VAULTS=f"{estate.vault},{estate.vault}-locked")
    Seeded(estate, engine)
    estate.ado.reset_calls()
    report = run_audit(engine, dry_run=True, store=False)
    kinds = by_kind(report)
    expected = {
        "secret-deleted": "deploy-deleted",
        "secret-disabled": "deploy-disabled",
        "unmappable": "deploy-unmappable",
        "vault-unreadable": "deploy-unreadable",
        "service-connection-missing": "deploy-no-connection",
        "service-connection-not-ready": "deploy-not-ready",
    }
    for kind, pipeline in expected.items():
        (finding,) = kinds[kind]
        assert names(finding) == [pipeline], kind
        (p,) = finding.pipelines
        assert p.folder == "\\payments" and p.url and "_build/definition?definitionId=" in p.url
        assert finding.all_pipelines is False and finding.pipelines_unknown is None
        as_json = finding.as_json()
        assert as_json["pipelines"] == [{"id": p.id, "name": pipeline, "folder": "\\payments", "url": p.url}]
        assert as_json["allPipelines"] is False
    # the healthy group's pipeline is nowhere; one permissions call per broken group, one listing
    assert all("deploy-healthy" not in names(f) for f in report.findings)
    assert lookups(estate.ado) == (6, 1)
    summary = report.summary()
    assert summary["brokenGroups"] == 6 and summary["pipelinesAtRisk"] == 6


def test_refused_and_failed_repairs_name_their_pipelines(estate):
    """A repair the guard refused and one Azure DevOps refused: both groups stay broken, with pipelines."""
    engine = estate.engine()
    kv, ado = estate.kv, estate.ado
    kv.set_secret(estate.vault, "m-keep")
    storm = estate.group("storm", ["m-keep", "m1", "m2", "m3", "m4"])
    estate.link(engine, storm, Policy(include=("m-*", "m*"), mode="mirror"))
    failing = estate.group("failing", ["m-keep", "gone"])
    estate.link(engine, failing)
    first = ado.add_pipeline(estate.org, estate.project, "release")
    second = ado.add_pipeline(estate.org, estate.project, "nightly")
    ado.authorize_pipelines(estate.org, estate.project, storm, [first, second])
    ado.authorize_pipelines(estate.org, estate.project, failing, [second])
    ado.inject(400, method="PUT", path=rf"/variablegroups/{failing}$", times=20)
    report = run_audit(engine, store=False)
    kinds = by_kind(report)
    (refused,) = kinds["sync-refused"]
    assert names(refused) == ["nightly", "release"]  # by name
    (failed,) = kinds["write-failed"]
    assert names(failed) == ["nightly"]
    (deleted,) = [f for f in kinds["secret-deleted"] if f.group_id == failing]
    assert not deleted.repaired and names(deleted) == ["nightly"]
    assert report.summary()["pipelinesAtRisk"] == 2  # two distinct pipelines, however many findings


def test_open_access_says_so_without_listing_pipelines(estate):
    """A group open to every pipeline of its project says so; no pipeline list is needed for it."""
    engine = estate.engine()
    gid = estate.group("open", ["gone"])
    estate.link(engine, gid)
    estate.ado.add_pipeline(estate.org, estate.project, "anything")
    estate.ado.authorize_pipelines(estate.org, estate.project, gid, all_pipelines=True)
    estate.ado.reset_calls()
    report = run_audit(engine, dry_run=True, store=False)
    (finding,) = by_kind(report)["secret-deleted"]
    assert finding.all_pipelines is True and finding.pipelines == ()
    assert lookups(estate.ado) == (1, 0)
    html = render_report(
        {**report.summary(), "findings": [f.as_json() for f in report.findings], "auditedGroups": report.groups},
        [],
        [],
        now=report.finished,
        devops_url=estate.ado.base_url,
    )
    assert f"any pipeline in {estate.project} may use it" in html


def test_healthy_estate_costs_no_extra_call(estate):
    """Groups in step, and drift the audit repairs, look nothing up: zero permission or pipeline calls."""
    engine = estate.engine()
    estate.kv.set_secret(estate.vault, "ok")
    fine = estate.group("fine", ["ok"])
    drifted = estate.group("drifted", ["ok", "gone"])  # repaired by this run: no longer breaks anything
    for gid in (fine, drifted):
        estate.link(engine, gid)
        pipeline = estate.ado.add_pipeline(estate.org, estate.project, f"p-{gid}")
        estate.ado.authorize_pipelines(estate.org, estate.project, gid, [pipeline])
    estate.ado.reset_calls()
    report = run_audit(engine, store=False)
    assert [f.kind for f in report.findings] == ["secret-deleted"] and report.findings[0].repaired
    assert lookups(estate.ado) == (0, 0)
    assert report.summary()["brokenGroups"] == 0 and report.summary()["pipelinesAtRisk"] == 0


def test_pipeline_list_is_paged_once_per_project(estate):
    """Three broken groups in one project: three permission calls and one listing, followed page by page."""
    engine = estate.engine()
    estate.kv.set_secret(estate.vault, "ok")
    broken = estate.ado.add_service_endpoint(estate.org, estate.project, "not-ready", is_ready=False)
    pipelines = [estate.ado.add_pipeline(estate.org, estate.project, f"pipe-{n}") for n in range(5)]
    groups = []
    for n in range(3):
        gid = estate.ado.add_group(
            estate.org, estate.project, f"g{n}", vault=estate.vault, service_endpoint_id=broken, variables=["ok"]
        )
        estate.ado.authorize_pipelines(estate.org, estate.project, gid, [pipelines[4 - n]])
        groups.append(gid)
    estate.ado.pipelines_page_cap = 2
    try:
        estate.ado.reset_calls()
        report = run_audit(engine, dry_run=True, store=False)
    finally:
        estate.ado.pipelines_page_cap = None
    found = {f.group_id: names(f) for f in report.findings if f.kind == "service-connection-not-ready"}
    assert found == {groups[0]: ["pipe-4"], groups[1]: ["pipe-3"], groups[2]: ["pipe-2"]}
    assert lookups(estate.ado) == (3, 3)  # 5 pipelines at 2 a page: one listing in three pages


def test_permission_denied_says_so_and_the_audit_goes_on(estate):
    """401/403 on the lookup: the finding says which permission is missing; nothing else changes."""
    engine = estate.engine()
    gid = estate.group("denied", ["gone"])
    estate.link(engine, gid)
    estate.ado.inject(403, method="GET", path=PERMISSIONS, times=10)
    report = run_audit(engine, dry_run=True, store=False)
    (finding,) = by_kind(report)["secret-deleted"]
    assert finding.pipelines == () and finding.pipelines_unknown == PIPELINES_DENIED
    assert "Build: Read" in PIPELINES_DENIED and "View build pipeline" in PIPELINES_DENIED
    assert report.unreached == []  # the lookup never makes the estate "not reached"
    assert finding.as_json()["pipelinesUnknown"] == PIPELINES_DENIED


def test_pipeline_list_denied_keeps_the_ids(estate):
    """The permission answered but the pipeline list was refused: ids without names, and why."""
    engine = estate.engine()
    gid = estate.group("ids-only", ["gone"])
    estate.link(engine, gid)
    pipeline = estate.ado.add_pipeline(estate.org, estate.project, "named")
    estate.ado.authorize_pipelines(estate.org, estate.project, gid, [pipeline])
    estate.ado.inject(401, method="GET", path=LISTING, times=10)
    report = run_audit(engine, dry_run=True, store=False)
    (finding,) = by_kind(report)["secret-deleted"]
    assert [p.id for p in finding.pipelines] == [pipeline] and finding.pipelines[0].name is None
    assert finding.pipelines_unknown == PIPELINES_DENIED


def test_other_lookup_failures_never_fail_the_audit(estate, fast_retries):
    """A 5xx storm on the lookup: the audit finishes, the finding says the pipelines are unknown."""
    engine = estate.engine()
    gid = estate.group("flaky", ["gone"])
    estate.link(engine, gid)
    estate.ado.inject(503, method="GET", path=PERMISSIONS, times=50)
    report = run_audit(engine, dry_run=True, store=False)
    (finding,) = by_kind(report)["secret-deleted"]
    assert finding.pipelines_unknown and finding.pipelines_unknown.startswith("pipelines unknown: ")
    assert "503" in finding.pipelines_unknown


def test_unknown_group_has_no_pipelines(estate):
    """Pipeline permissions of a group id Azure DevOps never saw: no pipeline, not an error."""
    engine = estate.engine()
    access = engine.devops.group_pipeline_access(estate.org, estate.project, 987654)
    assert (access.all_pipelines, access.pipeline_ids) == (False, ())


@pytest.fixture(scope="module")
def topic(ca):
    server = EventGridTopicStandIn(ssl_context=ca.server_context(), token="kvlink-emulator-token").start()
    yield server
    server.stop()


def test_group_broken_is_announced_once(estate, topic):
    """kvlink.group.broken once when a group breaks, not on each audit it stays broken; again if it re-breaks."""
    topic.clear_events()
    engine = estate.engine(KVLINK_NOTIFY_TOPIC_ENDPOINT=topic.endpoint)
    estate.kv.set_secret(estate.vault, "api-key")
    estate.kv.update_secret(estate.vault, "api-key", enabled=False)
    gid = estate.group("payments-kv", ["api-key"])
    estate.link(engine, gid)
    pipeline = estate.ado.add_pipeline(estate.org, estate.project, "payments-deploy")
    estate.ado.authorize_pipelines(estate.org, estate.project, gid, [pipeline])

    def broken_events():
        return [e for e in topic.events_of_type("kvlink.group.broken") if e["data"]["organization"] == estate.org]

    first = run_audit(engine, dry_run=True)
    (event,) = broken_events()
    assert event["subject"] == f"{estate.org}/{estate.project}/{gid}"
    data = event["data"]
    assert (data["groupId"], data["group"], data["finding"]["kind"]) == (gid, "payments-kv", "secret-disabled")
    assert [p["name"] for p in data["pipelines"]] == ["payments-deploy"] and data["allPipelines"] is False
    (done,) = [e for e in topic.events_of_type("kvlink.audit.completed") if e["data"]["run"] == first.stored]
    assert done["data"]["pipelinesAtRisk"] == 1 and done["data"]["brokenGroups"] == 1

    run_audit(engine, dry_run=True)  # still broken: no second announcement
    assert len(broken_events()) == 1
    estate.kv.update_secret(estate.vault, "api-key", enabled=True)
    run_audit(engine, dry_run=True)  # healed: forgotten
    assert len(broken_events()) == 1
    estate.kv.update_secret(estate.vault, "api-key", enabled=False)
    run_audit(engine, dry_run=True)  # broken again: news again
    assert len(broken_events()) == 2


def test_api_and_cli_carry_the_pipelines(estate, app_engine):
    """GET /api/audit/latest and `audit --json` carry pipelines and allPipelines; the table counts them."""
    import azure.functions as func

    import function_app

    estate.kv.set_secret(estate.vault, "ok")
    broken = estate.ado.add_service_endpoint(estate.org, estate.project, "not-ready", is_ready=False)
    gid = estate.ado.add_group(
        estate.org, estate.project, "payments-kv", vault=estate.vault, service_endpoint_id=broken, variables=["ok"]
    )
    estate.link(app_engine, gid)
    for name in ("deploy", "nightly"):
        pipeline = estate.ado.add_pipeline(estate.org, estate.project, name)
        estate.ado.authorize_pipelines(estate.org, estate.project, gid, [pipeline])
    out, err = io.StringIO(), io.StringIO()
    code = cli_main(["audit", "--json"], out=out, err=err)
    assert code == 2, err.getvalue()
    body = json.loads(out.getvalue())
    (finding,) = [f for f in body["findings"] if f["kind"] == "service-connection-not-ready"]
    assert [p["name"] for p in finding["pipelines"]] == ["deploy", "nightly"] and finding["allPipelines"] is False
    assert body["pipelinesAtRisk"] == 2

    latest = json.loads(
        function_app.audit_latest(
            func.HttpRequest(method="GET", url="http://localhost/api/audit/latest", body=b"")
        ).get_body()
    )
    (stored,) = [f for f in latest["findings"] if f["kind"] == "service-connection-not-ready"]
    assert [p["name"] for p in stored["pipelines"]] == ["deploy", "nightly"]

    out = io.StringIO()
    cli_main(["audit", "--dry-run"], out=out, err=io.StringIO())
    table = out.getvalue().splitlines()
    assert "PIPELINES" in table[0]
    (row,) = [line for line in table if "service-connection-not-ready" in line]
    at = table[0].index("PIPELINES")
    assert row[at:].split()[0] == "2"  # the SECRET column is empty for this finding


def test_breaking_kinds_are_the_ones_the_issue_names():
    assert {
        "secret-deleted",
        "secret-disabled",
        "unmappable",
        "vault-unreadable",
        "service-connection-missing",
        "service-connection-not-ready",
        "sync-refused",
        "write-failed",
    } == BREAKING


def test_hostile_pipeline_names_and_urls_stay_text():
    """A pipeline named to be markup is text; an address that is not http(s) never becomes a link."""
    from datetime import UTC, datetime

    from test_report_page import HOSTILE, Page

    a, b = HOSTILE
    finding = {
        "severity": "error",
        "kind": "secret-deleted",
        "message": "gone is mapped but vault kv has no such secret",
        "organization": "org",
        "project": "Payments",
        "groupId": 3,
        "group": "payments-kv",
        "vault": "kv",
        "secret": "gone",
        "repaired": False,
        "pipelines": [
            {"id": 1, "name": a, "folder": b, "url": "javascript:alert(1)"},
            {"id": 2, "name": b, "folder": "\\", "url": "https://dev.azure.com/org/p/_build/definition?definitionId=2"},
        ],
        "allPipelines": False,
        "pipelinesUnknown": None,
    }
    now = datetime.now(UTC)
    latest = {"finished": now.isoformat(), "findings": [finding], "findingsBySeverity": {"error": 1}}
    html = render_report(latest, [latest], [], now=now, devops_url="https://dev.azure.com")
    page = Page(html)
    assert page.tags("img") == [] and page.tags("script") == []
    assert not [name for _, attrs in page.elements for name in attrs if name.startswith("on")]
    (card,) = page.by_class("finding")
    assert "Pipelines at risk 2" in card and a in card and b in card
    hrefs = [attrs["href"] for attrs in page.tags("a")]
    assert "javascript:alert(1)" not in hrefs
    assert "https://dev.azure.com/org/p/_build/definition?definitionId=2" in hrefs
