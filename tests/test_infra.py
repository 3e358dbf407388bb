"""The Bicep templates grant least privilege and set every setting the code reads.

The templates are parsed with pycep, the parser checkov uses (same pin), into a JSON-like tree:
literal strings appear as themselves, references to parameters and variables as their names.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from pycep import BicepParser

from kvlink_core.audit import run_audit

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
BICEP_FILES = sorted(INFRA.rglob("*.bicep"))

# Settings the code reads, collected as tests/test_docs.py does: the settings module, plus the
# connection names and %EXPRESSIONS% of the bindings in function_app.py.
SETTINGS_SOURCE = (ROOT / "kvlink_core" / "settings.py").read_text()
CODE_SETTINGS = set(re.findall(r'"((?:KVLINK|AZURE)_[A-Z_]+|AzureWebJobsStorage)"', SETTINGS_SOURCE))
BINDING_SOURCE = (ROOT / "function_app.py").read_text()
CODE_SETTINGS |= set(re.findall(r'connection="([A-Za-z_]+)"', BINDING_SOURCE))
CODE_SETTINGS |= set(re.findall(r'"%([A-Za-z_]+)%"', BINDING_SOURCE))

# Read by the code, never set in Azure: stand-in switches, and a PAT (kvlink uses its managed identity).
NOT_IN_AZURE = {"KVLINK_EMULATOR", "KVLINK_CA_BUNDLE", "AZURE_DEVOPS_PAT"}
# Connections that are identity-based in Azure: the prefix is satisfied by these settings.
IDENTITY_CONNECTIONS = {
    "AzureWebJobsStorage": {"credential", "clientId", "blobServiceUri", "queueServiceUri", "tableServiceUri"},
    "KVLINK_EVENTHUB": {"fullyQualifiedNamespace", "credential", "clientId"},
}

KEY_VAULT_READER = "21090545-7ca7-4776-b22c-e363652d74d2"
# Built-in Key Vault roles that read secret values or key material, or grant data access.
VALUE_READING_ROLES = {
    "4633458b-17de-408a-b874-0445c86b69e6": "Key Vault Secrets User",
    "b86a8fe4-44ce-4948-aee5-eccb2c155cd7": "Key Vault Secrets Officer",
    "00482a5a-887f-4fb3-b363-3b7fe8e74483": "Key Vault Administrator",
    "14b46e9e-c2b7-41b4-b07b-48a6ebf60603": "Key Vault Crypto Officer",
    "12338af0-0e69-4776-bea7-57ae8d297424": "Key Vault Crypto User",
    "e147488a-f6f5-4113-8e2d-b22465e65bf6": "Key Vault Crypto Service Encryption User",
    "08bbd89e-9f13-488c-ac41-acfcb10c90ab": "Key Vault Crypto Service Release User",
    "a4417e6f-fecd-4de8-b567-7b0420556985": "Key Vault Certificates Officer",
    "db79e9a7-68ee-4b58-9aeb-b90e7c24fcba": "Key Vault Certificate User",
    "8b54135c-b56d-4d72-a534-26097cfdc8d8": "Key Vault Data Access Administrator",
}
SECRET_EVENTS = {
    "Microsoft.KeyVault.SecretNewVersionCreated",
    "Microsoft.KeyVault.SecretNearExpiry",
    "Microsoft.KeyVault.SecretExpired",
}
GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@functools.cache
def parse(path: Path) -> dict[str, Any]:
    return BicepParser().parse(text=path.read_text())


def body(element: dict[str, Any]) -> dict[str, Any]:
    """A resource's or module's object, without its condition or loop wrapper."""
    config = element["config"]
    while "loop_type" in config or "condition" in config:
        config = config["config"]
    return config


def condition(element: dict[str, Any]) -> Any:
    return element["config"].get("condition")


def resources(resource_type: str) -> list[tuple[Path, str, dict[str, Any]]]:
    """Every declared (not `existing`) resource of a type, in every template."""
    found = []
    for path in BICEP_FILES:
        for name, resource in parse(path).get("resources", {}).items():
            if resource["type"].lower() == resource_type.lower() and not resource["existing"]:
                found.append((path, name, resource))
    return found


def resolve(path: Path, value: Any) -> Any:
    """A variable's literal value, or the value itself."""
    variables = parse(path).get("variables", {})
    if isinstance(value, str) and value in variables:
        return variables[value]["value"]
    return value


def role_id(path: Path, assignment: dict[str, Any]) -> str:
    role = body(assignment)["properties"]["roleDefinitionId"]["function"]
    assert role["type"] == "subscription_resource_id", f"{path.name}: role ids go through subscriptionResourceId"
    assert role["parameters"]["resource_type"] == "Microsoft.Authorization/roleDefinitions"
    return resolve(path, role["parameters"]["resource_name_1"])


def app_settings() -> dict[str, Any]:
    return parse(INFRA / "main.bicep")["variables"]["appSettings"]["value"]


