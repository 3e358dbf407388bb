"""The command line: same core, human tables or JSON, and exit codes a pipeline can gate on."""

from __future__ import annotations

import io
import json
import os
from datetime import UTC, datetime, timedelta
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
    return estate.link_argv(*extra)


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

    def test_refused_flag_value_is_a_usage_error_naming_the_flag(self, estate, cli):
        """An organization outside the allow-list is a flag value kvlink refuses: exit 64, naming --organization."""
        code, out, err = cli(
            "link", "--organization", "not-ours", "--project", "p", "--group", "g", "--vault", estate.vault
        )
        assert code == 64 and out == ""
        assert "error: --organization: organization 'not-ours' is not in KVLINK_DEVOPS_ORGS" in err
        assert estate.ado.calls == []


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
        assert code == 0 and "its names are unchanged" in out
        assert cli("links", "--vault", estate.vault)[1].strip() == "no links"

    def test_refused_sync_exits_2(self, estate, cli):
        """A sync the mass-removal guard refuses leaves drift: exit 2 (kvlink looked; a person decides).

        --force applies it."""
        for i in range(6):
            estate.kv.set_secret(estate.vault, f"s-{i}")
        cli(*link_args(estate))
        for i in range(4):
            estate.kv.delete_secret(estate.vault, f"s-{i}")
        code, out, _ = cli("sync", "--vault", estate.vault)
        assert code == 2 and "refused" in out
        code, out, _ = cli("sync", "--vault", estate.vault, "--force")
        assert code == 0

    def test_group_sync_needs_organization_and_project(self, estate, cli):
        """--group-id without --organization/--project is a usage error naming what is missing."""
        code, _, err = cli("sync", "--group-id", "3")
        assert code == 64 and "error: --group-id needs --organization and --project" in err


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


# -- exit codes: one per outcome, for every verb ------------------------------------------------
def linked_group(estate, cli, *names: str) -> int:
    """Link payments-kv to the estate's vault with these secrets; its group id."""
    for name in names:
        estate.kv.set_secret(estate.vault, name)
    code, _, err = cli(*link_args(estate))
    assert code == 0, err
    return estate.ado.groups(estate.org)[0]["id"]


class TestExitCodes:
    """0 nothing left to do, 1 error / could not look, 2 changes or drift, 64 usage -- never confused."""

    def test_link(self, estate, cli):
        estate.kv.set_secret(estate.vault, "db-password")
        assert cli(*link_args(estate, "--dry-run"))[0] == 2
        assert cli(*link_args(estate))[0] == 0
        assert cli(*link_args(estate, "--dry-run"))[0] == 0  # in step: nothing to change
        code, _, err = cli(*link_args(estate)[:4], "Nowhere", *link_args(estate)[5:])
        assert code == 1 and "error: --project: project 'Nowhere' was not found" in err
        assert cli("link", "--organization", estate.org)[0] == 64
        code, _, err = cli(*link_args(estate, "--mode", "copy"))
        assert code == 64 and "--mode" in err

    def test_link_refused_by_the_mass_removal_guard(self, estate, cli):
        """Re-linking when most secrets are gone: refused, the plan shown, drift remains (2); --force applies."""
        group_id = linked_group(estate, cli, *(f"s-{i}" for i in range(6)))
        for i in range(4):
            estate.kv.delete_secret(estate.vault, f"s-{i}")
        code, _, err = cli(*link_args(estate))
        assert code == 2 and "error:" in err and "- s-0" in err
        assert estate.names(group_id) == [f"s-{i}" for i in range(6)]
        assert cli(*link_args(estate, "--force"))[0] == 0

    def test_sync(self, estate, cli):
        linked_group(estate, cli, "db-password")
        estate.kv.set_secret(estate.vault, "api-key")
        assert cli("sync", "--vault", estate.vault, "--dry-run")[0] == 2
        assert cli("sync", "--vault", estate.vault)[0] == 0
        assert cli("sync", "--vault", estate.vault, "--dry-run")[0] == 0
        estate.kv.inject(503, path=f"^/{estate.vault}/secrets$", times=100)
        code, _, err = cli("sync", "--vault", estate.vault)
        assert code == 1 and "error:" in err
        estate.kv.clear_faults()
        assert cli("sync", "--vault", estate.vault, "--group-id", "1")[0] == 64

    def test_links_and_unlink(self, estate, cli):
        group_id = linked_group(estate, cli, "db-password")
        assert cli("links")[0] == 0
        assert cli("links", "--bogus")[0] == 64
        where = ["--organization", estate.org, "--project", estate.project]
        assert cli("unlink", *where, "--group-id", "abc")[0] == 64
        assert cli("unlink", *where, "--group-id", str(group_id))[0] == 0
        code, _, err = cli("unlink", *where, "--group-id", str(group_id))
        assert code == 1 and "--group-id" in err and "is not linked" in err

    def test_audit(self, estate, cli, app_engine):
        group_id = linked_group(estate, cli, "db-password", "api-key")
        assert cli("audit", "--dry-run")[0] == 0
        assert cli("audit")[0] == 0
        estate.kv.delete_secret(estate.vault, "api-key")
        assert cli("audit", "--dry-run")[0] == 2  # drift found, not repaired
        assert cli("audit")[0] == 0  # repaired: nothing left
        assert estate.names(group_id) == ["db-password"]
        estate.kv.inject(503, path=f"^/{estate.vault}/secrets$", times=100)
        code, out, _ = cli("audit", "--dry-run")
        assert code == 1 and f"not reached: vault {estate.vault}" in out  # could not look: not "clean"
        assert cli("audit", "--json", "--bogus")[0] == 64

    def test_usage_errors_are_not_drift(self, estate, cli):
        """argparse's own errors exit 64 (it would exit 2, the code for "changes found"), with the usage."""
        code, out, err = cli("sync", "--vault")
        assert code == 64 and out == ""
        assert err.startswith("usage: python -m kvlink_core sync") and "expected one argument" in err
        assert cli("no-such-verb")[0] == 64
        assert cli("demo", "--now")[0] == 64

    def test_help_documents_the_exit_codes(self, capsys):
        for argv in ([], ["audit"], ["sync"]):
            with pytest.raises(SystemExit) as done:
                main([*argv, "--help"])
            assert done.value.code == 0
            text = " ".join(capsys.readouterr().out.split())
            assert "exit codes: 0 done" in text and "2 changes" in text and "64 usage" in text


