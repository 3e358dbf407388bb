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
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


RENDER_ONLY = False  # --render: rebuild results.md from the JSON files already in bench/results/
ONLY: str | None = None  # --only NAME: run that benchmark, re-render the others


def _run(module: str, *args: str) -> dict:
    out = RESULTS / f"{module}.json"
    if not RENDER_ONLY and ONLY in (None, module):
        subprocess.run([sys.executable, "-m", f"bench.{module}", "--out", str(out), *args], cwd=ROOT, check=True)
    return json.loads(out.read_text())


def _end_state(r: dict) -> str:
    e = r["end_state"]
    if e["groups_wrong"] == 0 and e["groups_written"] == e["groups_to_write"]:
        return f"right ({e['groups_checked']}/{e['groups_checked']})"
    return f"**{e['groups_wrong']} of {e['groups_checked']} wrong**"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def _load(r: dict) -> str:
    load = r.get("load_average")
    return f"{load[0]:.1f}" if load else ""


def audit_rows(result: dict) -> list[tuple[str, dict | None]]:
    """(latency title, row) for each latency of the run, fastest last; sequential audits join the last."""
    latencies = result.get("latencies") or [{"latency": result["shape"]["latency"], "kvlink": result["kvlink"]}]
    return [(f"{_ms(row['latency'])} a call", row) for row in latencies]


