"""Azure DevOps credentials that do not work: a wrong PAT, or no token at all.

A listing kvlink could not read says nothing about the groups in it: the organization (or
project) is *unreached*, its links are kept and counted, and no finding is drawn about them.
No token at all is one clear error on every front door, never a traceback or a 500.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import azure.functions as func
import azure.identity
import pytest
from azure.core.credentials import AccessToken, AccessTokenInfo
from azure.core.exceptions import ClientAuthenticationError
from azure.functions.timer import TimerRequest

import function_app
from kvlink_core import app as kvlink_app
from kvlink_core import credentials
from kvlink_core.audit import run_audit
from kvlink_core.cli import main as cli_main
from kvlink_core.credentials import DEVOPS_SCOPE, EMULATOR_TOKEN
from kvlink_core.devops import DevOps
from kvlink_core.errors import UpstreamError
from kvlink_core.model import GroupKey, Policy
from kvlink_core.report_page import banners, group_rows, stats
from kvlink_core.settings import HOSTING_VARIABLES

pytestmark = pytest.mark.integration

WRONG_PAT = "wrong-pat-0000000000"
# What DefaultAzureCredential raises when no source in its chain gives a token (its first line).
CHAIN_FAILED = "DefaultAzureCredential failed to retrieve a token from the included credentials."


class NoDevOpsToken:
    """A credential with no token for Azure DevOps (no PAT, no `az login`, no identity in the org).

    Key Vault and storage get the stand-ins' token, so each test sees Azure DevOps' failure alone.
    """

    def __init__(self) -> None:
        self.asked = 0

    def _token(self, scopes: tuple[str, ...]) -> str:
        if DEVOPS_SCOPE in scopes:
            self.asked += 1
            message = (
                f"{CHAIN_FAILED}\nAttempted credentials:\n\tEnvironmentCredential: "
                "EnvironmentCredential authentication unavailable.\n\tAzureCliCredential: Please run 'az login'"
            )
            # As ChainedTokenCredential does: the whole chain's story as a warning, then the error.
            logging.getLogger("azure.identity._credentials.chained").warning(message)
            raise ClientAuthenticationError(message=message)
        return EMULATOR_TOKEN

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self._token(scopes), int(time.time()) + 3600)

    def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        return AccessTokenInfo(self._token(scopes), int(time.time()) + 3600)


@pytest.fixture(autouse=True)
def _no_real_credential_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    """A real credential chain would probe IMDS and login.microsoftonline.com: fail instead."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a real Azure credential was built in a test")

    monkeypatch.setattr(azure.identity, "DefaultAzureCredential", refuse)
    monkeypatch.setattr(azure.identity, "ManagedIdentityCredential", refuse)


def linked_estate(estate, **overrides: str):
    """One managed and one discovered link in the estate's organization, both groups present."""
    estate.kv.set_secret(estate.vault, "db-password")
    engine = estate.engine(**overrides)
    managed = estate.link(engine, estate.group("payments-kv", ["db-password"]))
    discovered = estate.link(engine, estate.group("legacy-kv", ["db-password"]), Policy(), kind="discovered")
    return managed, discovered


def page_parts(engine, org: str, latest: dict[str, Any]) -> tuple[list[Any], dict[str, str], list[Any]]:
    """What the report page shows for the estate's organization: rows, the stat cards, the banners."""
    now = datetime.now(UTC)
    records = [r for r in engine.registry.link_records() if r.link.organization == org]
    rows = group_rows(latest, records, now=now, devops_url=engine.settings.devops_url, since=None)
    cards = {s.key: f"{s.value} ({s.note})" for s in stats(latest, rows, previous=None, now=now)}
    return rows, cards, banners(latest, now=now)


