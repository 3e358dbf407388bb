"""Cold start: a fresh Python process, from its start to the first Event Grid event handled.

    python -m bench.coldstart               # 15 runs of each probe, medians reported
    python -m bench.coldstart --runs 3      # a quick look

Three measures, each in fresh interpreters, interleaved so machine noise hits all alike:

* ``import function_app`` next to ``import azure.functions`` alone, timed inside the
  process: what the Functions worker pays to index the app. The heavy SDKs
  (azure-identity, azure-keyvault-secrets, azure-data-tables, httpx...) load when first
  used, so this should stay close to the baseline (target below 1.3x).
* Process start to first event handled, timed by the parent from spawning ``python`` to the
  child saying it is done: the child imports function_app, decodes one Event Grid delivery
  as the worker does and calls ``on_secret_event``, which reads the secret from the Key
  Vault stand-in, takes the group's lease in Azurite and writes the group to the Azure
  DevOps stand-in (TLS, SDK imports, first connections included). The baseline is process
  start to ``import azure.functions`` done, timed the same way: what any Python function
  app pays before its code runs.

Each run's event is for a new secret; the run counts only if the linked group maps it afterwards.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROBE = "import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
BASELINE = "import azure.functions; print('done', flush=True)"
FIRST_EVENT = """
import json, sys, time
t = time.perf_counter()
import function_app
imported = time.perf_counter() - t
from azure.functions.eventgrid import EventGridEventInConverter
from azure.functions.meta import Datum
event = EventGridEventInConverter.decode(Datum(type="json", value=sys.argv[1]), trigger_metadata={})
function_app.on_secret_event(event)
print("done", json.dumps({"import_s": imported, "in_process_s": time.perf_counter() - t}), flush=True)
"""
ORG, PROJECT, VAULT = "bench-org", "Payments", "kv-coldstart"


def import_seconds(module: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(module=module)], cwd=ROOT, check=True, capture_output=True, text=True
    )
    return float(out.stdout.strip())


def until_done(code: str, *args: str, env: dict[str, str] | None = None) -> tuple[float, str]:
    """Seconds from spawning ``python -c code`` to its "done" line, and the rest of that line."""
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    for line in child.stdout:
        if line.startswith("done"):
            elapsed = time.perf_counter() - started
            rest = line[len("done") :].strip()
            break
    else:
        _, err = child.communicate()
        raise RuntimeError(f"the probe ended without handling the event: {err[-2000:]}")
    child.communicate(timeout=60)
    return elapsed, rest


def _ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "coldstart.json"))
    args = parser.parse_args()

    from bench.lab import Lab
    from kvlink_core.model import Link
    from kvlink_core.registry import Registry
    from kvlink_core.settings import Settings
    from standins.events import secret_event

    import_seconds("function_app")  # warm the file system cache and the .pyc files
    baseline, app, start_baseline, first_event, inside = [], [], [], [], []
    right = True
    with Lab(orgs=ORG) as lab:
        seed = [f"seed-{i:02d}" for i in range(10)]
        for name in seed:
            lab.kv.set_secret(VAULT, name)
        gid = lab.ado.add_group(ORG, PROJECT, "cold", vault=VAULT, variables=seed)
        registry = Registry(Settings.from_env(lab.env))  # the tables exist, as in a deployed app
        registry.save_link(Link(ORG, PROJECT, gid, "cold", VAULT), previous=None)
        registry.close()
        for i in range(args.runs):
            baseline.append(import_seconds("azure.functions"))
            app.append(import_seconds("function_app"))
            start_baseline.append(until_done(BASELINE)[0])
            name = f"cold-{i:03d}"
            event = secret_event(VAULT, name, lab.kv.set_secret(VAULT, name))
            seconds, detail = until_done(FIRST_EVENT, json.dumps(event), env=lab.env)
            first_event.append(seconds)
            inside.append(json.loads(detail)["in_process_s"])
            right = right and name in lab.ado.variable_names(ORG, gid)
    result: dict[str, Any] = {
        "runs": args.runs,
        "import_azure_functions_ms": _ms(baseline),
        "import_function_app_ms": _ms(app),
        "import_ratio": round(statistics.median(app) / statistics.median(baseline), 2),
        "target_ratio": 1.3,
        "process_to_azure_functions_ms": _ms(start_baseline),
        "first_event_ms": _ms(first_event),
        "first_event_in_process_ms": _ms(inside),
        "first_event_ratio": round(statistics.median(first_event) / statistics.median(start_baseline), 2),
        "first_event": {"group_right": right},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
