"""`python -m bench` (or `make bench`): run every benchmark and write bench/results.md.

Each benchmark also leaves its raw numbers in bench/results/<name>.json.
`python -m bench profile-audit` profiles kvlink's audit alone (cProfile, in the audit's own
process) and writes the summary to bench/results/audit_profile.txt; `--full` at full scale.
`python -m bench.listing` measures the CPU per Key Vault page of the sync and async listing paths
(`--profile async` profiles one); `python -m bench.audit_scale --skip-sequential` runs kvlink's
audit alone (its JSON gives the listing loop's CPU apart).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


RENDER_ONLY = False  # --render: rebuild results.md from the JSON files already in bench/results/


def _run(module: str, *args: str) -> dict:
    out = RESULTS / f"{module}.json"
    if not RENDER_ONLY:
        subprocess.run([sys.executable, "-m", f"bench.{module}", "--out", str(out), *args], cwd=ROOT, check=True)
    return json.loads(out.read_text())


def _end_state(r: dict) -> str:
    e = r["end_state"]
    if e["groups_wrong"] == 0 and e["groups_written"] == e["groups_to_write"]:
        return f"right ({e['groups_checked']}/{e['groups_checked']})"
    return f"**{e['groups_wrong']} of {e['groups_checked']} wrong**"


def audit_section(result: dict) -> list[str]:
    shape, k, bound, drift = result["shape"], result["kvlink"], result["lower_bound"], result["drift"]
    s, naive = result.get("sequential"), result.get("naive")
    lines = [
        "## Audit at scale",
        "",
        f"Estate: {shape['groups']} groups in {shape['orgs'] * shape['projects']} projects, {shape['vaults']} vaults, "
        f"{shape['secrets']:,} secrets, {shape['latency'] * 1000:.0f} ms added to every stand-in call; "
        f"{shape['linked']:.0%} of the groups linked, the rest discovered. The generator drifted "
        f"{drift.get('lacks-secret', 0)} linked groups by leaving out a secret, "
        f"{drift.get('maps-deleted', 0)} groups by mapping a secret it then deleted, and "
        f"{drift.get('discovered-lacks-secret', 0)} discovered groups by leaving out a secret "
        f"(which must stay out: kvlink never adds to a discovered group): **{drift['must_write']} groups "
        "must be written**. Stand-ins in their own process; each contender in a fresh one, on a fresh estate.",
        "",
        "| | wall time | CPU (client) | peak memory | end state | groups written | Key Vault pages "
        "| Azure DevOps GET / PUT | Table calls |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = (("kvlink audit", k), ("straightforward sequential*", naive), ("sequential, each vault listed once", s))
    for name, r in rows:
        if r is None:
            continue
        c, e = r["calls"], r["end_state"]
        table = sum(v for key, v in c.items() if key.startswith("table"))
        lines.append(
            f"| {name} | {r['seconds']:.1f} s | {r.get('cpu_seconds', 0):.1f} s | {r['peak_rss_mb']:.0f} MB | "
            f"{_end_state(r)} | {e['groups_written']} of {e['groups_to_write']} | {c.get('keyvault GET', 0)} | "
            f"{c.get('devops GET', 0)} / {c.get('devops PUT', 0)} | {table} |"
        )
    lines.append(
        f"| lower bound | | | | | {bound['writes']} | {bound['vault pages']} | {bound['devops GET']} / "
        f"{bound['writes']} | |"
    )
    lines += [
        "",
        "End state: after each contender the estate generator compares every group in the Azure DevOps stand-in "
        "with its own record of what the group must map, and counts the groups written from the stand-in's call "
        "log (for the sampled audit, only the groups it reached).",
    ]
    if naive:
        lines += [
            "",
            f"\\* The straightforward audit lists each group's vault for that group: measured on "
            f"{naive['measured_on_groups']} of the {shape['groups']} groups ({naive['seconds_measured']:.0f} s) and "
            "scaled up, as it is sequential. Its peak memory and CPU are the sample's. Both sequential audits are "
            "written by hand in `bench/baseline.py` (Key Vault SDK, plain REST), with none of kvlink's code.",
            "",
            f"Speed-up over the straightforward sequential audit: **{naive['seconds'] / k['seconds']:.1f}×** "
            "(target 20×).",
        ]
    if s:
        lines += [
            "Speed-up over a sequential audit that lists each vault once: "
            f"**{s['seconds'] / k['seconds']:.1f}×** "
            "(this one is CPU-bound on this 2-core machine: see docs/benchmarks.md).",
        ]
    calls = k["calls"]
    gets, puts, pages = calls.get("devops GET", 0), calls.get("devops PUT", 0), calls.get("keyvault GET", 0)
    lines += [
        "",
        f"Lower bound, from the estate and the platform's paging (`lower_bound` in `bench/audit_scale.py`): "
        f"Key Vault {bound['vault pages']} pages (each vault once, 25 secrets a page); Azure DevOps "
        f"{bound['project listings']} project listing(s) + {bound['group listings']} group listings + "
        f"{bound['service-connection checks']} service-connection checks (one per project, for the findings) + "
        f"{bound['reads under the lease']} reads under the lease (one per group that must be written: the PUT has "
        f"no ETag) = {bound['devops GET']} GETs, and {bound['writes']} PUTs.",
        "",
        f"kvlink: Key Vault {pages} pages ({_versus(pages, bound['vault pages'])}), Azure DevOps {gets} GETs "
        f"({_versus(gets, bound['devops GET'])}) and {puts} PUTs ({_versus(puts, bound['writes'])}).",
    ]
    kinds = ("project listing", "group listing", "service connections", "group read", "group PUT")
    bound_kinds = ("project listings", "group listings", "service-connection checks", "reads under the lease", "writes")
    lines += [
        "",
        "Azure DevOps calls by kind, as the stand-in saw them:",
        "",
        "| | project listings | group listings | service-connection checks | group reads | group writes |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in (("kvlink audit", k), ("sequential, each vault listed once", s)):
        if r is not None:
            seen = r["end_state"]["standin_calls"].get("devops_by_kind", {})
            lines.append(f"| {name} | " + " | ".join(str(seen.get(kind, 0)) for kind in kinds) + " |")
    lines.append("| lower bound | " + " | ".join(str(bound[kind]) for kind in bound_kinds) + " |")
    lines += _before_after(result.get("before_after"))
    if gets < bound["devops GET"]:
        lines += [""]
        lines.append(
            f"Fewer GETs than the bound means groups were written without a read under the lease "
            f"({bound['devops GET'] - gets} missing): DESIGN.md decision 5 requires that read."
        )
    return lines


def _versus(actual: int, minimum: int) -> str:
    if actual == minimum:
        return "the minimum"
    return f"{actual - minimum:+d} against the minimum"


def calls_section(rows: list[dict]) -> list[str]:
    lines = [
        "## Calls per change",
        "",
        "Counted at the clients on a warm engine. The minimum is derived in `bench/calls.py` from the scenario's own "
        "model of the estate and the platform's rules: Key Vault lists 25 secrets a page, and an event or log record "
        "names one secret (one version listing); Azure DevOps: one read per group the change may affect, taken under "
        "the group's lease, plus one write per group that changes (the PUT has no ETag). Table storage is kvlink's "
        "own store: its column is kvlink's design budget, not a platform minimum.",
        "",
        "| change | Key Vault | Azure DevOps | Table storage (budget) | groups right after |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [f"{row['calls'][k]} (min {row['minimum'][k]})" for k in ("keyvault", "devops")]
        cells.append(f"{row['calls']['table']} ({row['minimum']['table']})")
        cells.append("yes" if not row["groups_wrong"] else f"**no: {row['groups_wrong']}**")
        lines.append(f"| {row['change']} | " + " | ".join(cells) + " |")
    platform = all(row["calls"][k] == row["minimum"][k] for row in rows for k in ("keyvault", "devops"))
    right = all(not row["groups_wrong"] for row in rows)
    lines += [
        "",
        ("Every change at the platform minimum" if platform else "**Some changes are off the platform minimum**")
        + (", every group right after it." if right else "; **some groups are wrong after a change**."),
    ]
    return lines


def _before_after(record: dict | None) -> list[str]:
    """kvlink's audit before and after a change, measured in one session (``before_after`` in audit_scale.json)."""
    if not record:
        return []
    lines = [
        "",
        f"### {record['title']}",
        "",
        f"{record['how']}",
        "",
        "| | wall time | CPU (client) | of it, Key Vault listing loop | peak memory | Key Vault pages "
        "| Azure DevOps GET / PUT | end state |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in record["runs"]:
        loop = run.get("keyvault_loop_cpu_seconds")
        lines.append(
            f"| {run['label']} | {run['seconds']:.1f} s | {run['cpu_seconds']:.1f} s | "
            f"{f'{loop:.1f} s' if loop is not None else '(sync, in the pool threads)'} | {run['peak_rss_mb']:.0f} MB | "
            f"{run['calls'].get('keyvault GET', 0)} | {run['calls'].get('devops GET', 0)} / "
            f"{run['calls'].get('devops PUT', 0)} | {_end_state(run)} |"
        )
    lines += ["", record["verdict"]]
    return lines


def burst_section(r: dict) -> list[str]:
    writes = r["writes_per_group"]
    return [
        "## Burst",
        "",
        f"{r['secrets']} secrets created at once in a vault linked to {r['groups']} groups; every Event Grid event "
        f"delivered once to {r['instances']} engines with {r['invocations_per_instance']} invocations each "
        f"(Azure DevOps: 20 ms per call, throttled above {r['devops_rate_limit_per_s']:.0f} requests/s).",
        "",
        "| time until every group is right | group writes per group (max / mean) | target | Azure DevOps calls "
        "throttled | calls (Key Vault / Azure DevOps / Table) |",
        "|---|---|---|---|---|",
        f"| {r['seconds_to_consistent']} s | {writes['max']} / {writes['mean']} | at most 20 | "
        f"{r['devops_throttled']} | {r['calls']['keyvault']} / {r['calls']['devops']} / {r['calls']['table']} |",
        "",
        f"All groups right at the end: {'yes' if r['all_groups_right'] else '**no**'}.",
    ]


def coldstart_section(r: dict) -> list[str]:
    return [
        "## Cold start",
        "",
        f"Medians of {r['runs']} fresh interpreters each (`bench/coldstart.py`).",
        "",
        "| measure | kvlink | baseline | ratio |",
        "|---|---|---|---|",
        f"| import, timed in the process | `import function_app` {r['import_function_app_ms']} ms | "
        f"`import azure.functions` {r['import_azure_functions_ms']} ms | **{r['import_ratio']}×** "
        f"(target below {r['target_ratio']}×) |",
        f"| process start to first Event Grid event handled (a group written) | {r['first_event_ms']} ms "
        f"({r['first_event_in_process_ms']} ms of it after the interpreter started) | process start to "
        f"`import azure.functions` done {r['process_to_azure_functions_ms']} ms | {r['first_event_ratio']}× |",
        "",
        "The first event pays the SDK imports, TLS to the Key Vault and Azure DevOps stand-ins and Azurite, "
        "Key Vault's auth challenge, the lease and the write. Each run's group mapped the new secret afterwards: "
        + ("yes." if r["first_event"]["group_right"] else "**no**."),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small estates: a smoke run, not the published numbers")
    parser.add_argument("--render", action="store_true", help="only rewrite results.md from bench/results/*.json")
    parser.add_argument("command", nargs="?", choices=["profile-audit"], help="profile kvlink's audit instead")
    parser.add_argument("--full", action="store_true", help="profile-audit at the full scale (default: small)")
    args = parser.parse_args()
    if args.command == "profile-audit":
        profile_audit(full=args.full)
        return
    global RENDER_ONLY  # noqa: PLW0603 -- a run-wide switch read by _run
    RENDER_ONLY = args.render
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.time()
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    audit_args = ["--groups", "60", "--vaults", "12", "--secrets", "3000", "--projects", "6"] if args.quick else []
    burst_args = ["--secrets", "60"] if args.quick else []
    sections = [
        *calls_section(_run("calls")),
        "",
        *burst_section(_run("burst", *burst_args)),
        "",
        *coldstart_section(_run("coldstart", *(["--runs", "3"] if args.quick else []))),
        "",
        *audit_section(_run("audit_scale", *audit_args)),
    ]
    header = [
        "# Benchmark results",
        "",
        f"Machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} cores, load average {load} when the run began. Regenerate with `make bench`"
        f"{' (this file came from a --quick run)' if args.quick else ''}; "
        + (
            "re-rendered from the last run's numbers."
            if args.render
            else f"the run took {time.time() - started:.0f} s."
        ),
        "",
    ]
    (ROOT / "bench" / "results.md").write_text("\n".join(header + sections) + "\n")
    print((ROOT / "bench" / "results.md").read_text())


def profile_audit(*, full: bool) -> None:
    """kvlink's audit only, under cProfile: where its CPU goes (docs/benchmarks.md says it is CPU-bound here)."""
    text = RESULTS / "audit_profile.txt"
    shape = [] if full else ["--groups", "200", "--vaults", "40", "--secrets", "20000", "--projects", "10"]
    out = str(RESULTS / "audit_profile.json")
    subprocess.run(
        [sys.executable, "-m", "bench.audit_scale", "--skip-sequential", "--out", out, *shape],
        cwd=ROOT,
        env={**os.environ, "BENCH_PROFILE": str(text)},
        check=True,
    )
    print(f"profile written to {text.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
