"""Outage: how long an event, the HTTP API and a burst take when a dependency refuses or is silent.

    python -m bench.outage                     # kvlink's production bounds, 60 s leases
    python -m bench.outage --systems storage   # Table storage only

A relay (standins/tcpproxy.py) sits between kvlink and Azurite, the Key Vault stand-in or the Azure
DevOps stand-in. *Refuses*: every connection is reset (a front end restarting). *Silent*:
connections are accepted and nothing is answered, and pooled ones stop answering (a partition).
*Throttles* (Key Vault and Azure DevOps; Azurite cannot): every call answers 429 with Retry-After.
Measured: the seconds until one event's invocation ends (and how: it must raise, so Event Grid
redelivers), until ``GET /api/links`` (storage) or ``POST /api/sync`` answers, and -- for a
20-event burst over 3 groups
with storage silent for 4 s in its middle -- how many invocations were still running after the
silence plus the cap, and how long until every group holds every name with failed events
redelivered as Event Grid would (the first redelivery comes 10 s later; here at once).
Each wait is capped (``--cap``): "still running" at the cap is the finding, not a hang.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.estate import MARKER
from bench.lab import Lab

ORG, PROJECT = "bench-org", "Payments"


def _engine(lab: Lab, env: dict[str, str]) -> Any:
    from kvlink_core.app import build_engine
    from kvlink_core.settings import Settings

    return build_engine(Settings.from_env(env))


def _timed(call: Any, cap: float) -> dict[str, Any]:
    """Run ``call`` on a thread; its seconds and outcome, or that it was still running at ``cap``."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        started = time.perf_counter()
        try:
            result = call()
            outcome["outcome"] = "returned" if result is None else str(result)
        except Exception as err:  # noqa: BLE001 -- the outcome is the measurement
            outcome["outcome"] = f"raised {type(err).__name__}: {str(err)[:120]}"
        outcome["seconds"] = round(time.perf_counter() - started, 2)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(cap)
    if thread.is_alive():
        return {"outcome": f"still running after {cap:.0f}s", "seconds": None}
    return outcome


def single(lab: Lab, system: str, how: str, cap: float) -> dict[str, Any]:
    """One event, and the HTTP API, with ``system`` (storage, keyvault, devops) refusing or silent."""
    from kvlink_core.model import Link
    from standins.events import secret_event
    from standins.tcpproxy import FlakyProxy

    target = {"storage": lab.azurite.port, "keyvault": lab.kv.port, "devops": lab.ado.port}[system]
    proxy = FlakyProxy(target)
    env = dict(lab.env)
    setting = {"storage": "AzureWebJobsStorage", "keyvault": "KVLINK_VAULT_URL", "devops": "KVLINK_DEVOPS_URL"}[system]
    env[setting] = env[setting].replace(f":{target}", f":{proxy.port}")
    engine = _engine(lab, env)
    vault = f"kv-{system}-{how}"  # its own vault and group: no other scenario's links in its way
    lab.kv.create_vault(vault)
    try:
        name = f"g-{system}-{how}"
        lab.kv.set_secret(vault, "seed")
        # Linked through kvlink in steady state: the group carries its policy marker, so the audit has none to write.
        gid = lab.ado.add_group(ORG, PROJECT, name, vault=vault, variables=["seed"], description=MARKER)
        engine.registry.save_link(Link(ORG, PROJECT, gid, name, vault), previous=None)
        warm = secret_event(vault, "seed", lab.kv.set_secret(vault, "seed"))
        engine.handle_event(warm)  # pooled connections everywhere: a silence meets a read, as in production
        event = secret_event(vault, f"new-{system}-{how}", lab.kv.set_secret(vault, f"new-{system}-{how}"))
        server = lab.kv if system == "keyvault" else lab.ado
        if how == "refuses":
            proxy.broken = True
        elif how == "silent":
            proxy.silent = True
        else:  # throttles: 429 with Retry-After on every call (Key Vault 2 s, Azure DevOps 10 s)
            server.inject(429, retry_after=2.0 if system == "keyvault" else 10.0, times=1_000_000)
        api = (lambda: _api_links(engine)) if system == "storage" else (lambda: _api_sync(engine, vault))
        result = {
            "event": _timed(lambda: engine.handle_event(event) and None, cap),
            "GET /api/links" if system == "storage" else "POST /api/sync": _timed(api, cap),
            "audit": _timed(lambda: _audit(engine), cap),
        }
        proxy.broken = proxy.silent = False
        server.clear_faults()
        result["redelivered"] = _timed(lambda: engine.handle_event(event) and None, cap)
        result["landed"] = f"new-{system}-{how}" in lab.ado.variable_names(ORG, gid)
        return result
    finally:
        proxy.close()
        engine.close()


def _audit(engine: Any) -> str:
    from kvlink_core.audit import run_audit

    report = run_audit(engine)
    stored = "stored" if report.stored else f"not stored ({(report.store_error or '')[:80]})"
    return f"returned: {len(report.unreached)} unreached, report {stored}"