def test_every_bicep_file_parses():
    """Every template parses with checkov's parser, so checkov really checks all of them."""
    assert BICEP_FILES, "no templates under infra/"
    failures = {}
    for path in BICEP_FILES:
        try:
            parse(path)
        except Exception as error:  # pycep raises lark's exceptions
            failures[str(path.relative_to(ROOT))] = str(error).splitlines()[0]
    assert failures == {}


def test_access_policies_grant_only_list_on_secrets():
    """Access policies grant the secret permission "list" only: no get, set or all, no keys or certificates."""
    policies = resources("Microsoft.KeyVault/vaults/accessPolicies")
    assert policies, "the access-policy path is missing"
    for path, name, resource in policies:
        for entry in body(resource)["properties"]["accessPolicies"]:
            permissions = entry["permissions"]
            assert permissions["secrets"] == ["list"], f"{path.name}:{name}"
            assert all(not granted for kind, granted in permissions.items() if kind != "secrets"), f"{path.name}:{name}"


def test_no_role_assignment_reads_key_vault_values():
    """No role assignment uses a value-reading Key Vault role (Secrets User/Officer, Administrator, Crypto*...)."""
    assignments = resources("Microsoft.Authorization/roleAssignments")
    assert assignments
    for path, name, assignment in assignments:
        role = role_id(path, assignment)
        assert GUID.match(role), f"{path.name}:{name}: role id {role!r} is not a literal built-in role id"
        assert role not in VALUE_READING_ROLES, f"{path.name}:{name} assigns {VALUE_READING_ROLES.get(role)}"


def test_rbac_vaults_get_key_vault_reader_and_policy_vaults_get_list():
    """Per vault: Key Vault Reader on RBAC vaults, the "list" policy otherwise, and AuditEvent logs to the hub."""
    path = INFRA / "core" / "keyvault" / "vault-access.bicep"
    template = parse(path)
    reader = template["resources"]["readerRole"]
    policy = template["resources"]["listPolicy"]
    assert role_id(path, reader) == KEY_VAULT_READER
    # An equivalent grant already there is left alone (ARM would refuse a second: RoleAssignmentExists).
    assert condition(reader) == {
        "operator": {"type": "and", "operands": {"operand_1": "rbac", "operand_2": "grantReader"}}
    }
    assert body(reader)["properties"]["description"] == "kvlink ${resourceToken}"
    assert body(reader)["scope"] == "vault"
    assert condition(policy) == {"operator": {"type": "not", "operands": {"bool_value": "rbac"}}}
    diagnostics = body(template["resources"]["auditToEventHub"])
    assert diagnostics["scope"] == "vault"
    assert diagnostics["properties"]["logs"] == [{"category": "AuditEvent", "enabled": True}]
    assert diagnostics["properties"]["eventHubName"] == "eventHubName"
    # vaults.bicep hands each vault's permission model to the module.
    access = body(parse(INFRA / "vaults.bicep")["modules"]["vaultAccess"])
    assert access["params"]["rbac"] == {
        "operator": {"type": "property_accessor", "operands": {"operand_1": "vault", "operand_2": "rbac"}}
    }


def test_role_assignments_are_named_by_scope_principal_and_role():
    """Every role assignment is named guid(scope.id, principal, role) and targets a service principal."""
    for path, name, assignment in resources("Microsoft.Authorization/roleAssignments"):
        config = body(assignment)
        assert config["name"]["function"]["type"] == "guid", f"{path.name}:{name}"
        assert len(config["name"]["function"]["parameters"]) == 3, f"{path.name}:{name}"
        assert config["properties"]["principalType"] == "ServicePrincipal", f"{path.name}:{name}"


def test_storage_accounts_refuse_shared_keys():
    """Storage accepts only Entra ID tokens (allowSharedKeyAccess false) and no anonymous blob access."""
    accounts = resources("Microsoft.Storage/storageAccounts")
    assert accounts
    for path, name, account in accounts:
        properties = body(account)["properties"]
        assert properties["allowSharedKeyAccess"] is False, f"{path.name}:{name}"
        assert properties["allowBlobPublicAccess"] is False, f"{path.name}:{name}"


def test_monitoring_disables_local_auth():
    """Application Insights and Log Analytics accept only Entra ID (local auth disabled)."""
    (insights,) = resources("Microsoft.Insights/components")
    (workspace,) = resources("Microsoft.OperationalInsights/workspaces")
    assert body(insights[2])["properties"]["DisableLocalAuth"] is True
    assert body(workspace[2])["properties"]["features"]["disableLocalAuth"] is True


def test_function_app_sets_every_setting_the_code_reads():
    """Every setting the code reads is an app setting (identity-based connections through their __ variants)."""
    assert {"KVLINK_DEVOPS_ORGS", "KVLINK_EVENTHUB", "KVLINK_AUDIT_SCHEDULE", "AzureWebJobsStorage"} <= CODE_SETTINGS
    settings = app_settings()
    missing = set()
    for name in CODE_SETTINGS - NOT_IN_AZURE:
        if name in IDENTITY_CONNECTIONS:
            missing |= {f"{name}__{part}" for part in IDENTITY_CONNECTIONS[name]} - set(settings)
        elif name not in settings:
            missing.add(name)
    assert missing == set()
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert settings["KVLINK_EVENTHUB__credential"] == "managedidentity"
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"].endswith(";Authorization=AAD")
    assert "APPLICATIONINSIGHTS_CONNECTION_STRING" in settings
    # The set reaches the app: main.bicep passes it, the host module applies every entry.
    assert body(parse(INFRA / "main.bicep")["modules"]["functionApp"])["params"]["appSettings"] == "appSettings"
    host = parse(INFRA / "core" / "host" / "flex-function-app.bicep")["resources"]["functionApp"]
    applied = body(host)["properties"]["siteConfig"]["appSettings"]["loop_type"]
    assert applied == {"type": "object", "detail": {"item_name": "setting", "object_name": "appSettings"}}


