"""The nightly audit over a small estate seeded with every kind of drift."""

from __future__ import annotations

import io
import json
import threading
from datetime import UTC, datetime, timedelta

import azure.functions as func
import pytest
from azure.functions.timer import TimerRequest
from conftest import mark_group

import function_app
from kvlink_core import app as kvlink_app
from kvlink_core.audit import GROUP_NAMES_KEPT, group_summary, run_audit
from kvlink_core.cli import main as cli_main
from kvlink_core.model import GroupKey, Link, Policy
from kvlink_core.registry import AUDIT_TABLE

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)


class Estate2:
    """Two organizations, three projects, four vaults, and one group per kind of drift."""

    def __init__(self, estate) -> None:
        self.e = estate
        kv, ado = estate.kv, estate.ado
        self.org_a, self.org_b = estate.org, f"{estate.org}b"
        self.v1, self.v2, self.v3 = estate.vault, f"{estate.vault}b", f"{estate.vault}c"
        self.v_foreign = f"{estate.vault}x"  # not in KVLINK_ALLOWED_VAULTS
        self.env = {
            "KVLINK_DEVOPS_ORGS": f"{self.org_a},{self.org_b}",
            "KVLINK_ALLOWED_VAULTS": f"{self.v1},{self.v2},{self.v3}",
            "KVLINK_EXPIRY_WARNING_DAYS": "30",
        }
        ado.add_project(self.org_a, "Platform")
        ado.add_project(self.org_b, "Web")
        ep_a = estate.endpoint_id
        ep_platform = ado.add_service_endpoint(self.org_a, "Platform", "kv-connection")
        ep_b = ado.add_service_endpoint(self.org_b, "Web", "kv-connection")
        ep_broken = ado.add_service_endpoint(self.org_a, "Payments", "broken-connection", is_ready=False)

        for name in ("ok", "new-one", "disabled-one", "expiring-soon", "expired-one", "cert-one"):
            kv.set_secret(self.v1, name)
        kv.update_secret(self.v1, "disabled-one", enabled=False)
        kv.update_secret(self.v1, "expiring-soon", expires=NOW + timedelta(days=10))
        kv.update_secret(self.v1, "expired-one", expires=NOW - timedelta(days=2))
        kv.set_secret(self.v1, "cert-one", managed=True)
        for name in ("web-key", "not-in-group", "m-keep"):
            kv.set_secret(self.v2, name)
        kv.set_secret(self.v3, "locked")
        kv.deny(self.v3)

        def group(org, project, name, vault, names, endpoint):
            return ado.add_group(org, project, name, vault=vault, service_endpoint_id=endpoint, variables=names)

        # G1: deleted and disabled names mapped, a matching secret missing
        self.g1 = group(self.org_a, "Payments", "g1-drift", self.v1, ["ok", "deleted-one", "disabled-one"], ep_a)
        # G2: in step, shared with Platform; expiring, expired and certificate-backed names
        self.g2 = group(
            self.org_a,
            "Payments",
            "g2-shared",
            self.v1,
            ["ok", "new-one", "expiring-soon", "expired-one", "cert-one"],
            ep_a,
        )
        ado.share_group(self.org_a, self.g2, "Platform")
        # G3: a Key Vault group nobody linked (discovered), with a deleted secret
        self.g3 = group(self.org_b, "Web", "g3-unlinked", self.v2, ["web-key", "gone-web"], ep_b)
        # G4: mirror group whose secrets were mostly deleted: the guard refuses
        self.g4 = group(self.org_a, "Platform", "g4-storm", self.v2, ["m-keep", "m1", "m2", "m3", "m4"], ep_platform)
        # G5: a vault kvlink may not list
        self.g5 = group(self.org_a, "Payments", "g5-locked", self.v3, ["locked"], ep_a)
        # G6: a link whose group is gone
        self.g6 = group(self.org_a, "Payments", "g6-gone", self.v1, ["ok"], ep_a)
        # G7: its service connection is not ready
        self.g7 = group(self.org_a, "Payments", "g7-connection", self.v1, ["ok"], ep_broken)
        # ignored: a plain group, and a Key Vault group on a vault outside the allow-list
        ado.add_group(self.org_a, "Payments", "plain", variables={"x": {"value": "1"}})
        kv.set_secret(self.v_foreign, "foreign")
        group(self.org_a, "Payments", "foreign-kv", self.v_foreign, ["foreign"], ep_a)

        self.engine = estate.engine(**self.env)
        reg = self.engine.registry
        for gid, name, vault, policy in (
            (self.g1, "g1-drift", self.v1, Policy()),
            (self.g2, "g2-shared", self.v1, Policy(include=("ok", "new-one", "expir*"))),
            (self.g4, "g4-storm", self.v2, Policy(include=("m-*",), mode="mirror")),
            (self.g5, "g5-locked", self.v3, Policy()),
            (self.g6, "g6-gone", self.v1, Policy()),
            (self.g7, "g7-connection", self.v1, Policy(include=("ok",))),
        ):
            project = "Platform" if gid == self.g4 else "Payments"
            reg.save_link(Link(self.org_a, project, gid, name, vault, policy))
            mark_group(ado, self.org_a, gid, policy)  # linked through kvlink: the group carries its policy
        ado.delete_group(self.org_a, self.g6)
        estate.ado.reset_calls()
        estate.kv.reset_calls()

    def names(self, org, gid):
        return sorted(self.e.ado.variable_names(org, gid), key=str.lower)


