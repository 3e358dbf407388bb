"""The README's first command: the demo runs end to end and checks its own result."""

from __future__ import annotations

import os

import pytest

from standins.demo import run

pytestmark = pytest.mark.integration


def test_demo_succeeds(tmp_path, monkeypatch):
    """The demo links a group, applies new secrets and a deletion, names the pipelines a broken group
    stops, exits 0, and writes the report page --
    also in a container that sets CONTAINER_NAME, which is left as it was."""
    monkeypatch.setenv("CONTAINER_NAME", "dev-container")
    lines: list[str] = []
    page = tmp_path / "kvlink-report.html"
    assert run(lines.append, report_path=page) == 0
    assert os.environ["CONTAINER_NAME"] == "dev-container"
    text = "\n".join(lines)
    assert "-> 201: created group 'payments-kv' with 2 names" in text
    assert "group: -api-key -smtp-password" in text
    assert "secret values requested: 0" in text
    assert "secret-deleted   retired-key    repaired" in text
    assert f"report page (GET /api/report): {page}" in text
    assert "service-connection-not-ready in payments-batch-kv: stops 2 pipelines" in text
    assert "audit: 1 broken group, 2 pipelines at risk" in text
    # The page is the last audit's: the broken group and the pipelines it stops.
    html = page.read_text(encoding="utf-8")
    assert "payments-kv" in html and "payments-batch-kv" in html
    assert "Pipelines at risk" in html and "payments-deploy" in html and "payments-nightly" in html


def test_readme_transcript_is_what_the_demo_prints(tmp_path):
    """The README shows the demo's output as it is today: every line, ports, paths and times aside."""
    import re
    from pathlib import Path

    lines: list[str] = []
    assert run(lines.append, report_path=tmp_path / "kvlink-report.html") == 0
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    transcript = readme[readme.index("$ make demo\n") :]
    transcript = transcript[: transcript.index("```")]

    def normal(text: str) -> str:
        text = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", text)
        text = re.sub(r"\d+\.\d+s\b", "Ns", text)
        return re.sub(r"\(GET /api/report\): \S+", "(GET /api/report): PATH", text)

    shown = {normal(line) for line in transcript.splitlines()}
    missing = [line for line in "\n".join(lines).splitlines() if normal(line) not in shown]
    assert missing == [], missing
