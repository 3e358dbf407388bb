"""Faults at every step of every path: applied correctly, or failed loudly with nothing half-written.

Each case runs one path (an Event Grid event, an audit-log batch, a link, a vault sync,
the audit) against a group whose right end state is known, with one fault injected at
one step. The outcome must be either that end state, or an error -- with the group
exactly as it was. Then the same path runs again without the fault and must converge.
"""

from __future__ import annotations

import pytest

from kvlink_core.audit import run_audit
from kvlink_core.errors import KvLinkError, TransientError
from kvlink_core.linking import LinkRequest, SyncRequest, link_group, sync
from standins.events import secret_event
from standins.logs import envelopes
from standins.tcpproxy import FlakyProxy

pytestmark = pytest.mark.integration

START = ["api-key", "db-password", "old-token"]  # old-token gets deleted; new-key gets created
END = ["api-key", "db-password", "new-key"]


class Scenario:
    """A vault and a linked group; the vault has since gained new-key and lost old-token."""

    def __init__(self, estate, engine) -> None:
        self.estate, self.engine = estate, engine
        for name in START:
            estate.kv.set_secret(estate.vault, name)
        self.group = estate.group("payments-kv", START)
        estate.link(engine, self.group)
        self.version = estate.kv.set_secret(estate.vault, "new-key")
        estate.kv.delete_secret(estate.vault, "old-token")
        self.delete_records = estate.kv.drain_audit_log()
        self.delete_records = [r for r in self.delete_records if r["operationName"] == "SecretDelete"]

    def names(self) -> list[str]:
        return self.estate.names(self.group)

    def expected(self, path: str) -> list[str]:
        # the event path only adds new-key; the log path only removes old-token; the rest do both
        return {"event": sorted([*START, "new-key"]), "log": ["api-key", "db-password"]}.get(path, END)

    def run(self, path: str) -> None:
        e, engine = self.estate, self.engine
        if path == "event":
            result = engine.handle_event(secret_event(e.vault, "new-key", self.version))
            if any(g.status == "failed" for g in result.groups):
                raise TransientError("group failed")
        elif path == "log":
            engine.handle_log_batch(envelopes(self.delete_records))
        elif path == "link":
            body = {"organization": e.org, "project": e.project, "group": "payments-kv", "vault": e.vault}
            link_group(engine, LinkRequest.from_json(body, engine.settings))
        elif path == "sync":
            result = sync(engine, SyncRequest.from_json({"vault": e.vault}, engine.settings))
            if any(g.status in ("failed", "refused") for g in result.groups):
                raise TransientError("sync did not complete")
        elif path == "audit":
            report = run_audit(engine, store=False)
            if report.unreached or any(f.kind == "write-failed" for f in report.findings):
                raise TransientError(f"audit incomplete: {report.unreached}")
        else:
            raise AssertionError(path)


PATHS = ["event", "log", "link", "sync", "audit"]
# (system, fault kwargs, step) -- step: how many matching calls pass before the fault
FAULTS = [
    ("devops", {"status": 429, "retry_after": 0.05}, 0),
    ("devops", {"status": 429}, 0),
    ("devops", {"status": 500}, 0),
    ("devops", {"status": 503, "times": 2}, 1),
    ("devops", {"reset": True}, 0),
    ("devops", {"status": 200, "delay": 1.5, "passthrough": True}, 0),  # longer than the 1 s read timeout
    ("keyvault", {"status": 429, "retry_after": 0}, 0),
    ("keyvault", {"status": 503, "times": 2}, 0),
    ("keyvault", {"reset": True}, 0),
]


def inject(estate, system: str, fault: dict, step: int) -> None:
    server = estate.ado if system == "devops" else estate.kv
    server.inject(**{"skip": step, **fault})


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("system", "fault", "step"), FAULTS, ids=str)
def test_transient_fault_is_absorbed_or_fails_loudly(estate, path, system, fault, step):
    """A single transient fault is retried through; if not, the path fails loudly and a rerun converges."""
    engine = estate.engine(devops_timeout=1.0)
    scenario = Scenario(estate, engine)
    inject(estate, system, fault, step)
    try:
        scenario.run(path)
    except KvLinkError:
        assert scenario.names() == START, "a failed run must leave the group as it was"
        estate.ado.clear_faults()
        estate.kv.clear_faults()
        scenario.run(path)
    assert scenario.names() == scenario.expected(path)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("step", [0, 1, 2, 3])
def test_persistent_failure_from_any_step(estate, path, step):
    """Azure DevOps failing from its Nth call on: nothing half-written, a loud failure, then convergence."""
    engine = estate.engine()
    scenario = Scenario(estate, engine)
    estate.ado.inject(503, skip=step, times=1000)
    try:
        scenario.run(path)
    except KvLinkError:
        assert scenario.names() == START
    else:  # the path needed fewer calls than `step`: it must have finished right
        assert scenario.names() == scenario.expected(path)
    estate.ado.clear_faults()
    scenario.run(path)
    assert scenario.names() == scenario.expected(path)


@pytest.mark.parametrize("path", ["link", "sync", "audit"])
@pytest.mark.parametrize("page", [1, 2])
def test_listing_failing_on_page_n(estate, path, page):
    """A vault listing that fails on page N is an error (or an unreached vault), never an emptier vault."""
    engine = estate.engine()
    scenario = Scenario(estate, engine)
    for i in range(60):
        estate.kv.set_secret(estate.vault, f"filler-{i:02d}")
    estate.kv.inject(503, path=r"/secrets$", skip=page, times=1000)
    with pytest.raises(KvLinkError):
        scenario.run(path)
    assert scenario.names() == START  # nothing removed, nothing added
    estate.kv.clear_faults()
    scenario.run(path if path != "link" else "sync")  # fillers match '*': a sync maps them too
    assert "old-token" not in scenario.names()
    assert {"new-key", "filler-00"} <= set(scenario.names())


@pytest.mark.parametrize("path", PATHS)
def test_table_storage_unavailable(estate, azurite, path):
    """With Table storage unreachable every path fails loudly and writes no group."""
    proxy = FlakyProxy(azurite.port)
    try:
        storage = estate.env["AzureWebJobsStorage"].replace(f":{azurite.port}/", f":{proxy.port}/")
        engine = estate.engine(AzureWebJobsStorage=storage)
        scenario = Scenario(estate, engine)
        proxy.broken = True
        with pytest.raises(TransientError):
            scenario.run(path)
        assert scenario.names() == START
        proxy.broken = False
        scenario.run(path)
        assert scenario.names() == scenario.expected(path)
    finally:
        proxy.close()


@pytest.mark.parametrize("path", PATHS)
def test_lease_held_by_someone_else(estate, path):
    """While another instance holds the group's lease, nothing is written; afterwards the work lands."""
    engine = estate.engine(lease_seconds=30.0, max_wait=0.4)
    scenario = Scenario(estate, engine)
    holder = engine.registry.try_acquire(engine.registry.links_for_vault(estate.vault)[0].key)
    assert holder is not None
    with pytest.raises(TransientError):
        scenario.run(path)
    assert scenario.names() == START
    assert engine.registry.release(holder) or engine.registry.release(engine.registry.refresh(holder))
    scenario.run(path)
    assert scenario.names() == scenario.expected(path)