@pytest.fixture
def big(estate):
    return Estate2(estate)


def kinds(report, *, group=None):
    return sorted(
        (f.kind, f.group or f.vault, f.secret, f.repaired) for f in report.findings if group is None or f.group == group
    )


class TestAudit:
    def test_audit_repairs_reports_and_then_finds_nothing_to_change(self, big):
        """Every kind of drift is found; what may be repaired is; a second run changes nothing."""
        report = run_audit(big.engine)

        assert kinds(report, group="g1-drift") == [
            ("secret-deleted", "g1-drift", "deleted-one", True),
            ("secret-disabled", "g1-drift", "disabled-one", True),
            ("secret-missing", "g1-drift", "expired-one", True),
            ("secret-missing", "g1-drift", "expiring-soon", True),
            ("secret-missing", "g1-drift", "new-one", True),
        ]
        assert big.names(big.org_a, big.g1) == ["expired-one", "expiring-soon", "new-one", "ok"]
        assert kinds(report, group="g2-shared") == [
            ("secret-expired", "g2-shared", "expired-one", False),
            ("secret-expiring", "g2-shared", "expiring-soon", False),
            ("unmappable", "g2-shared", "cert-one", False),
        ]
        # discovered, pruned (never added to), and registered as discovered
        assert kinds(report, group="g3-unlinked") == [("secret-deleted", "g3-unlinked", "gone-web", True)]
        assert big.names(big.org_b, big.g3) == ["web-key"]
        discovered = big.engine.registry.find_link(GroupKey(big.org_b.lower(), big.g3))
        assert discovered is not None and discovered.kind == "discovered"
        # refused by the guard: nothing removed
        refused = [f for f in report.findings if f.kind == "sync-refused"]
        assert [f.group for f in refused] == ["g4-storm"] and "KVLINK_MAX_REMOVAL_FRACTION" in refused[0].message
        assert big.names(big.org_a, big.g4) == ["m-keep", "m1", "m2", "m3", "m4"]
        unreadable = [f for f in report.findings if f.kind == "vault-unreadable"]
        assert [f.vault for f in unreadable] == [big.v3] and "'List'" in unreadable[0].message
        assert [(f.kind, f.group) for f in report.findings if f.kind == "link-target-missing"] == [
            ("link-target-missing", "g6-gone")
        ]
        assert [(f.kind, f.group) for f in report.findings if f.kind.startswith("service-connection")] == [
            ("service-connection-not-ready", "g7-connection")
        ]
        assert not any(f.vault == big.v_foreign or f.group == "plain" for f in report.findings), [
            f for f in report.findings if f.vault == big.v_foreign or f.group == "plain"
        ]

        summary = report.summary()
        assert summary["groups"] == {"linked": 5, "discovered": 1, "unreached": 0, "newlyDiscovered": 1, "changed": 2}
        assert summary["names"] == {"added": 3, "removed": 3}
        assert summary["vaults"] == 2  # v3 could not be listed
        assert summary["driftRemains"] is True  # the refused storm, the locked vault...
        stored = big.engine.registry.latest_report()
        assert stored is not None and stored["names"] == {"added": 3, "removed": 3}
        assert len(stored["findings"]) == len(report.findings)

        big.e.ado.reset_calls()
        second = run_audit(big.engine)
        assert second.summary()["groups"]["changed"] == 0
        assert big.e.ado.writes(big.org_a) == [] and big.e.ado.writes(big.org_b) == []
        leftover = {
            f.group for f in second.findings if f.kind in ("secret-deleted", "secret-disabled", "secret-missing")
        }
        assert leftover == {"g4-storm"}  # only the refused storm still has drift

    def test_dry_run_counts_what_it_would_change(self, big):
        """A dry run writes nothing, yet its summary counts the groups and names a repair would change."""
        big.e.ado.reset_calls()
        report = run_audit(big.engine, dry_run=True)
        assert big.e.ado.writes(big.org_a) == [] and big.e.ado.writes(big.org_b) == []
        summary = report.summary()
        assert summary["dryRun"] is True
        # g1-drift (+3 -2) and g3-unlinked (-1), exactly what the applying run then changes
        assert summary["groups"]["changed"] == 2 and summary["names"] == {"added": 3, "removed": 3}

    def test_report_keeps_a_summary_of_each_group(self, big):
        """The stored report lists each audited group: policy, names after the run, and what the audit did."""
        report = run_audit(big.engine)
        assert "auditedGroups" not in report.summary()  # the summary (log line, notification) is unchanged
        groups = {g["group"]: g for g in report.as_json()["auditedGroups"]}
        assert set(groups) == {"g1-drift", "g2-shared", "g3-unlinked", "g4-storm", "g5-locked", "g7-connection"}
        assert groups["g1-drift"] == {
            "organization": big.org_a,
            "project": "Payments",
            "groupId": big.g1,
            "group": "g1-drift",
            "vault": big.v1,
            "kind": "linked",
            "policy": "merge; include *",
            "mapped": 4,
            "names": ["expired-one", "expiring-soon", "new-one", "ok"],
            "outcome": "applied",
        }
        assert groups["g2-shared"]["policy"] == "merge; include ok, new-one, expir*"
        assert (groups["g3-unlinked"]["kind"], groups["g3-unlinked"]["policy"]) == (
            "discovered",
            "discovered: prune only",
        )
        assert (groups["g4-storm"]["outcome"], groups["g4-storm"]["mapped"]) == ("refused", 5)
        assert groups["g4-storm"]["policy"] == "mirror; include m-*"
        assert groups["g5-locked"]["outcome"] == "vault-unreachable"
        assert groups["g7-connection"]["outcome"] == "unchanged"
        stored = big.engine.registry.latest_report()
        assert stored is not None and stored["auditedGroups"] == report.as_json()["auditedGroups"]
        assert stored["groups"]["linked"] == 5  # the counts keep their key

    def test_each_vault_listed_once_and_each_project_once(self, big):
        """Listings: one pass per vault, one group listing per project, whatever shares them."""
        run_audit(big.engine)
        v1_pages = [c for c in big.e.kv.calls if c.path == f"/{big.v1}/secrets" and c.status == 200]
        assert len(v1_pages) == 1  # 4 groups map v1; 6 secrets fit one page
        group_lists = [c for c in big.e.ado.calls if c.method == "GET" and c.path.endswith("/variablegroups")]
        assert len(group_lists) == 3  # Payments, Platform, Web
        single_reads = [c.path for c in big.e.ado.calls if c.method == "GET" and "/variablegroups/" in c.path]
        # Only the drifted groups are re-read, once each, under their leases before the write (g4's is then
        # refused by the guard); groups in step are not.
        assert sorted(int(p.rsplit("/", 1)[1]) for p in single_reads) == sorted([big.g1, big.g3, big.g4])

    def test_report_mode_changes_nothing(self, big):
        """KVLINK_MODE=report: findings, no writes, no discovered links, nothing marked repaired."""
        engine = big.e.engine(**big.env, KVLINK_MODE="report")
        report = run_audit(engine)
        assert big.e.ado.writes(big.org_a) == [] and big.e.ado.writes(big.org_b) == []
        assert not any(f.repaired for f in report.findings)
        assert engine.registry.find_link(GroupKey(big.org_b.lower(), big.g3)) is None
        assert report.summary()["dryRun"] is True

    def test_unreachable_vault_and_throttling_storm(self, big):
        """A failing vault and a throttled project are reported as not reached; the rest completes."""
        big.e.kv.inject(503, path=f"^/{big.v2}/secrets$", times=100)
        # a 429 storm: short ones everywhere are waited out, one project stays throttled throughout
        big.e.ado.inject(429, method="GET", retry_after=0.01, times=2)
        big.e.ado.inject(
            429, method="GET", path="/Web/_apis/distributedtask/variablegroups$", retry_after=0.01, times=100
        )
        report = run_audit(big.engine)
        assert any(big.v2 in u for u in report.unreached)
        assert any("/Web" in u and "429" in u for u in report.unreached)
        assert big.names(big.org_a, big.g1) == ["expired-one", "expiring-soon", "new-one", "ok"]
        assert big.names(big.org_b, big.g3) == ["gone-web", "web-key"]  # not reached: untouched
        assert report.drift_remains

    def test_a_kvlink_write_after_the_listing_is_not_lost(self, big, monkeypatch):
        """If an event writes a group between the audit's listing and its write, the audit re-reads it."""
        from standins.events import secret_event

        engine = big.engine
        original = engine.devops.list_groups

        def list_then_event(org, project, **kwargs):
            groups = list(original(org, project, **kwargs))
            if project == "Payments":  # an event lands right after this project was listed
                version = big.e.kv.set_secret(big.v1, "arrived-meanwhile")
                engine.handle_event(secret_event(big.v1, "arrived-meanwhile", version))
            return groups

        monkeypatch.setattr(engine.devops, "list_groups", list_then_event)
        run_audit(engine)
        assert "arrived-meanwhile" in big.names(big.org_a, big.g1)
        assert "new-one" in big.names(big.org_a, big.g1)


