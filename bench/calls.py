"""Calls per change: what kvlink spends on Key Vault, Azure DevOps and Table storage, next to the minimum.

    python -m bench.calls

Each scenario runs on a warm engine (tables open, Key Vault's auth challenge paid). The
scenario keeps its own model of the estate -- the vault's live secrets, how many versions
each has, which groups are linked and what each must map -- and derives from that model,
and from the platform's rules alone, the fewest calls the change can take:

* Key Vault. A full listing is ceil(secrets / 25) pages (``maxresults`` is at most 25). An
  event or log record names one secret; its state (enabled? deleted?) comes from listing
  that secret's versions, ceil(versions / 25) pages -- one call, a 404 when it is gone. A
  value read is never an option.
* Azure DevOps. Only Azure DevOps knows what a group maps, so every group the change may
  affect is read once; a group whose names change is also written, and since the PUT
  replaces the whole group and has no ETag, that one read must be taken under the group's
  lease (so it serves both purposes). Per affected group: one read, plus one write if it
  changes. Linking adds what the request names but the platform needs as ids (below).
* Table storage is kvlink's own store, not a platform: its column is kvlink's design
  budget (links query, leases, write marker, the log path's work row), shown for the
  record and not counted in "at the minimum".

Nothing here reads kvlink's counters or constants to decide the minimum, and after every
change the scenario checks each group in the Azure DevOps stand-in against its own model.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

from bench.lab import Lab, by_system, counting_engine

ORG, PROJECT, VAULT = "bench-org", "Payments", "kv-calls"
KV_PAGE = 25  # Key Vault list operations: maxresults at most 25
PLATFORM = ("keyvault", "devops")  # the systems whose minimum is the platform's


class Model:
    """What the scenario knows about the estate, kept by hand as it changes things."""

    def __init__(self) -> None:
        self.versions: dict[str, int] = {}  # live secret -> versions created
        self.groups: dict[int, set[str]] = {}  # group id -> names it must map
        self.linked: set[int] = set()

    def created(self, name: str) -> None:
        self.versions[name] = self.versions.get(name, 0) + 1

    def deleted(self, name: str) -> None:
        del self.versions[name]

    @property
    def live(self) -> set[str]:
        return set(self.versions)

    def listing_pages(self) -> int:
        return max(1, math.ceil(len(self.versions) / KV_PAGE))

    def version_pages(self, name: str) -> int:
        return max(1, math.ceil(self.versions.get(name, 0) / KV_PAGE))  # a deleted secret: one 404


def scenarios(lab: Lab, secrets: int = 40) -> list[dict[str, Any]]:
    from kvlink_core.linking import LinkRequest, SyncRequest, link_group, sync
    from kvlink_core.model import Link
    from standins.events import secret_event
    from standins.logs import envelopes

    counter: Counter[str] = Counter()
    engine = counting_engine(counter, lab.env)
    kv, ado, model = lab.kv, lab.ado, Model()
    for i in range(secrets):
        kv.set_secret(VAULT, f"s-{i:02d}")
        model.created(f"s-{i:02d}")
    ado.add_project(ORG, PROJECT)
    ado.add_service_endpoint(ORG, PROJECT, "kv-connection")
    for i in range(3):
        gid = ado.add_group(ORG, PROJECT, f"g{i}", vault=VAULT, variables=sorted(model.live))
        engine.registry.save_link(Link(ORG, PROJECT, gid, f"g{i}", VAULT), previous=None)
        model.groups[gid] = set(model.live)
        model.linked.add(gid)
    # warm up: open every table, pay the auth challenge, write each group once
    kv.set_secret(VAULT, "warm-up")
    engine.handle_event(secret_event(VAULT, "warm-up"))
    kv.delete_secret(VAULT, "warm-up")
    engine.handle_log_batch(envelopes(kv.drain_audit_log()))
    kv.drain_audit_log()

    results = []

    def measure(name: str, action: Any, minimum: dict[str, int], note: str) -> None:
        counter.clear()
        action()
        wrong = [gid for gid, names in model.groups.items() if set(ado.variable_names(ORG, gid)) != names]
        results.append(
            {"change": name, "calls": by_system(counter), "minimum": minimum, "note": note, "groups_wrong": wrong}
        )

    def linked_changing(update: Any) -> tuple[int, int]:
        """Apply ``update`` to every linked group's expected names: (groups read, groups written)."""
        written = 0
        for gid in model.linked:
            after = update(set(model.groups[gid]))
            written += after != model.groups[gid]
            model.groups[gid] = after
        return len(model.linked), written

    # Table, kvlink's design budget: the links query (1); with several linked groups the vault's
    # lease in and out and one read of its queue (3); per group read: its lease in and out (2);
    # per group written: the lease renewed between the read and the PUT, so a write never lands on
    # an expired lease, and the write marker (2). The log path adds its work row in and out and
    # the work listing (3), so the batch survives Event Hubs' checkpoint.
    def table_budget(read: int, written: int, *, log: bool = False) -> int:
        return 1 + 3 + 2 * read + 2 * written + (3 if log else 0)

    # 1. A secret is created: its event names it. Every linked group must map it.
    def new_secret() -> None:
        kv.set_secret(VAULT, "new-secret")
        engine.handle_event(secret_event(VAULT, "new-secret"))

    model.created("new-secret")
    read, written = linked_changing(lambda names: names | {"new-secret"})
    measure(
        f"new secret (Event Grid), {read} linked groups",
        new_secret,
        {"keyvault": model.version_pages("new-secret"), "devops": read + written, "table": table_budget(read, written)},
        "one version listing; per group a read under its lease and a write",
    )

    # 2. A new version of that secret: every group already maps it, so nothing is written.
    def rotation() -> None:
        kv.set_secret(VAULT, "new-secret")
        engine.handle_event(secret_event(VAULT, "new-secret"))

    model.created("new-secret")
    read, written = linked_changing(lambda names: names | {"new-secret"})
    measure(
        "new version of a mapped secret",
        rotation,
        {"keyvault": model.version_pages("new-secret"), "devops": read + written, "table": table_budget(read, written)},
        "per group one read proves nothing changed; no write",
    )

    # 3. The secret is deleted: only the audit log says so. Every linked group must drop it.
    def deletion() -> None:
        kv.delete_secret(VAULT, "new-secret")
        engine.handle_log_batch(envelopes(kv.drain_audit_log()))

    model.deleted("new-secret")
    read, written = linked_changing(lambda names: names - {"new-secret"})
    measure(
        f"deletion (audit log), {read} linked groups",
        deletion,
        {
            "keyvault": model.version_pages("new-secret"),
            "devops": read + written,
            "table": table_budget(read, written, log=True),
        },
        "one version listing (404: gone); per group a read under its lease and a write",
    )

    # 4. Link a group that does not exist yet: created with every live secret. The request names
    # the group, project and service connection; the platform needs more than names: whether a
    # group of that name exists (1 GET), the project's id for the org-level POST's project
    # reference (1 GET), the service connection's id for providerData (1 GET), then the POST (1).
    def link_create() -> None:
        body = {
            "organization": ORG,
            "project": PROJECT,
            "group": "new-group",
            "vault": VAULT,
            "serviceConnection": "kv-connection",
        }
        link_group(engine, LinkRequest.from_json(body, engine.settings))
        created = next(g["id"] for g in ado.groups(ORG) if g["name"] == "new-group")
        model.groups[created] = set(model.live)
        model.linked.add(created)

    measure(
        "link, creating the group",
        link_create,
        {"keyvault": model.listing_pages(), "devops": 3 + 1, "table": 1},
        "the vault listed once; the group's name, project id and connection id looked up, one POST",
    )

    # 5. Adopt an existing group that lacks a secret created without an event: find it by name
    # (1 GET), read it under its lease (1 GET: the listing by name is not under the lease), write (1).
    g1 = next(g["id"] for g in ado.groups(ORG) if g["name"] == "g1")

    def link_adopt() -> None:
        kv.set_secret(VAULT, "for-adoption")
        body = {"organization": ORG, "project": PROJECT, "group": "g1", "vault": VAULT}
        link_group(engine, LinkRequest.from_json(body, engine.settings))

    model.created("for-adoption")
    model.groups[g1] = set(model.live)
    measure(
        "link, adopting a group that lacks one secret",
        link_adopt,
        {"keyvault": model.listing_pages(), "devops": 1 + 1 + 1, "table": 1 + 3 + 1 + 1},
        "the vault listed once; find by name, read under the lease, write; Table: link lookup, lease in/renew/out, "
        "marker, link",
    )

    # 6. Sync the vault after a secret was created without an event: one listing for all linked
    # groups; each group read under its lease and written if it lacks a live secret.
    def vault_sync() -> None:
        kv.set_secret(VAULT, "for-sync")
        sync(engine, SyncRequest.from_json({"vault": VAULT}, engine.settings))

    model.created("for-sync")
    live = model.live
    read, written = linked_changing(lambda names: names | live)
    measure(
        f"vault sync, {read} linked groups, {written} drifted",
        vault_sync,
        {"keyvault": model.listing_pages(), "devops": read + written, "table": 1 + 2 * read + 2 * written},
        "the vault listed once for all groups; per group a read under its lease, and a write if it drifted",
    )
    engine.close()
    return results


def at_minimum(rows: list[dict[str, Any]]) -> bool:
    return all(row["calls"][k] == row["minimum"][k] for row in rows for k in PLATFORM)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--secrets", type=int, default=40, help="secrets in the vault at the start (40: two pages)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "calls.json"))
    args = parser.parse_args()
    with Lab(orgs=ORG) as lab:
        results = scenarios(lab, args.secrets)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    for row in results:
        marks = "  ".join(f"{k} {row['calls'][k]}/{row['minimum'][k]}" for k in ("keyvault", "devops", "table"))
        wrong = f"  WRONG GROUPS {row['groups_wrong']}" if row["groups_wrong"] else ""
        print(f"{row['change']:<50} {marks}{wrong}")


if __name__ == "__main__":
    main()
