"""`python -m bench` (or `make bench`): run every benchmark and write bench/results.md.

Each benchmark also leaves its raw numbers in bench/results/<name>.json.
"""

from __future__ import annotations

import argparse
import json
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


def audit_section(result: dict) -> list[str]:
    shape, k, bound = result["shape"], result["kvlink"], result["lower_bound"]
    s = result.get("sequential")
    calls = k["calls"]
    vault_pages = calls.get("keyvault GET", 0)
    devops_gets, devops_puts = calls.get("devops GET", 0), calls.get("devops PUT", 0)
    group_listings = bound["group listings"]
    extra = devops_gets - group_listings
    lines = [
        "## Audit at scale",
        "",
        f"Estate: {shape['groups']} groups in {shape['orgs'] * shape['projects']} projects, {shape['vaults']} vaults, "
        f"{shape['secrets']:,} secrets, {shape['drift']:.0%} of groups drifted, {shape['latency'] * 1000:.0f} ms "
        "added to every stand-in call. Stand-ins in their own process; each contender in a fresh one.",
        "",
        "| | wall time | CPU (client) | peak memory | Key Vault pages | Azure DevOps calls | Table calls |",
        "|---|---|---|---|---|---|---|",
    ]
    naive = result.get("naive")
    rows = (("kvlink audit", k), ("straightforward sequential*", naive), ("sequential, listings cached", s))
    for name, r in rows:
        if r is None:
            continue
        c = r["calls"]
        table = sum(v for key, v in c.items() if key.startswith("table"))
        devops = sum(v for key, v in c.items() if key.startswith("devops"))
        lines.append(
            f"| {name} | {r['seconds']:.1f} s | {r.get('cpu_seconds', 0):.1f} s | {r['peak_rss_mb']:.0f} MB | "
            f"{c.get('keyvault GET', 0)} | {devops} | {table} |"
        )
    lines.append(
        f"| lower bound | | | | {bound['vault pages']} | {group_listings} listings + {bound['writes']} writes "
        f"= {group_listings + bound['writes']} | |"
    )
    if naive:
        lines += [
            "",
            f"\\* The straightforward audit lists each group's vault for that group: measured on "
            f"{naive['measured_on_groups']} of the {shape['groups']} groups ({naive['seconds_measured']:.0f} s) and "
            "scaled up, as it is sequential. Its peak memory and CPU are the sample's.",
            "",
            f"Speed-up over the straightforward sequential audit: **{naive['seconds'] / k['seconds']:.1f}×** "
            "(target 20×).",
        ]
    if s:
        lines += [
            "Speed-up over a sequential audit that already lists each vault once: "
            f"**{s['seconds'] / k['seconds']:.1f}×** (this one is CPU-bound on this 2-core machine: see the README).",
        ]
    lines += [
        "",
        f"Calls against the lower bound: Key Vault {vault_pages} pages = {bound['vault pages']} (each vault listed "
        f"once); Azure DevOps {devops_gets} GETs = {group_listings} group listings + {extra} more "
        f"(1 project listing per organization, 1 service-connection lookup per project, which the "
        f"service-connection findings need) and {devops_puts} writes = {bound['writes']} drifted groups. "
        "No group is read again before its write: the audit writes from its listing unless kvlink's write marker "
        "says kvlink changed the group since.",
    ]
    return lines


def calls_section(rows: list[dict]) -> list[str]:
    lines = [
        "## Calls per change",
        "",
        "Counted at the clients on a warm engine; minimum as explained in `bench/calls.py` (Key Vault and "
        "Azure DevOps: the platform's; Table: kvlink's lookup, lease and write marker).",
        "",
        "| change | Key Vault | Azure DevOps | Table storage |",
        "|---|---|---|---|",
    ]
    for row in rows:
        cells = [f"{row['calls'][k]} (min {row['minimum'][k]})" for k in ("keyvault", "devops", "table")]
        lines.append(f"| {row['change']} | " + " | ".join(cells) + " |")
    at_minimum = all(row["calls"][k] <= row["minimum"][k] for row in rows for k in row["minimum"])
    lines += ["", "Every change at the minimum." if at_minimum else "**Some changes exceed the minimum.**"]
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
        f"Median of {r['runs']} fresh interpreters: `import azure.functions` {r['azure_functions_ms']} ms, "
        f"`import function_app` {r['function_app_ms']} ms: **{r['ratio']}×** (target below {r['target_ratio']}×).",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small estates: a smoke run, not the published numbers")
    parser.add_argument("--render", action="store_true", help="only rewrite results.md from bench/results/*.json")
    args = parser.parse_args()
    global RENDER_ONLY  # noqa: PLW0603 -- a run-wide switch read by _run
    RENDER_ONLY = args.render
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.time()
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
        "2 cores (this workplace's standard machine). Regenerate with `make bench`"
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


if __name__ == "__main__":
    main()
