#!/usr/bin/env bash
# azd postdeploy hook: apply kvlink's footprint on the watched vaults (infra/vaults.bicep).
#
# Runs after `azd deploy` because the Event Grid subscription targets the deployed on_secret_event
# function, which Event Grid validates when the subscription is created. Per vault, in the vault's
# resource group: "list" on secrets (access policy) or Key Vault Reader (RBAC vault), the AuditEvent
# diagnostic setting to kvlink's Event Hub, and an Event Grid subscription on the vault's system topic
# (kvlink's own topic, or the one the vault already has). Names carry AZURE_RESOURCE_TOKEN, so several
# environments can watch one vault.
# Everything is checked before anything changes: the vault ids, each vault's region (one environment per
# region, docs/deploy.md, "Several regions and subscriptions"), then the resource providers are registered in
# every subscription involved, then one deployment applies the rest.
# Idempotent: every step is an ARM PUT of a named resource; run it again after changing KVLINK_VAULT_IDS.
# Needs: azd, az (logged in as someone who may change the vaults' access and diagnostic settings), curl.
set -euo pipefail

cd "$(dirname "$0")/.."

# The azd environment: values set with `azd env set` and main.bicep's outputs (KVLINK_VAULT_IDS is one,
# so a value typed at azd's prompt for vaultIds arrives here too).
while IFS= read -r line; do
  if [[ "$line" =~ ^([A-Za-z_][A-Za-z0-9_]*)=\"(.*)\"$ ]]; then
    export "${BASH_REMATCH[1]}=${BASH_REMATCH[2]//\\\"/\"}"
  fi
done < <(azd env get-values)

for name in AZURE_ENV_NAME AZURE_LOCATION AZURE_SUBSCRIPTION_ID AZURE_RESOURCE_GROUP AZURE_RESOURCE_TOKEN \
  AZURE_FUNCTION_APP_NAME AZURE_FUNCTION_APP_ID AZURE_FUNCTION_IDENTITY_PRINCIPAL_ID AZURE_EVENTGRID_IDENTITY_ID \
  AZURE_STORAGE_ACCOUNT_ID EVENTGRID_DEADLETTER_CONTAINER EVENTHUB_NAME EVENTHUB_DIAGNOSTICS_RULE_ID KVLINK_VAULT_IDS \
  SERVICE_API_URI; do
  if [[ -z "${!name:-}" ]]; then
    echo "postdeploy: $name is not set in the azd environment; run 'azd provision' first (it records main.bicep's outputs)." >&2
    exit 1
  fi
done

lower() { tr '[:upper:]' '[:lower:]'; }
region() { tr -d ' ' | lower; }
key_vault_reader=21090545-7ca7-4776-b22c-e363652d74d2
token="$AZURE_RESOURCE_TOKEN"
# The vaults' region: the Event Hub's (main.bicep's EVENTHUB_LOCATION; the app's region unless
# KVLINK_VAULTS_LOCATION moved the hub).
hub_location="${EVENTHUB_LOCATION:-$AZURE_LOCATION}"

# 1. Every id must be a vault resource id; nothing is asked of Azure before all of them are.
vault_list=()
IFS=',' read -r -a raw_ids <<<"$KVLINK_VAULT_IDS"
for raw_id in "${raw_ids[@]}"; do
  vault_id="$(echo "$raw_id" | tr -d '[:space:]')"
  [[ -n "$vault_id" ]] || continue
  IFS='/' read -r -a parts <<<"$vault_id"
  if [[ "${#parts[@]}" -ne 9 || "$(echo "${parts[6]}/${parts[7]}" | lower)" != "microsoft.keyvault/vaults" ]]; then
    echo "postdeploy: '$vault_id' in KVLINK_VAULT_IDS is not a vault resource id (/subscriptions/<id>/resourceGroups/<rg>/providers/Microsoft.KeyVault/vaults/<name>). Nothing was changed." >&2
    exit 1
  fi
  vault_list+=("$vault_id")
done
if [[ "${#vault_list[@]}" -eq 0 ]]; then
  echo "postdeploy: KVLINK_VAULT_IDS names no vault. Nothing was changed." >&2
  exit 1
fi

# 2. Read each vault: its permission model decides access policy vs Key Vault Reader, and it must be in
#    kvlink's region (a diagnostic setting streams only to an Event Hub in the vault's region, and the
#    Functions host binds on_vault_log to one hub). All vaults are read before any is refused.
rbac_list=()  # in step with vault_list (no associative arrays: macOS ships bash 3.2)
elsewhere=()
for vault_id in "${vault_list[@]}"; do
  vault_name="${vault_id##*/}"
  if ! vault_info="$(az resource show --ids "$vault_id" --query "[[location, properties.enableRbacAuthorization]]" --output tsv)"; then
    echo "postdeploy: cannot read vault $vault_name ($vault_id): check the id and that you may read it. Nothing was changed." >&2
    exit 1
  fi
  IFS=$'\t' read -r vault_location rbac_flag <<<"$vault_info"
  if [[ "$(echo "$vault_location" | region)" != "$(echo "$hub_location" | region)" ]]; then
    elsewhere+=("$vault_name ($vault_location): $vault_id")
  fi
  if [[ "$(echo "$rbac_flag" | lower)" == "true" ]]; then rbac_list+=(true); else rbac_list+=(false); fi
done
if [[ "${#elsewhere[@]}" -gt 0 ]]; then
  {
    echo "postdeploy: this environment's ($AZURE_ENV_NAME) Event Hub is in $hub_location; these vaults are not:"
    printf '  - %s\n' "${elsewhere[@]}"
    echo "A vault's audit logs stream only to an Event Hub in its own region, and one kvlink reads one hub, so"
    echo "kvlink watches the vaults of one region per azd environment. Keep only $hub_location vaults here"
    echo "(azd env set KVLINK_VAULT_IDS ..., then azd provision), and for each other region:"
    echo "  azd env new kvlink-<region> && azd env set AZURE_LOCATION <region> && azd env set KVLINK_VAULT_IDS <that region's vault ids> && azd up"
    echo "(where <region> has no Flex Consumption, keep AZURE_LOCATION a region that has it and set KVLINK_VAULTS_LOCATION <region>)"
    echo "(docs/deploy.md, 'Several regions and subscriptions'). Nothing was changed."
  } >&2
  exit 1
fi

# 3. Resource providers, in the app's subscription (Event Grid fetches the function's key there) and in
#    every vault's (system topics, diagnostic settings). Registering a registered provider changes nothing.
subscriptions=("$AZURE_SUBSCRIPTION_ID")
for vault_id in "${vault_list[@]}"; do
  vault_sub="$(echo "$vault_id" | cut -d/ -f3)"
  [[ " ${subscriptions[*]} " == *" $vault_sub "* ]] || subscriptions+=("$vault_sub")
done
for sub in "${subscriptions[@]}"; do
  for namespace in Microsoft.EventGrid Microsoft.Insights; do
    echo "Registering $namespace in subscription $sub (no change when it already is)..."
    if ! az provider register --namespace "$namespace" --subscription "$sub" --wait --output none; then
      echo "postdeploy: could not register $namespace in subscription $sub. Someone with Contributor (or */register/action) there runs: az provider register --namespace $namespace --subscription $sub --wait. No vault was changed." >&2
      exit 1
    fi
  done
done

# 4. Per vault: reuse its system topic if it has one (one per vault), and leave an equivalent Key Vault
#    Reader grant alone (ARM refuses a second one: RoleAssignmentExists).
vaults_json=""
for index in "${!vault_list[@]}"; do
  vault_id="${vault_list[$index]}" rbac="${rbac_list[$index]}"
  vault_sub="$(echo "$vault_id" | cut -d/ -f3)"
  vault_name="${vault_id##*/}"
  topic_name="" topic_group="" topic_note="new system topic egst-kvlink-$token-$(echo "$vault_name" | lower)"
  topics="$(az eventgrid system-topic list --subscription "$vault_sub" --query "[].[name, resourceGroup, source, tags.kvlink]" --output tsv)"
  while IFS=$'\t' read -r existing_name existing_group existing_source existing_token; do
    [[ -n "$existing_name" ]] || continue
    if [[ "$(echo "$existing_source" | lower)" == "$(echo "$vault_id" | lower)" ]]; then
      if [[ "$existing_token" == "$token" ]]; then
        topic_note="its system topic $existing_name (this environment's)"
      else
        topic_name="$existing_name" topic_group="$existing_group"
        topic_note="its existing system topic $existing_name (kept; kvlink adds its subscription kvlink-$token)"
      fi
    fi
  done <<<"$topics"

  grant=true access="access policies -> list on secrets"
  if [[ "$rbac" == true ]]; then
    access="RBAC vault -> Key Vault Reader"
    grants="$(az role assignment list --assignee "$AZURE_FUNCTION_IDENTITY_PRINCIPAL_ID" --role "$key_vault_reader" \
      --scope "$vault_id" --query "[].[name, scope, description]" --output tsv)"
    while IFS=$'\t' read -r grant_name grant_scope grant_description; do
      [[ -n "$grant_name" ]] || continue
      if [[ "$(echo "$grant_scope" | lower)" == "$(echo "$vault_id" | lower)" && "$grant_description" != "kvlink $token" ]]; then
        grant=false
        access="RBAC vault -> Key Vault Reader already granted (assignment $grant_name; kept, and left in place by azd down)"
      fi
    done <<<"$grants"
  fi
  echo "  $vault_name: $access; $topic_note"
  vaults_json+="${vaults_json:+, }{\"id\": \"$vault_id\", \"rbac\": $rbac, \"grantReader\": $grant, \"topicName\": \"$topic_name\", \"topicResourceGroup\": \"$topic_group\"}"
done

# 5. Event Grid validates an AzureFunction endpoint when the subscription is created: it looks the function
#    up and fetches the app's eventgrid_extension system key (the key in an Event Grid webhook URL; Microsoft
#    Learn "How to work with Event Grid triggers and bindings in Azure Functions", "Get the system key"). The
#    host creates that key when it first starts with the Event Grid extension, and a Flex Consumption app
#    that was just deployed has no instance yet. So: wake it (GET /api/health), then check until both the
#    function and the key are listed, the way Microsoft's azd sample reads systemKeys in its postdeploy hook
#    before creating its subscription (Azure-Samples/functions-quickstart-python-azd-eventgrid-blob,
#    scripts/post-up.sh). Bounded: at most 30 checks, 15 s apart, each wake at most 20 s; the key's
#    value is never printed (the query answers true or false).
checks=30 interval=15
health="${SERVICE_API_URI%/}/api/health"
echo "Waking $AZURE_FUNCTION_APP_NAME ($health) and waiting until it lists on_secret_event and its eventgrid_extension key..."
function_listed=no key_listed=no
for attempt in $(seq 1 "$checks"); do
  # The request is what starts an instance; its answer (or a time-out while the host starts) is not needed.
  curl -fsS --max-time 20 --output /dev/null "$health" 2>/dev/null || true
  if [[ "$function_listed" == no ]] && az functionapp function show --resource-group "$AZURE_RESOURCE_GROUP" \
    --name "$AZURE_FUNCTION_APP_NAME" --function-name on_secret_event --query name --output tsv >/dev/null 2>&1; then
    function_listed=yes
  fi
  if [[ "$function_listed" == yes && "$key_listed" == no ]] && [[ "$(az functionapp keys list --resource-group "$AZURE_RESOURCE_GROUP" \
    --name "$AZURE_FUNCTION_APP_NAME" --query "systemKeys.eventgrid_extension != null" --output tsv 2>/dev/null)" == true ]]; then
    key_listed=yes
  fi
  if [[ "$function_listed" == yes && "$key_listed" == yes ]]; then
    echo "  $AZURE_FUNCTION_APP_NAME is ready (check $attempt of $checks)."
    break
  fi
  echo "  not yet (check $attempt of $checks): on_secret_event listed: $function_listed, eventgrid_extension key listed: $key_listed"
  if [[ "$attempt" == "$checks" ]]; then
    missing="the function on_secret_event"
    [[ "$function_listed" == no ]] || missing="the system key eventgrid_extension"
    echo "postdeploy: $AZURE_FUNCTION_APP_NAME still does not list $missing after $checks checks $interval s apart, so Event Grid could not validate the subscription. Check that the deployment succeeded and the app starts ($health should answer, Application Insights shows the host's start-up errors), then run 'azd hooks run postdeploy'. No vault was changed." >&2
    exit 1
  fi
  sleep "$interval"
done

# 6. Remember every vault this environment ever touched before touching one, so `azd down` can clean up
#    even after a deployment that stopped half-way, or after a vault left KVLINK_VAULT_IDS.
applied="${KVLINK_APPLIED_VAULT_IDS:-}"
for vault_id in "${vault_list[@]}"; do
  [[ ",$(echo "$applied" | lower)," == *",$(echo "$vault_id" | lower),"* ]] || applied+="${applied:+,}$vault_id"
done
azd env set KVLINK_APPLIED_VAULT_IDS "$applied"

# 7. One subscription-scope deployment applies everything, in every vault's own resource group.
params="$(mktemp)"
trap 'rm -f "$params"' EXIT
cat >"$params" <<JSON
{
  "\$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentParameters.json#",
  "contentVersion": "1.0.0.0",
  "parameters": {
    "environmentName": {"value": "$AZURE_ENV_NAME"},
    "resourceToken": {"value": "$token"},
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
if ! az deployment sub create \
  --subscription "$AZURE_SUBSCRIPTION_ID" \
  --name "kvlink-vaults-$token" \
  --location "$AZURE_LOCATION" \
  --template-file infra/vaults.bicep \
  --parameters "@$params" \
  --output none; then
  echo "postdeploy: the deployment kvlink-vaults-$token failed (its error is above; docs/troubleshooting.md lists the usual ones). What it applied is named kvlink-$token: run 'azd hooks run postdeploy' again once fixed (it changes nothing twice), or 'azd down' to remove it." >&2
  exit 1
fi
echo "Done. Secret events now reach on_secret_event; audit logs reach $EVENTHUB_NAME (diagnostic setting and event subscription kvlink-$token)."

# 4. What azd cannot do: Azure DevOps users are not Azure resources, so someone lets the identity in.
#    The identity's name is its display name in Entra ID, what the "Add users" dialog searches for.
identity="${AZURE_FUNCTION_IDENTITY_NAME:-the id-... managed identity in $AZURE_RESOURCE_GROUP (run 'azd provision' to record its name)}"
check_settings="KVLINK_DEVOPS_ORGS='${KVLINK_DEVOPS_ORGS:-}' KVLINK_ALLOWED_VAULTS='${KVLINK_ALLOWED_VAULTS:-}'"
[[ -z "${KVLINK_DEVOPS_PROJECTS:-}" ]] || check_settings+=" KVLINK_DEVOPS_PROJECTS='$KVLINK_DEVOPS_PROJECTS'"
echo
echo "Azure DevOps identity: $identity (client id ${AZURE_FUNCTION_IDENTITY_CLIENT_ID:-unknown})"
echo "Manual step (docs/deploy.md, 'The one manual step'): in each organization of KVLINK_DEVOPS_ORGS (${KVLINK_DEVOPS_ORGS:-unset}), Organization settings > Users > Add users: that identity, access level Basic, added to every project it should audit (Project Readers); then in each project Pipelines > Library > Security: Administrator; and at least Reader on the service connections its groups use."
echo "Check: curl -fsS '${SERVICE_API_URI:-<SERVICE_API_URI>}/api/health' && $check_settings python -m kvlink_core audit --dry-run --json  # with Azurite running; \"unreached\": [] means Azure DevOps answers (docs/deploy.md, 'Verify the deployment')"
echo "End-to-end proof (docs/deploy.md, 'Smoke test'), once a group is linked: python -m kvlink_core smoke --vault <vault> --group <org>/<project>/<group id>  # with your own az login: a canary secret must reach the group and leave it"