def test_no_local_or_pat_settings_in_azure():
    """KVLINK_EMULATOR, KVLINK_CA_BUNDLE and AZURE_DEVOPS_PAT are not set in Azure."""
    assert NOT_IN_AZURE <= CODE_SETTINGS
    assert NOT_IN_AZURE & set(app_settings()) == set()


def test_function_app_is_flex_consumption_python_313():
    """The app runs on Flex Consumption (FC1), Linux, Python 3.13 (the worker tier's version), as its identity."""
    path = INFRA / "core" / "host" / "flex-function-app.bicep"
    template = parse(path)
    plan = body(template["resources"]["plan"])
    assert plan["sku"] == {"tier": "FlexConsumption", "name": "FC1"}
    site = body(template["resources"]["functionApp"])
    assert site["kind"] == "functionapp,linux"
    assert site["identity"]["type"] == "UserAssigned"
    assert site["properties"]["functionAppConfig"]["deployment"]["storage"]["authentication"]["type"] == (
        "UserAssignedIdentity"
    )
    module = body(parse(INFRA / "main.bicep")["modules"]["functionApp"])
    assert (module["params"]["runtimeName"], module["params"]["runtimeVersion"]) == ("python", "3.13")


def test_event_subscription_delivers_the_three_secret_events_with_retry_and_dead_letter():
    """on_secret_event gets exactly the three secret events, Event Grid schema, with a retry policy and dead letters."""
    (subscription,) = resources("Microsoft.EventGrid/systemTopics/eventSubscriptions")
    properties = body(subscription[2])["properties"]
    events = properties["filter"]["includedEventTypes"]
    assert sorted(events) == sorted(SECRET_EVENTS)
    assert properties["eventDeliverySchema"] == "EventGridSchema"
    assert properties["destination"]["endpointType"] == "AzureFunction"
    assert set(properties["retryPolicy"]) == {"maxDeliveryAttempts", "eventTimeToLiveInMinutes"}
    # Dead letters need the topic's identity, which kvlink sets only on a topic it creates.
    assert properties["deadLetterWithResourceIdentity"] == {
        "operator": {
            "type": "conditional",
            "operands": {"condition": "createTopic", "true_value": "deadLetter", "false_value": None},
        }
    }
    dead_letter = resolve(INFRA / "core" / "eventgrid" / "system-topic.bicep", "deadLetter")
    assert dead_letter["deadLetterDestination"]["endpointType"] == "StorageBlob"
    assert dead_letter["deadLetterDestination"]["properties"]["blobContainerName"] == "deadLetterContainerName"
    assert dead_letter["identity"]["type"] == "UserAssigned"
    # vaults.bicep points every vault's subscription at the on_secret_event function.
    events_module = body(parse(INFRA / "vaults.bicep")["modules"]["vaultEvents"])
    assert events_module["params"]["functionResourceId"] == "${functionAppId}/functions/on_secret_event"
    assert "def on_secret_event(" in BINDING_SOURCE


def test_vault_resources_stay_out_of_the_azd_deployment():
    """main.bicep deploys nothing into the vaults' resource groups, so `azd down` can never delete them."""
    main = parse(INFRA / "main.bicep")
    paths = {module["detail"]["path"] for module in main["modules"].values()}
    assert not {"core/keyvault/vault-access.bicep", "core/eventgrid/system-topic.bicep"} & paths
    scopes = {body(module).get("scope") for module in main["modules"].values()}
    assert scopes == {"rg"}


@pytest.mark.parametrize("hook", ["postdeploy", "predown"])
def test_hooks_exist_for_both_shells(hook):
    """azure.yaml runs each hook in sh and PowerShell, and the sh script is executable (azd runs it directly)."""
    azure_yaml = (ROOT / "azure.yaml").read_text()
    assert f"run: ./scripts/{hook}.sh" in azure_yaml
    assert f"run: ./scripts/{hook}.ps1" in azure_yaml
    script = ROOT / "scripts" / f"{hook}.sh"
    assert script.stat().st_mode & 0o111
    assert "set -euo pipefail" in script.read_text()
    assert (ROOT / "scripts" / f"{hook}.ps1").is_file()


