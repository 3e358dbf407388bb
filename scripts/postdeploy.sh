#!/usr/bin/env bash
# azd postdeploy hook: apply kvlink's footprint on the watched vaults (infra/vaults.bicep).
#
# Runs after `azd deploy` because the Event Grid subscription targets the deployed on_secret_event
# function, which Event Grid validates when the subscription is created. Per vault, in the vault's
# resource group: "list" on secrets (access policy) or Key Vault Reader (RBAC vault), the AuditEvent
# diagnostic setting to kvlink's Event Hub, and the system topic with its subscription.
# Idempotent: every step is an ARM PUT of a named resource; run it again after changing KVLINK_VAULT_IDS.
# Needs: azd, az (logged in as someone who may change the vaults' access and diagnostic settings).
set -euo pipefail

cd "$(dirname "$0")/.."

# The azd environment: values set with `azd env set` and main.bicep's outputs.
while IFS= read -r line; do
  if [[ "$line" =~ ^([A-Za-z_][A-Za-z0-9_]*)=\"(.*)\"$ ]]; then
    export "${BASH_REMATCH[1]}=${BASH_REMATCH[2]//\\\"/\"}"
  fi
done < <(azd env get-values)

for name in AZURE_ENV_NAME AZURE_LOCATION AZURE_SUBSCRIPTION_ID AZURE_RESOURCE_GROUP AZURE_FUNCTION_APP_NAME \
  AZURE_FUNCTION_APP_ID AZURE_FUNCTION_IDENTITY_PRINCIPAL_ID AZURE_EVENTGRID_IDENTITY_ID AZURE_STORAGE_ACCOUNT_ID \
  EVENTGRID_DEADLETTER_CONTAINER EVENTHUB_NAME EVENTHUB_DIAGNOSTICS_RULE_ID KVLINK_VAULT_IDS; do
  if [[ -z "${!name:-}" ]]; then
    echo "postdeploy: $name is not set in the azd environment; run 'azd provision' first." >&2
    exit 1
  fi
done

lower() { tr '[:upper:]' '[:lower:]'; }
region() { tr -d ' ' | lower; }

# 1. Event Grid validates an AzureFunction endpoint against the app's function list, which the
#    platform fills in shortly after the deployment: wait for on_secret_event.
echo "Waiting for $AZURE_FUNCTION_APP_NAME to list on_secret_event..."
for attempt in $(seq 1 20); do
  if az functionapp function show --resource-group "$AZURE_RESOURCE_GROUP" --name "$AZURE_FUNCTION_APP_NAME" \
    --function-name on_secret_event --query name --output tsv >/dev/null 2>&1; then
    break
  fi
  if [[ "$attempt" == 20 ]]; then
    echo "postdeploy: on_secret_event is not listed on $AZURE_FUNCTION_APP_NAME after 5 minutes; check the deployment, then run 'azd hooks run postdeploy'." >&2
    exit 1
  fi
  sleep 15
done

# 2. Look at each vault: its permission model decides access policy vs Key Vault Reader, and it must
#    be in kvlink's region (a diagnostic setting streams only to an Event Hub in the vault's region).
vaults_json=""
IFS=',' read -r -a vault_ids <<<"$KVLINK_VAULT_IDS"
for raw_id in "${vault_ids[@]}"; do
  vault_id="$(echo "$raw_id" | tr -d '[:space:]')"
  [[ -n "$vault_id" ]] || continue
  IFS='/' read -r -a parts <<<"$vault_id"
  if [[ "${#parts[@]}" -ne 9 || "$(echo "${parts[6]}/${parts[7]}" | lower)" != "microsoft.keyvault/vaults" ]]; then
    echo "postdeploy: '$vault_id' in KVLINK_VAULT_IDS is not a vault resource id (/subscriptions/<id>/resourceGroups/<rg>/providers/Microsoft.KeyVault/vaults/<name>)." >&2
    exit 1
  fi
  vault_sub="${parts[2]}"
  vault_name="${parts[8]}"
  vault_info="$(az resource show --ids "$vault_id" --query "[[location, properties.enableRbacAuthorization]]" --output tsv)"
  IFS=$'\t' read -r vault_location vault_rbac <<<"$vault_info"
  if [[ "$(echo "$vault_location" | region)" != "$(echo "$AZURE_LOCATION" | region)" ]]; then
    echo "postdeploy: vault $vault_name is in $vault_location but kvlink's Event Hub is in $AZURE_LOCATION; diagnostic settings stream only within a region. Deploy kvlink in $vault_location, or watch only vaults in $AZURE_LOCATION." >&2
    exit 1
  fi
  rbac=false
  [[ "$(echo "$vault_rbac" | lower)" == "true" ]] && rbac=true
  # Event Grid allows one system topic per source: a topic someone else made for this vault blocks ours.
  topic_name="egst-kvlink-$(echo "$vault_name" | lower)"
  topics="$(az eventgrid system-topic list --subscription "$vault_sub" --query "[].[name, source]" --output tsv)"
  while IFS=$'\t' read -r existing_name existing_source; do
    if [[ "$(echo "$existing_source" | lower)" == "$(echo "$vault_id" | lower)" && "$existing_name" != "$topic_name" ]]; then
      echo "postdeploy: vault $vault_name already has the Event Grid system topic '$existing_name' (only one is allowed per vault). Remove it, or move its subscriptions to '$topic_name' after this deployment creates it." >&2
      exit 1
    fi
  done <<<"$topics"
  echo "  $vault_name: $([[ "$rbac" == true ]] && echo "RBAC vault -> Key Vault Reader" || echo "access policies -> list on secrets")"
  vaults_json+="${vaults_json:+, }{\"id\": \"$vault_id\", \"rbac\": $rbac}"
done
if [[ -z "$vaults_json" ]]; then
  echo "postdeploy: KVLINK_VAULT_IDS names no vault." >&2
  exit 1
fi

# 3. One subscription-scope deployment applies everything, in every vault's own resource group.
params="$(mktemp)"
trap 'rm -f "$params"' EXIT
cat >"$params" <<JSON
{
  "\$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentParameters.json#",
  "contentVersion": "1.0.0.0",
  "parameters": {
    "environmentName": {"value": "$AZURE_ENV_NAME"},
    "vaults": {"value": [$vaults_json]},
    "functionAppId": {"value": "$AZURE_FUNCTION_APP_ID"},
    "functionPrincipalId": {"value": "$AZURE_FUNCTION_IDENTITY_PRINCIPAL_ID"},
    "eventGridIdentityId": {"value": "$AZURE_EVENTGRID_IDENTITY_ID"},
    "eventHubAuthorizationRuleId": {"value": "$EVENTHUB_DIAGNOSTICS_RULE_ID"},
    "eventHubName": {"value": "$EVENTHUB_NAME"},
    "deadLetterStorageAccountId": {"value": "$AZURE_STORAGE_ACCOUNT_ID"},
    "deadLetterContainerName": {"value": "$EVENTGRID_DEADLETTER_CONTAINER"}
  }
}
JSON

echo "Applying kvlink's access, diagnostic settings and Event Grid subscriptions to the vaults..."
az deployment sub create \
  --subscription "$AZURE_SUBSCRIPTION_ID" \
  --name "kvlink-vaults-${AZURE_ENV_NAME:0:50}" \
  --location "$AZURE_LOCATION" \
  --template-file infra/vaults.bicep \
  --parameters "@$params" \
  --output none
echo "Done. Secret events now reach on_secret_event; audit logs reach $EVENTHUB_NAME."

# 4. What azd cannot do: Azure DevOps users are not Azure resources, so someone lets the identity in.
#    The identity's name is its display name in Entra ID, what the "Add users" dialog searches for.
identity="${AZURE_FUNCTION_IDENTITY_NAME:-the id-... managed identity in $AZURE_RESOURCE_GROUP (run 'azd provision' to record its name)}"
check_settings="KVLINK_DEVOPS_ORGS='${KVLINK_DEVOPS_ORGS:-}' KVLINK_ALLOWED_VAULTS='${KVLINK_ALLOWED_VAULTS:-}'"
[[ -z "${KVLINK_DEVOPS_PROJECTS:-}" ]] || check_settings+=" KVLINK_DEVOPS_PROJECTS='$KVLINK_DEVOPS_PROJECTS'"
echo
echo "Azure DevOps identity: $identity (client id ${AZURE_FUNCTION_IDENTITY_CLIENT_ID:-unknown})"
echo "Manual step (README 'The one manual step'): in each organization of KVLINK_DEVOPS_ORGS (${KVLINK_DEVOPS_ORGS:-unset}), Organization settings > Users > Add users: that identity, access level Basic, added to every project it should audit (Project Readers); then in each project Pipelines > Library > Security: Administrator; and at least Reader on the service connections its groups use."
echo "Check: curl -fsS '${SERVICE_API_URI:-<SERVICE_API_URI>}/api/health' && $check_settings python -m kvlink_core audit --dry-run --json  # with Azurite running; \"unreached\": [] means Azure DevOps answers (README 'Verify the deployment')"
