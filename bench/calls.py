"""Calls per change: what kvlink spends on Key Vault, Azure DevOps and Table storage, next to the minimum.

    python -m bench.calls

Each scenario runs on a warm engine (tables open, Key Vault's auth challenge paid).
The Key Vault and Azure DevOps minimums are the platform's: one version listing to learn
a secret's state (a value read is never an option), one read and one write per group
(the PUT replaces the whole group and has no ETag). The Table minimums are kvlink's own
design: one query to find the links, a lease taken and released around each write, the
write marker, and, on the audit-log path, the work row that survives Event Hubs' checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

from bench.lab import Lab, by_system, counting_engine

ORG, PROJECT = "bench-org", "Payments"
SECRETS = 40  # in the vault: two list pages


def scenarios(lab: Lab) -> list[dict[str, Any]]:
    from kvlink_core.linking import LinkRequest, SyncRequest, link_group, sync
    from kvlink_core.model import Link
    from standins.events import secret_event
    from standins.logs import envelopes

    counter: Counter[str] = Counter()
    engine = counting_engine(counter, lab.env)
    kv, ado, vault = lab.kv, lab.ado, "kv-calls"
    for i in range(SECRETS):
        kv.set_secret(vault, f"s-{i:02d}")
    ado.add_project(ORG, PROJECT)
    ado.add_service_endpoint(ORG, PROJECT, "kv-connection")
    groups = [
        ado.add_group(ORG, PROJECT, f"g{i}", vault=vault, variables=[f"s-{j:02d}" for j in range(SECRETS)])
        for i in range(3)
    ]
    for gid in groups:
        engine.registry.save_link(Link(ORG, PROJECT, gid, f"g{gid}", vault), previous=None)
    pages = math.ceil(SECRETS / 25)
    # warm up: open every table, pay the auth challenge, write each group once
    version = kv.set_secret(vault, "warm-up")
    engine.handle_event(secret_event(vault, "warm-up", version))
    kv.delete_secret(vault, "warm-up")
    engine.handle_log_batch(envelopes(kv.drain_audit_log()))
    kv.drain_audit_log()

    results = []

    def measure(name: str, minimum: dict[str, int], note: str, action: Any) -> None:
        counter.clear()
        action()
        results.append({"change": name, "calls": by_system(counter), "minimum": minimum, "note": note})

    g = len(groups)
    vault_lease = 3  # several groups to write: the vault's lease in and out, and one read of its queue

    def new_secret() -> None:
        version = kv.set_secret(vault, "new-secret")
        engine.handle_event(secret_event(vault, "new-secret", version))

    measure(
        "new secret (Event Grid), 3 linked groups",
        {"keyvault": 1, "devops": 2 * g, "table": 1 + vault_lease + 3 * g},
        "per group: read + write; Table: links query, the vault's lease and queue, then lease in/out and "
        "write marker per group",
        new_secret,
    )

    def rotation() -> None:
        version = kv.set_secret(vault, "new-secret")
        engine.handle_event(secret_event(vault, "new-secret", version))

    measure(
        "new version of a mapped secret",
        {"keyvault": 1, "devops": g, "table": 1 + vault_lease + 2 * g},
        "one read per group proves nothing changed; no write",
        rotation,
    )

    def deletion() -> None:
        kv.delete_secret(vault, "new-secret")
        engine.handle_log_batch(envelopes(kv.drain_audit_log()))

    measure(
        "deletion (audit log), 3 linked groups",
        {"keyvault": 1, "devops": 2 * g, "table": 4 + vault_lease + 3 * g},
        "Table adds the work row in and out and the work listing: the batch outlives a failure",
        deletion,
    )

    def link_create() -> None:
        body = {
            "organization": ORG,
            "project": PROJECT,
            "group": "new-group",
            "vault": vault,
            "serviceConnection": "kv-connection",
        }
        link_group(engine, LinkRequest.from_json(body, engine.settings))

    measure(
        "link, creating the group",
        {"keyvault": pages, "devops": 4, "table": 1},
        "find the group by name, the project id and the connection, then one POST; one vault listing",
        link_create,
    )

    def link_adopt() -> None:
        kv.set_secret(vault, "for-adoption")
        body = {"organization": ORG, "project": PROJECT, "group": "g1", "vault": vault}
        link_group(engine, LinkRequest.from_json(body, engine.settings))

    measure(
        "link, adopting a group that lacks one secret",
        {"keyvault": pages, "devops": 3, "table": 5},
        "find by name, read under the lease, write; Table: link lookup, lease in/out, marker, link",
        link_adopt,
    )

    def vault_sync() -> None:
        kv.set_secret(vault, "for-sync")
        sync(engine, SyncRequest.from_json({"vault": vault}, engine.settings))

    drifted = g + 1  # the three groups and the adopted one each lack for-sync
    measure(
        "vault sync, 4 groups, all drifted",
        {"keyvault": pages, "devops": 2 * drifted, "table": 1 + 3 * drifted},
        "the vault listed once for all groups; per group: read + write under the lease",
        vault_sync,
    )
    engine.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "calls.json"))
    args = parser.parse_args()
    with Lab(orgs=ORG) as lab:
        results = scenarios(lab)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    for row in results:
        marks = "  ".join(f"{k} {row['calls'][k]}/{row['minimum'][k]}" for k in ("keyvault", "devops", "table"))
        print(f"{row['change']:<50} {marks}")


if __name__ == "__main__":
    main()