def test_azd_service_name_matches_the_function_app_tag():
    """azure.yaml's one service (api, Python, host function) is the app tagged azd-service-name: api."""
    azure_yaml = (ROOT / "azure.yaml").read_text()
    services = azure_yaml.split("services:", 1)[1].split("hooks:", 1)[0]
    assert re.findall(r"^  (\w+):$", services, flags=re.MULTILINE) == ["api"]
    assert "host: function" in services
    assert "language: python" in services
    main = parse(INFRA / "main.bicep")
    assert main["variables"]["serviceName"]["value"] == "api"
    tags = body(main["modules"]["functionApp"])["params"]["tags"]["function"]["parameters"]["arg_2"]
    assert tags == {"'azd-service-name'": "serviceName"}


# -- telling someone when the audit finds trouble, or stops --------------------------------------------

ALERT = INFRA / "core" / "monitor" / "audit-alert.bicep"


def alert_query() -> str:
    rule = body(parse(ALERT)["resources"]["auditAlert"])
    (condition_,) = rule["properties"]["criteria"]["allOf"]
    return resolve(ALERT, condition_["query"])


def test_audit_alert_fires_on_drift_errors_or_26_hours_of_silence():
    """One log search alert over AppTraces: rows (and so an alert) for drift, open errors or no audit line for 26 h."""
    rule = body(parse(ALERT)["resources"]["auditAlert"])
    assert rule["kind"] == "LogAlert"
    properties = rule["properties"]
    assert properties["scopes"] == ["workspaceId"]
    (condition_,) = properties["criteria"]["allOf"]
    assert (condition_["timeAggregation"], condition_["operator"], condition_["threshold"]) == (
        "Count",
        "GreaterThan",
        0,
    )
    query = alert_query()
    # Workspace-based Application Insights: the Python logging lines are AppTraces rows, the text in Message.
    assert "(AppTraces | project TimeGenerated, Message)" in query
    assert 'Message startswith "kvlink audit {"' in query
    assert "union isfuzzy=true" in query  # a workspace without AppTraces yet still evaluates (and fires)
    # The newest summary decides; drift, open errors and an unstored report each make a row.
    assert "top 1 by TimeGenerated desc" in query
    assert "where DriftRemains or OpenErrors > 0 or not(ReportStored)" in query
    # Silence: no summary line in 26 hours makes a row of its own, and the rule may read that far back.
    assert "let staleAfter = 26h;" in query
    assert "where TimeGenerated > ago(staleAfter)" in query
    assert "where toscalar(audits | count) == 0" in query
    assert properties["overrideQueryTimeRange"] == "P2D"
    assert properties["evaluationFrequency"] == "PT1H"
    # main.bicep points it at the workspace Application Insights writes to.
    module = body(parse(INFRA / "main.bicep")["modules"]["auditAlert"])
    assert module["params"]["workspaceId"] == {
        "operator": {
            "type": "property_accessor",
            "operands": {
                "operand_1": "monitoring",
                "operand_2": {
                    "operator": {
                        "type": "property_accessor",
                        "operands": {"operand_1": "outputs", "operand_2": "logAnalyticsId"},
                    }
                },
            },
        }
    }
    assert "WorkspaceResourceId" in body(resources("Microsoft.Insights/components")[0][2])["properties"]


def test_action_group_exists_only_with_an_alert_email():
    """The e-mail action group is conditional on alertEmail (azd: KVLINK_ALERT_EMAIL, empty by default)."""
    template = parse(ALERT)
    group = template["resources"]["actionGroup"]
    assert condition(group) == {
        "operator": {
            "type": "not",
            "operands": {"bool_value": {"function": {"type": "empty", "parameters": {"item_to_test": "alertEmail"}}}},
        }
    }
    (receiver,) = body(group)["properties"]["emailReceivers"]
    assert receiver["emailAddress"] == "alertEmail"
    actions = body(template["resources"]["auditAlert"])["properties"]["actions"]["actionGroups"]["operator"]
    assert actions["type"] == "conditional"
    assert actions["operands"]["condition"] == {
        "function": {"type": "empty", "parameters": {"item_to_test": "alertEmail"}}
    }
    assert actions["operands"]["true_value"] == []
    assert template["parameters"]["alertEmail"]["default"] == ""
    main = parse(INFRA / "main.bicep")
    assert main["parameters"]["alertEmail"]["default"] == ""
    assert body(main["modules"]["auditAlert"])["params"]["alertEmail"] == "alertEmail"
    mapped = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]["alertEmail"]["value"]
    assert mapped == "${KVLINK_ALERT_EMAIL=}"


@pytest.mark.integration
def test_alert_query_reads_what_the_audit_logs(estate, app_engine, caplog):
    """Every summary field the alert query reads is in the one line a real audit logs, under the prefix it matches."""
    estate.kv.set_secret(estate.vault, "keep")
    estate.link(app_engine, estate.group("payments-kv", ["keep", "gone"]))
    caplog.set_level(logging.INFO, logger="kvlink_core.audit")

    run_audit(app_engine)

    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("kvlink audit ")]
    query = alert_query()
    prefix = re.search(r'Message startswith "([^"]+)"', query)
    assert prefix and line.startswith(prefix.group(1))
    summary = json.loads(line.removeprefix("kvlink audit "))
    paths = set(re.findall(r"summary\.([A-Za-z.]+)", query))
    assert {"driftRemains", "openFindingsBySeverity.error", "unreached", "reportStored"} <= paths
    for path in paths:
        value: Any = summary
        for key in path.split("."):
            assert isinstance(value, dict) and key in value, f"the audit line has no {path}"
            value = value[key]