class TestHandEdits:
    """The audit writes a drifted group from a read under its lease, never from its listing."""

    def test_edits_made_after_the_listing_survive_the_write(self, estate, monkeypatch):
        """A person's edits between the listing and the write stay: description, shares, a hand-added name
        (merge keeps it while its secret is live); a group re-pointed to another vault is left alone, and one
        put right by hand is not written at all."""
        kv, ado = estate.kv, estate.ado
        for name in ("app-1", "app-2", "app-3", "hand-made"):
            kv.set_secret(estate.vault, name)
        ado.add_project(estate.org, "Shared")
        engine = estate.engine(KVLINK_DEVOPS_PROJECTS=f"{estate.org}/{estate.project}")
        # Both drifted: gone-1 is not in the vault, app-3 is missing.
        edited = estate.group("edited-kv", ["app-1", "app-2", "gone-1"])
        moved = estate.group("moved-kv", ["app-1", "app-2", "gone-1"])
        fixed = estate.group("fixed-kv", ["app-1", "app-2", "gone-1"])
        for group in (edited, moved, fixed):
            estate.link(engine, group, Policy(include=("app-*",)))
        listed = engine.devops.list_groups

        def by_hand(group: dict) -> None:
            group["description"] = "owned by team payments"
            group["variables"]["hand-made"] = {
                "isSecret": True,
                "value": None,
                "enabled": True,
                "contentType": "",
                "expires": None,
            }

        def list_then_edit(org, project, **kwargs):
            groups = list(listed(org, project, **kwargs))
            # Someone works in the web UI right after the audit listed the project.
            ado.edit_group(estate.org, edited, by_hand)
            ado.share_group(estate.org, edited, "Shared")
            ado.edit_group(estate.org, moved, lambda g: g["providerData"].update(vault="kv-elsewhere"))
            ado.edit_group(estate.org, fixed, put_right)
            return groups

        def put_right(group: dict) -> None:
            variables = group["variables"]
            variables["app-3"] = variables.pop("gone-1")

        monkeypatch.setattr(engine.devops, "list_groups", list_then_edit)
        report = run_audit(engine, store=False)

        after = ado.group(estate.org, edited)
        assert sorted(after["variables"]) == ["app-1", "app-2", "app-3", "hand-made"]
        # The person's text stays; the write adds the link's marker (kvlink_core.marker) on its own line.
        assert after["description"] == "owned by team payments\n[kvlink v1 mode=merge include=app-* expired=keep]"
        assert {r["projectReference"]["name"] for r in after["variableGroupProjectReferences"]} == {
            estate.project,
            "Shared",
        }
        assert ado.writes(estate.org, moved) == []
        assert ado.group(estate.org, moved)["providerData"]["vault"] == "kv-elsewhere"
        assert [(f.kind, f.group_id) for f in report.findings if f.group_id == moved] == [("vault-changed", moved)]
        outcomes = {g["groupId"]: (g["outcome"], g["names"]) for g in report.groups}
        assert outcomes[edited] == ("applied", ["app-1", "app-2", "app-3", "hand-made"])
        assert outcomes[moved][0] == "vault-changed"
        assert outcomes[fixed] == ("unchanged", ["app-1", "app-2", "app-3"])
        assert ado.writes(estate.org, fixed) == []
        assert [f.kind for f in report.findings if f.group_id == fixed] == []


