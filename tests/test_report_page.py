"""The report page: rendered from fixed reports (pure), and served by GET /api/report and the CLI."""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import azure.functions as func
import pytest
from azure.functions.http import HttpResponseConverter

import function_app
from kvlink_core import api
from kvlink_core import app as kvlink_app
from kvlink_core.audit import run_audit
from kvlink_core.cli import main as cli_main
from kvlink_core.model import Link, Policy
from kvlink_core.registry import LinkRecord
from kvlink_core.report_page import ADVICE, render_report
from standins.tcpproxy import FlakyProxy

NOW = datetime(2026, 11, 27, 7, 30, tzinfo=UTC)
DEVOPS = "https://dev.azure.com"
HOSTILE = ("<img src=x onerror=alert(1)>", '"><script>alert(1)</script>')
AUDIT_SOURCE = (Path(__file__).resolve().parent.parent / "kvlink_core" / "audit.py").read_text()


# -- reading the page as a reader would -------------------------------------------------------
class Page(HTMLParser):
    """The elements, their attributes, and the text a reader sees (whitespace collapsed)."""

    VOID = frozenset({"meta", "link", "br", "img", "input", "hr", "source", "wbr"})

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self._open: list[tuple[str, dict[str, str | None], list[str]]] = []
        self.texts: list[tuple[str, dict[str, str | None], str]] = []  # every closed element with its text
        self._all: list[str] = []
        self._hidden = 0  # inside <style> or <title> of the head: not what a reader sees
        self.feed(html)
        self.close()
        self.text = " ".join(" ".join(self._all).split())

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.elements.append((tag, attributes))
        if tag in ("style", "head"):
            self._hidden += 1
        if tag not in self.VOID:
            self._open.append((tag, attributes, []))

    def handle_startendtag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if tag in ("style", "head"):
            self._hidden -= 1
        while self._open:
            name, attributes, parts = self._open.pop()
            text = " ".join(" ".join(parts).split())
            self.texts.append((name, attributes, text))
            if self._open:
                self._open[-1][2].append(text)
            if name == tag:
                break

    def handle_data(self, data):
        if self._open:
            self._open[-1][2].append(data)
        if not self._hidden:
            self._all.append(data)

    def by_id(self, element_id: str) -> str:
        found = [text for _, attrs, text in self.texts if attrs.get("id") == element_id]
        assert found, f"no element with id {element_id!r}"
        return found[0]

    def by_class(self, name: str) -> list[str]:
        return [text for _, attrs, text in self.texts if name in (attrs.get("class") or "").split()]

    def tags(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.elements if name == tag]


# -- fixed reports ---------------------------------------------------------------------------------
def summary(at: datetime, *, errors=0, warnings=0, info=0, added=0, removed=0, linked=1, discovered=0, vaults=1):
    return {
        "run": f"run-{at:%Y%m%d%H%M}",
        "started": at.isoformat(),
        "finished": (at + timedelta(seconds=42)).isoformat(),
        "durationSeconds": 42.0,
        "dryRun": False,
        "groups": {"linked": linked, "discovered": discovered, "newlyDiscovered": 0, "changed": 0},
        "vaults": vaults,
        "names": {"added": added, "removed": removed},
        "findingsBySeverity": {"error": errors, "warning": warnings, "info": info},
        "openFindingsBySeverity": {"error": errors, "warning": warnings, "info": info},
        "unreached": [],
        "driftRemains": bool(errors),
    }


def audited(org, project, group_id, group, vault, names, outcome="unchanged", kind="linked"):
    return {
        "organization": org,
        "project": project,
        "groupId": group_id,
        "group": group,
        "vault": vault,
        "kind": kind,
        "policy": "merge; include *",
        "mapped": len(names),
        "names": list(names),
        "outcome": outcome,
    }


