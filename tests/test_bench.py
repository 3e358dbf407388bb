"""The audit benchmark's machinery, on a tiny estate: it runs, and kvlink makes exactly the lower-bound calls."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration


def test_tiny_audit_benchmark(tmp_path):
    """kvlink's audit and the sequential one agree on the repairs; kvlink lists each vault and project once."""
    out = tmp_path / "audit.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.audit_scale",
            "--groups",
            "24",
            "--vaults",
            "6",
            "--secrets",
            "300",
            "--projects",
            "4",
            "--latency",
            "0",
            "--drift",
            "0.5",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    result = json.loads(out.read_text())
    kvlink, sequential, bound = result["kvlink"], result["sequential"], result["lower_bound"]
    assert kvlink["changed"] == sequential["changed"] > 0
    assert kvlink["calls"]["keyvault GET"] == bound["vault pages"] == 6 * 2
    assert kvlink["calls"]["devops PUT"] == bound["writes"] == kvlink["changed"]
    # group listings + one project listing + one service-connection lookup per project,
    # + one read under the lease of each group written (a PUT never starts from the listing)
    assert kvlink["calls"]["devops GET"] == bound["group listings"] + 1 + 4 + bound["writes"]
    assert kvlink["unreached"] == []