# -- audit: say what it touches, and check --html before it touches anything --------------------
class TestAuditWrites:
    def test_missing_html_directory_fails_before_any_write(self, estate, cli, tmp_path):
        """`audit --html /missing/dir/x.html` with drift to repair: exit 64 and no PUT at all."""
        group_id = linked_group(estate, cli, "db-password", "api-key")
        estate.kv.delete_secret(estate.vault, "api-key")
        estate.ado.reset_calls()
        code, _, err = cli("audit", "--html", str(tmp_path / "missing" / "x.html"))
        assert code == 64
        assert f"error: --html: directory {tmp_path / 'missing'} does not exist" in err
        assert estate.ado.writes(estate.org) == [] and estate.ado.calls == []
        assert estate.names(group_id) == ["api-key", "db-password"]

    def test_html_that_is_a_directory_or_not_writable(self, estate, cli, tmp_path, monkeypatch):
        code, _, err = cli("audit", "--html", str(tmp_path))
        assert code == 64 and "is a directory" in err
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        real_access = os.access
        # Root ignores the mode bits (CI runs as root): answer for the locked directory as a user would see it.
        monkeypatch.setattr(os, "access", lambda path, mode: False if path == locked else real_access(path, mode))
        code, _, err = cli("audit", "--html", str(locked / "x.html"))
        assert code == 64 and "is not writable" in err
        assert estate.ado.calls == []

    def test_html_is_written(self, estate, cli, tmp_path):
        linked_group(estate, cli, "db-password")
        page = tmp_path / "report.html"
        code, out, _ = cli("audit", "--html", str(page))
        assert code == 0 and page.read_text(encoding="utf-8").startswith("<!") and f"report page: {page}" in out

    def test_applying_audit_first_says_what_it_touches(self, estate, cli):
        """Before any write, on stderr: that it writes, organizations, projects, vaults, linked groups,
        and what happens to Key Vault groups nobody linked."""
        group_id = linked_group(estate, cli, "db-password", "api-key")
        estate.kv.delete_secret(estate.vault, "api-key")  # drift: the audit will write
        before = len(estate.ado.writes(estate.org))

        writes_seen: list[int] = []  # group writes made by the time each piece of stderr came

        class Stderr(io.StringIO):
            def write(self, text: str) -> int:
                writes_seen.append(len(estate.ado.writes(estate.org)) - before)
                return super().write(text)

        err_stream, out_stream = Stderr(), io.StringIO()
        code = main(["audit"], out=out_stream, err=err_stream)
        err = err_stream.getvalue()
        assert code == 0 and estate.names(group_id) == ["db-password"]
        assert writes_seen[0] == 0 and len(estate.ado.writes(estate.org)) - before == 1
        assert err.splitlines()[:6] == [
            "kvlink audit: this run REPAIRS variable groups (writes); --dry-run or KVLINK_MODE=report only look",
            f"  organizations: {estate.org}",
            "  projects: all (set KVLINK_DEVOPS_PROJECTS to limit them)",
            f"  vaults: {estate.vault} (KVLINK_ALLOWED_VAULTS)",
            "  linked groups: 1 in the registry, brought in step with their links' policies",
            "  unlinked Key Vault groups on allowed vaults (0 registered so far, more may be discovered): "
            "KVLINK_UNLINKED_GROUPS=prune: names of deleted or disabled secrets are removed, none are added",
        ]
        assert "REPAIRS" not in out_stream.getvalue()

    def test_preamble_follows_the_settings(self, estate, cli, monkeypatch):
        engine = estate.engine(KVLINK_UNLINKED_GROUPS="ignore", KVLINK_DEVOPS_PROJECTS=f"{estate.org}/{estate.project}")
        monkeypatch.setattr(kvlink_app, "get_engine", lambda: engine)
        err = cli("audit")[2]
        assert f"  projects: {estate.org}/{estate.project} (KVLINK_DEVOPS_PROJECTS)" in err
        assert "KVLINK_UNLINKED_GROUPS=ignore: left as they are, reported only" in err

    def test_dry_runs_say_they_write_nothing(self, estate, cli, monkeypatch):
        assert cli("audit", "--dry-run")[2].splitlines()[0] == "kvlink audit: dry run (--dry-run): nothing is written"
        engine = estate.engine(KVLINK_MODE="report")
        monkeypatch.setattr(kvlink_app, "get_engine", lambda: engine)
        first = cli("audit")[2].splitlines()[0]
        assert first == "kvlink audit: dry run (KVLINK_MODE=report): nothing is written"


