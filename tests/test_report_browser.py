"""The report page in a real browser: Debian's Chromium, headless, loading it from a local server.

scripts/install-chromium.sh (run by `make test`) installs Chromium. Without it this test
fails, so CI cannot pass by skipping it; set KVLINK_SKIP_BROWSER=1 to skip it on purpose.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from test_report_page import HOSTILE, Page

import function_app
from kvlink_core import app as kvlink_app
from kvlink_core.audit import run_audit
from kvlink_core.model import Policy

pytestmark = pytest.mark.integration

# The flags Debian's Chromium needs here: no sandbox as root, and no background traffic to
# Google's hosts, which a closed network refuses many times over at every start.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


@pytest.fixture(scope="module")
def chromium() -> str:
    """Chromium's path; a clear failure when it is missing (a skip only when asked for)."""
    found = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if found:
        return found
    if os.environ.get("KVLINK_SKIP_BROWSER") == "1":
        pytest.skip("KVLINK_SKIP_BROWSER=1: the browser test is skipped on request")
    pytest.fail(
        "Chromium is not installed: run scripts/install-chromium.sh (make test does), "
        "or set KVLINK_SKIP_BROWSER=1 to skip the browser test",
        pytrace=False,
    )


@pytest.fixture
def served(estate, monkeypatch, tmp_path) -> Iterator[tuple[str, dict[str, Any], object]]:
    """Audit a small estate, get the page from GET /api/report, and serve it on 127.0.0.1."""
    for key, value in estate.env.items():
        monkeypatch.setenv(key, value)
    engine = estate.engine()
    monkeypatch.setattr(kvlink_app, "get_engine", lambda: engine)
    kv = estate.kv
    for name in ("db-password", "api-key", "m1"):
        kv.set_secret(estate.vault, name)
    drifted = estate.group("payments-kv", ["db-password", "retired-key"])
    estate.link(engine, drifted)
    storm = estate.group("storm-kv", ["m1", "m2", "m3", "m4", "m5"])
    estate.link(engine, storm, Policy(include=("m*",), mode="mirror"))
    estate.group(HOSTILE[0], ["api-key"])  # discovered by the audit, under a name that tries to be markup
    summary = run_audit(engine).summary()

    response = function_app.report(func.HttpRequest(method="GET", url="http://localhost/api/report", body=b""))
    assert response.status_code == 200
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "report.html").write_bytes(response.get_body())
    handler = functools.partial(_QuietHandler, directory=str(tmp_path / "site"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/report.html", summary, estate
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 -- the stdlib's parameter name
        pass


def _chromium(binary: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / "profile"
    profile.mkdir(exist_ok=True)
    result = subprocess.run(
        [binary, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def test_chromium_renders_the_page(chromium, served, tmp_path):
    """Chromium loads the page: the summary numbers and findings are in the DOM; a screenshot is taken."""
    url, summary, estate = served
    assert summary["names"] == {"added": 2, "removed": 1}  # payments-kv: +api-key +m1 -retired-key
    assert summary["findingsBySeverity"]["error"] == 6  # retired-key; storm-kv: m2..m5 and the refusal
    assert summary["openFindingsBySeverity"]["error"] == 5

    page = Page(_chromium(chromium, tmp_path, "--dump-dom", url).stdout)
    assert page.tags("script") == [] and page.tags("img") == []
    assert "Vaults 1" in page.by_id("stat-vaults")
    assert "2 / 1 linked / discovered" in page.by_id("stat-groups")
    assert "+2 −1" in page.by_id("stat-names")
    assert "Errors 6 5 open" in page.by_id("stat-findings-error")
    assert "Warnings 2 all repaired" in page.by_id("stat-findings-warning")  # the two missing names
    cards = " | ".join(page.by_class("finding"))
    assert "secret deleted" in cards and "retired-key" in cards and "repaired" in cards
    assert "sync refused" in cards and "storm-kv" in cards and "KVLINK_MAX_REMOVAL_FRACTION" in cards
    assert "What to do: Check the plan" in cards
    pills = page.by_class("pill")
    assert "refused by the guard" in pills and pills.count("in sync") == 2
    assert HOSTILE[0] in page.text  # the discovered group's name, as text
    assert f"{estate.org} / {estate.project}" in page.text

    shot = tmp_path / "report.png"
    _chromium(chromium, tmp_path, f"--screenshot={shot}", "--window-size=1280,1600", url)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1280, 1600) and len(data) > 30_000  # a rendered page, not a blank one