# -- the manual step, named at the end of every deployment ---------------------------------------------


def test_identity_display_name_is_a_deployment_output():
    """main.bicep outputs the managed identity's name: its display name, what Azure DevOps' "Add users" finds."""
    outputs = parse(INFRA / "main.bicep")["outputs"]
    assert outputs["AZURE_FUNCTION_IDENTITY_NAME"]["value"] == {
        "operator": {
            "type": "property_accessor",
            "operands": {
                "operand_1": "identity",
                "operand_2": {
                    "operator": {"type": "property_accessor", "operands": {"operand_1": "outputs", "operand_2": "name"}}
                },
            },
        }
    }
    identity = parse(INFRA / "core" / "identity" / "user-assigned-identity.bicep")
    assert identity["outputs"]["name"]["value"] == {
        "operator": {"type": "property_accessor", "operands": {"operand_1": "identity", "operand_2": "name"}}
    }


def test_postdeploy_ps1_prints_the_same_ending():
    """No PowerShell here: the Windows hook's last lines say the same things (text check)."""
    script = (ROOT / "scripts" / "postdeploy.ps1").read_text()
    ending = script.split("# 4. What azd cannot do", 1)[1]
    for needed in (
        "AZURE_FUNCTION_IDENTITY_NAME",
        "Add users",
        "Basic",
        "Library > Security: Administrator",
        "/api/health",
    ):
        assert needed in ending
    assert "python -m kvlink_core audit --dry-run" in ending


def test_readme_log_queries_match_the_lines_kvlink_writes():
    """The docs' two Log Analytics queries look for the prefixes the audit and every group write log."""
    page = (ROOT / "docs" / "operations.md").read_text()
    section = page.split("## Alerts and logs", 1)[1].split("\n## ", 1)[0]
    summaries, writes = re.findall(r"```kusto\n(.*?)```", section, flags=re.DOTALL)
    assert 'Message startswith "kvlink audit {"' in summaries
    assert 'logger.info("kvlink audit %s", json.dumps(' in (ROOT / "kvlink_core" / "audit.py").read_text()
    write_format = "Group %s (%s): added %s, removed %s (%s)"
    assert f'"{write_format}"' in (ROOT / "kvlink_core" / "sync.py").read_text()
    logged = logging.LogRecord(
        "kvlink", logging.INFO, "", 0, write_format, ("g", "contoso/42", ["a"], [], "event 1"), None
    )
    assert 'Message startswith "Group " and Message has "): added "' in writes
    assert logged.getMessage().startswith("Group ") and "): added " in logged.getMessage()
    assert '"Group " Group " (" Key "): added " Added ", removed " Removed " (" Origin' in writes


# -- several environments, regions and subscriptions ---------------------------------------------------


def test_names_on_and_beside_a_vault_carry_the_environment():
    """Diagnostic setting, event subscription, a system topic kvlink creates and nested deployments carry the token."""
    vaults = parse(INFRA / "vaults.bicep")
    assert vaults["parameters"]["resourceToken"]["type"] == "string"
    assert vaults["variables"]["footprintName"]["value"] == "kvlink-${resourceToken}"
    access = vaults["modules"]["vaultAccess"]
    events = vaults["modules"]["vaultEvents"]
    assert body(access)["name"] == "kvlink-access-${resourceToken}-${uniqueString(vault.id)}"
    assert body(events)["name"] == "kvlink-events-${resourceToken}-${uniqueString(vault.id)}"
    assert body(access)["params"]["diagnosticSettingName"] == "footprintName"
    assert body(events)["params"]["subscriptionName"] == "footprintName"
    name = body(events)["params"]["name"]["operator"]
    assert name["type"] == "conditional"
    # pycep splits this interpolated string at its '/' literal; the token is in it all the same.
    assert "${abbrs.eventGridSystemTopics}kvlink-${resourceToken}-${toLower(" in json.dumps(
        name["operands"]["true_value"]
    )
    # The modules take the names as given: no fixed default to fall back on.
    vault_access = parse(INFRA / "core" / "keyvault" / "vault-access.bicep")["parameters"]
    system_topic = parse(INFRA / "core" / "eventgrid" / "system-topic.bicep")["parameters"]
    assert vault_access["diagnosticSettingName"]["default"] is None
    assert system_topic["subscriptionName"]["default"] is None
    # No fixed name is left anywhere under infra/.
    for path in BICEP_FILES:
        text = path.read_text()
        assert "'kvlink-on-secret-event'" not in text, path.name
        assert "diagnosticSettingName string = 'kvlink'" not in text, path.name


