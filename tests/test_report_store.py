"""Audit reports of any size are stored whole, and failing to store one never fails the audit.

Table storage limits a property to 64 KiB (32K UTF-16 characters), an entity to 1 MiB and a
transaction to 100 entities and 4 MiB; Azurite answers 400 to the first as Azure does.
"""

from __future__ import annotations

import io
import json
import logging

import azure.functions as func
import pytest
from azure.functions.timer import TimerRequest

import function_app
from kvlink_core.audit import run_audit
from kvlink_core.cli import main as cli_main
from kvlink_core.registry import AUDIT_TABLE, Registry
from standins.eventgrid import EventGridTopicStandIn
from standins.tcpproxy import FlakyProxy

pytestmark = pytest.mark.integration

TRANSACTION_LIMIT = 4 * 1024 * 1024


def long_names(count: int, length: int = 120) -> list[str]:
    return [f"{i:04d}-" + "x" * (length - 5) for i in range(count)]


@pytest.fixture
def big_refusal(estate, app_engine):
    """A linked group mapping 1,000 long names its vault no longer has: the guard refuses the sync."""
    estate.kv.set_secret(estate.vault, "keep-me")
    group = estate.group("payments-kv", ["keep-me", *long_names(1000)])
    estate.link(app_engine, group)
    return group


@pytest.fixture(scope="module")
def topic(ca):
    server = EventGridTopicStandIn(ssl_context=ca.server_context(), token="kvlink-emulator-token").start()
    yield server
    server.stop()


def refused(findings: list[dict]) -> dict:
    (finding,) = [f for f in findings if f["kind"] == "sync-refused"]
    return finding


class TestBigRefusal:
    def test_stored_and_served_by_the_api(self, estate, big_refusal):
        """The nightly audit stores the refusal; GET /api/audit/latest serves it, its plan truncated readably."""
        function_app.nightly_audit(TimerRequest(past_due=False))

        response = function_app.audit_latest(
            func.HttpRequest(method="GET", url="http://localhost/api/audit/latest", body=b"")
        )
        assert response.status_code == 200
        report = json.loads(response.get_body())
        message = refused(report["findings"])["message"]
        assert "KVLINK_MAX_REMOVAL_FRACTION" in message
        assert long_names(1)[0] in message and "... and 980 more" in message
        assert len(message) < 8_000
        deleted = [f for f in report["findings"] if f["kind"] == "secret-deleted"]
        assert sorted(f["secret"] for f in deleted) == long_names(1000)
        assert report["findingsBySeverity"]["error"] == 1001
        assert estate.names(big_refusal)[:2] == ["0000-" + "x" * 115, "0001-" + "x" * 115]  # nothing removed

    def test_cli_audit_json(self, estate, big_refusal, app_engine):
        """`python -m kvlink_core audit --json` prints the refusal, stores the report, and exits 2."""
        out, err = io.StringIO(), io.StringIO()
        assert cli_main(["audit", "--json"], out=out, err=err) == 2
        printed = json.loads(out.getvalue())
        assert printed["reportStored"] is True
        assert "... and 980 more" in refused(printed["findings"])["message"]
        stored = app_engine.registry.latest_report()
        assert stored is not None and stored["run"] == printed["run"]
        assert refused(stored["findings"]) == refused(printed["findings"])