class TestCallCounts:
    def test_audit_lists_and_re_reads_only_the_groups_it_writes(self, estate):
        """Audit of one vault with a drifted and an in-step group: listings once each, then one read and one
        write for the drifted group only, under its lease."""
        for name in ("app-1", "app-2"):
            estate.kv.set_secret(estate.vault, name)
        engine = estate.engine()
        drifted = estate.group("drifted-kv", ["app-1"])
        in_step = estate.group("in-step-kv", ["app-1", "app-2"])
        for group in (drifted, in_step):
            estate.link(engine, group)
        run_audit(engine, store=False)  # warm: opens the tables, pays the Key Vault challenge
        estate.kv.set_secret(estate.vault, "app-3")
        estate.ado.edit_group(estate.org, in_step, lambda g: g["variables"].update(ok_3(g)))
        for system in (estate.kv, estate.ado):
            system.reset_calls()
        estate.table_calls.reset()

        run_audit(engine, store=False)

        assert [c.method for c in estate.kv.calls] == ["GET"]  # one listing page
        reads = sorted(c.path.split("/_apis/", 1)[1] for c in estate.ado.calls if c.method == "GET")
        assert reads == [
            "distributedtask/variablegroups",  # the project's groups
            f"distributedtask/variablegroups/{drifted}",  # the drifted group, re-read under its lease
            "projects",
            "serviceendpoint/endpoints",
        ]
        assert [c.path.rsplit("/", 1)[1] for c in estate.ado.writes(estate.org)] == [str(drifted)]
        # links, the last run's listing sizes, vault work and queues read once each; for the written group
        # only: lease create, renewal before the PUT, write marker, release (the marker is no longer read:
        # every write re-reads the group)
        assert estate.table_calls.by_method == {"GET": 4, "POST": 1, "PUT": 1, "PATCH": 1, "DELETE": 1}


def ok_3(group: dict) -> dict:
    """The in-step group gains app-3 by hand, so only the other group drifts."""
    return {"app-3": dict(group["variables"]["app-1"])}