def finding(
    kind,
    severity="error",
    *,
    org="contoso",
    project="Payments",
    group_id=1,
    group="g1",
    vault="kv-one",
    secret=None,
    repaired=False,
    message=None,
):
    return {
        "severity": severity,
        "kind": kind,
        "message": message or f"{kind} in {group}",
        "organization": org,
        "project": project,
        "groupId": group_id,
        "group": group,
        "vault": vault,
        "secret": secret,
        "repaired": repaired,
    }


def record(org, project, group_id, group, vault, *, by=None, change=None, at=None, kind="linked"):
    return LinkRecord(Link(org, project, group_id, group, vault, Policy(), kind=kind), at, by, change)


def report(at: datetime = NOW - timedelta(hours=5), *, findings=(), groups=(), unreached=(), **counts):
    fixed = {"findings": list(findings), "auditedGroups": list(groups), "unreached": list(unreached)}
    return {**summary(at, **counts), **fixed}


def render(latest, history=None, links=(), now=NOW):
    history = [latest] if history is None and latest is not None else (history or [])
    return Page(render_report(latest, history, list(links), now=now, devops_url=DEVOPS))


def healthy():
    groups = [
        audited("contoso", "Payments", 1, "payments-kv", "kv-pay", ["api-key", "db-password"]),
        audited("contoso", "My Project", 2, "web-kv", "kv-web", ["web-key"]),
        audited("fabrikam", "Ops", 3, "ops-kv", "kv-ops", ["ops-token"], kind="discovered"),
    ]
    links = [
        record(
            "contoso", "Payments", 1, "payments-kv", "kv-pay", by="event", change="+1 -0", at=NOW - timedelta(hours=2)
        ),
        record("contoso", "My Project", 2, "web-kv", "kv-web", by="audit", change="+0 -1", at=NOW - timedelta(days=3)),
        record("fabrikam", "Ops", 3, "ops-kv", "kv-ops", kind="discovered"),
    ]
    return report(groups=groups, linked=2, discovered=1, vaults=3, added=4, removed=2), links


class TestSummary:
    def test_no_audit_yet(self):
        """Before the first audit: a banner says so, links are listed as not audited, no chart."""
        page = render(None, links=[record("contoso", "Payments", 1, "payments-kv", "kv-pay")])
        assert "No audit has run yet" in page.by_class("banner")[0]
        assert page.by_id("stat-last-audit").startswith("Last audit never")
        assert "payments-kv" in page.text and "not audited yet" in page.by_class("pill")[-1]
        assert page.tags("svg") == []

    def test_empty_estate(self):
        """A fresh audit of an empty estate: no banner, zero counts, and pages that say there is nothing."""
        page = render(report(linked=0, vaults=0))
        assert page.by_class("banner") == []
        assert page.by_id("stat-vaults").split() == ["Vaults", "0", "listed", "by", "the", "audit"]
        assert "0 / 0" in page.by_id("stat-groups")
        assert "No groups yet" in page.text and "No findings" in page.text

    def test_healthy_estate(self):
        """Counts, groups in sync with their Library links, mapped names and who changed what."""
        latest, links = healthy()
        page = render(latest, links=links)
        assert page.by_class("banner") == []
        assert "Vaults 3" in page.by_id("stat-vaults")
        assert "2 / 1 linked / discovered" in page.by_id("stat-groups")
        assert "+4 −2" in page.by_id("stat-names")
        assert "Errors 0 none" in page.by_id("stat-findings-error")
        assert "42.0 s" in page.by_id("stat-last-audit")
        assert page.by_class("pill").count("in sync") == 3
        hrefs = [a["href"] for a in page.tags("a")]
        assert (
            f"{DEVOPS}/contoso/My%20Project/_library?itemType=VariableGroups&view=VariableGroupView&variableGroupId=2"
            in hrefs
        )
        rows = {
            text.split()[0]: text for _, attrs, text in page.texts if (attrs.get("class") or "").startswith("status-")
        }
        assert "in sync kv-pay api-key db-password" in rows["payments-kv"]  # a few names are listed in place
        assert "event +1 −0" in page.text and "audit +0 −1" in page.text
        assert "Changed 1 group since the last 24 h · event 1" in page.by_id("stat-changed")

    def test_stale_audit(self):
        """An audit that finished more than a day ago is announced; one from this morning is not."""
        page = render(report(NOW - timedelta(days=2)))
        assert "The last audit is out of date" in page.by_class("banner")[0]
        assert "2 days ago" in page.by_class("banner")[0]
        assert render(report(NOW - timedelta(hours=23))).by_class("banner") == []

    def test_incomplete_audit(self):
        """Unreached projects and unreadable vaults make a banner listing them."""
        latest = report(
            unreached=["project contoso/Web: HTTP 429 after 4 attempts"],
            findings=[
                finding(
                    "vault-unreadable",
                    org=None,
                    project=None,
                    group_id=None,
                    group=None,
                    vault="kv-locked",
                    message="kvlink may not list secrets ('List')",
                )
            ],
        )
        banner = render(latest).by_class("banner")[0]
        assert "could not complete: 2 parts" in banner
        assert "project contoso/Web: HTTP 429" in banner and "vault kv-locked: kvlink may not list" in banner