# -- verbosity, wording -------------------------------------------------------------------------
class TestOutput:
    def test_v_shows_kvlink_decisions_not_sdk_headers(self, estate, cli):
        estate.kv.set_secret(estate.vault, "db-password")
        code, _, err = cli("-v", *link_args(estate))
        assert code == 0
        assert "INFO kvlink_core.linking: Created group payments-kv" in err
        assert "http_logging_policy" not in err and "httpx" not in err and "Request URL" not in err

    def test_vv_adds_the_sdk_requests(self, estate, cli):
        estate.kv.set_secret(estate.vault, "db-password")
        code, _, err = cli(*link_args(estate), "-vv")  # after the verb works too
        assert code == 0
        assert "INFO kvlink_core.linking: Created group payments-kv" in err
        assert "INFO azure.core.pipeline.policies.http_logging_policy: Request URL" in err
        assert "INFO httpx: HTTP Request:" in err
        assert "kvlink-test-pat" not in err  # headers stay redacted

    def test_quiet_by_default(self, estate, cli):
        estate.kv.set_secret(estate.vault, "db-password")
        code, _, err = cli(*link_args(estate))
        assert code == 0 and err == ""

    def test_singular_and_plural(self, estate, cli):
        estate.kv.set_secret(estate.vault, "db-password")
        code, out, _ = cli(*link_args(estate, "--dry-run"))
        assert "would create group 'payments-kv' with 1 name" in out and "1 names" not in out
        estate.kv.set_secret(estate.vault, "api-key", expires=datetime.now(UTC) - timedelta(days=1))
        cli(*link_args(estate))
        estate.kv.delete_secret(estate.vault, "db-password")  # an error; api-key expired: a warning
        code, out, _ = cli("audit", "--dry-run")
        assert code == 2
        summary = out.strip().splitlines()[-1]
        assert "1 group (1 linked, 0 discovered) over 1 vault;" in summary
        assert "findings: 1 error, 1 warning, 0 info" in summary

    def test_plural_counts(self, estate, cli):
        code, out, _ = cli("audit", "--dry-run")
        assert code == 0 and "0 groups (0 linked, 0 discovered) over 0 vaults;" in out
        assert "findings: 0 errors, 0 warnings" in out