class TestEntryPoints:
    @pytest.fixture
    def wired(self, big, monkeypatch):
        for key, value in {**big.e.env, **big.env}.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setattr(kvlink_app, "get_engine", lambda: big.engine)
        return big

    def test_timer_then_latest_report(self, wired, registered):
        """nightly_audit (past due) runs the audit; GET /api/audit/latest serves its report."""
        bindings = registered["nightly_audit"]["bindings"]
        assert bindings[0]["type"] == "timerTrigger" and bindings[0]["schedule"] == "%KVLINK_AUDIT_SCHEDULE%"
        assert bindings[0]["useMonitor"] is True

        req = func.HttpRequest(method="GET", url="http://localhost/api/audit/latest", body=b"")
        table = wired.engine.registry._table(AUDIT_TABLE)
        for entity in list(table.list_entities()):  # reports of earlier tests share this Azurite
            table.delete_entity(entity["PartitionKey"], entity["RowKey"])
        response = function_app.audit_latest(req)
        assert response.status_code == 404 and b"NoAuditYet" in response.get_body()

        function_app.nightly_audit(TimerRequest(past_due=True))

        response = function_app.audit_latest(req)
        body = json.loads(response.get_body())
        assert response.status_code == 200
        assert body["groups"]["changed"] == 2
        assert {f["kind"] for f in body["findings"]} >= {"secret-deleted", "sync-refused", "vault-unreadable"}

    def test_cli_audit(self, wired):
        """The CLI prints the findings table; --json is the report. It exits 1, not 2: a vault it may not
        list (vault-unreadable) means it could not look at everything, which outranks the drift it found."""
        out, err = io.StringIO(), io.StringIO()
        assert cli_main(["audit", "--dry-run"], out=out, err=err) == 1
        text = out.getvalue()
        assert "SEVERITY" in text and "secret-deleted" in text and "dry run:" in text
        assert wired.e.ado.writes(wired.org_a) == []
        out = io.StringIO()
        assert cli_main(["audit", "--json"], out=out, err=err) == 1
        report = json.loads(out.getvalue())
        assert report["groups"]["changed"] == 2 and report["findings"]
        assert {f["kind"] for f in report["findings"]} >= {"vault-unreadable", "sync-refused"}


def test_group_summary_keeps_the_first_names_and_the_count():
    """A group's summary keeps its first 50 names (case-insensitive order) and the full count."""
    link = Link("contoso", "Payments", 7, "big-kv", "kv-big", Policy(exclude=("*-old",), keep_expired=False))
    names = [f"Secret-{i:03d}" for i in range(120, 0, -1)]
    summary = group_summary(link, names, "unchanged")
    assert summary["mapped"] == 120 and len(summary["names"]) == GROUP_NAMES_KEPT == 50
    assert summary["names"][:2] == ["Secret-001", "Secret-002"]
    assert summary["policy"] == "merge; include *; exclude *-old; drops expired"


class TestMemory:
    def test_a_listed_group_keeps_its_names_not_their_attributes(self):
        """The audit plans from names; the write re-reads the group, so per-variable attributes are not kept."""
        from kvlink_core.audit import _slim
        from kvlink_core.devops import VariableGroup

        listed = VariableGroup(
            {
                "id": 7,
                "name": "app",
                "type": "AzureKeyVault",
                "providerData": {"vault": "kv1", "serviceEndpointId": "e1"},
                "variables": {
                    "db-password": {"isSecret": True, "value": None, "enabled": True, "contentType": ""},
                    "Api-Key": {"isSecret": True, "value": None, "enabled": False, "contentType": "x"},
                },
            }
        )

        slim = _slim(listed)

        assert (slim.id, slim.name, slim.vault, slim.service_endpoint_id) == (7, "app", "kv1", "e1")
        assert list(slim.variables) == ["db-password", "Api-Key"]
        assert len({id(v) for v in slim.variables.values()}) == 1  # one shared placeholder, not a dict each
        assert listed.raw["variables"]["Api-Key"]["enabled"] is False  # the listing itself is untouched

    def test_the_collector_is_set_back_after_an_audit(self, big):
        import gc

        before = gc.get_threshold(), gc.get_freeze_count()

        run_audit(big.engine, store=False)

        assert (gc.get_threshold(), gc.get_freeze_count()) == before