def audit_section(result: dict) -> list[str]:
    shape, bound, drift = result["shape"], result["lower_bound"], result["drift"]
    s, naive = result.get("sequential"), result.get("naive")
    lines = [
        "## Audit at scale",
        "",
        f"Estate: {shape['groups']} groups in {shape['orgs'] * shape['projects']} projects, {shape['vaults']} vaults, "
        f"{shape['secrets']:,} secrets; {shape['linked']:.0%} of the groups linked, the rest discovered. The generator "
        f"drifted {drift.get('lacks-secret', 0)} linked groups by leaving out a secret, "
        f"{drift.get('maps-deleted', 0)} groups by mapping a secret it then deleted, and "
        f"{drift.get('discovered-lacks-secret', 0)} discovered groups by leaving out a secret "
        f"(which must stay out: kvlink never adds to a discovered group): **{drift['must_write']} groups "
        "must be written**. Stand-ins in their own process; each contender in a fresh one, on a fresh estate, "
        "with the same latency added to every call of both stand-ins and the same limits: "
        f"{result.get('limits', {}).get('keyvault', 32)} Key Vault and {result.get('limits', {}).get('devops', 4)} "
        "Azure DevOps calls at once (kvlink's defaults, `KVLINK_VAULT_CONCURRENCY` and "
        "`KVLINK_DEVOPS_CONCURRENCY`). The plain concurrent script (`bench/plain.py`) is a thread pool per "
        "service making exactly the minimum calls, with none of kvlink's code.",
        "",
    ]
    for title, row in audit_rows(result):
        assert row is not None
        last = row is (result.get("latencies") or [row])[-1]
        lines += [
            f"### At {title}",
            "",
            "| | wall time | against the lower bound | CPU (client) | peak memory | end state | groups written "
            "| Key Vault pages | Azure DevOps GET / PUT | Table calls | load average (1 min) after |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        contenders = [("kvlink audit", row["kvlink"]), ("plain concurrent script", row.get("plain"))]
        if last:
            contenders += [("straightforward sequential*", naive), ("sequential, each vault listed once", s)]
        for name, r in contenders:
            if r is None:
                continue
            c, e = r["calls"], r["end_state"]
            table = sum(v for key, v in c.items() if key.startswith("table"))
            against = f"{r['seconds'] / row['bound_seconds']:.2f}×" if row.get("bound_seconds") else ""
            lines.append(
                f"| {name} | {r['seconds']:.1f} s | {against} | {r.get('cpu_seconds', 0):.1f} s | "
                f"{r['peak_rss_mb']:.0f} MB | {_end_state(r)} | {e['groups_written']} of {e['groups_to_write']} | "
                f"{c.get('keyvault GET', 0)} | {c.get('devops GET', 0)} / {c.get('devops PUT', 0)} | {table} | "
                f"{_load(r)} |"
            )
        if row.get("bound_seconds") is not None:
            lines.append(
                f"| lower bound | {row['bound_seconds']:.2f} s | 1× | | | | {bound['writes']} | {bound['vault pages']} "
                f"| {bound['devops GET']} / {bound['writes']} | | |"
            )
        lines += ["", *standing(row), "", *timeline_block(row), ""]
    if result.get("runs"):
        lines += ["### Every run", "", *repeats_block(result), ""]
    lines += [
        "End state: after each contender the estate generator compares every group in the Azure DevOps stand-in "
        "with its own record of what the group must map, and counts the groups written from the stand-in's call "
        "log (for the sampled audit, only the groups it reached).",
    ]
    k = (result.get("latencies") or [{"kvlink": result["kvlink"]}])[-1]["kvlink"]
    if naive:
        lines += [
            "",
            f"\\* The straightforward audit lists each group's vault for that group: measured on "
            f"{naive['measured_on_groups']} of the {shape['groups']} groups ({naive['seconds_measured']:.0f} s) and "
            "scaled up, as it is sequential. Its peak memory and CPU are the sample's. Both sequential audits are "
            "written by hand in `bench/baseline.py` (Key Vault SDK, plain REST), with none of kvlink's code, and "
            "run at the fast latency only.",
            "",
            f"Speed-up over the straightforward sequential audit: **{naive['seconds'] / k['seconds']:.1f}×** "
            "(target 20×).",
        ]
    if s:
        lines += [
            f"Speed-up over a sequential audit that lists each vault once: **{s['seconds'] / k['seconds']:.1f}×**.",
        ]
    calls = result["kvlink"]["calls"]
    gets, puts, pages = calls.get("devops GET", 0), calls.get("devops PUT", 0), calls.get("keyvault GET", 0)
    lines += [
        "",
        f"Lower bound, from the estate and the platform's paging (`lower_bound` and `bound_seconds` in "
        f"`bench/audit_scale.py`): Key Vault {bound['vault pages']} pages (each vault once, 25 secrets a page, the "
        f"longest listing {bound['longest listing']} pages); Azure DevOps "
        f"{bound['project listings']} project listing(s) + {bound['group listings']} group listings + "
        f"{bound['service-connection checks']} service-connection checks (one per project, for the findings) + "
        f"{bound['reads under the lease']} reads under the lease (one per group that must be written: the PUT has "
        f"no ETag) = {bound['devops GET']} GETs, and {bound['writes']} PUTs. In time: the pages divided by the Key "
        "Vault limit (and no less than the longest listing), and the Azure DevOps calls divided by its limit, each "
        "times the latency; the two services run side by side, so the larger decides.",
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
    for name, r in (("kvlink audit", result["kvlink"]), ("plain concurrent script", result.get("plain"))):
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


def standing(row: dict) -> list[str]:
    """Where kvlink stands at one latency, and what decided its time (from the stand-ins' timeline)."""
    k, plain, bound = row["kvlink"], row.get("plain"), row.get("bound_seconds")
    lines = []
    if bound and plain:
        lines.append(
            f"kvlink: **{k['seconds'] / bound:.2f}× the lower bound** and **{k['seconds'] / plain['seconds']:.2f}× "
            f"the plain script's time** ({k['seconds']:.1f} s against {bound:.2f} s and {plain['seconds']:.1f} s), "
            f"with {k.get('cpu_seconds', 0) / max(plain.get('cpu_seconds') or 1, 0.01):.2f}× its CPU "
            f"and {k['peak_rss_mb'] / plain['peak_rss_mb']:.2f}× its peak memory."
        )
    span = k.get("timeline", {}).get("span") or {}
    kv, ado = span.get("keyvault first/last"), span.get("devops first/last")
    if kv and ado:
        busy = kv[1] - kv[0]
        limit = row.get("limits", {}).get("keyvault", 32)
        lines.append(
            f"What decided it: Key Vault was listed from {kv[0]:.2f} s to {kv[1]:.2f} s after kvlink's first call "
            f"with {span['keyvault call-seconds'] / busy:.1f} calls in flight on average (of {limit}: "
            f"{span['keyvault call-seconds'] / busy / limit:.0%}); its last Azure DevOps call ended "
            f"{ado[1] - kv[1]:.2f} s after the last listing; {k['seconds'] - span['total']:.2f} s of the wall time "
            "were before the first call and after the last (Table storage: the links, the report)."
        )
    phases = k.get("phases") or {}
    if "before first call" in phases:

        def spent(table: dict) -> str:
            top = [f"{name} {seconds:.2f} s" for name, seconds in list(table.items())[:2] if seconds >= 0.005]
            return f" ({', '.join(top)})" if top else ""

        lines.append(
            f"Before the stand-ins' first call: {phases['before first call']:.2f} s"
            f"{spent(phases['registry before'])}; after their last: {phases['after last call']:.2f} s"
            f"{spent(phases['registry after'])} (the registry's calls on Table storage, timed in the audit's process)."
        )
    return lines
    return lines


def repeats_block(result: dict) -> list[str]:
    """Every run of kvlink and the plain script the results hold, with the load, and the mean and spread."""
    runs = result.get("runs") or []
    if not runs:
        return []
    lines = [
        f"Every run ({max(r['run'] for r in runs)} of each contender at each latency, one after the other on a "
        "fresh estate; the load average is the machine's, 1 / 5 / 15 min, after each contender):",
        "",
        "| run | latency a call | kvlink | against the bound | plain script | kvlink against the script "
        "| CPU kvlink / script | before the first call / after the last (kvlink) | load after kvlink | "
        "load after the script | end state |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        k, plain, bound = r["kvlink"], r["plain"], r["bound_seconds"]
        phases = k.get("phases") or {}
        edges = (
            f"{phases['before first call']:.2f} / {phases['after last call']:.2f} s"
            if "before first call" in phases
            else ""
        )
        lines.append(
            f"| {r['run']} | {_ms(r['latency'])} | {k['seconds']:.1f} s | {k['seconds'] / bound:.2f}× | "
            f"{plain['seconds']:.1f} s | {k['seconds'] / plain['seconds']:.2f}× | {k['cpu_seconds']:.1f} / "
            f"{plain['cpu_seconds']:.1f} s | {edges} | {_loads(k)} | {_loads(plain)} | kvlink {_end_state(k)}, "
            f"script {_end_state(plain)} |"
        )
    lines.append("")
    for latency in sorted({r["latency"] for r in runs}, reverse=True):
        at = [r for r in runs if r["latency"] == latency]
        bound = [r["kvlink"]["seconds"] / r["bound_seconds"] for r in at]
        plain = [r["kvlink"]["seconds"] / r["plain"]["seconds"] for r in at]
        walls = [statistics.fmean(r[name]["seconds"] for r in at) for name in ("kvlink", "plain")]
        lines.append(
            f"At {_ms(latency)} a call, over {len(at)} runs: kvlink **{statistics.fmean(bound):.2f}× the lower bound** "
            f"(from {min(bound):.2f}× to {max(bound):.2f}×) and **{statistics.fmean(plain):.2f}× the plain script's "
            f"time** (from {min(plain):.2f}× to {max(plain):.2f}×); wall {walls[0]:.1f} s against {walls[1]:.1f} s "
            "for the script."
        )
    return lines


def _loads(r: dict) -> str:
    load = r.get("load_average")
    return " / ".join(f"{x:.1f}" for x in load) if load else ""


def timeline_block(row: dict) -> list[str]:
    """Calls in flight per second of each contender's run, as the stand-ins recorded them."""
    out = ["Calls in flight, second by second (mean over each second; the stand-ins' own start and end stamps):", ""]
    out.append("```")
    for name in ("kvlink", "plain"):
        r = row.get(name)
        seconds = (r or {}).get("timeline", {}).get("seconds") or []
        if not seconds:
            continue
        out.append(f"{name:<6} Key Vault chains  " + " ".join(f"{x['kv_chains']:4.0f}" for x in seconds))
        out.append(f"{name:<6} Key Vault calls   " + " ".join(f"{x['kv_calls']:4.0f}" for x in seconds))
        out.append(f"{name:<6} Azure DevOps calls " + " ".join(f"{x['devops_calls']:4.1f}" for x in seconds))
    out.append("```")
    return out


def docs_summary(result: dict) -> list[str]:
    """The audit's lines of docs/benchmarks.md, between its bench markers: written from a run, never by hand."""
    shape, drift = result["shape"], result["drift"]
    lines = [
        f"Audit of {shape['groups']:,} groups in {shape['orgs'] * shape['projects']} projects, {shape['vaults']} "
        f"vaults, {shape['secrets']:,} secrets ({drift['must_write']} groups drifted), from "
        "`python -m bench.audit_scale` (every row one run; load average after each run):",
        "",
        "| latency a call | kvlink | plain concurrent script | lower bound | kvlink against the bound / the script "
        "| CPU kvlink / script | peak memory kvlink / script | end state |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for _, row in audit_rows(result):
        assert row is not None
        k, plain, bound = row["kvlink"], row["plain"], row["bound_seconds"]
        lines.append(
            f"| {_ms(row['latency'])} | {k['seconds']:.1f} s (load {_load(k)}) | {plain['seconds']:.1f} s "
            f"(load {_load(plain)}) | {bound:.2f} s | **{k['seconds'] / bound:.2f}× / "
            f"{k['seconds'] / plain['seconds']:.2f}×** | {k['cpu_seconds']:.1f} / {plain['cpu_seconds']:.1f} s | "
            f"{k['peak_rss_mb']:.0f} / {plain['peak_rss_mb']:.0f} MB | kvlink {_end_state(k)}, "
            f"script {_end_state(plain)} |"
        )
    slow = audit_rows(result)[0][1]
    assert slow is not None
    b = result["lower_bound"]
    limits = result.get("limits", {"keyvault": 32, "devops": 4})
    devops_calls = b["devops GET"] + b["writes"]
    rounds = math.ceil(b["vault pages"] / limits["keyvault"])
    lines += [
        "",
        f"What decides the audit's time on Azure, where a call takes {_ms(slow['latency'])}: Key Vault. A vault is "
        f"listed 25 secrets a page, each page found through the last one's `nextLink`, so the estate's "
        f"{b['vault pages']:,} pages at {limits['keyvault']} calls at once are {rounds} "
        f"rounds of {_ms(slow['latency'])}: {slow['bound_seconds']:.2f} s. Azure DevOps needs {devops_calls} calls at "
        f"{limits['devops']} at once ({math.ceil(devops_calls / limits['devops']) * slow['latency']:.1f} s), which "
        "kvlink makes while the listings run: a group is read and written as soon as its own vault is listed. So "
        "the audit's time is the Key Vault pages × latency ÷ KVLINK_VAULT_CONCURRENCY, plus what is left to "
        "write after the last listing. kvlink starts every listing at once and holds a call slot only while a "
        "page is in flight: the longest listings (by the pages the last audit counted) have the first claim, and "
        "the last ones share the slots so that they end together.",
        "",
        *standing(slow),
        *(["", *repeats_block(result)] if result.get("runs") else []),
        *_before_after(result.get("before_after")),
    ]
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
        "| run | latency a call | wall time | against the lower bound | plain script, same run | CPU (client) "
        "| peak memory | Key Vault pages | Azure DevOps GET / PUT | end state | load average (1 min) after |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in record["runs"]:
        plain = run.get("plain") or {}
        lines.append(
            f"| {run['label']} | {_ms(run['latency'])} | {run['seconds']:.1f} s | "
            f"{run['seconds'] / run['bound_seconds']:.2f}× | {plain.get('seconds', 0):.1f} s | "
            f"{run['cpu_seconds']:.1f} s | {run['peak_rss_mb']:.0f} MB | {run['calls'].get('keyvault GET', 0)} | "
            f"{run['calls'].get('devops GET', 0)} / {run['calls'].get('devops PUT', 0)} | {_end_state(run)} | "
            f"{_load(run)} |"
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


def hub_batching_section(r: dict) -> list[str]:
    h, m = r["host_json"], r["measured"]
    lines = [
        "## Audit-log stream: messages in, invocations out",
        "",
        f"host.json: `maxEventBatchSize` {h['maxEventBatchSize']}, `minEventBatchSize` {h['minEventBatchSize']}, "
        f"`maxWaitTime` {h['maxWaitTime_s']:.0f} s; {r['partitions']} partitions; {r['reads_per_run']} secret reads "
        "per pipeline run (`bench/hub_batching.py`). **Modelled**, not measured: how the Event Hubs trigger forms "
        "batches (its dispatch rule, one message per read, arrivals spread over the hour), for two packings of "
        "records into messages, which Azure Monitor does not document.",
        "",
        "| pipeline runs an hour | messages (one per run) | invocations without batching | with host.json | "
        "added delay, median / max | messages (one per read) | without | with | added delay, median / max |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["modelled"]:
        cells = [str(row["runs_per_hour"])]
        for packing in ("message_per_run", "message_per_read"):
            p = row[packing]
            d = p["host_json"]["added_delay_s"]
            cells += [
                str(p["unbatched"]["messages"]),
                str(p["unbatched"]["invocations"]),
                f"**{p['host_json']['invocations']}**",
                f"{d['median']:.0f} / {d['max']:.0f} s",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    u, b = m["unbatched"], m["host_json"]
    lines += [
        "",
        f"**Measured** with the stand-ins: the modelled hour at {m['runs_per_hour']} runs (one message per run, "
        f"{m['deletes']} of them with a delete) replayed batch by batch through the real `on_vault_log`:",
        "",
        "| | invocations | calls (Key Vault / Azure DevOps / Table) | handler time (total, per invocation) "
        "| deletes reached the group |",
        "|---|---|---|---|---|",
    ]
    for name, x in (("without batching", u), ("host.json batching", b)):
        c = x["calls"]
        lines.append(
            f"| {name} | {x['invocations']} | {c['keyvault']} / {c['devops']} / {c['table']} | "
            f"{x['handler_seconds']} s, {x['handler_ms_per_invocation']} ms | "
            f"{'yes' if x['deletes_applied'] else '**no**'} |"
        )
    return lines


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


DOCS = ROOT / "docs" / "benchmarks.md"
DOCS_BEGIN = "<!-- bench:audit begin: written by `python -m bench` from bench/results/audit_scale.json -->"
DOCS_END = "<!-- bench:audit end -->"


def docs_with_summary(text: str, result: dict) -> str:
    """docs/benchmarks.md with the audit's summary between its markers replaced by ``result``'s."""
    head, _, rest = text.partition(DOCS_BEGIN)
    _, _, tail = rest.partition(DOCS_END)
    if not rest or DOCS_END not in rest:
        raise SystemExit(f"{DOCS} lacks the markers {DOCS_BEGIN!r} ... {DOCS_END!r}")
    return head + DOCS_BEGIN + "\n" + "\n".join(docs_summary(result)) + "\n" + DOCS_END + tail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small estates: a smoke run, not the published numbers")
    parser.add_argument("--render", action="store_true", help="only rewrite results.md from bench/results/*.json")
    parser.add_argument(
        "--only", choices=["calls", "burst", "coldstart", "audit_scale"], help="run this one, render the others"
    )
    parser.add_argument("command", nargs="?", choices=["profile-audit"], help="profile kvlink's audit instead")
    parser.add_argument("--full", action="store_true", help="profile-audit at the full scale (default: small)")
    args = parser.parse_args()
    if args.command == "profile-audit":
        profile_audit(full=args.full)
        return
    global RENDER_ONLY, ONLY
    RENDER_ONLY, ONLY = args.render, args.only
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.time()
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    # Three runs of kvlink and the plain script at each latency, all published: one run on a shared machine is noise.
    audit_args = ["--groups", "60", "--vaults", "12", "--secrets", "3000", "--projects", "6"] if args.quick else []
    audit_args += ["--repeat", "1" if args.quick else "3"]
    burst_args = ["--secrets", "60"] if args.quick else []
    audit = _run("audit_scale", *audit_args)
    sections = [
        *calls_section(_run("calls")),
        "",
        *burst_section(_run("burst", *burst_args)),
        "",
        *coldstart_section(_run("coldstart", *(["--runs", "3"] if args.quick else []))),
        "",
        *hub_batching_section(_run("hub_batching", *(["--replay-runs", "60"] if args.quick else []))),
        "",
        *audit_section(audit),
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
            else f"the run took {time.time() - started:.0f} s"
            + (f" ({args.only} run, the others re-rendered from their last numbers)." if args.only else ".")
        ),
        "",
    ]
    (ROOT / "bench" / "results.md").write_text("\n".join(header + sections) + "\n")
    if not args.quick:
        DOCS.write_text(docs_with_summary(DOCS.read_text(), audit))
    print((ROOT / "bench" / "results.md").read_text())


def profile_audit(*, full: bool) -> None:
    """kvlink's audit only, under cProfile: where its CPU goes (docs/benchmarks.md says it is CPU-bound here)."""
    text = RESULTS / "audit_profile.txt"
    shape = [] if full else ["--groups", "200", "--vaults", "40", "--secrets", "20000", "--projects", "10"]
    shape += ["--latency", "0.02", "--fast-latency", "0"]  # where CPU decides
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
