"""The README's first command: the demo runs end to end and checks its own result."""

from __future__ import annotations

import pytest

from standins.demo import run

pytestmark = pytest.mark.integration


def test_demo_succeeds():
    """The demo links a group, applies new secrets and a deletion, and exits 0."""
    lines: list[str] = []
    assert run(lines.append) == 0
    text = "\n".join(lines)
    assert "-> 201: created group 'payments-kv' with 2 names" in text
    assert "group: -api-key -smtp-password" in text
    assert "secret values requested: 0" in text
    assert "secret-deleted   retired-key    repaired" in text
