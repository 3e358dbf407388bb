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


def _run(module: str, *args: str) -> dict:
    out = RESULTS / f"{module}.json"
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
    for name, r in (("kvlink audit", k), ("sequential", s)):
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
    if s:
        lines += ["", f"Speed-up over the sequential audit: **{s['seconds'] / k['seconds']:.1f}×** (target 20×)."]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small estates: a smoke run, not the published numbers")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.time()
    audit_args = ["--groups", "60", "--vaults", "12", "--secrets", "3000", "--projects", "6"] if args.quick else []
    sections = audit_section(_run("audit_scale", *audit_args))
    header = [
        "# Benchmark results",
        "",
        f"Machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}, "
        "2 cores (this workplace's standard machine). Regenerate with `make bench`"
        f"{' (this file came from a --quick run)' if args.quick else ''}; "
        f"the run took {time.time() - started:.0f} s.",
        "",
    ]
    (ROOT / "bench" / "results.md").write_text("\n".join(header + sections) + "\n")
    print((ROOT / "bench" / "results.md").read_text())


if __name__ == "__main__":
    main()
