"""The command line: same core, human tables or JSON, and exit codes a pipeline can gate on."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from kvlink_core import app as kvlink_app
from kvlink_core.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture
def cli(app_engine):
    def run(*argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = main(list(argv), out=out, err=err)
        return code, out.getvalue(), err.getvalue()

    return run


def link_args(estate, *extra: str) -> list[str]:
    return [
        "link",
        "--organization",
        estate.org,
        "--project",
        estate.project,
        "--group",
        "payments-kv",
        "--vault",
        estate.vault,
        "--service-connection",
        "kv-connection",
        *extra,
    ]


class TestLink:
    def test_dry_run_then_link_then_repeat(self, estate, cli):
        """A dry run exits 2 with the plan; the link exits 0; repeating it says nothing changed."""
        estate.kv.set_secret(estate.vault, "db-password")
        estate.kv.set_secret(estate.vault, "api-key")

        code, out, _ = cli(*link_args(estate, "--dry-run"))
        assert code == 2
        assert "+ api-key" in out and "+ db-password" in out and "not created yet" in out
        assert estate.ado.writes(estate.org) == []

        code, out, _ = cli(*link_args(estate))
        assert code == 0 and "created group 'payments-kv' with 2 names" in out

        code, out, _ = cli(*link_args(estate))
        assert code == 0 and "nothing changed" in out

    def test_policy_from_flags(self, estate, cli):
        """Tags, include, mode and --drop-expired reach the link's policy."""
        estate.kv.set_secret(estate.vault, "db-password", tags={"env": "prod", "team": "x"})
        code, out, err = cli(
            *link_args(
                estate,
                "--json",
                "--tag",
                "env=prod",
                "--tag",
                "team",
                "--include",
                "db-*",
                "--mode",
                "mirror",
                "--drop-expired",
            )
        )
        assert code == 0, err
        link = json.loads(out)["link"]
        assert link["tags"] == {"env": "prod", "team": None}
        assert (link["include"], link["mode"], link["keepExpired"]) == (["db-*"], "mirror", False)

    def test_errors_exit_1_with_the_reason(self, estate, cli):
        """A refused request exits 1 and says why on stderr, naming the field."""
        code, out, err = cli(
            "link", "--organization", "not-ours", "--project", "p", "--group", "g", "--vault", estate.vault
        )
        assert code == 1 and out == ""
        assert "error (organization)" in err and "KVLINK_DEVOPS_ORGS" in err


class TestSyncListUnlink:
    def test_sync_list_unlink(self, estate, cli):
        """sync finds new secrets, links lists the link, unlink forgets it."""
        estate.kv.set_secret(estate.vault, "db-password")
        cli(*link_args(estate))
        estate.kv.set_secret(estate.vault, "api-key")

        code, out, _ = cli("sync", "--vault", estate.vault, "--dry-run")
        assert code == 2 and "planned" in out and "+ api-key" in out
        code, out, _ = cli("sync", "--vault", estate.vault)
        assert code == 0 and "applied" in out

        code, out, _ = cli("links", "--vault", estate.vault)
        assert code == 0 and "payments-kv" in out and "[linked, merge, include *]" in out
        group_id = json.loads(cli("links", "--json")[1])["links"][0]["groupId"]

        code, out, _ = cli(
            "unlink", "--organization", estate.org, "--project", estate.project, "--group-id", str(group_id)
        )
        assert code == 0 and "the group itself is unchanged" in out
        assert cli("links", "--vault", estate.vault)[1].strip() == "no links"

    def test_refused_sync_exits_1(self, estate, cli):
        """A sync the mass-removal guard refuses exits 1; --force applies it."""
        for i in range(6):
            estate.kv.set_secret(estate.vault, f"s-{i}")
        cli(*link_args(estate))
        for i in range(4):
            estate.kv.delete_secret(estate.vault, f"s-{i}")
        code, out, _ = cli("sync", "--vault", estate.vault)
        assert code == 1 and "refused" in out
        code, out, _ = cli("sync", "--vault", estate.vault, "--force")
        assert code == 0

    def test_group_sync_needs_organization_and_project(self, estate, cli):
        """--group-id without --organization/--project is an error."""
        code, _, err = cli("sync", "--group-id", "3")
        assert code == 1 and "--organization" in err


def test_bad_settings_exit_1(monkeypatch):
    """Missing settings are reported, all at once, with exit code 1."""
    monkeypatch.delenv("KVLINK_DEVOPS_ORGS", raising=False)
    monkeypatch.delenv("KVLINK_ALLOWED_VAULTS", raising=False)
    kvlink_app.reset()
    out, err = io.StringIO(), io.StringIO()
    assert main(["links"], out=out, err=err) == 1
    assert "KVLINK_DEVOPS_ORGS" in err.getvalue() and "KVLINK_ALLOWED_VAULTS" in err.getvalue()


class TestDemoWithoutStandIns:
    """The core never needs the stand-ins; only the demo verb does, and it says so when they are missing."""

    def demo(self) -> tuple[int, str]:
        out, err = io.StringIO(), io.StringIO()
        code = main(["demo"], out=out, err=err)
        return code, err.getvalue()

    def test_missing_stand_ins(self, monkeypatch):
        """No standins package (an installed kvlink): exit 1 naming the stand-ins and where they come from."""
        import sys

        # None in sys.modules makes an import fail; the demo module itself may be loaded already.
        monkeypatch.setitem(sys.modules, "standins", None)
        monkeypatch.setitem(sys.modules, "standins.demo", None)
        code, err = self.demo()
        assert code == 1
        assert "the demo needs the stand-ins from the kvlink repository (standins/)" in err
        assert "Traceback" not in err

    def test_missing_stand_in_dependency(self, monkeypatch):
        """The stand-ins are there but a development dependency is not: exit 1 naming it."""
        import sys

        for name in [m for m in sys.modules if m in ("standins.demo", "standins.stack", "standins.tls")]:
            monkeypatch.delitem(sys.modules, name)
        monkeypatch.setitem(sys.modules, "trustme", None)
        code, err = self.demo()
        assert code == 1
        assert "need trustme, which is not installed" in err and "make setup" in err


def test_core_and_function_app_never_import_the_stand_ins():
    """Importing every kvlink_core module and function_app loads nothing from standins/."""
    import subprocess
    import sys

    script = (
        "import importlib, pkgutil, sys, kvlink_core, function_app\n"
        "for m in pkgutil.iter_modules(kvlink_core.__path__):\n"
        "    if m.name != '__main__':  # it runs the CLI\n"
        "        importlib.import_module('kvlink_core.' + m.name)\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] == 'standins'))\n"
    )
    repo = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=repo)
    assert result.stdout.strip() == "[]"