def _api_sync(engine: Any, vault: str) -> str:
    from unittest import mock

    from kvlink_core import api

    with mock.patch("kvlink_core.app.get_engine", return_value=engine):
        response = api.sync(json.dumps({"vault": vault}).encode())
    return f"HTTP {response.status}"


def _api_links(engine: Any) -> str:
    from unittest import mock

    from kvlink_core import api

    with mock.patch("kvlink_core.app.get_engine", return_value=engine):
        response = api.links("GET", {}, {}, b"")
    return f"HTTP {response.status}"


def burst(lab: Lab, cap: float, silence: float) -> dict[str, Any]:
    from kvlink_core.errors import TransientError
    from kvlink_core.model import Link, Policy
    from standins.events import secret_event
    from standins.tcpproxy import FlakyProxy

    proxy = FlakyProxy(lab.azurite.port)
    storage = lab.env["AzureWebJobsStorage"].replace(f":{lab.azurite.port}/", f":{proxy.port}/")
    engines = [_engine(lab, {**lab.env, "AzureWebJobsStorage": storage}) for _ in range(3)]  # three instances
    vault = "kv-burst"
    lab.kv.set_secret(vault, "a-seed")
    policies = {"all": Policy(), "b": Policy(include=("b-*",)), "c": Policy(include=("c-*",))}
    groups = {}
    for label, policy in policies.items():
        gid = lab.ado.add_group(ORG, PROJECT, f"burst-{label}", vault=vault, variables=["a-seed"])
        engines[0].registry.save_link(Link(ORG, PROJECT, gid, f"burst-{label}", vault, policy), previous=None)
        groups[label] = (gid, policy)
    events = [
        secret_event(vault, f"{'abc'[i % 3]}-new-{i:02d}", lab.kv.set_secret(vault, f"{'abc'[i % 3]}-new-{i:02d}"))
        for i in range(20)
    ]
    running = 0
    failed: list[dict[str, Any]] = []
    lock = threading.Lock()

    def deliver(index: int) -> None:
        nonlocal running
        with lock:
            running += 1
        try:
            engines[index % 3].handle_event(events[index])
        except TransientError:
            with lock:
                failed.append(events[index])
        finally:
            with lock:
                running -= 1

    started = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=8)
    for i in range(10):
        pool.submit(deliver, i)
    time.sleep(0.3)  # the burst is under way
    proxy.silent = True
    for i in range(10, 20):
        pool.submit(deliver, i)
    time.sleep(silence)
    proxy.silent = False
    resumed = time.perf_counter()
    deadline = resumed + cap
    while running and time.perf_counter() < deadline:
        time.sleep(0.1)
    still_running = running
    all_ended = round(time.perf_counter() - resumed, 2) if not running else None
    first_failures = len(failed)
    redeliveries = 0
    while time.perf_counter() < deadline and (failed or running):
        if not failed:
            time.sleep(0.1)
            continue
        with lock:
            again, failed[:] = list(failed), []
        redeliveries += len(again)
        for event in again:  # Event Grid redelivers each failed event, in parallel
            pool.submit(lambda e=event: _redeliver(engines[0], e, failed, lock))
        time.sleep(0.5)
    pool.shutdown(wait=False, cancel_futures=True)

    def complete() -> bool:
        names = [f"{'abc'[i % 3]}-new-{i:02d}" for i in range(20)]
        for label, (gid, _) in groups.items():
            wanted = {n for n in names if label == "all" or n.startswith(f"{label}-")}
            if not wanted <= set(lab.ado.variable_names(ORG, gid)):
                return False
        return True

    landed = complete()
    for engine in engines:
        engine.close()
    proxy.close()
    return {
        "events": 20,
        "groups": 3,
        "silence_seconds": silence,
        "first_attempts_failed": first_failures,
        "still_running_after_silence_plus_cap": still_running,
        "seconds_after_silence_until_every_invocation_ended": all_ended,
        "redeliveries": redeliveries,
        "every_name_landed": landed,
        "seconds_from_burst_to_done": round(time.perf_counter() - started, 2),
    }


def _redeliver(engine: Any, event: dict[str, Any], failed: list[Any], lock: threading.Lock) -> None:
    from kvlink_core.errors import TransientError

    try:
        engine.handle_event(event)
    except TransientError:
        with lock:
            failed.append(event)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cap", type=float, default=130.0, help="seconds to wait for an invocation to end")
    parser.add_argument("--silence", type=float, default=4.0, help="seconds of silence in the burst")
    parser.add_argument("--systems", nargs="+", default=["storage", "keyvault", "devops"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with Lab(orgs=ORG) as lab:
        lab.ado.add_project(ORG, PROJECT)
        lab.kv.create_vault("kv-burst")
        result: dict[str, Any] = {
            system: {
                how: single(lab, system, how, args.cap)
                for how in ("refuses", "silent", "throttles")
                if how != "throttles" or system != "storage"  # Azurite does not throttle
            }
            for system in args.systems
        }
        if "storage" in args.systems:
            result["burst"] = burst(lab, args.cap, args.silence)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
