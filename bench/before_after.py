"""kvlink's audit before and after a change, from runs of ``bench.audit_scale`` made in one session.

    python -m bench.before_after --before /tmp/b1.json /tmp/b2.json --after /tmp/a1.json /tmp/a2.json \\
        --title "..." --how "..."

Each file is one ``python -m bench.audit_scale --skip-sequential --out FILE`` run (the "before" ones
from a checkout of the old code); the record goes into bench/results/audit_scale.json as
``before_after`` (``python -m bench --render`` shows it). The plain script and the lower bound of
the same run are kept beside each kvlink run, so that runs on a busier machine compare fairly.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def runs(label: str, path: Path) -> list[dict[str, Any]]:
    result = json.loads(path.read_text())
    if result.get("runs"):  # an --repeat run: each repetition is a run of its own
        head = label.rsplit(", run ", 1)[0]
        return [
            {
                "label": f"{head}, run {r['run']}",
                "latency": r["latency"],
                **{key: r["kvlink"][key] for key in ("seconds", "cpu_seconds", "peak_rss_mb", "calls", "end_state")},
                "load_average": r["kvlink"].get("load_average"),
                "bound_seconds": r["bound_seconds"],
                "plain": {key: r["plain"][key] for key in ("seconds", "cpu_seconds", "peak_rss_mb", "load_average")},
            }
            for r in result["runs"]
        ]
    out = []
    for row in result["latencies"]:
        k, plain = row["kvlink"], row["plain"]
        out.append(
            {
                "label": label,
                "latency": row["latency"],
                "seconds": k["seconds"],
                "cpu_seconds": k["cpu_seconds"],
                "peak_rss_mb": k["peak_rss_mb"],
                "calls": k["calls"],
                "end_state": k["end_state"],
                "load_average": k.get("load_average"),
                "bound_seconds": row["bound_seconds"],
                "plain": {key: plain[key] for key in ("seconds", "cpu_seconds", "peak_rss_mb", "load_average")},
            }
        )
    return out


def verdict(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> str:
    parts = []
    for latency in sorted({r["latency"] for r in before + after}, reverse=True):
        b = [r for r in before if r["latency"] == latency]
        a = [r for r in after if r["latency"] == latency]
        if not a or not b:
            continue

        def mean(rows: list[dict[str, Any]], key: str) -> float:
            return statistics.fmean(r[key] for r in rows)

        def versus_plain(rows: list[dict[str, Any]]) -> float:
            return statistics.fmean(r["seconds"] / r["plain"]["seconds"] for r in rows)

        def versus_bound(rows: list[dict[str, Any]]) -> float:
            return statistics.fmean(r["seconds"] / r["bound_seconds"] for r in rows)

        parts.append(
            f"At {latency * 1000:.0f} ms a call (means of {len(b)} before, {len(a)} after): wall "
            f"{mean(b, 'seconds'):.1f} -> {mean(a, 'seconds'):.1f} s ({mean(a, 'seconds') / mean(b, 'seconds'):.2f}x), "
            f"against the lower bound {versus_bound(b):.2f}x -> {versus_bound(a):.2f}x, against the plain script "
            f"of the same run {versus_plain(b):.2f}x -> {versus_plain(a):.2f}x; CPU {mean(b, 'cpu_seconds'):.1f} -> "
            f"{mean(a, 'cpu_seconds'):.1f} s; peak RSS {mean(b, 'peak_rss_mb'):.0f} -> {mean(a, 'peak_rss_mb'):.0f} MB."
        )
    return " ".join(parts)


def _as_run(run: dict[str, Any]) -> tuple[float, str, bool]:
    """As they ran: by latency, then run by run, before and after alternated."""
    return (-run["latency"], run["label"].split("run ")[-1], run["label"].startswith("after"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", nargs="+", type=Path, required=True)
    parser.add_argument("--after", nargs="+", type=Path, required=True)
    parser.add_argument("--title", required=True)
    parser.add_argument("--how", required=True)
    parser.add_argument("--into", type=Path, default=ROOT / "bench" / "results" / "audit_scale.json")
    args = parser.parse_args()
    before = [r for i, p in enumerate(args.before, 1) for r in runs(f"before, run {i}", p)]
    after = [r for i, p in enumerate(args.after, 1) for r in runs(f"after, run {i}", p)]
    result = json.loads(args.into.read_text())
    result["before_after"] = {
        "title": args.title,
        "how": args.how,
        "runs": sorted(before + after, key=_as_run),
        "verdict": verdict(before, after),
    }
    args.into.write_text(json.dumps(result, indent=2))
    print(result["before_after"]["verdict"])


if __name__ == "__main__":
    main()