@pytest.mark.parametrize(
    ("field", "message", "said"),
    [
        ("organization", "organization is required", "--organization is required"),
        ("vault", "vault must be a string", "--vault must be a string"),
        ("groupId", "groupId 'x' is not a number", "--group-id 'x' is not a number"),
        ("serviceConnection", "serviceConnection must be 1-256 printable characters", "--service-connection must be"),
        ("vault", "vault 'kv-x' is not in KVLINK_ALLOWED_VAULTS", "--vault: vault 'kv-x' is not in"),
        ("tags", "tag '' must map to a string", "--tag: tag '' must map to a string"),
        ("keepExpired", "keepExpired must be true or false", "--drop-expired must be true or false"),
    ],
)
def test_api_field_names_become_flags(field, message, said):
    """The core's request errors name API fields; the command line says them as its flags."""
    from kvlink_core.cli import _flag_message
    from kvlink_core.errors import RequestError

    assert _flag_message(RequestError(400, "InvalidField", message, field=field)).startswith(said)


class TestSyncFlags:
    """sync takes --vault alone, or --group-id with --organization and --project; no flag is ignored."""

    @pytest.mark.parametrize(
        ("extra", "message"),
        [
            (
                ["--organization", "o"],
                "--vault syncs every group linked to the vault; --organization cannot go with it",
            ),
            (
                ["--organization", "o", "--project", "p"],
                "--vault syncs every group linked to the vault; --organization, --project cannot go with it",
            ),
            (["--group-id", "3"], "--vault syncs every group linked to the vault; --group-id cannot go with it"),
        ],
    )
    def test_vault_with_group_flags(self, estate, cli, extra, message):
        code, out, err = cli("sync", "--vault", estate.vault, *extra)
        assert code == 64 and out == ""
        assert f"error: {message}" in err
        assert estate.ado.calls == [] and estate.kv.calls == []

    def test_group_flags_without_group_id(self, estate, cli):
        code, _, err = cli("sync", "--organization", estate.org, "--project", estate.project)
        assert code == 64 and "--organization, --project name one group only with --group-id" in err

    def test_nothing_to_sync(self, estate, cli):
        code, _, err = cli("sync")
        assert code == 64 and "give --vault, or --group-id with --organization and --project" in err

    def test_group_id_needs_project(self, estate, cli):
        code, _, err = cli("sync", "--group-id", "3", "--organization", estate.org)
        assert code == 64 and "--group-id needs --project" in err

    def test_invalid_vault_name_names_the_flag(self, estate, cli):
        code, _, err = cli("sync", "--vault", "no")
        assert code == 64 and "error: --vault: vault name 'no' is not valid" in err

    def test_one_group(self, estate, cli):
        group_id = linked_group(estate, cli, "db-password")
        estate.kv.set_secret(estate.vault, "api-key")
        where = ["--organization", estate.org, "--project", estate.project, "--group-id", str(group_id)]
        assert cli("sync", *where, "--dry-run")[0] == 2
        assert cli("sync", *where)[0] == 0
        assert estate.names(group_id) == ["api-key", "db-password"]