# -- a wrong PAT ------------------------------------------------------------------------------------
class TestWrongPat:
    @pytest.mark.parametrize(
        ("status", "reason"),
        [(401, "HTTP 401"), (203, "sign-in page"), (403, "HTTP 403")],
    )
    def test_audit_reports_the_organization_unreached_not_its_groups_gone(self, estate, monkeypatch, status, reason):
        """A 401, a 203 sign-in page or a 403 to the projects list: the organization is unreached."""
        monkeypatch.setattr(estate.ado, "unauthenticated_status", status)
        managed, discovered = linked_estate(estate)
        engine = estate.engine(AZURE_DEVOPS_PAT=WRONG_PAT)

        report = run_audit(engine)

        assert [f for f in report.findings if f.kind == "link-target-missing"] == []
        assert [f for f in report.findings if f.organization == estate.org] == []
        assert len(report.unreached) == 1
        assert report.unreached[0].startswith(f"organization {estate.org}: ")
        assert reason in report.unreached[0] and WRONG_PAT not in report.unreached[0]
        # The links are kept, and counted: they are what the table lists.
        assert engine.registry.find_link(managed.key) is not None
        assert engine.registry.find_link(discovered.key) is not None
        summary = report.summary()
        assert (summary["groups"]["linked"], summary["groups"]["discovered"]) == (1, 1)
        assert summary["groups"]["unreached"] == 2

        latest = engine.registry.latest_report()
        rows, cards, shown = page_parts(engine, estate.org, latest)
        assert sorted((r.group, r.kind, r.status) for r in rows) == [
            ("legacy-kv", "discovered", "devops-unreached"),
            ("payments-kv", "linked", "devops-unreached"),
        ]
        linked = sum(1 for r in rows if r.kind == "linked")
        assert cards["groups"].startswith(f"{linked} / {len(rows) - linked} (linked / discovered")
        assert "2 not reached" in cards["groups"]
        text = " ".join(" ".join([b.title, *b.lines]) for b in shown)
        assert estate.org in text and reason in text
        assert "unlink" not in text.lower()
        page = kvlink_app.report_page(engine)  # the whole page renders groups nothing is known of
        assert "not checked: Azure DevOps not reached" in page and "2 not reached" in page

    def test_unreached_project_is_counted_and_listed_too(self, estate, monkeypatch):
        """With KVLINK_DEVOPS_PROJECTS the project's listing fails: same treatment, project by project."""
        managed, _ = linked_estate(estate)
        engine = estate.engine(AZURE_DEVOPS_PAT=WRONG_PAT, KVLINK_DEVOPS_PROJECTS=f"{estate.org}/{estate.project}")

        report = run_audit(engine, dry_run=True, store=False)

        assert [f for f in report.findings if f.kind == "link-target-missing"] == []
        assert len(report.unreached) == 1
        assert report.unreached[0].startswith(f"project {estate.org}/{estate.project}: ")
        assert "HTTP 401" in report.unreached[0]
        counts = report.summary()["groups"]
        assert (counts["linked"], counts["discovered"], counts["unreached"]) == (1, 1, 2)
        outcomes = {g["group"]: g["outcome"] for g in report.groups}
        assert outcomes == {"payments-kv": "devops-unreached", "legacy-kv": "devops-unreached"}
        assert engine.registry.find_link(managed.key) is not None

    def test_cli_audit_dry_run(self, estate, monkeypatch):
        """The CLI says which organization it could not reach and why, finds no missing group, and fails."""
        linked_estate(estate)
        for key, value in {**estate.env, "AZURE_DEVOPS_PAT": WRONG_PAT}.items():
            monkeypatch.setenv(key, value)
        engine = estate.engine(AZURE_DEVOPS_PAT=WRONG_PAT)
        monkeypatch.setattr(kvlink_app, "get_engine", lambda: engine)
        out, err = io.StringIO(), io.StringIO()

        code = cli_main(["audit", "--dry-run"], out=out, err=err)

        text = out.getvalue()
        assert code == 1  # could not look: not "drift" (2), which a pipeline gate must tell apart
        assert "link-target-missing" not in text
        assert f"not reached: organization {estate.org}: " in text and "HTTP 401" in text
        assert "2 groups (1 linked, 1 discovered, 2 not reached)" in text
        assert WRONG_PAT not in text + err.getvalue()


# -- no token at all -------------------------------------------------------------------------------
def test_client_turns_the_credential_failure_into_one_clear_error(estate):
    """DevOps asks for a token before the request: no token is an UpstreamError, no request is sent."""
    credential = NoDevOpsToken()
    devops = DevOps(estate.settings(AZURE_DEVOPS_PAT=""), credential)
    before = estate.ado.count()
    try:
        with pytest.raises(UpstreamError) as info:
            devops.get_group(estate.org, estate.project, 1)
    finally:
        devops.close()
    assert (info.value.system, info.value.status) == ("devops", None)
    assert str(info.value).startswith(NO_TOKEN) and CHAIN_FAILED in str(info.value)
    assert "\n" not in str(info.value) and "Attempted credentials" not in str(info.value)
    assert credential.asked == 1 and estate.ado.count() == before


@pytest.fixture
def no_token(estate, monkeypatch) -> Iterator[NoDevOpsToken]:
    """The function app and the CLI as an adopter first runs them: no PAT, no `az login`.

    The engine is built by the real wiring (kvlink_core.app.build_engine) from the environment.
    """
    credential = NoDevOpsToken()
    for key, value in estate.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AZURE_DEVOPS_PAT")
    monkeypatch.setattr(credentials, "get_credential", lambda settings: credential)
    kvlink_app.reset()
    yield credential
    kvlink_app.reset()