def test_a_topic_kvlink_creates_is_tagged_and_an_existing_one_is_reused():
    """createTopic false reuses the vault's topic (subscription only); a created topic carries the kvlink tag."""
    template = parse(INFRA / "core" / "eventgrid" / "system-topic.bicep")
    topic = template["resources"]["systemTopic"]
    assert condition(topic) == "createTopic"
    tags = body(topic)["tags"]["function"]
    assert tags["type"] == "union" and tags["parameters"]["arg_2"] == {"kvlink": "resourceToken"}
    subscription = body(template["resources"]["toFunction"])
    assert subscription["name"] == "${name}/${subscriptionName}"
    assert subscription["dependsOn"] == ["systemTopic"]
    events = body(parse(INFRA / "vaults.bicep")["modules"]["vaultEvents"])
    assert events["params"]["createTopic"] == {
        "function": {
            "type": "empty",
            "parameters": {
                "item_to_test": {
                    "operator": {
                        "type": "property_accessor",
                        "operands": {"operand_1": "vault", "operand_2": "topicName"},
                    }
                }
            },
        }
    }


def test_main_outputs_the_token_and_the_vault_ids_for_the_hooks():
    """AZURE_RESOURCE_TOKEN and KVLINK_VAULT_IDS are outputs: a value typed at azd's prompt reaches the hooks."""
    main = parse(INFRA / "main.bicep")
    assert main["outputs"]["AZURE_RESOURCE_TOKEN"]["value"] == "resourceToken"
    assert main["outputs"]["KVLINK_VAULT_IDS"]["value"] == "vaultIds"
    mapped = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]["vaultIds"]["value"]
    assert mapped == "${KVLINK_VAULT_IDS}"
    for hook in ("postdeploy.sh", "predown.sh", "postdeploy.ps1", "predown.ps1"):
        text = (ROOT / "scripts" / hook).read_text()
        assert "AZURE_RESOURCE_TOKEN" in text and "KVLINK_VAULT_IDS" in text, hook


def test_the_event_hub_follows_the_vaults_region():
    """vaultsLocation (KVLINK_VAULTS_LOCATION) moves only the Event Hub: vaults where Flex Consumption does not run."""
    main = parse(INFRA / "main.bicep")
    assert main["parameters"]["vaultsLocation"]["default"] == ""
    hub_location = main["variables"]["eventHubLocation"]["value"]["operator"]
    assert hub_location["type"] == "conditional"
    assert hub_location["operands"]["condition"] == {
        "function": {"type": "empty", "parameters": {"item_to_test": "vaultsLocation"}}
    }
    assert (hub_location["operands"]["true_value"], hub_location["operands"]["false_value"]) == (
        "location",
        "vaultsLocation",
    )
    assert body(main["modules"]["eventHub"])["params"]["location"] == "eventHubLocation"
    assert body(main["modules"]["functionApp"])["params"]["location"] == "location"
    assert main["outputs"]["EVENTHUB_LOCATION"]["value"] == "eventHubLocation"
    mapped = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]["vaultsLocation"]["value"]
    assert mapped == "${KVLINK_VAULTS_LOCATION=}"