class TestGroupsAndFindings:
    def test_every_finding_kind_with_its_advice(self):
        """Each kind the audit reports is shown under its severity, with what to do about it."""
        kinds = set(re.findall(r'"(?:error|warning|info)",\s+"([a-z-]+)"', AUDIT_SOURCE))
        kinds |= set(re.findall(r'kind = "([a-z-]+)"', AUDIT_SOURCE))
        kinds -= {"error", "warning", "info"}  # ("error", "warning", "info") is the severities' tuple
        assert len(kinds) == 19 and kinds <= set(ADVICE)
        findings = [
            finding(kind, "warning" if i % 3 else "error", group_id=i, group=f"group-{kind}")
            for i, kind in enumerate(sorted(kinds))
        ]
        page = render(report(findings=findings))
        for kind in kinds:
            [card] = [text for _, attrs, text in page.texts if f"kind-{kind}" in (attrs.get("class") or "")]
            assert kind.replace("-", " ") in card and f"What to do: {ADVICE[kind]}" in card
        assert [text.split()[0] for text in page.by_class("sev")] == ["Errors", "Warnings"]

    def test_status_of_each_group(self):
        """Drift, a refusal, an unreadable vault and an unreached vault each show as the group's status."""
        groups = [
            audited("contoso", "P", 1, "drifted-g", "kv-one", ["gone"]),
            audited("contoso", "P", 2, "refused-g", "kv-one", ["a", "b"], outcome="refused"),
            audited("contoso", "P", 3, "locked-g", "kv-locked", ["x"], outcome="vault-unreachable"),
            audited("contoso", "P", 4, "far-g", "kv-far", ["y"], outcome="vault-unreachable"),
            audited("contoso", "P", 5, "fine-g", "kv-one", ["ok"]),
            audited("contoso", "P", 6, "repaired-g", "kv-one", ["ok"], outcome="applied"),
        ]
        findings = [
            finding("secret-deleted", group_id=1, group="drifted-g", secret="gone", project="P"),
            finding("sync-refused", group_id=2, group="refused-g", project="P"),
            finding("vault-unreadable", org=None, project=None, group_id=None, group=None, vault="kv-locked"),
            finding("secret-deleted", group_id=6, group="repaired-g", secret="old", project="P", repaired=True),
        ]
        latest = report(groups=groups, findings=findings, unreached=["vault kv-far: timed out"])
        page = render(latest)
        rows = {
            text.split()[0]: text for _, attrs, text in page.texts if (attrs.get("class") or "").startswith("status-")
        }
        assert "drifted" in rows["drifted-g"] and "refused by the guard" in rows["refused-g"]
        assert "vault unreachable" in rows["locked-g"] and "vault unreachable" in rows["far-g"]
        assert "in sync" in rows["fine-g"] and "in sync" in rows["repaired-g"]
        first = [text.split()[0] for _, attrs, text in page.texts if (attrs.get("class") or "").startswith("status-")]
        assert first[:2] == ["far-g", "locked-g"]  # the worst first

    def test_hostile_names_are_text_never_markup(self):
        """Names that try to inject HTML appear as text; no element or attribute comes from them."""
        a, b = HOSTILE
        groups = [audited(a, b, 7, a, b, [a, b])]
        findings = [
            finding(
                "unmappable",
                "warning",
                org=a,
                project=b,
                group_id=7,
                group=b,
                vault=a,
                secret=b,
                message=f"{a} is not valid {b}",
            )
        ]
        links = [record(a, b, 7, a, b, by=a, change=b, at=NOW - timedelta(hours=1))]
        latest = report(groups=groups, findings=findings, unreached=[f"project {a}/{b}: {b}"])
        html = render_report(latest, [latest], links, now=NOW, devops_url=DEVOPS)
        page = Page(html)
        assert page.tags("img") == [] and page.tags("script") == []
        assert not [name for _, attrs in page.elements for name in attrs if name.startswith("on")]
        # the phone layout labels each cell from a fixed attribute, never from a name
        assert {attrs.get("data-label") for attrs in page.tags("td")} == {
            None,
            "Status",
            "Vault",
            "Mapped",
            "Last change",
            "Policy",
        }
        assert a in page.text and b in page.text
        assert page.text.count(a) >= 3 and page.text.count(b) >= 3
        for link in page.tags("a"):
            assert link["href"].startswith(f"{DEVOPS}/%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E/%22%3E%3Cscript")
        assert "<script" not in html.lower()

    def test_page_is_self_contained(self):
        """Inline CSS with a dark scheme, a viewport for phones, no script and no URL but the Library links."""
        latest, links = healthy()
        html = render_report(latest, [latest], links, now=NOW, devops_url=DEVOPS)
        page = Page(html)
        assert page.tags("script") == [] and page.tags("img") == []
        assert {"name": "viewport", "content": "width=device-width, initial-scale=1"} in page.tags("meta")
        assert "prefers-color-scheme: dark" in html and "overflow-x: auto" in html
        urls = [value for _, attrs in page.elements for name, value in attrs.items() if name in ("href", "src")]
        assert urls and all(u.startswith(f"{DEVOPS}/") or u == "data:," for u in urls)
        assert not re.search(r"url\(|@import", html)

    def test_long_groups_show_how_many_names_are_not_listed(self):
        """A group with more names than the report keeps lists the first ones and says how many more."""
        group = audited("contoso", "P", 1, "big-kv", "kv-one", [f"s-{i:03d}" for i in range(50)])
        page = render(report(groups=[{**group, "mapped": 120}]))
        assert "120 names" in page.text and "s-049" in page.text and "and 70 more" in page.text