class TestScheduling:
    """How the audit keeps its allowed concurrency busy: behaviour, never timing."""

    def test_longest_listings_start_first_by_the_last_runs_page_counts(self, estate):
        """With one Key Vault call at a time the order of each vault's first page is the order listings
        start: a vault with no record first (it may be long), then by the pages the last audit stored."""
        short, long_, middle, new = (f"{estate.vault}{s}" for s in ("s", "l", "m", "n"))
        for vault, secrets in ((short, 3), (long_, 60), (middle, 30), (new, 3)):
            for i in range(secrets):
                estate.kv.set_secret(vault, f"s-{i}")
        engine = estate.engine(KVLINK_VAULT_CONCURRENCY="1", KVLINK_ALLOWED_VAULTS=f"{short},{long_},{middle},{new}")
        for vault in (short, long_, middle, new):
            group = estate.group(f"group-{vault}", ["s-0"], vault=vault)
            estate.link(engine, group, vault=vault)
        # What an earlier audit recorded (a long vault is listed in more pages); `new` was not listed then.
        engine.registry.save_vault_pages({short: 1, long_: 3, middle: 2})
        estate.kv.reset_calls()

        run_audit(engine, store=False)

        calls = sorted((c for c in estate.kv.calls if c.status == 200), key=lambda c: c.started)
        first_pages = list(dict.fromkeys(c.path.strip("/").split("/", 1)[0] for c in calls))
        assert first_pages == [new, long_, middle, short]

    def test_an_audit_stores_each_vaults_page_count_for_the_next(self, estate):
        for i in range(30):  # 25 secrets a page: two pages
            estate.kv.set_secret(estate.vault, f"app-{i}")
        engine = estate.engine()
        estate.link(engine, estate.group("app-kv", ["app-0"]))

        run_audit(engine)

        assert engine.registry.vault_pages() == {estate.vault: 2}

    def test_a_group_is_written_while_another_vaults_listing_is_still_running(self, estate, monkeypatch):
        """More groups wait for a slow vault than the audit has work threads; a group of a vault listed
        already is still written before the slow listing ends (work is handed over when a listing is in,
        no thread waits for one)."""
        slow = f"{estate.vault}slow"
        estate.kv.set_secret(slow, "app-1")
        estate.kv.set_secret(estate.vault, "app-1")
        estate.kv.set_secret(estate.vault, "app-2")
        # KVLINK_DEVOPS_CONCURRENCY=1: the audit's work pool has 4 * 1 + 8 = 12 threads.
        engine = estate.engine(KVLINK_DEVOPS_CONCURRENCY="1", KVLINK_ALLOWED_VAULTS=f"{estate.vault},{slow}")
        for i in range(16):  # listed first (ids ascending), in step: nothing to write
            estate.group(f"slow-{i:02d}", ["app-1"], vault=slow)
        drifted = estate.group("drifted-kv", ["app-1"])  # lacks app-2
        estate.link(engine, drifted)
        written = threading.Event()
        released_by_write: list[bool] = []
        kv_handle, ado_handle = estate.kv.handle, estate.ado.handle

        def slow_vault(request):
            if request.path.strip("/").startswith(slow) and not released_by_write:
                # Hold the slow vault's listing until the drifted group is written (or give up: then it was not).
                released_by_write.append(written.wait(timeout=30))
            return kv_handle(request)

        def devops(request):
            response = ado_handle(request)
            if request.method == "PUT" and request.path.endswith(f"/variablegroups/{drifted}"):
                written.set()
            return response

        monkeypatch.setattr(estate.kv, "handle", slow_vault)
        monkeypatch.setattr(estate.ado, "handle", devops)

        report = run_audit(engine, store=False)

        assert released_by_write == [True]
        assert estate.names(drifted) == ["app-1", "app-2"]
        assert report.groups_changed == 1
        assert report.unreached == []


# -- the registry rebuilt from Azure DevOps (kvlink_core.marker) ---------------------------------------
def link_through_kvlink(engine, estate, group: str, **policy) -> int:
    """Link a new group the way POST /api/links does; its policy goes into its description too."""
    from kvlink_core.linking import LinkRequest, link_group

    body = estate.link_body(group=group, **policy)
    return link_group(engine, LinkRequest.from_json(body, engine.settings)).link.group_id


