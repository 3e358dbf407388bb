"""Audit at scale: kvlink's audit against a plain concurrent script, hand-written sequential audits, the lower bound.

    python -m bench.audit_scale                 # 1,000 groups, 200 vaults, 100,000 secrets; 150 ms, then 20 ms a call
    python -m bench.audit_scale --groups 200 --vaults 40 --secrets 20000 --projects 4 --skip-sequential  # a quick look

Every call to the stand-ins takes ``--latency`` (150 ms: a round trip to Azure, where the audit is
latency-bound) and the run is repeated at ``--fast-latency`` (20 ms, where CPU decides; 0 leaves the
row out). At each latency kvlink's audit and the plain concurrent script (``bench/plain.py``) run at
the same limits (32 Key Vault, 4 Azure DevOps calls at once) and are set against the lower bound
in time (:func:`bound_seconds`); the sequential audits run at the fast latency only.

Each contender gets a fresh estate (stand-ins in their own process, a fresh Azurite) and
runs in a fresh process of its own, so wall time, call counts and peak memory are its own.
Calls are counted at the clients (retries included); Key Vault's one-time 401 auth
challenges are left out.

Nothing a contender reports is used as an expected value. The estate generator
(``bench/estate.py``) recorded which groups it drifted and what every group must map; after
each contender the generator checks the Azure DevOps stand-in against that record and
counts the groups written from the stand-in's own call log. The lower bound is computed
from the estate's shape and the platform's paging (:func:`lower_bound`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from bench.estate import PAT, Shape
from bench.plain import DEVOPS_LIMIT, KV_LIMIT
from kvlink_core.settings import HOSTING_VARIABLES
from standins.azurite import Azurite

ROOT = Path(__file__).resolve().parent.parent

# Platform paging (reference/azure-facts.md), the sizes the lower bound is computed from:
KV_PAGE = 25  # Key Vault list operations: maxresults 1..25, default 25 (section 5.1)
GROUP_PAGE = 1000  # Azure DevOps variable-group list: $top is capped at 1000 (the Server controller)
PROJECT_PAGE = 100  # Azure DevOps projects list: 100 per page by default


def run_kvlink() -> dict[str, Any]:
    from bench.lab import counting_engine
    from kvlink_core.audit import run_audit

    counter: Counter[str] = Counter()
    engine = counting_engine(counter)
    table = _time_registry(engine.registry)
    started = time.perf_counter()
    began = time.monotonic()
    report = run_audit(engine)
    ended = time.monotonic()
    elapsed = time.perf_counter() - started
    summary = report.summary()
    listing_cpu = _listing_loop_cpu(engine)
    engine.close()
    # What kvlink says it did is kept for the record only; nothing is checked against it.
    return {
        "seconds": elapsed,
        "calls": dict(counter),
        "reported_changed": summary["groups"]["changed"],
        "unreached": summary["unreached"],
        # For the phases before the first stand-in call and after the last (time.monotonic is
        # the machine's clock, shared with the stand-ins' call stamps).
        "clock": {"began": began, "ended": ended, "registry": table},
        **({"keyvault_loop_cpu_seconds": listing_cpu} if listing_cpu is not None else {}),
    }


def _time_registry(registry: Any) -> list[tuple[str, float, float]]:
    """Stamp every call of the engine's registry (Table storage) with time.monotonic, start and end."""
    stamps: list[tuple[str, float, float]] = []

    def timed(name: str, method: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            start = time.monotonic()
            try:
                return method(*args, **kwargs)
            finally:
                stamps.append((name, start, time.monotonic()))

        return call

    for name in dir(type(registry)):
        method = getattr(registry, name)
        if not name.startswith("_") and callable(method) and name != "close":
            setattr(registry, name, timed(name, method))
    return stamps


def phases(clock: dict[str, Any], span: dict[str, Any]) -> dict[str, Any]:
    """The audit's time before the stand-ins' first call and after their last, and the registry calls in them."""
    first, last = span["clock first/last"]
    before = round(first - clock["began"], 3)
    after = round(clock["ended"] - last, 3)

    def inside(lo: float, hi: float) -> dict[str, float]:
        spent: Counter[str] = Counter()
        for name, start, end in clock["registry"]:
            overlap = min(end, hi) - max(start, lo)
            if overlap > 0:
                spent[name] += overlap
        return {name: round(seconds, 3) for name, seconds in spent.most_common()}

    return {
        "before first call": before,
        "registry before": inside(clock["began"], first),
        "after last call": after,
        "registry after": inside(last, clock["ended"]),
    }


def _listing_loop_cpu(engine: Any) -> float | None:
    """CPU of the thread whose event loop ran every vault listing (the async path), from /proc."""
    loop = getattr(engine.keyvault, "_loop", None)
    thread = getattr(loop, "_thread", None)
    if thread is None or thread.native_id is None:
        return None
    return _cpu_seconds(os.getpid(), thread.native_id)


def run_plain() -> dict[str, Any]:
    from bench import plain

    managed = {(org, int(gid)) for org, gid in json.loads(Path(os.environ["BENCH_MANAGED"]).read_text())}
    counter: Counter[str] = Counter()
    started = time.perf_counter()
    result = plain.run(managed=managed, counter=counter)
    return {"seconds": time.perf_counter() - started, "calls": dict(counter), "unreached": [], **result}


def run_baseline(kind: str) -> dict[str, Any]:
    from bench import baseline

    managed = {(org, int(gid)) for org, gid in json.loads(Path(os.environ["BENCH_MANAGED"]).read_text())}
    limit = (int(os.environ.get("BENCH_NAIVE_LIMIT", "0")) or None) if kind == "naive" else None
    counter: Counter[str] = Counter()
    started = time.perf_counter()
    result = baseline.run(cached=kind == "sequential", managed=managed, counter=counter, limit=limit)
    return {"seconds": time.perf_counter() - started, "calls": dict(counter), "unreached": [], **result}


def worker(kind: str) -> None:
    if os.environ.get("BENCH_GC_THRESHOLD"):  # measure the audit's collector setting against another
        from kvlink_core import audit

        audit.AUDIT_GC_THRESHOLD = int(os.environ["BENCH_GC_THRESHOLD"])
    contender = {"kvlink": run_kvlink, "plain": run_plain}.get(kind) or (lambda: run_baseline(kind))
    profile_to = os.environ.get("BENCH_PROFILE") if kind == "kvlink" else None  # kvlink's CPU, not a baseline's
    result = _profiled(contender, Path(profile_to)) if profile_to else contender()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)
    result["cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 2)
    print(json.dumps(result))


def _profiled(contender: Any, to: Path) -> dict[str, Any]:
    """Run ``contender`` under cProfile in every thread (the audit works in thread pools); write the summary.

    Each thread is timed by its own CPU clock (``time.thread_time``), so waits do not count:
    the summary says where the audit's CPU goes, summed over threads.
    """
    import cProfile
    import io
    import pstats
    import threading

    profiles: list[cProfile.Profile] = []

    def in_new_thread(*_: Any) -> None:
        sys.setprofile(None)
        profile = cProfile.Profile(time.thread_time)
        profiles.append(profile)
        profile.enable()

    threading.setprofile(in_new_thread)
    with cProfile.Profile(time.thread_time) as main_thread:
        result: dict[str, Any] = contender()
    threading.setprofile(None)  # type: ignore[arg-type]
    text = io.StringIO()
    text.write(f"cProfile of every thread ({len(profiles) + 1}); CPU time per thread, summed; waits excluded.\n")
    stats = pstats.Stats(main_thread, *profiles, stream=text)
    stats.sort_stats("tottime").print_stats(40)
    stats.sort_stats("cumulative").print_stats(40)
    to.write_text(text.getvalue())
    return result


def contend(kind: str, shape: Shape, *, naive_limit: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fresh stand-ins and Azurite, then the contender in its own process; returns (result, estate record)."""
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
        with Azurite() as azurite, tempfile.TemporaryDirectory(prefix="kvlink-bench-") as tmp:
            managed = Path(tmp) / "managed.json"
            managed.write_text(json.dumps([[g["org"].lower(), g["group_id"]] for g in estate["groups"] if g["linked"]]))
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
                # kvlink's defaults, set here so that every contender runs at the same limits
                "KVLINK_VAULT_CONCURRENCY": str(KV_LIMIT),
                "KVLINK_DEVOPS_CONCURRENCY": str(DEVOPS_LIMIT),
                **dict.fromkeys(HOSTING_VARIABLES, ""),  # a container's CONTAINER_NAME would refuse the emulator
                "BENCH_MANAGED": str(managed),
            }
            if naive_limit:
                env["BENCH_NAIVE_LIMIT"] = str(naive_limit)
            if kind == "kvlink":
                _register_links(env, estate["groups"])
            out = subprocess.run(
                [sys.executable, "-m", "bench.audit_scale", "--worker", kind],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                text=True,
                check=True,
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            result["standins_cpu_seconds"] = _cpu_seconds(serve.pid)
            # The judge: the generator's record against the stand-in, limited to a sample's groups.
            audited = result.pop("audited", None)
            serve.stdin.write(f"check {','.join(audited) if naive_limit and audited else ''}\n")
            serve.stdin.flush()
            result["end_state"] = json.loads(serve.stdout.readline())
            result["timeline"] = result["end_state"].pop("timeline")
            clock = result.pop("clock", None)
            if clock and result["timeline"]["span"]:
                result["phases"] = phases(clock, result["timeline"]["span"])
            result["timeline"]["span"].pop("clock first/last", None)
            result["load_average"] = [round(x, 2) for x in os.getloadavg()]
            return result, estate
    finally:
        serve.stdin.close()
        serve.wait(timeout=60)


def _cpu_seconds(pid: int, tid: int | None = None) -> float | None:
    """User + system CPU of a live process (or one of its threads), from /proc (Linux)."""
    stat = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        fields = Path(stat).read_text().rsplit(")", 1)[1].split()
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


def lower_bound(estate: dict[str, Any]) -> dict[str, int]:
    """The fewest calls any audit of this estate can make, from the estate and the platform's paging.

    * Key Vault: each vault a group maps is listed once: ceil(live secrets / 25) pages, at least one.
    * Azure DevOps listings: each organization's projects, ceil(projects / 100) pages; each
      project's variable groups, ceil(groups / 1000) pages, at least one.
    * Azure DevOps per group the generator drifted so that it must be written: one read
      inside the group's lease and one PUT (the PUT replaces the whole group and has no ETag,
      so a write that does not start from a read taken under the lease can revert a person's edit).
    * The audit's service-connection findings: one endpoints call per project with Key Vault
      groups (the call takes every id at once). A plain audit has no such finding; kvlink's does.
    * The blast radius: per group still broken after the audit (an open breaking finding), one
      pipeline-permissions call, and per project holding such a group one pipeline listing
      (ceil(pipelines / 1000) pages). The generator's drift is all repairable, so an audit that
      writes leaves no group broken here and the blast radius costs nothing: these count 0.
    """
    groups = estate["groups"]
    live = estate["live_secrets"]
    vaults = {g["vault"] for g in groups}
    per_project = Counter((g["org"], g["project"]) for g in groups)
    per_org = Counter(org for org, _ in per_project)
    drifted = sum(1 for g in groups if g["must_write"])
    broken = [g for g in groups if g.get("stays_broken")]  # none in this generator's estates
    bound = {
        "vault pages": sum(max(1, math.ceil(live[v] / KV_PAGE)) for v in vaults),
        "longest listing": max((max(1, math.ceil(live[v] / KV_PAGE)) for v in vaults), default=0),
        "project listings": sum(max(1, math.ceil(n / PROJECT_PAGE)) for n in per_org.values()),
        "group listings": sum(max(1, math.ceil(n / GROUP_PAGE)) for n in per_project.values()),
        "service-connection checks": len(per_project),
        "reads under the lease": drifted,
        "writes": drifted,
        "pipeline permissions": len(broken),
        "pipeline listings": len({(g["org"], g["project"]) for g in broken}),
    }
    bound["devops GET"] = (
        bound["project listings"]
        + bound["group listings"]
        + bound["service-connection checks"]
        + bound["reads under the lease"]
        + bound["pipeline permissions"]
        + bound["pipeline listings"]
    )
    return bound


def drift_record(estate: dict[str, Any]) -> dict[str, int]:
    """The generator's own count of what it drifted."""
    kinds = Counter(g["drift"] or "none" for g in estate["groups"])
    return {**kinds, "must_write": sum(1 for g in estate["groups"] if g["must_write"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", choices=["kvlink", "plain", "sequential", "naive"], help=argparse.SUPPRESS)
    for field, default in asdict(Shape()).items():
        parser.add_argument(f"--{field}", type=type(default), default=default)
    parser.add_argument("--fast-latency", type=float, default=0.02, help="the second row's latency (0: none)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of kvlink and the plain script, all recorded")
    parser.add_argument("--skip-sequential", action="store_true", help="only kvlink's audit and the plain script")
    parser.add_argument("--naive-sample", type=float, default=0.1, help="share of groups the naive audit runs on")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "audit_scale.json"))
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return
    shape = Shape(**{k: getattr(args, k) for k in asdict(Shape())})
    fast = args.fast_latency > 0 and args.fast_latency != shape.latency
    latencies = [shape.latency, *([args.fast_latency] if fast else [])]
    limits = {"keyvault": KV_LIMIT, "devops": DEVOPS_LIMIT}
    results: dict[str, Any] = {"shape": asdict(shape), "limits": limits, "latencies": [], "runs": []}
    estate: dict[str, Any] = {}
    for run in range(1, args.repeat + 1):
        # Every repetition is kept (results["runs"]); the last one's rows are the detailed tables.
        results["latencies"] = []
        for latency in latencies:
            at = replace(shape, latency=latency)
            print(f"run {run} of {args.repeat}, estate: {at}", flush=True)
            row: dict[str, Any] = {"latency": latency, "limits": limits}
            for kind in ("kvlink", "plain"):
                row[kind], estate = contend(kind, at)
                print(f"{kind} at {latency * 1000:.0f} ms: {_brief(row[kind])}", flush=True)
            results["latencies"].append(row)
            results["runs"].append({"run": run, "latency": latency, **{k: _kept(row[k]) for k in ("kvlink", "plain")}})
    results["drift"] = drift_record(estate)
    results["kvlink"], results["plain"] = results["latencies"][0]["kvlink"], results["latencies"][0]["plain"]
    if not args.skip_sequential:
        # The sequential audits run at the fast latency only: at 150 ms a call the straightforward one takes hours.
        at = replace(shape, latency=latencies[-1])
        # The straightforward audit lists a vault for every group: ~10 minutes at full scale. It
        # runs on a sample of the groups and its time and calls are scaled up (it is sequential: linear).
        sample = max(1, round(shape.groups * args.naive_sample))
        naive, _ = contend("naive", at, naive_limit=sample)
        scale = shape.groups / max(1, naive["groups_audited"])
        naive["measured_on_groups"] = naive["groups_audited"]
        naive["seconds_measured"] = naive["seconds"]
        naive["seconds"] = naive["seconds"] * scale
        naive["calls"] = {k: round(v * scale) for k, v in naive["calls"].items()}
        naive["latency"] = at.latency
        results["naive"] = naive
        print(f"naive:      {_brief(naive)}", flush=True)
        results["sequential"], _ = contend("sequential", at)
        results["sequential"]["latency"] = at.latency
        print(f"sequential: {_brief(results['sequential'])}", flush=True)
    results["lower_bound"] = lower_bound(estate)
    for row in results["latencies"] + results["runs"]:
        row["bound_seconds"] = bound_seconds(results["lower_bound"], row["latency"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    for row in results["latencies"]:
        print(
            f"at {row['latency'] * 1000:.0f} ms: lower bound {row['bound_seconds']:.2f} s; "
            + "; ".join(f"{kind} {_brief(row[kind])}" for kind in ("kvlink", "plain")),
            flush=True,
        )


def _kept(r: dict[str, Any]) -> dict[str, Any]:
    """What every repetition records of a contender: time, cost, calls, end state, the machine's load."""
    e = r["end_state"]
    return {
        "seconds": r["seconds"],
        "cpu_seconds": r.get("cpu_seconds"),
        "peak_rss_mb": r.get("peak_rss_mb"),
        "calls": r["calls"],
        "end_state": {k: e[k] for k in ("groups_checked", "groups_wrong", "groups_written", "groups_to_write")},
        "load_average": r.get("load_average"),
        **({"phases": r["phases"]} if "phases" in r else {}),
        "span": r["timeline"]["span"],
    }


def _brief(r: dict[str, Any]) -> str:
    calls = r["calls"]
    return (
        f"{r['seconds']:.2f} s, CPU {r.get('cpu_seconds', 0):.2f} s, {r.get('peak_rss_mb', 0):.0f} MB, "
        f"KV {calls.get('keyvault GET', 0)}, DevOps {calls.get('devops GET', 0)}+{calls.get('devops PUT', 0)}, "
        f"wrong {r['end_state']['groups_wrong']}, load {r.get('load_average')}"
    )


def bound_seconds(bound: dict[str, int], latency: float) -> float:
    """The shortest any audit of the estate can take at ``latency`` a call, within the limits.

    Key Vault: at most KV_LIMIT calls at once, and a vault's pages follow each other's nextLink,
    so no faster than its pages ÷ the limit, nor than its longest listing. Azure DevOps: at most
    DEVOPS_LIMIT calls at once. The two services run side by side: the slower one decides.
    """
    keyvault = max(math.ceil(bound["vault pages"] / KV_LIMIT), bound["longest listing"])
    devops = math.ceil((bound["devops GET"] + bound["writes"]) / DEVOPS_LIMIT)
    return round(max(keyvault, devops) * latency, 3)


if __name__ == "__main__":
    main()