class TestHugeReports:
    @pytest.fixture
    def registry(self, estate):
        """A registry whose every Table request is recorded, to check the transaction limits."""
        sizes: list[tuple[str, int]] = []

        def record(request):
            body = request.http_request.body or b""
            sizes.append((request.http_request.url, len(body if isinstance(body, bytes) else str(body).encode())))

        registry = Registry(estate.settings(), client_options={"raw_request_hook": record})
        registry.sizes = sizes  # type: ignore[attr-defined]
        yield registry
        registry.close()

    def test_huge_findings_round_trip(self, registry):
        """Findings, group summaries and a summary far beyond the property, entity and transaction limits
        come back exactly as saved; no transaction exceeds 100 entities or 4 MiB."""
        huge = "é✓𝄞 " + "y" * 1_500_000  # beyond one entity (1 MiB), with characters JSON escapes
        findings = [{"severity": "error", "kind": "sync-refused", "message": huge, "groupId": 1}]
        findings += [{"severity": "warning", "kind": "k", "message": f"{i} " + "z" * 40_000} for i in range(150)]
        findings += [{"severity": "info", "kind": "small", "message": str(i)} for i in range(250)]
        groups = [{"group": f"g{i}", "names": long_names(50, 127), "outcome": "unchanged"} for i in range(300)]
        groups.append({"group": "wide", "policy": "include " + ", ".join(long_names(2_000)), "names": []})
        summary = {
            "started": "2026-01-01T00:00:00+00:00",
            "unreached": [f"project {i}: " + "u" * 500 for i in range(400)],
        }

        run = registry.save_report(summary, findings, groups)

        latest = registry.latest_report()
        assert latest is not None and latest["run"] == run
        assert latest["findings"] == findings
        assert latest["auditedGroups"] == groups
        assert {k: latest[k] for k in summary} == summary
        (history,) = [h for h in registry.report_history() if h["run"] == run]
        assert history == {"run": run, **summary}
        batches = [size for url, size in registry.sizes if url.endswith("$batch")]
        assert batches and max(batches) < TRANSACTION_LIMIT

    def test_group_summaries_share_rows(self, registry):
        """A large estate's group summaries go many to a row, in order: storing the report of 1,000
        groups is a couple of transactions, not ten (it sits at the end of the audit's critical path)."""
        groups = [{"group": f"g{i:04d}", "groupId": i, "names": [f"s-{i}-{j}" for j in range(50)]} for i in range(1000)]

        run = registry.save_report({"n": 1}, [{"message": "one finding"}], groups)

        latest = registry.latest_report()
        assert latest is not None and latest["auditedGroups"] == groups
        rows = list(
            registry._table(AUDIT_TABLE).query_entities("PartitionKey eq @pk", parameters={"pk": f"findings|{run}"})
        )
        assert len(rows) <= 1 + 1000 // 20  # at least 20 summaries a row (one a row took 10 transactions)
        assert sum(1 for url, _ in registry.sizes if url.endswith("$batch")) <= 1

    def test_reports_stored_a_group_a_row_still_read(self, registry):
        """A report an earlier version stored (one group summary per row, "Group") reads back whole."""
        run = registry.save_report({"n": 1}, [], [])
        table = registry._table(AUDIT_TABLE)
        old = [{"group": f"old{i}", "names": ["a", "b"]} for i in range(3)]
        for i, group in enumerate(old):
            table.create_entity({"PartitionKey": f"findings|{run}", "RowKey": f"g{i:06d}", "Group": json.dumps(group)})

        latest = registry.latest_report()

        assert latest is not None and latest["auditedGroups"] == old

    def test_old_reports_are_pruned_whole(self, registry):
        """Pruning removes a big run's rows with it (and any older rows), keeping the newest 30 runs."""
        from kvlink_core.registry import KEEP_RUNS

        first = registry.save_report({"n": 0, "unreached": ["u" * 100_000]}, [{"message": "m" * 200_000}], [])
        for n in range(1, KEEP_RUNS + 1):
            registry.save_report({"n": n}, [], [])
        history = registry.report_history()
        assert [h["n"] for h in history] == list(range(KEEP_RUNS, 0, -1))
        table = registry._table(AUDIT_TABLE)
        older = table.query_entities(
            "PartitionKey gt @low and PartitionKey lt @high",
            parameters={"low": f"findings|{history[-1]['run']}", "high": "findings|~"},
        )
        assert list(older) == []
        assert list(table.query_entities("PartitionKey eq @pk", parameters={"pk": f"findings|{first}"})) == []