class TestRegistryRebuilt:
    """Issue 21: with kvlink's tables emptied, the audit re-registers every managed group under the policy
    its description carries, says so, and the group follows its vault again."""

    def test_every_managed_group_gets_its_names_under_its_own_policy(self, estate):
        from standins.events import secret_event

        kv, vault = estate.kv, estate.vault
        for name in ("app-1", "db-1"):
            kv.set_secret(vault, name)
        engine = estate.engine()
        apps = link_through_kvlink(engine, estate, "apps-kv", include=["app-*"])
        rest = link_through_kvlink(engine, estate, "rest-kv", exclude=["app-*"], mode="mirror")
        by_hand = estate.group("by-hand-kv", ["app-1"])  # nobody linked it: discovered, prune only
        before = {link.group_id: link for link in engine.registry.list_links(organization=estate.org)}
        assert set(before) == {apps, rest}

        estate.empty_tables()
        for name in ("app-2", "db-2", "other-1"):
            kv.set_secret(vault, name)
        engine = estate.engine()
        assert engine.registry.list_links(organization=estate.org) == []

        report = run_audit(engine, store=False)

        # The policies came from the markers: the default (include *) would have given each group every name.
        assert estate.names(apps) == ["app-1", "app-2"]
        assert estate.names(rest) == ["db-1", "db-2", "other-1"]
        assert estate.names(by_hand) == ["app-1"]
        restored = sorted((f.group_id, f.severity) for f in report.findings if f.kind == "link-restored")
        assert restored == [(apps, "warning"), (rest, "warning")]
        assert report.summary()["groups"] == {
            "linked": 2,
            "discovered": 1,
            "unreached": 0,
            "newlyDiscovered": 1,
            "changed": 2,
        }
        after = {link.group_id: link for link in engine.registry.list_links(organization=estate.org)}
        assert after[apps] == before[apps] and after[rest] == before[rest]
        assert after[by_hand].kind == "discovered"

        # Events reach the groups again.
        version = kv.set_secret(vault, "app-3")
        engine.handle_event(secret_event(vault, "app-3", version))
        assert estate.names(apps) == ["app-1", "app-2", "app-3"]
        assert estate.names(rest) == ["db-1", "db-2", "other-1"]

        again = run_audit(engine, store=False)
        assert [f for f in again.findings if f.kind.startswith("link-")] == []

    def test_dry_run_says_what_it_would_register(self, estate):
        estate.kv.set_secret(estate.vault, "app-1")
        engine = estate.engine()
        apps = link_through_kvlink(engine, estate, "apps-kv", include=["app-*"])
        estate.empty_tables()
        estate.kv.set_secret(estate.vault, "app-2")
        engine = estate.engine()

        report = run_audit(engine, dry_run=True, store=False)

        [finding] = [f for f in report.findings if f.kind == "link-restored"]
        assert "would register it again" in finding.message and "include app-*" in finding.message
        assert report.names_added == 1 and estate.names(apps) == ["app-1"]
        assert engine.registry.list_links(organization=estate.org) == []

    def test_a_marker_edited_into_nonsense_is_reported_not_guessed(self, estate):
        estate.kv.set_secret(estate.vault, "app-1")
        engine = estate.engine()
        apps = link_through_kvlink(engine, estate, "apps-kv", include=["app-*"])

        def garble(group: dict) -> None:
            for holder in (group, *group["variableGroupProjectReferences"]):
                holder["description"] = holder["description"].replace("include=app-*", "include=app-[x]")

        estate.ado.edit_group(estate.org, apps, garble)
        estate.empty_tables()
        for name in ("app-2", "db-1"):
            estate.kv.set_secret(estate.vault, name)
        engine = estate.engine()

        report = run_audit(engine, store=False)

        [finding] = [f for f in report.findings if f.group_id == apps]
        assert (finding.kind, finding.severity) == ("link-marker-unreadable", "error")
        assert "cannot be read" in finding.message and "discovered" in finding.message
        assert report.drift_remains  # a person must look: the CLI exits 2
        assert estate.names(apps) == ["app-1"]  # neither app-2 (its policy) nor db-1 (a guess)
        [link] = engine.registry.list_links(organization=estate.org)
        assert (link.group_id, link.kind) == (apps, "discovered")
        # And every night until someone fixes it -- never promoted by a guess.
        again = run_audit(engine, store=False)
        assert [f.kind for f in again.findings if f.group_id == apps] == ["link-marker-unreadable"]

    def test_the_cli_table_shows_each_group_registered_again(self, estate, monkeypatch):
        estate.kv.set_secret(estate.vault, "app-1")
        apps = link_through_kvlink(estate.engine(), estate, "apps-kv", include=["app-*"])
        estate.empty_tables()
        estate.kv.set_secret(estate.vault, "app-2")
        engine = estate.engine()
        for key, value in estate.env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setattr(kvlink_app, "get_engine", lambda: engine)
        out, err = io.StringIO(), io.StringIO()

        code = cli_main(["audit"], out=out, err=err)

        [row] = [line for line in out.getvalue().splitlines() if "link-restored" in line]
        assert row.split()[:3] == ["warning", "link-restored", f"{estate.org}/{estate.project}/apps-kv"]
        assert "registered it again under the policy in its description (merge; include app-*)" in row
        assert code == 0 and estate.names(apps) == ["app-1", "app-2"]


