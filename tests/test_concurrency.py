"""100 concurrent deliveries, Event Grid and Event Hubs, duplicated and shuffled, on five groups."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import azure.functions as func
import pytest

import function_app
from kvlink_core import app as kvlink_app
from kvlink_core.errors import TransientError
from kvlink_core.model import Policy
from standins.events import as_trigger_input, secret_event
from standins.logs import envelopes

pytestmark = pytest.mark.integration

POLICIES = {
    "all-merge": Policy(),
    "all-mirror": Policy(mode="mirror"),
    "apps-only": Policy(include=("app-*",)),
    "no-batch": Policy(exclude=("batch-*",)),
    "tagged": Policy(tags=(("pipeline", "yes"),)),
}


def expected_names(engine, vault: str, policy: Policy) -> list[str]:
    """What the group must hold once everything is delivered: the enabled secrets its policy wants."""
    listing = engine.keyvault.list_secrets(vault)
    return sorted(
        (s.name for s in listing.values() if s.enabled and not s.managed and policy.matches(s)), key=str.lower
    )


def test_hundred_deliveries_end_exactly_right_and_redelivery_changes_nothing(estate, monkeypatch):
    """Adds, deletes and disables arrive as 100 shuffled, duplicated deliveries; each group ends exactly right."""
    for key, value in estate.env.items():
        monkeypatch.setenv(key, value)
    engine = estate.engine()
    monkeypatch.setattr(kvlink_app, "get_engine", lambda: engine)
    rng = random.Random(42)
    prefixes = ["app", "batch", "web"]

    initial = [f"{prefixes[i % 3]}-seed-{i:02d}" for i in range(24)]
    for name in initial:
        estate.kv.set_secret(estate.vault, name, tags={"pipeline": "yes"} if name.endswith(("0", "5")) else None)
    groups = {}
    for label, policy in POLICIES.items():
        wanted = [n for n in initial if policy.matches(engine.keyvault.secret_state(estate.vault, n))]
        groups[label] = estate.group(f"g-{label}", wanted or [initial[0]])
        estate.link(engine, groups[label], policy)
    estate.kv.drain_audit_log()

    deliveries = []
    for i in range(40):  # new secrets: Event Grid
        name = f"{prefixes[i % 3]}-new-{i:02d}"
        version = estate.kv.set_secret(estate.vault, name, tags={"pipeline": "yes"} if i % 2 else None)
        deliveries.append(("grid", secret_event(estate.vault, name, version)))
    for name in initial[:6]:  # deletions and disables: the audit log only
        estate.kv.delete_secret(estate.vault, name)
    for name in initial[6:9]:
        estate.kv.update_secret(estate.vault, name, enabled=False)
    records = [r for r in estate.kv.drain_audit_log() if r["operationName"] in ("SecretDelete", "SecretUpdate")]
    deliveries += [("hub", envelopes(records[i : i + 3], per_message=2)) for i in range(0, len(records), 3)]
    while len(deliveries) < 100:  # at least once: duplicates of both kinds
        deliveries.append(rng.choice(deliveries))
    rng.shuffle(deliveries)
    estate.ado.latency = 0.02  # read-modify-write windows overlap

    def deliver(item):
        kind, payload = item
        # A transient failure (a lease busy past its wait on a loaded machine, a throttled call) is
        # redelivered, as Event Grid's retry policy and the Event Hub trigger's @app.retry do.
        for attempt in range(3):
            try:
                if kind == "grid":
                    function_app.on_secret_event(as_trigger_input(payload))
                else:
                    function_app.on_vault_log([func.EventHubEvent(body=body) for body in payload])
                return
            except TransientError:
                if attempt == 2:
                    raise

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(deliver, deliveries))
    estate.ado.latency = 0.0
    for label, gid in groups.items():
        assert estate.names(gid) == expected_names(engine, estate.vault, POLICIES[label]), label

    writes_before = len(estate.ado.writes(estate.org))
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(deliver, deliveries))
    assert len(estate.ado.writes(estate.org)) == writes_before, "redelivery must change nothing"
