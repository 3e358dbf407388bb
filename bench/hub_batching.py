"""Event Hubs batching: what a vault with N pipeline runs an hour costs ``on_vault_log`` in executions.

    python -m bench.hub_batching                 # N = 1 ... 3000 runs an hour, replay at N = 300

Every pipeline run reads its secrets, and every read is an ``AuditEvent`` record that the vault's
diagnostic setting streams to the Event Hub. Without batching, the trigger invokes ``on_vault_log``
about once per message when traffic is sparse (each read of a partition finds one message).

Two parts, kept apart in the results:

* **Modelled** (the Functions host is not run here): how the Event Hubs trigger turns messages into
  invocations, from host.json's ``extensions.eventHubs`` values, per partition, following the
  extension's dispatch rule (Azure/azure-sdk-for-net,
  sdk/eventhub/Microsoft.Azure.WebJobs.Extensions.EventHubs/src/Listeners/PartitionProcessorEventsManager.cs
  and EventHubListener.cs): a read adds its messages to the partition's cache; with at least
  ``minEventBatchSize`` cached, up to ``maxEventBatchSize`` are dispatched at once; with fewer, a timer of
  ``maxWaitTime`` starts at the first cached message and dispatches what is there when it fires. Each
  message is assumed to arrive in a read of its own (sparse traffic: the most invocations), and the
  processor also reads, empty, once a minute (EventProcessorOptions.MaximumWaitTime, 1 minute).
  Arrivals are spread uniformly at random over the hour (seeded) and round-robin over the hub's
  partitions (infra/core/eventhub/eventhub.bicep: 2). How Azure Monitor packs records into messages is
  not documented: the model gives both ends, one message per pipeline run and one per secret read.
* **Measured** with the stand-ins: one modelled hour at N = 300 is replayed through the real
  ``function_app.on_vault_log`` (real ``azure.functions.EventHubEvent`` objects, Azurite, the Key Vault
  and Azure DevOps stand-ins), batch by batch, with and without host.json's batching: invocations, calls
  to each system, handler time, and whether the few deletes among the reads reached the group.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HOUR = 3600.0
EMPTY_READ_EVERY = 60.0  # EventProcessorOptions.MaximumWaitTime in the extension's EventHubOptions
PARTITIONS = 2  # infra/core/eventhub/eventhub.bicep partitionCount
RUNS_PER_HOUR = (1, 10, 60, 300, 1000, 3000)
READS_PER_RUN = 5
ORG, PROJECT, VAULT = "bench-org", "Payments", "kv-pipelines"


@dataclass(frozen=True)
class Batching:
    max_size: int
    min_size: int
    max_wait: float  # seconds

    @classmethod
    def from_host_json(cls, path: Path = ROOT / "host.json") -> Batching:
        hubs = json.loads(path.read_text()).get("extensions", {}).get("eventHubs", {})
        hours, minutes, seconds = (hubs.get("maxWaitTime") or "00:01:00").split(":")
        return cls(
            max_size=int(hubs.get("maxEventBatchSize", 100)),  # the v6 extension's defaults
            min_size=int(hubs.get("minEventBatchSize", 1)),
            max_wait=int(hours) * 3600 + int(minutes) * 60 + float(seconds),
        )


NO_BATCHING = Batching(max_size=100, min_size=1, max_wait=60.0)  # the extension's defaults


@dataclass(frozen=True)
class Dispatch:
    at: float
    partition: int
    messages: tuple[int, ...]  # indexes into the arrivals


def model(arrivals: list[float], batching: Batching, partitions: int = PARTITIONS) -> list[Dispatch]:
    """The invocations the trigger makes for these arrival times (seconds into the hour)."""
    dispatches: list[Dispatch] = []
    for partition in range(partitions):
        mine = [i for i in range(len(arrivals)) if i % partitions == partition]
        dispatches += _one_partition(arrivals, mine, batching, partition)
    return sorted(dispatches, key=lambda d: d.at)


def _one_partition(arrivals: list[float], mine: list[int], batching: Batching, partition: int) -> list[Dispatch]:
    # A read per message, and the processor's empty read every minute.
    reads = sorted([(arrivals[i], [i]) for i in mine] + [(k * EMPTY_READ_EVERY, []) for k in range(1, 61)])
    dispatches: list[Dispatch] = []
    cache: list[int] = []
    deadline: float | None = None

    def dispatch(at: float) -> None:
        take = cache[: batching.max_size]
        del cache[: batching.max_size]
        dispatches.append(Dispatch(at, partition, tuple(take)))

    for at, new in reads:
        if deadline is not None and deadline <= at:  # the timer fired before this read
            dispatch(deadline)
            deadline = None
        cache.extend(new)
        if cache and len(cache) >= batching.min_size:
            dispatch(at)
            deadline = at + batching.max_wait if cache else None
        elif cache and deadline is None:
            deadline = at + batching.max_wait
    while cache:  # the hour's tail: the timer (or the next empty read) takes the rest
        dispatch(deadline if deadline is not None else HOUR + EMPTY_READ_EVERY)
        deadline = None
    return dispatches


def summary(arrivals: list[float], dispatches: list[Dispatch]) -> dict[str, Any]:
    delays = sorted(d.at - arrivals[i] for d in dispatches for i in d.messages)
    sizes = [len(d.messages) for d in dispatches]
    return {
        "messages": len(arrivals),
        "invocations": len(dispatches),
        "largest_batch": max(sizes, default=0),
        "mean_batch": round(sum(sizes) / len(sizes), 1) if sizes else 0,
        "added_delay_s": {
            "median": round(delays[len(delays) // 2], 1) if delays else 0,
            "max": round(delays[-1], 1) if delays else 0,
        },
    }


def arrivals_for(messages: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    return sorted(rng.uniform(0, HOUR) for _ in range(messages))


def modelled(batching: Batching) -> list[dict[str, Any]]:
    rows = []
    for runs in RUNS_PER_HOUR:
        row: dict[str, Any] = {"runs_per_hour": runs}
        for packing, messages in (("message_per_run", runs), ("message_per_read", runs * READS_PER_RUN)):
            times = arrivals_for(messages, seed=runs)
            row[packing] = {
                "unbatched": summary(times, model(times, NO_BATCHING)),
                "host_json": summary(times, model(times, batching)),
            }
        rows.append(row)
    return rows


def replay(batching: Batching, runs: int, deletes: int) -> dict[str, Any]:
    """One modelled hour through the real on_vault_log, with and without batching (stand-ins)."""
    import azure.functions as func

    import function_app
    from bench.lab import Lab, by_system, counting_engine
    from kvlink_core import app as kvlink_app
    from kvlink_core.model import Link
    from standins.logs import audit_record

    secrets = [f"pipeline-secret-{i:02d}" for i in range(READS_PER_RUN)]
    doomed = [f"old-secret-{i:02d}" for i in range(deletes)]
    times = arrivals_for(runs, seed=runs)
    delete_at = {round(len(times) * (k + 1) / (deletes + 1)): name for k, name in enumerate(doomed)}
    # One message per pipeline run: its reads; a few runs also delete an old secret.
    bodies = []
    for index in range(len(times)):
        records = [audit_record(VAULT, "SecretGet", secret=name) for name in secrets]
        if index in delete_at:
            records.append(audit_record(VAULT, "SecretDelete", secret=delete_at[index]))
        bodies.append(json.dumps({"records": records}).encode())

    results: dict[str, Any] = {}
    for label, how in (("unbatched", NO_BATCHING), ("host_json", batching)):
        with Lab(orgs=ORG) as lab:
            for name in [*secrets, *doomed]:
                lab.kv.set_secret(VAULT, name)
            lab.ado.add_project(ORG, PROJECT)
            group = lab.ado.add_group(ORG, PROJECT, "pipelines", vault=VAULT, variables=[*secrets, *doomed])
            counter: Counter[str] = Counter()
            engine = counting_engine(counter, lab.env)
            engine.registry.save_link(Link(ORG, PROJECT, group, "pipelines", VAULT), previous=None)
            for name in doomed:
                lab.kv.delete_secret(VAULT, name)
            saved = kvlink_app.get_engine
            kvlink_app.get_engine = lambda engine=engine: engine  # type: ignore[assignment,misc]
            engine.registry.vault_work()  # warm: the work table exists, as in a running app
            counter.clear()
            lab.ado.reset_calls()
            handler = 0.0
            now = datetime.now(UTC)
            dispatches = model(times, how)
            try:
                for number, batch in enumerate(dispatches):
                    events = [
                        func.EventHubEvent(
                            body=bodies[i], enqueued_time=now, partition_key=None, sequence_number=number, offset="0"
                        )
                        for i in batch.messages
                    ]
                    started = time.perf_counter()
                    function_app.on_vault_log(events)  # one invocation per modelled batch
                    handler += time.perf_counter() - started
            finally:
                kvlink_app.get_engine = saved  # type: ignore[method-assign]
                engine.close()
            left = sorted(lab.ado.variable_names(ORG, group))
            results[label] = {
                "invocations": len(dispatches),
                "messages": sum(len(d.messages) for d in dispatches),
                "calls": by_system(counter),
                "handler_seconds": round(handler, 2),
                "handler_ms_per_invocation": round(1000 * handler / max(len(dispatches), 1), 1),
                "deletes_applied": left == sorted(secrets),
            }
    return {"runs_per_hour": runs, "reads_per_run": READS_PER_RUN, "deletes": deletes, **results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replay-runs", type=int, default=300, help="pipeline runs in the replayed hour")
    parser.add_argument("--deletes", type=int, default=3, help="deletes among the replayed hour's reads")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "hub_batching.json"))
    args = parser.parse_args()
    batching = Batching.from_host_json()
    result = {
        "host_json": {
            "maxEventBatchSize": batching.max_size,
            "minEventBatchSize": batching.min_size,
            "maxWaitTime_s": batching.max_wait,
        },
        "partitions": PARTITIONS,
        "reads_per_run": READS_PER_RUN,
        "modelled": modelled(batching),
        "measured": replay(batching, args.replay_runs, args.deletes),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