# -- Flex Consumption: what the platform refuses or ignores on a Flex site -----------------------------
#
# Microsoft Learn, "App settings reference for Azure Functions" (functions-app-settings), section "Flex
# Consumption plan deprecations": site properties and app settings that "are deprecated and shouldn't be used"
# on a Flex Consumption app. ARM enforces at least the site properties: siteConfig.ftpsState fails the
# deployment with error 51021 ("site configuration properties (Site.SiteConfig.FtpsState, ...) for Flex
# Consumption sites is invalid"). The Learn page could not be read whole here (its stored copies in
# MicrosoftDocs/azure-docs predate Flex; the repository is too large to fetch), so the list is the union of:
#   (a) the Microsoft preview-era table this section grew from, "Deprecated properties and settings" (read
#       in full, 2024 text of the Flex Consumption docs), every row;
#   (b) the rows the current Learn section adds for networking, build and content share, as quoted by
#       migration guides that link to it (ENABLE_ORYX_BUILD, SCM_DO_BUILD_DURING_DEPLOYMENT,
#       WEBSITE_RUN_FROM_PACKAGE, WEBSITE_CONTENTOVERVNET, WEBSITE_SKIP_CONTENTSHARE_VALIDATION,
#       WEBSITE_VNET_ROUTE_ALL, WEBSITE_DNS_SERVER, WEBSITE_MAX_DYNAMIC_APPLICATION_SCALE_OUT,
#       WEBSITE_USE_PLACEHOLDER_DOTNETISOLATED, WEBSITE_TIME_ZONE, TZ and the vnet*Enabled properties).
# A stricter list costs nothing: kvlink sets none of these, and a name here that Flex later accepts only
# keeps it out of our templates.
FLEX_DEPRECATED_SITE_PROPERTIES = {
    # (a)
    "ftpsState": "FTPS not supported",
    "use32BitWorkerProcess": "32-bit not supported",
    "isReserved": "not valid",
    "IsXenon": "not valid",
    "windowsFxVersion": "not valid",
    "alwaysOn": "not valid",
    "preWarmedInstanceCount": "renamed (always-ready instances, functionAppConfig.scaleAndConcurrency)",
    "functionAppScaleLimit": "renamed maximumInstanceCount (functionAppConfig.scaleAndConcurrency)",
    "containerSize": "renamed instanceMemoryMB (functionAppConfig.scaleAndConcurrency)",
    "javaVersion": "replaced by functionAppConfig.runtime.version",
    "powerShellVersion": "replaced by functionAppConfig.runtime.version",
    "netFrameworkVersion": "replaced by functionAppConfig.runtime.version",
    "linuxFxVersion": "replaced by functionAppConfig.runtime",
    # (b)
    "vnetBackupRestoreEnabled": "not used for networking in Flex Consumption",
    "vnetContentShareEnabled": "not used for networking in Flex Consumption",
    "vnetImagePullEnabled": "not used for networking in Flex Consumption",
}
FLEX_DEPRECATED_APP_SETTINGS = {
    # (a)
    "WEBSITE_NODE_DEFAULT_VERSION": "replaced by functionAppConfig.runtime.version",
    "FUNCTIONS_EXTENSION_VERSION": "set by the platform",
    "FUNCTIONS_WORKER_RUNTIME": "replaced by functionAppConfig.runtime.name",
    "FUNCTIONS_WORKER_RUNTIME_VERSION": "replaced by functionAppConfig.runtime.version",
    "FUNCTIONS_MAX_HTTP_CONCURRENCY": "replaced by functionAppConfig.scaleAndConcurrency.triggers",
    "FUNCTIONS_WORKER_PROCESS_COUNT": "not valid",
    "FUNCTIONS_WORKER_DYNAMIC_CONCURRENCY_ENABLED": "not valid",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING": "replaced by functionAppConfig.deployment",
    "WEBSITE_CONTENTSHARE": "replaced by functionAppConfig.deployment",
    # (b)
    "ENABLE_ORYX_BUILD": "replaced by remote build at deployment",
    "SCM_DO_BUILD_DURING_DEPLOYMENT": "replaced by remote build at deployment",
    "WEBSITE_RUN_FROM_PACKAGE": "Flex runs from its deployment container",
    "WEBSITE_CONTENTOVERVNET": "no content share in Flex Consumption",
    "WEBSITE_SKIP_CONTENTSHARE_VALIDATION": "no content share in Flex Consumption",
    "WEBSITE_VNET_ROUTE_ALL": "not used for networking in Flex Consumption",
    "WEBSITE_DNS_SERVER": "DNS comes from the integrated virtual network",
    "WEBSITE_MAX_DYNAMIC_APPLICATION_SCALE_OUT": "replaced by maximumInstanceCount",
    "WEBSITE_USE_PLACEHOLDER_DOTNETISOLATED": "not supported on Flex Consumption",
    "WEBSITE_TIME_ZONE": "not supported on Flex Consumption",
    "TZ": "not supported on Flex Consumption",
}


def flex_sites() -> list[tuple[Path, str, dict[str, Any]]]:
    """Every function app site on a Flex Consumption plan: it has functionAppConfig, or its plan is FC1."""
    found = []
    for path, name, site in resources("Microsoft.Web/sites"):
        properties = body(site).get("properties", {})
        farm = properties.get("serverFarmId")
        plan_name = farm.get("operator", {}).get("operands", {}).get("operand_1") if isinstance(farm, dict) else None
        plan = parse(path).get("resources", {}).get(plan_name) if isinstance(plan_name, str) else None
        on_flex_plan = plan is not None and str(body(plan).get("sku", {}).get("tier", "")).lower() == "flexconsumption"
        if "functionAppConfig" in properties or on_flex_plan:
            found.append((path, name, site))
    return found


def site_app_settings(path: Path, site: dict[str, Any]) -> set[str]:
    """The names of the app settings a site gets: literal entries, or the object every caller passes in."""
    entries = body(site).get("properties", {}).get("siteConfig", {}).get("appSettings", [])
    if isinstance(entries, list):
        return {entry["name"] for entry in entries if isinstance(entry, dict) and isinstance(entry.get("name"), str)}
    loop = entries["loop_type"]["detail"]
    parameter = loop["object_name"]
    assert parameter in parse(path).get("parameters", {}), f"{path.name}: appSettings comes from a parameter"
    names: set[str] = set()
    callers = 0
    for caller in BICEP_FILES:
        for module in parse(caller).get("modules", {}).values():
            target = (caller.parent / module["detail"].get("path", "")).resolve()
            if module["type"] != "local" or target != path.resolve():
                continue
            callers += 1
            passed = resolve(caller, body(module)["params"][parameter])
            assert isinstance(passed, dict), f"{caller.name} passes {parameter} as an object literal or variable"
            names |= set(passed)
    assert callers, f"nobody deploys {path.name}"
    return names


