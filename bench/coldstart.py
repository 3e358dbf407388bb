"""Cold start: importing function_app, next to importing azure.functions alone, in fresh interpreters.

    python -m bench.coldstart

The heavy SDKs (azure-identity, azure-keyvault-secrets, azure-data-tables, httpx...) load
when first used, not when the Functions worker indexes the app. Target: below 1.3x.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE = "import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"


def import_seconds(module: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(module=module)], cwd=ROOT, check=True, capture_output=True, text=True
    )
    return float(out.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "coldstart.json"))
    args = parser.parse_args()
    import_seconds("function_app")  # warm the file system cache and the .pyc files
    baseline, app = [], []
    for _ in range(args.runs):  # interleaved, so machine noise hits both alike
        baseline.append(import_seconds("azure.functions"))
        app.append(import_seconds("function_app"))
    result = {
        "runs": args.runs,
        "azure_functions_ms": round(statistics.median(baseline) * 1000, 1),
        "function_app_ms": round(statistics.median(app) * 1000, 1),
        "ratio": round(statistics.median(app) / statistics.median(baseline), 2),
        "target_ratio": 1.3,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