def test_output_cut_short_by_the_reader_is_not_a_traceback():
    """`python -m kvlink_core links | head -1`: the reader leaves early; kvlink stops quietly, exit 1."""
    import subprocess
    import sys

    # The real entry point (kvlink_core/__main__.py, then main()) around a command that prints more
    # than a pipe holds. The installed `kvlink` command calls the same main() (tests/test_packaging.py).
    child_code = (
        "import runpy, kvlink_core.cli as cli\n"
        "cli._main = lambda argv, out, err: print('x' * 1_000_000, file=out) or 0\n"
        "runpy.run_module('kvlink_core', run_name='__main__')\n"
    )
    child = subprocess.Popen([sys.executable, "-c", child_code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout is not None and child.stderr is not None
    child.stdout.read(10)
    child.stdout.close()  # the reader goes away with most of the output unread
    stderr = child.stderr.read().decode()
    assert child.wait(timeout=120) == 1
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr


class TestExportImport:
    """`links export` and `links import`: links moved between environments (issue 21)."""

    def link_two(self, estate, cli) -> None:
        estate.kv.set_secret(estate.vault, "app-1")
        estate.kv.set_secret(estate.vault, "db-1", tags={"team": "data"})
        code, _, err = cli(*link_args(estate, "--include", "app-*", "--exclude", "app-old", "--mode", "mirror"))
        assert code == 0, err
        second = [*link_args(estate, "--tag", "team", "--drop-expired")]
        second[second.index("payments-kv")] = "data-kv"
        code, _, err = cli(*second)
        assert code == 0, err

    def test_export_then_import_into_empty_tables_gives_the_same_links(self, estate, cli, monkeypatch, tmp_path):
        self.link_two(estate, cli)
        # Azurite is shared by the whole run: this estate's organization is its share of the registry.
        before = json.loads(cli("links", "--organization", estate.org, "--json")[1])["links"]
        assert len(before) == 2
        path = tmp_path / "links.json"

        code, out, _ = cli("links", "export", "--organization", estate.org, "--file", str(path))
        assert (code, out) == (0, "")
        assert json.loads(path.read_text()) == {"version": 1, "links": before}
        code, out, _ = cli("links", "export", "--vault", estate.vault)
        assert code == 0 and json.loads(out) == {"version": 1, "links": before}

        estate.empty_tables()
        engine = estate.engine()
        monkeypatch.setattr(kvlink_app, "get_engine", lambda: engine)
        assert json.loads(cli("links", "--json")[1]) == {"links": []}

        code, out, _ = cli("links", "import", str(path), "--dry-run")
        assert code == 2 and out.count(": would be created") == 2 and "dry run: 2 links: 2 would be created" in out
        assert json.loads(cli("links", "--json")[1]) == {"links": []}

        code, out, _ = cli("links", "import", str(path))
        assert code == 0 and "2 links: 2 created, 0 updated, 0 already registered" in out
        assert json.loads(cli("links", "--organization", estate.org, "--json")[1])["links"] == before

        code, out, _ = cli("links", "import", str(path), "--json")  # idempotent
        assert code == 0 and json.loads(out) == {"dryRun": False, "created": [], "updated": [], "unchanged": before}
        assert cli("links", "import", str(path), "--dry-run")[0] == 0  # nothing would change

    def test_import_updates_a_changed_policy(self, estate, cli, tmp_path):
        self.link_two(estate, cli)
        exported = json.loads(cli("links", "export", "--organization", estate.org)[1])
        exported["links"][0]["include"] = ["app-*", "web-*"]
        path = tmp_path / "links.json"
        path.write_text(json.dumps(exported))

        code, out, err = cli("links", "import", str(path))

        assert code == 0 and "1 updated" in out and "~ " in out, err
        links = json.loads(cli("links", "--organization", estate.org, "--json")[1])["links"]
        assert links[0]["include"] == ["app-*", "web-*"]

    @pytest.mark.parametrize(
        ("change", "said"),
        [
            ({"vault": "kv-elsewhere"}, "vault 'kv-elsewhere' is not in KVLINK_ALLOWED_VAULTS"),
            ({"organization": "not-ours"}, "organization 'not-ours' is not in KVLINK_DEVOPS_ORGS"),
            ({"mode": "fast"}, "mode must be 'merge' or 'mirror'"),
            ({"groupId": "seven"}, "groupId 'seven' is not a number"),
            ({"include": ["a/b"]}, "pattern 'a/b' is not valid"),
            ({"colour": "red"}, "unknown field 'colour'"),
        ],
    )
    def test_a_bad_entry_is_named_and_nothing_is_written(self, estate, cli, tmp_path, change, said):
        entries = [
            {**estate.link_body(group="first-kv"), "groupId": 1},
            {**estate.link_body(group="second-kv"), "groupId": 2, **change},
        ]
        for entry in entries:
            entry.pop("serviceConnection")
        path = tmp_path / "links.json"
        path.write_text(json.dumps({"links": entries}))

        code, _, err = cli("links", "import", str(path))

        assert code == 64
        assert f"error: {path}: links[1] ({estate.org if 'organization' not in change else 'not-ours'}/" in err
        assert "group 'second-kv'" in err and said in err
        assert json.loads(cli("links", "--organization", estate.org, "--json")[1]) == {"links": []}

    def test_unreadable_files_and_misplaced_flags_are_usage_errors(self, estate, cli, tmp_path):
        bad = tmp_path / "bad.json"
        bad.write_text("{not json")
        code, _, err = cli("links", "import", str(bad))
        assert code == 64 and "not JSON" in err
        code, _, err = cli("links", "import", str(tmp_path / "absent.json"))
        assert code == 64 and "cannot read it" in err
        bad.write_text(json.dumps({"version": 2, "links": []}))
        code, _, err = cli("links", "import", str(bad))
        assert code == 64 and "version 2 is not one this kvlink reads" in err
        twice = {**estate.link_body(), "groupId": 4}
        twice.pop("serviceConnection")
        bad.write_text(json.dumps({"links": [twice, twice]}))
        code, _, err = cli("links", "import", str(bad))
        assert code == 64 and "links[1]" in err and "the same group as links[0]" in err
        code, _, err = cli("links", "--vault", estate.vault, "export")
        assert code == 64 and "--vault before `export` belong to `links` alone" in err
        code, _, err = cli("links", "export", "--file", str(tmp_path / "no-such-dir" / "x.json"))
        assert code == 64 and "does not exist" in err