def test_flex_sites_use_nothing_flex_consumption_deprecates():
    """No Flex Consumption site in infra/ sets a site property or app setting the deprecations list names."""
    sites = flex_sites()
    assert [(path.name, name) for path, name, _ in sites] == [("flex-function-app.bicep", "functionApp")]
    bad_properties = {name.lower(): name for name in FLEX_DEPRECATED_SITE_PROPERTIES}
    bad_settings = {name.lower(): name for name in FLEX_DEPRECATED_APP_SETTINGS}
    found = []
    for path, name, site in sites:
        properties = body(site)["properties"]
        for where, values in (("properties", properties), ("properties.siteConfig", properties.get("siteConfig", {}))):
            found += [f"{path.name} {name}: {where}.{key}" for key in values if key.lower() in bad_properties]
        found += [
            f"{path.name} {name}: app setting {setting} ({FLEX_DEPRECATED_APP_SETTINGS[bad_settings[setting.lower()]]})"
            for setting in site_app_settings(path, site)
            if setting.lower() in bad_settings
        ]
        # Settings written beside the site, as a sites/config 'appsettings' child.
        for config_path, _, config in resources("Microsoft.Web/sites/config"):
            if config_path == path and str(body(config).get("name", "")).lower() == "appsettings":
                keys = body(config)["properties"]
                found += [f"{path.name}: appsettings {key}" for key in keys if key.lower() in bad_settings]
    assert found == []


def test_the_flex_check_sees_what_it_must_refuse():
    """The check above reads the site and the settings main.bicep passes: both really contain names to compare."""
    ((path, _, site),) = flex_sites()
    properties = body(site)["properties"]
    assert {"minTlsVersion", "http20Enabled"} <= set(properties["siteConfig"])
    assert {"KVLINK_DEVOPS_ORGS", "APPLICATIONINSIGHTS_CONNECTION_STRING"} <= site_app_settings(path, site)


# The regions of Microsoft's azd sample for Flex Consumption: Azure-Samples/functions-quickstart-python-http-azd,
# infra/main.bicep, commit 7ed4638bc03858a3b2657f0dbbdd1db0af103ebb (2025-11-24), the `location` parameter's
# @allowed list (unchanged since fe29236, 2025-05-06). Written out here, not read from main.bicep.
FLEX_REGIONS_OF_THE_SAMPLE = {
    "australiaeast", "australiasoutheast", "brazilsouth", "canadacentral", "centralindia", "centralus",
    "eastasia", "eastus", "eastus2", "eastus2euap", "francecentral", "germanywestcentral", "italynorth",
    "japaneast", "koreacentral", "northcentralus", "northeurope", "norwayeast", "southafricanorth",
    "southcentralus", "southeastasia", "southindia", "spaincentral", "swedencentral", "uaenorth", "uksouth",
    "ukwest", "westcentralus", "westeurope", "westus", "westus2", "westus3",
}  # fmt: skip


def decorator(parameter: dict[str, Any], kind: str) -> Any:
    return next((d["argument"] for d in parameter["decorators"] if d["type"] == kind), None)


def test_the_app_region_is_one_with_flex_consumption_and_the_vault_region_is_free():
    """azd prompts only for Flex Consumption regions; KVLINK_VAULTS_LOCATION (the Event Hub's region) takes any."""
    parameters = parse(INFRA / "main.bicep")["parameters"]
    location = parameters["location"]
    assert decorator(location, "metadata") == {"azd": {"type": "location"}}
    allowed = decorator(location, "allowed")
    assert allowed is not None, "location takes any region: one without Flex Consumption fails after resources exist"
    assert set(allowed) == FLEX_REGIONS_OF_THE_SAMPLE
    assert len(allowed) == len(set(allowed))
    # A vault region without Flex Consumption is what vaultsLocation is for: it must stay unrestricted.
    assert decorator(parameters["vaultsLocation"], "allowed") is None
    # Every resource but the Event Hub follows location, so none lands where Flex does not run.
    assert body(parse(INFRA / "main.bicep")["modules"]["functionApp"])["params"]["location"] == "location"


def test_the_sync_queue_exists_and_the_identity_may_use_it():
    """Queued syncs (POST /api/sync answered 202) need the kvlink-sync queue in AzureWebJobsStorage's account,
    its endpoint in the app settings, and a queue role for kvlink's identity: the queue trigger needs
    Storage Queue Data Reader + Message Processor, sending needs Contributor or Message Sender ("Azure Queue
    storage trigger and bindings", Connections / identity-based: MicrosoftDocs/azure-docs
    includes/functions-queue-permissions.md @ 11c0107d). Storage Queue Data Contributor covers both."""
    from kvlink_core.workqueue import SYNC_QUEUE

    storage = body(parse(INFRA / "main.bicep")["modules"]["storage"])["params"]
    assert storage["queues"] == [SYNC_QUEUE]
    queues = parse(INFRA / "core" / "storage" / "storage-account.bicep")["resources"]["storageQueues"]
    assert queues["type"] == "Microsoft.Storage/storageAccounts/queueServices/queues"
    assert queues["config"]["loop_type"]["detail"]["array_name"] == "queues"
    assert "AzureWebJobsStorage__queueServiceUri" in app_settings()
    rbac = INFRA / "app" / "rbac.bicep"
    grant = body(parse(rbac)["resources"]["queueContributor"])["properties"]
    role = resolve(rbac, grant["roleDefinitionId"]["function"]["parameters"]["resource_name_1"])
    assert role == "974c5e8b-45b9-4653-ba55-5f855dd0fb88"  # Storage Queue Data Contributor (built-in roles)
    assert grant["principalId"] == "functionPrincipalId"