class TestMarkersBroughtInStep:
    """Issue 21: links made before kvlink kept markers (an upgraded deployment) get theirs from the next
    audit, not from a write that may never come; a marker edited by hand while the link exists is put back."""

    APPS = "[kvlink v1 mode=merge include=app-* expired=keep]"  # kvlink_core/marker.py's format, v1

    def quiet_unmarked_group(self, estate, engine, name="apps-kv", **policy):
        for secret in ("app-1", "app-2"):
            estate.kv.set_secret(estate.vault, secret)
        gid = estate.group(name, ["app-1", "app-2"])  # in step with its vault: nothing else would write it
        estate.ado.edit_group(estate.org, gid, describe("owned by team payments"))
        estate.link(engine, gid, Policy(include=("app-*",), **policy), marked=False)
        return gid

    def test_an_unmarked_link_gets_its_marker_once(self, estate):
        engine = estate.engine()
        apps = self.quiet_unmarked_group(estate, engine)
        estate.ado.reset_calls()

        report = run_audit(engine, store=False)

        after = estate.ado.group(estate.org, apps)
        assert after["description"] == f"owned by team payments\n{self.APPS}"  # the people's text stays
        assert [r["description"] for r in after["variableGroupProjectReferences"]] == [after["description"]]
        assert estate.names(apps) == ["app-1", "app-2"] and len(estate.ado.writes(estate.org, apps)) == 1
        [finding] = [f for f in report.findings if f.group_id == apps]
        assert (finding.kind, finding.severity, finding.repaired) == ("link-marked", "info", True)
        assert "writes it (merge; include app-*)" in finding.message
        assert report.summary()["groups"]["changed"] == 0  # no name changed
        assert not report.drift_remains

        estate.ado.reset_calls()
        again = run_audit(engine, store=False)
        assert estate.ado.writes(estate.org) == []
        assert [f for f in again.findings if f.kind.startswith("link-")] == []
        # In step: the audit read no group on its own (the project's listing was enough).
        assert [c for c in estate.ado.calls if c.path.endswith(f"/variablegroups/{apps}")] == []

    @pytest.mark.parametrize("how", ["dry run", "KVLINK_MODE=report"])
    def test_a_dry_run_says_what_it_would_mark(self, estate, how):
        engine = estate.engine(**({"KVLINK_MODE": "report"} if how != "dry run" else {}))
        apps = self.quiet_unmarked_group(estate, engine)
        estate.ado.reset_calls()

        report = run_audit(engine, dry_run=how == "dry run", store=False)

        [finding] = [f for f in report.findings if f.group_id == apps]
        assert (finding.kind, finding.repaired) == ("link-marked", False)
        assert "would write it (merge; include app-*)" in finding.message
        assert estate.ado.writes(estate.org) == []
        assert estate.ado.group(estate.org, apps)["description"] == "owned by team payments"

    def test_a_marker_edited_by_hand_is_reported_and_the_registry_policy_written_back(self, estate):
        engine = estate.engine()
        for secret in ("app-1", "db-1"):
            estate.kv.set_secret(estate.vault, secret)
        apps = link_through_kvlink(engine, estate, "apps-kv", include=["app-*"])
        estate.ado.edit_group(
            estate.org, apps, lambda g: g.update(description=g["description"].replace("include=app-*", "include=db-*"))
        )
        estate.ado.reset_calls()

        report = run_audit(engine, store=False)

        [finding] = [f for f in report.findings if f.group_id == apps]
        assert (finding.kind, finding.severity, finding.repaired) == ("link-marker-changed", "warning", True)
        assert "says policy (merge; include db-*) but its link says (merge; include app-*)" in finding.message
        description = estate.ado.group(estate.org, apps)["description"]
        assert description.endswith(f"kept in step by kvlink\n{self.APPS}") and "db-*" not in description
        assert estate.names(apps) == ["app-1"]  # the registry's policy applied, not the edited one
        assert len(estate.ado.writes(estate.org, apps)) == 1
        again = run_audit(engine, store=False)
        assert [f for f in again.findings if f.group_id == apps] == []

    def test_a_marker_edited_into_nonsense_while_linked_is_put_back(self, estate):
        engine = estate.engine()
        estate.kv.set_secret(estate.vault, "app-1")
        apps = link_through_kvlink(engine, estate, "apps-kv", include=["app-*"])
        estate.ado.edit_group(estate.org, apps, describe("[kvlink v1 mode=sometimes include=app-* expired=keep]"))

        report = run_audit(engine, store=False)

        [finding] = [f for f in report.findings if f.group_id == apps]
        assert (finding.kind, finding.severity, finding.repaired) == ("link-marker-changed", "warning", True)
        assert "cannot be read (mode=sometimes is not merge or mirror)" in finding.message
        assert estate.ado.group(estate.org, apps)["description"] == self.APPS

    def test_a_description_too_long_for_the_marker_is_reported_not_written(self, estate):
        """kvlink keeps descriptions within 1,024 characters (kvlink_core/marker.py, DESCRIPTION_LIMIT)."""
        engine = estate.engine()
        apps = self.quiet_unmarked_group(estate, engine)
        estate.ado.edit_group(estate.org, apps, describe("x" * 1000))
        estate.ado.reset_calls()

        report = run_audit(engine, store=False)

        [finding] = [f for f in report.findings if f.group_id == apps]
        assert (finding.kind, finding.severity, finding.repaired) == ("link-marker-too-long", "warning", False)
        assert "would come back as discovered" in finding.message
        assert estate.ado.writes(estate.org) == []  # the write could not carry the marker: none is made for it

    def test_an_upgraded_deployment_survives_losing_its_tables(self, estate):
        """Links made before markers, audited once, then the tables lost: every group comes back linked."""
        engine = estate.engine()
        apps = self.quiet_unmarked_group(estate, engine)
        estate.kv.set_secret(estate.vault, "db-1")
        rest = estate.group("rest-kv", ["app-1", "app-2", "db-1"])
        estate.link(engine, rest, Policy(exclude=("app-*",), mode="mirror"), marked=False)
        run_audit(engine, store=False)

        estate.empty_tables()
        estate.kv.set_secret(estate.vault, "app-3")
        engine = estate.engine()
        report = run_audit(engine, store=False)

        restored = sorted((f.group_id, f.kind) for f in report.findings if f.kind.startswith("link-"))
        assert restored == [(apps, "link-restored"), (rest, "link-restored")]
        assert {link.group_id: link.kind for link in engine.registry.list_links(organization=estate.org)} == {
            apps: "linked",
            rest: "linked",
        }
        assert estate.names(apps) == ["app-1", "app-2", "app-3"]
        assert estate.names(rest) == ["db-1"]


def describe(text: str):
    """A person's edit of a group's description (and its project references', as the Library does)."""

    def edit(group: dict) -> None:
        for holder in (group, *group["variableGroupProjectReferences"]):
            holder["description"] = text

    return edit
