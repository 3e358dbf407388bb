"""``python -m kvlink_core smoke`` against the stand-ins, with the functions standing in for the deployed app.

The canary is created through the Key Vault REST API (the stand-in's Set Secret), reaches the group
only through Event Grid -> ``on_secret_event`` and leaves it only through the audit log ->
``on_vault_log`` (standins/deployed.py plays both feeds); smoke itself only reads the group.
"""

from __future__ import annotations

import re
from io import StringIO

import pytest

from kvlink_core import cli
from standins.deployed import DeployedApp

pytestmark = pytest.mark.integration


@pytest.fixture
def linked(estate, app_engine):
    """A linked group mapping the vault's one secret, and the argv that names it."""
    estate.kv.set_secret(estate.vault, "db-password")
    group = estate.group("payments-kv", ["db-password", "added-by-hand"])
    estate.link(app_engine, group)
    estate.kv.drain_audit_log()  # the seeding is history: only the smoke run's changes are delivered
    return group, ["smoke", "--vault", estate.vault, "--group", f"{estate.org}/{estate.project}/{group}"]


def smoke(argv: list[str], *extra: str) -> tuple[int, str, str]:
    out, err = StringIO(), StringIO()
    code = cli.main([*argv, "--poll", "0.05", *extra], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def canary_names(estate) -> list[str]:
    every = estate.kv.secret_names(estate.vault) + estate.kv.deleted_secret_names(estate.vault)
    return [n for n in every if n.startswith("kvlink-smoke-")]


def test_canary_travels_both_paths_and_is_removed(estate, linked):
    group, argv = linked
    with DeployedApp(estate.kv, [estate.vault]) as app:
        code, out, err = smoke(argv, "--appear-timeout", "60", "--leave-timeout", "60")

    assert code == 0, out + err
    lines = out.splitlines()
    canary = re.search(r"canary secret (kvlink-smoke-\d{14}-[0-9a-f]{6})$", lines[0]).group(1)
    steps = [re.sub(r" \(\d+\.\d+s\)$", "", line) for line in lines[1:-1]]
    assert steps == [
        "1. group is a Key Vault group of the vault: 'payments-kv', 2 names",
        f"2. create canary secret {canary}: created",
        "3. canary name in the group (Event Grid -> on_secret_event): ok",
        "4. delete canary secret: ok",
        "5. canary name gone from the group (audit log -> Event Hub -> on_vault_log): ok",
        "6. purge canary secret: purged",
    ]
    assert all(re.search(r" \(\d+\.\d+s\)$", line) for line in lines[1:-1])  # each step says its time
    assert re.fullmatch(r"smoke: OK -- event to group \d+\.\d+s, delete to group \d+\.\d+s", lines[-1])
    assert app.events_delivered >= 1 and app.log_batches_delivered >= 1 and not app.failures
    # The group went through the deployed app's writes and is back as it was; nothing else was touched.
    assert estate.names(group) == ["added-by-hand", "db-password"]
    assert canary_names(estate) == []  # deleted and purged
    assert estate.kv.secret_names(estate.vault) == ["db-password"]
    estate.kv.assert_no_value_reads()


def test_no_delivery_times_out_naming_what_to_check(estate, linked):
    """No event subscription and no diagnostic setting: the first wait runs out, says what to check,
    and the canary is still deleted and purged."""
    group, argv = linked
    with DeployedApp(estate.kv, [estate.vault], event_grid=False, logs=False):
        code, out, _ = smoke(argv, "--appear-timeout", "1")

    assert code == 1
    assert "3. canary name in the group (Event Grid -> on_secret_event): TIMED OUT after 1s (" in out
    assert "\n   check:\n" in out
    assert "Event Grid subscription from the vault's system topic to on_secret_event" in out
    assert f"`python -m kvlink_core links --vault {estate.vault}`" in out
    assert re.search(r"\n4\. delete canary secret: ok", out) and re.search(r"\n5\. purge canary secret: purged", out)
    assert out.rstrip().endswith("smoke: FAILED (see the step above)")
    assert canary_names(estate) == [] and estate.names(group) == ["added-by-hand", "db-password"]


def test_log_path_missing_times_out_on_the_second_wait(estate, linked):
    group, argv = linked
    with DeployedApp(estate.kv, [estate.vault], logs=False):
        code, out, _ = smoke(argv, "--appear-timeout", "60", "--leave-timeout", "1")

    assert code == 1
    assert "3. canary name in the group (Event Grid -> on_secret_event): ok" in out
    assert "on_vault_log): TIMED OUT after 1s (" in out and "diagnostic setting sends the AuditEvent category" in out
    assert canary_names(estate) == []
    # The deployed app put the name in; only the log path (or the nightly audit) takes it out again.
    assert estate.names(group) == sorted(["added-by-hand", "db-password", *re.findall(r"kvlink-smoke-\S+", out)[:1]])


def test_purge_not_permitted_leaves_a_soft_deleted_canary_and_says_so(estate, linked):
    _, argv = linked
    estate.kv.forbid(estate.vault, "purge")
    with DeployedApp(estate.kv, [estate.vault]):
        code, out, _ = smoke(argv, "--appear-timeout", "60", "--leave-timeout", "60")

    assert code == 0, out
    assert "purge canary secret: FAILED" in out and "'Purge'" in out
    assert "stays soft-deleted until the vault's retention period" in out
    (canary,) = canary_names(estate)
    assert estate.kv.deleted_secret_names(estate.vault) == [canary]
    assert f"az keyvault secret purge --vault-name {estate.vault} --name {canary}" in out


def test_set_not_permitted_names_the_permission(estate, linked):
    group, argv = linked
    estate.kv.forbid(estate.vault, "set")
    code, out, _ = smoke(argv)

    assert code == 1
    assert "create canary secret" in out and "'Set'" in out and "Key Vault Secrets Officer" in out
    assert canary_names(estate) == [] and estate.names(group) == ["added-by-hand", "db-password"]


def test_a_group_of_another_vault_is_refused_before_anything_is_made(estate, app_engine):
    group = estate.group("other-kv", vault="kv-elsewhere")
    code, out, _ = smoke(["smoke", "--vault", estate.vault, "--group", f"{estate.org}/{estate.project}/{group}"])
    assert code == 1 and "linked to vault 'kv-elsewhere'" in out
    assert canary_names(estate) == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["smoke"], "the following arguments are required: --vault, --group"),
        (["smoke", "--vault", "kv-x"], "the following arguments are required: --group"),
        (["smoke", "--group", "org/Project/3"], "the following arguments are required: --vault"),
        (["smoke", "--vault", "kv-x", "--group", "org/Project"], "--group must be ORG/PROJECT/ID"),
        (["smoke", "--vault", "kv-x", "--group", "org/Project/3", "--appear-timeout", "0"], "--appear-timeout"),
    ],
)
def test_refuses_without_an_explicit_vault_and_group(argv, message, estate, app_engine):
    calls = len(estate.kv.calls)
    out, err = StringIO(), StringIO()
    assert cli.main(argv, out=out, err=err) == 64
    assert message in err.getvalue()
    assert len(estate.kv.calls) == calls  # nothing was read or written


