"""Audit at scale: kvlink's audit against a straightforward sequential one, and the lower bound.

    python -m bench.audit_scale                 # 1,000 groups, 200 vaults, 100,000 secrets, 20 ms per call
    python -m bench.audit_scale --groups 40 --vaults 8 --secrets 800   # a quick look

Each contender gets a fresh estate (stand-ins in their own process, a fresh Azurite) and
runs in a fresh process of its own, so wall time, call counts and peak memory are its own.
Calls are counted at the clients (retries included); Key Vault's one-time 401 auth
challenges are counted apart.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.estate import PAT, Shape
from bench.lab import counting_engine
from standins.azurite import Azurite

ROOT = Path(__file__).resolve().parent.parent


def _engine(counter: Counter[str]) -> Any:
    return counting_engine(counter)


def run_kvlink() -> dict[str, Any]:
    from kvlink_core.audit import run_audit

    counter: Counter[str] = Counter()
    engine = _engine(counter)
    started = time.perf_counter()
    report = run_audit(engine)
    elapsed = time.perf_counter() - started
    summary = report.summary()
    return {
        "seconds": elapsed,
        "calls": dict(counter),
        "changed": summary["groups"]["changed"],
        "added": summary["names"]["added"],
        "unreached": summary["unreached"],
    }


def run_sequential(*, cache_listings: bool = True, limit: int | None = None) -> dict[str, Any]:
    """A sequential audit: one thing at a time, re-reading a group before writing it.

    ``cache_listings=False`` is the straightforward one: every group lists its own vault.
    ``limit`` stops after that many Key Vault groups (a sample; its numbers are scaled up).
    """
    from kvlink_core.model import GroupKey, Policy
    from kvlink_core.plan import apply_plan, plan_group

    counter: Counter[str] = Counter()
    engine = _engine(counter)
    started = time.perf_counter()
    links = {link.key: link for link in engine.registry.list_links()}
    listings: dict[str, Any] = {}
    changed = added = audited = 0
    for org in engine.settings.devops_orgs:
        for project in engine.devops.list_projects(org):
            if limit is not None and audited >= limit:
                break
            for group in engine.devops.list_groups(org, project["name"]):
                if not group.is_key_vault or not group.vault:
                    continue
                audited += 1
                link = links.get(GroupKey(org.lower(), group.id))
                policy, prune = (link.policy, link.prune_only) if link else (Policy(), True)
                if group.vault not in listings or not cache_listings:
                    listings[group.vault] = engine.keyvault.list_secrets(group.vault)
                plan = plan_group(group.variables, listings[group.vault], policy, complete=True, prune_only=prune)
                if plan.changed:
                    fresh = engine.devops.get_group(org, project["name"], group.id)
                    assert fresh is not None
                    engine.devops.update_group(org, fresh, apply_plan(fresh.variables, plan))
                    changed += 1
                    added += len(plan.add)
    elapsed = time.perf_counter() - started
    return {
        "seconds": elapsed,
        "calls": dict(counter),
        "changed": changed,
        "added": added,
        "unreached": [],
        "groups_audited": audited,
    }


def _contender(kind: str) -> dict[str, Any]:
    if kind == "kvlink":
        return run_kvlink()
    if kind == "sequential":
        return run_sequential()
    return run_sequential(cache_listings=False, limit=int(os.environ.get("BENCH_NAIVE_LIMIT", "0")) or None)


def worker(kind: str) -> None:
    if os.environ.get("BENCH_PROFILE"):
        import cProfile
        import pstats

        with cProfile.Profile() as profile:
            result = _contender(kind)
        pstats.Stats(profile, stream=sys.stderr).sort_stats("cumulative").print_stats(40)
    else:
        result = _contender(kind)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)
    result["cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 2)
    print(json.dumps(result))


def contend(kind: str, shape: Shape) -> dict[str, Any]:
    """Fresh stand-ins, fresh Azurite, the links registered, then the contender in its own process."""
    serve = subprocess.Popen(
        [sys.executable, "-m", "bench.estate", "--shape", json.dumps(asdict(shape))],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert serve.stdout is not None
    assert serve.stdin is not None
    estate = json.loads(serve.stdout.readline())
    try:
        with Azurite() as azurite:
            env = {
                **os.environ,
                "KVLINK_DEVOPS_ORGS": ",".join(shape.org(i) for i in range(shape.orgs)),
                "KVLINK_ALLOWED_VAULTS": "*",
                "AZURE_DEVOPS_PAT": PAT,
                "AzureWebJobsStorage": azurite.connection_string,
                "KVLINK_DEVOPS_URL": estate["ado"],
                "KVLINK_VAULT_URL": estate["kv"],
                "KVLINK_CA_BUNDLE": estate["ca"],
                "KVLINK_EMULATOR": "1",
            }
            _register_links(env, estate["groups"])
            command = [sys.executable, "-m", "bench.audit_scale", "--worker", kind]
            if os.environ.get("BENCH_WORKER_SCRIPT"):  # profiling: run this script instead
                command = [sys.executable, os.environ["BENCH_WORKER_SCRIPT"]]
            out = subprocess.run(
                command,
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                text=True,
                check=True,
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            result["standins_cpu_seconds"] = _cpu_seconds(serve.pid)
            return result
    finally:
        serve.stdin.close()
        serve.wait(timeout=60)


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a live process, from /proc (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)


def _register_links(env: dict[str, str], groups: list[dict[str, Any]]) -> None:
    from kvlink_core.model import Link
    from kvlink_core.registry import Registry
    from kvlink_core.settings import Settings

    registry = Registry(Settings.from_env(env))
    for g in groups:
        if g["linked"]:
            registry.save_link(Link(g["org"], g["project"], g["group_id"], g["name"], g["vault"]), previous=None)
    registry.close()


def lower_bound(shape: Shape, drifted: int) -> dict[str, int]:
    pages = shape.vaults * math.ceil(shape.secrets / shape.vaults / 25)
    projects = shape.orgs * shape.projects
    return {"vault pages": pages, "group listings": projects, "writes": drifted}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", choices=["kvlink", "sequential", "naive"], help=argparse.SUPPRESS)
    for field, default in asdict(Shape()).items():
        parser.add_argument(f"--{field}", type=type(default), default=default)
    parser.add_argument("--skip-sequential", action="store_true", help="only run kvlink's audit")
    parser.add_argument("--naive-sample", type=float, default=0.1, help="share of groups the naive audit runs on")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "audit_scale.json"))
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return
    shape = Shape(**{k: getattr(args, k) for k in asdict(Shape())})
    print(f"estate: {shape}", flush=True)
    results = {"shape": asdict(shape), "kvlink": contend("kvlink", shape)}
    print(f"kvlink:     {results['kvlink']}", flush=True)
    if not args.skip_sequential:
        # The straightforward audit lists a vault for every group: ~10 minutes here. It runs on a
        # sample of the groups and its time and calls are scaled up (it is sequential: linear).
        sample = max(1, round(shape.groups * args.naive_sample))
        os.environ["BENCH_NAIVE_LIMIT"] = str(sample)
        naive = contend("naive", shape)
        scale = shape.groups / max(1, naive["groups_audited"])
        naive["measured_on_groups"] = naive["groups_audited"]
        naive["seconds_measured"] = naive["seconds"]
        naive["seconds"] = naive["seconds"] * scale
        naive["calls"] = {k: round(v * scale) for k, v in naive["calls"].items()}
        results["naive"] = naive
        print(f"naive:      {results['naive']}", flush=True)
        results["sequential"] = contend("sequential", shape)
        print(f"sequential: {results['sequential']}", flush=True)
    drifted = results["kvlink"]["changed"]
    results["lower_bound"] = lower_bound(shape, drifted)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
