"""Burst: hundreds of secrets created within seconds in a vault linked to ten groups.

    python -m bench.burst                       # 500 secrets, 10 groups, 4 instances x 8 invocations

Every secret's Event Grid event is delivered once, concurrently, to several engines (as
several function instances would receive them), with 20 ms added to every Azure DevOps
call and the Azure DevOps stand-in throttling at a fixed rate (429 + Retry-After). The
result: the time until every group holds every name, the group writes per group (the
target is at most 20: queued observations are folded into few writes, not replayed as
500 read-modify-writes), and how many calls Azure DevOps throttled.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.lab import Lab, by_system, counting_engine

ORG, PROJECT, VAULT = "bench-org", "Payments", "kv-burst"


def run(lab: Lab, *, secrets: int, groups: int, instances: int, per_instance: int, rate: float) -> dict[str, Any]:
    from kvlink_core.model import Link
    from standins.events import secret_event

    kv, ado = lab.kv, lab.ado
    seed = [f"seed-{i:02d}" for i in range(20)]
    for name in seed:
        kv.set_secret(VAULT, name)
    ado.add_project(ORG, PROJECT)
    counter: Counter[str] = Counter()
    engines = [counting_engine(counter, lab.env) for _ in range(instances)]
    gids = [ado.add_group(ORG, PROJECT, f"team-{i:02d}", vault=VAULT, variables=seed) for i in range(groups)]
    for gid in gids:
        engines[0].registry.save_link(Link(ORG, PROJECT, gid, f"team-{gid:02d}", VAULT), previous=None)
    for engine in engines:  # warm: tables open, auth challenge paid
        engine.registry.links_for_vault(VAULT)
        engine.keyvault.secret_state(VAULT, seed[0])
    ado.reset_calls()
    counter.clear()

    created = time.perf_counter()
    events = [secret_event(VAULT, f"burst-{i:03d}", kv.set_secret(VAULT, f"burst-{i:03d}")) for i in range(secrets)]
    ado.latency = 0.02
    ado.throttle(rate, retry_after=1.0)
    started = time.perf_counter()
    failures = 0

    def deliver(item: tuple[int, dict[str, Any]]) -> None:
        nonlocal failures
        index, event = item
        try:
            engines[index % instances].handle_event(event)
        except Exception:  # noqa: BLE001 -- Event Grid would redeliver; count and redeliver below
            failures += 1
            engines[index % instances].handle_event(event)

    with ThreadPoolExecutor(max_workers=instances * per_instance) as pool:
        list(pool.map(deliver, enumerate(events)))
    settled = time.perf_counter()
    ado.throttle(None)
    ado.latency = 0.0
    expected = sorted([*seed, *(f"burst-{i:03d}" for i in range(secrets))])
    right = all(sorted(ado.variable_names(ORG, gid)) == expected for gid in gids)
    writes = [len([c for c in ado.writes(ORG, gid) if c.method == "PUT" and c.status == 200]) for gid in gids]
    for engine in engines:
        engine.close()
    return {
        "secrets": secrets,
        "groups": groups,
        "instances": instances,
        "invocations_per_instance": per_instance,
        "devops_rate_limit_per_s": rate,
        "seconds_to_consistent": round(settled - started, 2),
        "seconds_creating_secrets": round(started - created, 2),
        "all_groups_right": right,
        "writes_per_group": {"max": max(writes), "mean": round(sum(writes) / len(writes), 1)},
        "calls": by_system(counter),
        "devops_throttled": ado.throttled,
        "redelivered": failures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--secrets", type=int, default=500)
    parser.add_argument("--groups", type=int, default=10)
    parser.add_argument("--instances", type=int, default=4)
    parser.add_argument("--per-instance", type=int, default=8)
    parser.add_argument("--rate", type=float, default=50.0, help="Azure DevOps stand-in limit, requests/s")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "burst.json"))
    args = parser.parse_args()
    with Lab(orgs=ORG) as lab:
        result = run(
            lab,
            secrets=args.secrets,
            groups=args.groups,
            instances=args.instances,
            per_instance=args.per_instance,
            rate=args.rate,
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