NO_TOKEN = "no token for Azure DevOps"
REPO = Path(__file__).resolve().parent.parent
# `python -m kvlink_core` with the credential of the tests above: nothing else differs.
CLI_WITHOUT_TOKEN = """
import sys
import kvlink_core.credentials
from test_credentials_failures import NoDevOpsToken
kvlink_core.credentials.get_credential = lambda settings: NoDevOpsToken()
from kvlink_core.cli import main
sys.exit(main(sys.argv[1:]))
"""


class TestNoToken:
    def test_audit_lists_the_organization_unreached(self, estate, no_token):
        """The audit completes; the organization is unreached with the reason; nothing about its groups."""
        managed, _ = linked_estate(estate)

        report = run_audit(kvlink_app.get_engine())

        assert no_token.asked >= 1
        assert [f for f in report.findings if f.organization == estate.org] == []
        assert len(report.unreached) == 1
        assert report.unreached[0].startswith(f"organization {estate.org}: {NO_TOKEN}")
        assert "AZURE_DEVOPS_PAT" in report.unreached[0] and "az login" in report.unreached[0]
        assert "\n" not in report.unreached[0]
        assert kvlink_app.get_engine().registry.find_link(managed.key) is not None

    def test_nightly_audit_function_completes(self, estate, no_token):
        """The timer function stores a report that says why, instead of failing as a whole."""
        linked_estate(estate)

        function_app.nightly_audit(TimerRequest(past_due=False))

        latest = kvlink_app.get_engine().registry.latest_report()
        assert any(u.startswith(f"organization {estate.org}: {NO_TOKEN}") for u in latest["unreached"])

    def test_api_links_answers_502_with_the_reason(self, estate, no_token):
        estate.kv.set_secret(estate.vault, "db-password")
        body = estate.link_body()
        req = func.HttpRequest(
            method="POST",
            url="http://localhost:7071/api/links",
            headers={"Content-Type": "application/json"},
            body=json.dumps(body).encode(),
        )

        response = function_app.links(req)

        answer = json.loads(response.get_body())
        assert response.status_code == 502, answer
        assert answer["error"]["message"].startswith(NO_TOKEN)
        assert "AZURE_DEVOPS_PAT" in answer["error"]["message"]
        assert "Traceback" not in answer["error"]["message"]

    def test_api_sync_answers_502_with_the_reason(self, estate, no_token):
        managed, _ = linked_estate(estate)
        req = func.HttpRequest(
            method="POST",
            url="http://localhost:7071/api/sync",
            headers={"Content-Type": "application/json"},
            body=json.dumps({"vault": estate.vault}).encode(),
        )

        response = function_app.sync(req)

        answer = json.loads(response.get_body())
        assert response.status_code == 502, answer
        assert answer["error"]["message"].startswith(NO_TOKEN)
        assert kvlink_app.get_engine().registry.find_link(GroupKey(estate.org, managed.group_id)) is not None

    @pytest.mark.parametrize("dry_run", [False, True])
    def test_cli_link_prints_one_line(self, estate, no_token, dry_run):
        """`link` says what is missing in one line, exit 1: no traceback, no credential chain's story.

        A child process, so the CLI sets up logging as it does for a person (pytest's capture
        would swallow the SDK's warning in-process); the bootstrap only injects the credential.
        """
        estate.kv.set_secret(estate.vault, "db-password")
        argv = estate.link_argv(*(["--dry-run"] if dry_run else []))
        env = {k: v for k, v in os.environ.items() if k not in HOSTING_VARIABLES and k != "AZURE_DEVOPS_PAT"}
        env.update({k: v for k, v in estate.env.items() if k != "AZURE_DEVOPS_PAT"})
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(Path(__file__).parent)])

        result = subprocess.run(
            [sys.executable, "-c", CLI_WITHOUT_TOKEN, *argv],
            check=False,
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
        )

        lines = result.stderr.splitlines()
        assert result.returncode == 1, result.stderr
        assert len(lines) == 1 and lines[0].startswith(f"error: {NO_TOKEN}"), lines
        assert "Traceback" not in result.stderr + result.stdout
        assert estate.ado.writes(estate.org) == []

    def test_cli_audit_dry_run(self, estate, no_token):
        """`audit --dry-run` runs to its report, with the organization not reached."""
        linked_estate(estate)
        out, err = io.StringIO(), io.StringIO()

        code = cli_main(["audit", "--dry-run"], out=out, err=err)

        assert code == 1
        assert f"not reached: organization {estate.org}: {NO_TOKEN}" in out.getvalue()
        assert "Traceback" not in err.getvalue()