class TestTrend:
    def test_one_point_per_run_oldest_on_the_left(self):
        """Each series has one point per run (at most 30), left to right from the oldest."""
        history = [summary(NOW - timedelta(days=d), errors=d % 4, added=d % 3) for d in range(40)]
        page = render(history[0], history)
        [svg] = page.tags("svg")
        assert svg["viewbox"] == "0 0 960 330"
        for series in ("error", "warning", "info", "added", "removed"):
            points = [attrs for attrs in page.tags("circle") if f"pt-{series}" in attrs["class"]]
            assert len(points) == 30
            xs = [float(p["cx"]) for p in points]
            assert xs == sorted(xs)
        titles = [text for name, _, text in page.texts if name == "title" and "errors" in text]
        assert len(titles) == 30
        assert titles[0].startswith(f"{NOW - timedelta(days=29):%d %b %Y}") and titles[0].endswith(": 1 errors")
        assert titles[-1].startswith(f"{NOW:%d %b %Y}") and titles[-1].endswith(": 0 errors")
        assert len(page.tags("polyline")) == 5

    def test_few_runs(self):
        """Three runs: three points per series; the axis shows their dates."""
        history = [summary(NOW - timedelta(days=d), warnings=5 - d) for d in range(3)]
        page = render(history[0], history)
        assert len([c for c in page.tags("circle") if "pt-warning" in c["class"]]) == 3
        assert f"{NOW - timedelta(days=2):%d %b}" in page.text and f"{NOW:%d %b}" in page.text


