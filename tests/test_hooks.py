"""The azd hooks (scripts/postdeploy.sh, scripts/predown.sh) in real estates.

Nothing here reaches Azure: each hook runs under bash with tests/fakeaz first on PATH, a stand-in `az`
and `azd` that record every call and answer from an estate kept in a JSON file, changing it as Azure
would (tests/fakeaz/az says how). The tests assert the calls made, what the estate holds afterwards,
and that a refusal comes before any change.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAKEAZ = ROOT / "tests" / "fakeaz"
SCRIPTS = ROOT / "scripts"

APP_SUB = "00000000-0000-0000-0000-00000000a991"
VAULT_SUB = "00000000-0000-0000-0000-00000000b001"
KEY_VAULT_READER = "21090545-7ca7-4776-b22c-e363652d74d2"


def vault_id(name: str, sub: str = VAULT_SUB, group: str = "rg-secrets") -> str:
    return f"/subscriptions/{sub}/resourceGroups/{group}/providers/Microsoft.KeyVault/vaults/{name}"


PROD_VAULT = vault_id("kv-contoso-prod")


def environment(name: str, token: str, principal: str, vaults: list[str]) -> dict[str, str]:
    """What `azd env get-values` prints after `azd provision` of main.bicep (its outputs included)."""
    rg = f"/subscriptions/{APP_SUB}/resourceGroups/rg-{name}/providers"
    return {
        "AZURE_ENV_NAME": name,
        "AZURE_LOCATION": "westeurope",
        "AZURE_SUBSCRIPTION_ID": APP_SUB,
        "AZURE_RESOURCE_GROUP": f"rg-{name}",
        "AZURE_RESOURCE_TOKEN": token,
        "AZURE_FUNCTION_APP_NAME": f"func-{token}",
        "AZURE_FUNCTION_APP_ID": f"{rg}/Microsoft.Web/sites/func-{token}",
        "AZURE_FUNCTION_IDENTITY_PRINCIPAL_ID": principal,
        "AZURE_FUNCTION_IDENTITY_CLIENT_ID": "22222222-2222-2222-2222-222222222222",
        "AZURE_FUNCTION_IDENTITY_NAME": f"id-{token}",
        "AZURE_EVENTGRID_IDENTITY_ID": f"{rg}/Microsoft.ManagedIdentity/userAssignedIdentities/id-evgt-{token}",
        "AZURE_STORAGE_ACCOUNT_ID": f"{rg}/Microsoft.Storage/storageAccounts/st{token}",
        "EVENTGRID_DEADLETTER_CONTAINER": "eventgrid-deadletter",
        "EVENTHUB_NAME": "evh-kvlink-audit",
        "EVENTHUB_DIAGNOSTICS_RULE_ID": (
            f"{rg}/Microsoft.EventHub/namespaces/evhns-{token}/authorizationRules/kvlink-diagnostics"
        ),
        "KVLINK_VAULT_IDS": ",".join(vaults),
        "KVLINK_DEVOPS_ORGS": "contoso",
        "KVLINK_ALLOWED_VAULTS": ",".join(v.rsplit("/", 1)[1] for v in vaults),
        "SERVICE_API_URI": f"https://func-{token}.azurewebsites.net",
    }


PROD = environment("kvlink-prod", "prodtoken0001", "11111111-1111-1111-1111-111111111111", [PROD_VAULT])
STAGING = environment("kvlink-staging", "stagtoken0002", "33333333-3333-3333-3333-333333333333", [PROD_VAULT])

# Mutating calls: what must not happen before a refusal.
CHANGES = {
    ("az", "provider", "register"),
    ("az", "deployment", "sub"),
    ("az", "role", "assignment", "delete"),
    ("az", "keyvault", "delete-policy"),
    ("azd", "env", "set"),
}


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    calls: list[list[str]]


class Estate:
    """An Azure estate the stand-in az answers from, and azd environments the hooks run in."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state: dict[str, Any] = {
            # The app's subscription never used Event Grid or Azure Monitor; nor did the vaults'.
            "subscriptions": {APP_SUB: {"registered": []}, VAULT_SUB: {"registered": []}},
            "vaults": {},
            "topics": [],
            "assignments": [],
            "functions": ["on_secret_event"],
            # A host already running: no "not yet" answers, the Event Grid system key exists.
            "host": {"function_misses": 0, "key_misses": 0, "system_keys": ["eventgrid_extension"]},
            "health": "ok",
            "deployment_error": None,
        }
        self.environments: dict[str, dict[str, str]] = {}

    def add_vault(self, vault: str, location: str = "westeurope", rbac: bool = False) -> None:
        self.state["vaults"][vault] = {"location": location, "rbac": rbac, "diagnostics": [], "policies": []}

    def load(self) -> dict[str, Any]:
        self.state = json.loads((self.root / "state.json").read_text())
        return self.state

    def run(self, hook: str, env: dict[str, str]) -> Run:
        """Run scripts/<hook>.sh in the azd environment env (kept across runs, as azd keeps it)."""
        name = env["AZURE_ENV_NAME"]
        values = self.environments.setdefault(name, dict(env))
        work = self.root / name
        work.mkdir(exist_ok=True)
        (work / "values.json").write_text(json.dumps(values))
        (work / "state.json").write_text(json.dumps(self.state))
        (work / "calls.jsonl").write_text("")
        done = subprocess.run(
            ["bash", str(SCRIPTS / f"{hook}.sh")],
            env={
                "PATH": f"{FAKEAZ}:/usr/bin:/bin",
                "HOME": str(self.root),
                "LANG": "C.UTF-8",
                "FAKEAZ_DIR": str(work),
                "TMPDIR": str(self.root),
            },
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        self.state = json.loads((work / "state.json").read_text())
        self.environments[name] = json.loads((work / "values.json").read_text())
        calls = [json.loads(line) for line in (work / "calls.jsonl").read_text().splitlines()]
        return Run(done.returncode, done.stdout, done.stderr, calls)

    def topic_of(self, vault: str) -> dict[str, Any]:
        (topic,) = [t for t in self.state["topics"] if t["source"] == vault]
        return topic


@pytest.fixture
def estate(tmp_path: Path) -> Estate:
    return Estate(tmp_path)


def changes(calls: list[list[str]]) -> list[list[str]]:
    return [call for call in calls if any(tuple(call[: len(c)]) == c for c in CHANGES)] + [
        call for call in calls if call[:3] == ["az", "rest", "--method"] and call[3] == "delete"
    ]


def index_of(calls: list[list[str]], *prefix: str) -> int:
    return next(i for i, call in enumerate(calls) if tuple(call[: len(prefix)]) == prefix)


# -- environment-scoped names, and `azd down` of one environment only ---------------------------------


def test_two_environments_on_one_vault_keep_their_own_wiring(estate):
    """Staging beside production: each has its own setting and subscription; each azd down removes only its own."""
    estate.add_vault(PROD_VAULT)

    prod = estate.run("postdeploy", PROD)
    staging = estate.run("postdeploy", STAGING)

    assert prod.returncode == 0, prod.stderr
    assert staging.returncode == 0, staging.stderr
    vault = estate.state["vaults"][PROD_VAULT]
    assert vault["diagnostics"] == ["kvlink-prodtoken0001", "kvlink-stagtoken0002"]
    assert vault["policies"] == [
        PROD["AZURE_FUNCTION_IDENTITY_PRINCIPAL_ID"],
        STAGING["AZURE_FUNCTION_IDENTITY_PRINCIPAL_ID"],
    ]
    # One system topic per vault: production made it, staging added its subscription to it.
    topic = estate.topic_of(PROD_VAULT)
    assert topic["name"] == "egst-kvlink-prodtoken0001-kv-contoso-prod"
    assert topic["tags"] == {"kvlink": "prodtoken0001"}
    assert topic["subscriptions"] == ["kvlink-prodtoken0001", "kvlink-stagtoken0002"]
    assert "its existing system topic egst-kvlink-prodtoken0001-kv-contoso-prod" in staging.stdout
    deployments = [c for c in prod.calls + staging.calls if c[:4] == ["az", "deployment", "sub", "create"]]
    assert [c[c.index("--name") + 1] for c in deployments] == [
        "kvlink-vaults-prodtoken0001",
        "kvlink-vaults-stagtoken0002",
    ]

    down = estate.run("predown", PROD)

    assert down.returncode == 0, down.stderr
    vault = estate.state["vaults"][PROD_VAULT]
    assert vault["diagnostics"] == ["kvlink-stagtoken0002"]
    assert vault["policies"] == [STAGING["AZURE_FUNCTION_IDENTITY_PRINCIPAL_ID"]]
    assert estate.topic_of(PROD_VAULT)["subscriptions"] == ["kvlink-stagtoken0002"]
    assert "kv-contoso-prod: diagnostic setting kvlink-prodtoken0001" in down.stdout
    assert "kv-contoso-prod: event subscription kvlink-prodtoken0001 on system topic" in down.stdout
    assert "1 other subscription(s) still use it" in down.stdout
    assert down.stderr == ""

    last = estate.run("predown", STAGING)

    assert last.returncode == 0, last.stderr
    assert estate.state["vaults"][PROD_VAULT] == {
        "location": "westeurope",
        "rbac": False,
        "diagnostics": [],
        "policies": [],
    }
    # The topic was kvlink's and nobody subscribes any more: it goes too.
    assert estate.state["topics"] == []
    assert "kv-contoso-prod: system topic egst-kvlink-prodtoken0001-kv-contoso-prod" in last.stdout


# -- resource providers ----------------------------------------------------------------------------------


def test_providers_are_registered_in_every_subscription_before_use(estate):
    """A vault subscription that never used Event Grid: both providers are registered (waiting) before any lookup."""
    estate.add_vault(PROD_VAULT)

    run = estate.run("postdeploy", PROD)

    assert run.returncode == 0, run.stderr
    registrations = [c for c in run.calls if c[:3] == ["az", "provider", "register"]]
    assert [(c[c.index("--namespace") + 1], c[c.index("--subscription") + 1]) for c in registrations] == [
        ("Microsoft.EventGrid", APP_SUB),
        ("Microsoft.Insights", APP_SUB),
        ("Microsoft.EventGrid", VAULT_SUB),
        ("Microsoft.Insights", VAULT_SUB),
    ]
    assert all("--wait" in c for c in registrations)
    assert index_of(run.calls, "az", "provider", "register") < index_of(run.calls, "az", "eventgrid", "system-topic")
    assert estate.state["subscriptions"][VAULT_SUB]["registered"] == ["Microsoft.EventGrid", "Microsoft.Insights"]


def test_a_refused_registration_changes_no_vault(estate):
    """No right to register a provider: a message naming the subscription and the command, and no deployment."""
    estate.add_vault(PROD_VAULT)
    estate.state["subscriptions"][VAULT_SUB]["register_error"] = "The client does not have authorization."

    run = estate.run("postdeploy", PROD)

    assert run.returncode == 1
    assert f"could not register Microsoft.EventGrid in subscription {VAULT_SUB}" in run.stderr
    assert f"az provider register --namespace Microsoft.EventGrid --subscription {VAULT_SUB} --wait" in run.stderr
    assert [c[:3] for c in changes(run.calls)] == [["az", "provider", "register"]] * 3
    assert estate.state["vaults"][PROD_VAULT]["diagnostics"] == []
    assert "KVLINK_APPLIED_VAULT_IDS" not in estate.environments["kvlink-prod"]


def test_predown_of_a_subscription_without_event_grid_is_quiet(estate):
    """Nothing was ever applied there (Event Grid never registered): predown removes what it can, lists no leftover."""
    estate.add_vault(PROD_VAULT)

    run = estate.run("predown", PROD)

    assert run.returncode == 0
    assert run.stderr == ""
    assert "kv-contoso-prod: diagnostic setting kvlink-prodtoken0001" in run.stdout


# -- an existing system topic ---------------------------------------------------------------------------


def test_an_existing_system_topic_is_reused_and_kept(estate):
    """The vault's Events blade made a topic: kvlink subscribes to it, and azd down removes only that subscription."""
    estate.add_vault(PROD_VAULT)
    estate.state["subscriptions"][VAULT_SUB]["registered"] = ["Microsoft.EventGrid"]
    name = "kv-contoso-prod-3f1a"
    portal_topic = {
        "id": f"/subscriptions/{VAULT_SUB}/resourceGroups/rg-events/providers/Microsoft.EventGrid/systemTopics/{name}",
        "name": "kv-contoso-prod-3f1a",
        "resourceGroup": "rg-events",
        "source": PROD_VAULT,
        "tags": {},
        "subscriptions": ["teams-webhook"],
    }
    estate.state["topics"].append(portal_topic)

    run = estate.run("postdeploy", PROD)

    assert run.returncode == 0, run.stderr
    assert "its existing system topic kv-contoso-prod-3f1a (kept" in run.stdout
    (topic,) = estate.state["topics"]
    assert topic["subscriptions"] == ["teams-webhook", "kvlink-prodtoken0001"]

    down = estate.run("predown", PROD)

    assert down.returncode == 0, down.stderr
    (topic,) = estate.state["topics"]
    assert topic["subscriptions"] == ["teams-webhook"]
    assert "system topic kv-contoso-prod-3f1a was not made by kvlink: kept" in down.stdout
    assert not any(
        c[:4] == ["az", "rest", "--method", "delete"] and c[5].split("?")[0] == topic["id"] for c in down.calls
    )


# -- role grants ------------------------------------------------------------------------------------------


def test_an_existing_key_vault_reader_grant_is_tolerated_and_kept(estate):
    """The identity already holds Key Vault Reader: no second grant (no RoleAssignmentExists), and azd down keeps it."""
    estate.add_vault(PROD_VAULT, rbac=True)
    granted = {
        "id": f"{PROD_VAULT}/providers/Microsoft.Authorization/roleAssignments/0f6e1c2a",
        "name": "0f6e1c2a",
        "scope": PROD_VAULT,
        "principalId": PROD["AZURE_FUNCTION_IDENTITY_PRINCIPAL_ID"],
        "role": KEY_VAULT_READER,
        "description": None,
    }
    estate.state["assignments"].append(granted)

    run = estate.run("postdeploy", PROD)

    assert run.returncode == 0, run.stderr
    assert "Key Vault Reader already granted (assignment 0f6e1c2a" in run.stdout
    assert estate.state["assignments"] == [granted]

    down = estate.run("predown", PROD)

    assert down.returncode == 0, down.stderr
    assert estate.state["assignments"] == [granted]
    assert "Key Vault Reader assignment 0f6e1c2a was not made by kvlink: kept" in down.stdout


def test_kvlink_removes_the_reader_grant_it_made(estate):
    """An RBAC vault without a grant: kvlink's assignment is made, marked with the token, and removed by azd down."""
    estate.add_vault(PROD_VAULT, rbac=True)

    run = estate.run("postdeploy", PROD)

    assert run.returncode == 0, run.stderr
    (assignment,) = estate.state["assignments"]
    assert assignment["description"] == "kvlink prodtoken0001"

    down = estate.run("predown", PROD)

    assert estate.state["assignments"] == []
    assert ["az", "role", "assignment", "delete", "--ids", assignment["id"], "--output", "none"] in down.calls


# -- refusals before any change ----------------------------------------------------------------------------


def test_vaults_in_other_regions_are_named_before_anything_changes(estate):
    """Vaults outside the environment's region: each named with its region, the per-region setup explained."""
    east = vault_id("kv-contoso-us", group="rg-us")
    north = vault_id("kv-contoso-no", group="rg-no")
    estate.add_vault(PROD_VAULT)
    estate.add_vault(east, location="eastus")
    estate.add_vault(north, location="norwayeast")
    env = dict(PROD, KVLINK_VAULT_IDS=f"{PROD_VAULT},{east}, {north}")

    run = estate.run("postdeploy", env)

    assert run.returncode == 1
    assert f"kv-contoso-us (eastus): {east}" in run.stderr
    assert f"kv-contoso-no (norwayeast): {north}" in run.stderr
    assert "kv-contoso-prod" not in run.stderr
    assert "azd env new kvlink-<region> && azd env set AZURE_LOCATION <region>" in run.stderr
    assert "Nothing was changed." in run.stderr
    assert changes(run.calls) == []


def test_vaults_in_the_event_hubs_region_are_watched_from_an_app_elsewhere(estate):
    """KVLINK_VAULTS_LOCATION put the hub in the vaults' region (no Flex Consumption there): the vaults are accepted."""
    north = vault_id("kv-contoso-no", group="rg-no")
    estate.add_vault(north, location="Norway East")
    estate.add_vault(PROD_VAULT)
    env = dict(PROD, KVLINK_VAULT_IDS=north, EVENTHUB_LOCATION="norwayeast")

    run = estate.run("postdeploy", env)

    assert run.returncode == 0, run.stderr
    assert estate.state["vaults"][north]["diagnostics"] == ["kvlink-prodtoken0001"]

    refused = estate.run("postdeploy", dict(env, KVLINK_VAULT_IDS=f"{north},{PROD_VAULT}", AZURE_ENV_NAME="other"))

    assert refused.returncode == 1
    assert "Event Hub is in norwayeast; these vaults are not:" in refused.stderr


def test_a_malformed_vault_id_is_refused_before_asking_azure(estate):
    estate.add_vault(PROD_VAULT)
    env = dict(PROD, KVLINK_VAULT_IDS=f"{PROD_VAULT},kv-contoso-dev")

    run = estate.run("postdeploy", env)

    assert run.returncode == 1
    assert "'kv-contoso-dev' in KVLINK_VAULT_IDS is not a vault resource id" in run.stderr
    assert [c for c in run.calls if c[0] == "az"] == []


def test_a_missing_token_asks_for_azd_provision(estate):
    """An environment provisioned before AZURE_RESOURCE_TOKEN existed: postdeploy says to provision, changes nothing."""
    estate.add_vault(PROD_VAULT)
    env = {k: v for k, v in PROD.items() if k != "AZURE_RESOURCE_TOKEN"}

    run = estate.run("postdeploy", env)

    assert run.returncode == 1
    assert "AZURE_RESOURCE_TOKEN is not set in the azd environment; run 'azd provision' first" in run.stderr
    assert changes(run.calls) == []


def test_a_failed_deployment_is_remembered_and_azd_down_cleans_it_up(estate):
    """The deployment stops at the second vault: postdeploy fails saying so, and predown removes what was applied."""
    second = vault_id("kv-contoso-shared")
    estate.add_vault(PROD_VAULT)
    estate.add_vault(second)
    estate.state["deployment_error"] = "kv-contoso-shared"
    env = dict(PROD, KVLINK_VAULT_IDS=f"{PROD_VAULT},{second}")

    run = estate.run("postdeploy", env)

    assert run.returncode == 1
    assert "the deployment kvlink-vaults-prodtoken0001 failed" in run.stderr
    assert "azd down" in run.stderr
    # Recorded before the deployment started, so nothing applied is unknown to azd down.
    assert index_of(run.calls, "azd", "env", "set") < index_of(run.calls, "az", "deployment", "sub", "create")
    assert estate.environments["kvlink-prod"]["KVLINK_APPLIED_VAULT_IDS"] == f"{PROD_VAULT},{second}"
    assert estate.state["vaults"][PROD_VAULT]["diagnostics"] == ["kvlink-prodtoken0001"]

    # Even with the vaults gone from KVLINK_VAULT_IDS, azd down finds them.
    estate.environments["kvlink-prod"]["KVLINK_VAULT_IDS"] = ""
    down = estate.run("predown", env)

    assert down.returncode == 0, down.stderr
    assert down.stderr == ""
    assert all(v["diagnostics"] == [] and v["policies"] == [] for v in estate.state["vaults"].values())
    assert estate.state["topics"] == []


def test_postdeploy_runs_again_without_changing_anything_twice(estate):
    """A second run of the same environment reuses its own topic and names: the estate is the same."""
    estate.add_vault(PROD_VAULT)
    estate.run("postdeploy", PROD)
    before = json.loads(json.dumps(estate.state))

    again = estate.run("postdeploy", PROD)

    assert again.returncode == 0, again.stderr
    assert "its system topic egst-kvlink-prodtoken0001-kv-contoso-prod (this environment's)" in again.stdout
    assert estate.state == before


# -- a Flex app that has never run: wake it, wait for its function and its Event Grid key ---------------------
#
# Event Grid validates an AzureFunction endpoint by fetching the app's eventgrid_extension system key (Microsoft
# Learn "How to work with Event Grid triggers and bindings in Azure Functions", "Get the system key"); the host
# makes it on first start. Microsoft's azd sample reads systemKeys in its postdeploy hook before creating its
# subscription (Azure-Samples/functions-quickstart-python-azd-eventgrid-blob, scripts/post-up.sh, commit 6f6f562).


def calls_of(run: Run, *prefix: str) -> list[int]:
    return [i for i, call in enumerate(run.calls) if tuple(call[: len(prefix)]) == prefix]


def test_postdeploy_wakes_the_app_and_waits_for_the_function_and_its_event_grid_key(estate):
    """Not listed twice, then no key three times: the hook keeps waking the app, and subscribes once both are there."""
    estate.add_vault(PROD_VAULT)
    estate.state["host"].update(function_misses=2, key_misses=3)

    run = estate.run("postdeploy", PROD)

    assert run.returncode == 0, run.stderr
    wakes = calls_of(run, "curl")
    shows = calls_of(run, "az", "functionapp", "function", "show")
    keys = calls_of(run, "az", "functionapp", "keys", "list")
    (deployment,) = calls_of(run, "az", "deployment", "sub", "create")
    assert run.calls[wakes[0]][-1] == "https://func-prodtoken0001.azurewebsites.net/api/health"
    assert wakes[0] < shows[0]  # woken before the first look
    assert (len(shows), len(keys), len(wakes)) == (3, 4, 6)
    assert [call for call in run.calls if call[0] == "sleep"] == [["sleep", "15"]] * 5
    assert max(keys) < deployment  # the subscription is created after the key is listed
    # The key's value never reaches the hook: it asks only whether the key exists.
    assert {run.calls[i][run.calls[i].index("--query") + 1] for i in keys} == {"systemKeys.eventgrid_extension != null"}
    assert "not yet (check 1 of 30): on_secret_event listed: no, eventgrid_extension key listed: no" in run.stdout
    assert "not yet (check 3 of 30): on_secret_event listed: yes, eventgrid_extension key listed: no" in run.stdout
    assert "func-prodtoken0001 is ready (check 6 of 30)." in run.stdout
    assert estate.topic_of(PROD_VAULT)["subscriptions"] == ["kvlink-prodtoken0001"]


def test_a_health_check_that_times_out_does_not_stop_the_wait(estate):
    """The wake-up GET may time out while an instance starts; the function and key checks decide."""
    estate.add_vault(PROD_VAULT)
    estate.state["health"] = "down"

    run = estate.run("postdeploy", PROD)

    assert run.returncode == 0, run.stderr
    assert all("--max-time" in run.calls[i] for i in calls_of(run, "curl"))
    assert "is ready (check 1 of 30)" in run.stdout


@pytest.mark.parametrize(
    ("host", "missing"),
    [
        ({"function_misses": 1000}, "the function on_secret_event"),
        ({"system_keys": []}, "the system key eventgrid_extension"),
    ],
    ids=["function", "key"],
)
def test_the_wait_is_bounded_and_says_what_is_missing(estate, host, missing):
    """30 checks 15 s apart, then a message naming what never appeared and what to do; no vault is touched."""
    estate.add_vault(PROD_VAULT)
    estate.state["host"].update(host)

    run = estate.run("postdeploy", PROD)

    assert run.returncode == 1
    assert f"func-prodtoken0001 still does not list {missing} after 30 checks 15 s apart" in run.stderr
    assert "azd hooks run postdeploy" in run.stderr
    assert "No vault was changed." in run.stderr
    assert len([call for call in run.calls if call[0] == "sleep"]) == 29
    assert len(calls_of(run, "curl")) == 30
    # Only the provider registrations came before (changing nothing twice); no deployment, no azd env set.
    assert {tuple(call[:3]) for call in changes(run.calls)} == {("az", "provider", "register")}
    assert estate.state["vaults"][PROD_VAULT]["diagnostics"] == estate.state["vaults"][PROD_VAULT]["policies"] == []
    assert estate.state["topics"] == []


# -- the manual step, named at the end of every deployment -------------------------------------------------


def test_postdeploy_ends_with_the_manual_step_and_a_check(estate):
    """After deploying, the hook names the identity, the one manual step, and a check."""
    estate.add_vault(PROD_VAULT)

    run = estate.run("postdeploy", PROD)

    assert run.returncode == 0, run.stderr
    identity, step, check, smoke = run.stdout.strip().splitlines()[-4:]
    assert identity == "Azure DevOps identity: id-prodtoken0001 (client id 22222222-2222-2222-2222-222222222222)"
    for needed in ("contoso", "Add users", "Basic", "every project", "Library > Security: Administrator", "Reader"):
        assert needed in step
    assert check.startswith("Check: curl -fsS 'https://func-prodtoken0001.azurewebsites.net/api/health' && ")
    assert (
        "KVLINK_DEVOPS_ORGS='contoso' KVLINK_ALLOWED_VAULTS='kv-contoso-prod' python -m kvlink_core audit --dry-run"
        in check
    )
    assert "python -m kvlink_core smoke --vault <vault> --group <org>/<project>/<group id>" in smoke


# -- shell and PowerShell --------------------------------------------------------------------------------


def test_shellcheck_is_clean_on_every_script():
    """Every shell script (the hooks, the installers) passes shellcheck; `make test` installs and runs it too."""
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (make test installs it: scripts/install-shellcheck.sh)")
    scripts = sorted(str(path) for path in [*SCRIPTS.glob("*.sh"), *SCRIPTS.glob("lib/*.sh")])
    done = subprocess.run(["shellcheck", *scripts], capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stdout


@pytest.mark.parametrize(
    ("hook", "needed"),
    [
        (
            "postdeploy",
            [
                "AZURE_RESOURCE_TOKEN",
                "az provider register --namespace $namespace --subscription $sub --wait",
                "Microsoft.EventGrid",
                "Microsoft.Insights",
                "grantReader",
                "topicName",
                "topicResourceGroup",
                "KVLINK_APPLIED_VAULT_IDS",
                "azd env new kvlink-<region>",
                "kvlink-vaults-$token",
                "/api/health",
                "systemKeys.eventgrid_extension != null",
                "still does not list",
            ],
        ),
        (
            "predown",
            [
                "AZURE_RESOURCE_TOKEN",
                "KVLINK_APPLIED_VAULT_IDS",
                "kvlink-$token",
                "tags.kvlink",
                "kvlink $token",
                "MissingSubscriptionRegistration",
                "was not made by kvlink: kept",
            ],
        ),
    ],
)
def test_powershell_hooks_keep_in_step(hook, needed):
    """No PowerShell here to run them: the Windows hooks at least do the same steps (text check)."""
    script = (SCRIPTS / f"{hook}.ps1").read_text()
    missing = [text for text in needed if text not in script]
    assert missing == []