class TestStoringFails:
    def test_registry_refuses_the_report(self, estate, app_engine, topic, monkeypatch, caplog):
        """save_report raising: the audit still returns, logs its one summary line and notifies."""
        engine = estate.engine(KVLINK_NOTIFY_TOPIC_ENDPOINT=topic.endpoint)
        topic.clear_events()
        estate.kv.set_secret(estate.vault, "keep")
        group = estate.group("payments-kv", ["keep", "gone"])
        estate.link(engine, group)

        def refuse(*args, **kwargs):
            raise RuntimeError("the property value exceeds the maximum allowed size (64KB)")

        monkeypatch.setattr(engine.registry, "save_report", refuse)
        caplog.set_level(logging.INFO, logger="kvlink_core.audit")

        report = run_audit(engine)

        assert report.stored is None and "RuntimeError" in (report.store_error or "")
        assert report.as_json()["reportStored"] is False
        lines = [r for r in caplog.records if r.getMessage().startswith("kvlink audit ")]
        assert len(lines) == 1
        logged = json.loads(lines[0].getMessage().removeprefix("kvlink audit "))
        assert logged["reportStored"] is False and logged["names"]["removed"] == 1
        (event,) = topic.events_of_type("kvlink.audit.completed")
        assert event["data"]["reportStored"] is False
        assert estate.names(group) == ["keep"]  # the repair stands

    def test_table_storage_drops_at_save_time(self, estate, azurite, topic, monkeypatch, caplog):
        """Table storage unreachable just when the report is saved: the audit returns, logs and notifies."""
        proxy = FlakyProxy(azurite.port)
        try:
            storage = estate.env["AzureWebJobsStorage"].replace(f":{azurite.port}/", f":{proxy.port}/")
            engine = estate.engine(AzureWebJobsStorage=storage, KVLINK_NOTIFY_TOPIC_ENDPOINT=topic.endpoint)
            topic.clear_events()
            estate.kv.set_secret(estate.vault, "keep")
            estate.link(engine, estate.group("payments-kv", ["keep"]))
            save = engine.registry.save_report

            def save_while_down(*args, **kwargs):
                proxy.broken = True
                return save(*args, **kwargs)

            monkeypatch.setattr(engine.registry, "save_report", save_while_down)
            caplog.set_level(logging.INFO, logger="kvlink_core.audit")

            report = run_audit(engine)

            assert report.stored is None and "Table storage unavailable" in (report.store_error or "")
            assert sum(r.getMessage().startswith("kvlink audit ") for r in caplog.records) == 1
            assert "could not be stored" in caplog.text
            (event,) = topic.events_of_type("kvlink.audit.completed")
            assert event["data"]["reportStored"] is False
        finally:
            proxy.close()

    def test_stored_report_says_so(self, estate, app_engine, topic):
        """When storing works, the log line and the notification carry the run id."""
        engine = estate.engine(KVLINK_NOTIFY_TOPIC_ENDPOINT=topic.endpoint)
        topic.clear_events()
        report = run_audit(engine)
        assert report.stored is not None and report.store_error is None
        (event,) = topic.events_of_type("kvlink.audit.completed")
        assert event["data"]["reportStored"] is True and event["data"]["run"] == report.stored


def test_plan_text_keeps_small_plans_whole():
    """A plan of a few names is the plan's JSON as it was; a long list keeps its first names and a count."""
    from kvlink_core.audit import plan_text
    from kvlink_core.plan import Plan

    assert json.loads(plan_text(Plan(remove=("a", "b")))) == {"add": [], "remove": ["a", "b"], "unchanged": 0}
    cut = json.loads(plan_text(Plan(remove=tuple(f"n{i}" for i in range(25))), keep=3))
    assert cut["remove"] == ["n0", "n1", "n2", "... and 22 more"]


def test_cli_says_when_the_report_was_not_stored(estate, app_engine, monkeypatch):
    """`audit --json` still prints the report, with reportStored false, and warns on stderr."""

    def refuse(*args, **kwargs):
        raise RuntimeError("storage refused")

    monkeypatch.setattr(app_engine.registry, "save_report", refuse)
    out, err = io.StringIO(), io.StringIO()
    assert cli_main(["audit", "--json"], out=out, err=err) == 0
    printed = json.loads(out.getvalue())
    assert printed["reportStored"] is False and printed["reportError"] == "RuntimeError: storage refused"
    assert "warning: the report could not be stored: RuntimeError: storage refused" in err.getvalue()