@pytest.mark.parametrize("hook", ["postdeploy.sh", "postdeploy.ps1"])
def test_postdeploy_ends_by_saying_how_to_run_it(hook):
    from pathlib import Path

    last = (Path(__file__).resolve().parent.parent / "scripts" / hook).read_text().rstrip().splitlines()[-1]
    assert "python -m kvlink_core smoke --vault <vault> --group <org>/<project>/<group id>" in last


def test_on_the_playground_estate(tmp_path, monkeypatch):
    """`make serve`'s estate (standins/stack.py + serve.seed), the functions standing in for the deployed
    app: the canary goes in and out of payments-kv, and the group's seeded drift (a vault secret nobody
    mapped yet) is left alone -- the event path touches only the canary's name."""
    from kvlink_core import app as kvlink_app
    from standins.serve import ORG, VAULTS, seed
    from standins.stack import local_stack

    with local_stack(tmp_path) as stack:
        env = stack.settings([ORG], VAULTS)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        kvlink_app.reset()
        payments = next(g for g in seed(stack, env) if g.group == "payments-kv")
        before = sorted(stack.ado.variable_names(ORG, payments.group_id))
        stack.kv.drain_audit_log()
        try:
            with DeployedApp(stack.kv, ["kv-payments"]) as app:
                code, out, err = smoke(
                    ["smoke", "--vault", "kv-payments", "--group", f"{ORG}/Payments/{payments.group_id}"],
                    "--appear-timeout",
                    "60",
                    "--leave-timeout",
                    "60",
                )
        finally:
            kvlink_app.reset()
        assert code == 0, out + err
        assert app.events_delivered >= 1 and app.log_batches_delivered >= 1
        assert sorted(stack.ado.variable_names(ORG, payments.group_id)) == before == ["db-password", "payments-api-key"]
        assert "payments-webhook-secret" in stack.kv.secret_names("kv-payments")  # the drift stays for the audit
        assert not [n for n in stack.kv.deleted_secret_names("kv-payments") if n.startswith("kvlink-smoke-")]
        stack.kv.assert_no_value_reads()