# -- served by the function app and written by the CLI -----------------------------------------------
@pytest.mark.integration
class TestServed:
    @pytest.fixture
    def audited_estate(self, estate, monkeypatch):
        """An estate with a drifted group, audited once; the function app uses its engine."""
        for key, value in estate.env.items():
            monkeypatch.setenv(key, value)
        engine = estate.engine()
        monkeypatch.setattr(kvlink_app, "get_engine", lambda: engine)
        estate.kv.set_secret(estate.vault, "db-password")
        group = estate.group("payments-kv", ["db-password", "retired-key"])
        estate.link(engine, group)
        return estate, engine, group

    def test_route_registration(self, registered):
        """report is a GET route at /api/report with a function key."""
        [trigger] = [b for b in registered["report"]["bindings"] if b["type"] == "httpTrigger"]
        assert trigger["route"] == "report" and trigger["methods"] == ["GET"]
        assert trigger["authLevel"].lower() == "function"

    def test_get_report_serves_the_page(self, audited_estate):
        """GET /api/report answers the page as HTML, with the audit's findings and the group's status."""
        estate, engine, _ = audited_estate
        run_audit(engine)
        response = function_app.report(func.HttpRequest(method="GET", url="http://localhost/api/report", body=b""))
        assert response.status_code == 200
        sent = HttpResponseConverter.encode(response, expected_type=None).value  # what the worker sends
        assert sent["headers"]["content-type"].value == api.report().content_type == "text/html; charset=utf-8"
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]
        page = Page(response.get_body().decode())
        assert "payments-kv" in page.text and "retired-key" in page.text
        assert "secret deleted" in " ".join(page.by_class("finding"))
        assert f"{estate.org} / {estate.project}" in page.text
        assert "audit +0 −1" in page.text  # the audit's repair, and the path that made it

    def test_errors_stay_json(self, estate, azurite, monkeypatch):
        """With Table storage unreachable the route answers a JSON 503, not a page."""
        proxy = FlakyProxy(azurite.port)
        proxy.broken = True
        try:
            storage = estate.env["AzureWebJobsStorage"].replace(f":{azurite.port}/", f":{proxy.port}/")
            engine = estate.engine(AzureWebJobsStorage=storage)
            monkeypatch.setattr(kvlink_app, "get_engine", lambda: engine)
            response = function_app.report(func.HttpRequest(method="GET", url="http://localhost/api/report", body=b""))
        finally:
            proxy.close()
        assert response.status_code == 503 and response.mimetype == "application/json"
        assert json.loads(response.get_body())["error"]["code"] == "Busy"

    def test_cli_audit_writes_the_page(self, audited_estate, tmp_path):
        """audit --html FILE writes the page; with --dry-run it shows the unsaved run and repairs nothing."""
        estate, _, group = audited_estate
        dry = tmp_path / "dry.html"
        out, err = io.StringIO(), io.StringIO()
        assert cli_main(["audit", "--dry-run", "--html", str(dry)], out=out, err=err) == 2
        assert f"report page: {dry}" in out.getvalue()
        page = Page(dry.read_text(encoding="utf-8"))
        assert "dry run" in page.by_id("stat-last-audit") and "drifted" in page.text
        assert estate.names(group) == ["db-password", "retired-key"]

        applied = tmp_path / "applied.html"
        out = io.StringIO()
        assert cli_main(["audit", "--json", "--html", str(applied)], out=out, err=err) == 0
        assert json.loads(out.getvalue())["auditedGroups"][0]["outcome"] == "applied"
        page = Page(applied.read_text(encoding="utf-8"))
        assert "in sync" in page.by_class("pill") and "dry run" not in page.by_id("stat-last-audit")
