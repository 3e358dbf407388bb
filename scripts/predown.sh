#!/usr/bin/env bash
# azd predown hook: remove kvlink's footprint from the watched vaults before `azd down` deletes
# kvlink's resource group. `azd down` only deletes that group; the vaults' resource groups are left
# alone, so what postdeploy put there (infra/vaults.bicep) is removed here:
#   - the Event Grid subscription kvlink-on-secret-event, and the system topic egst-kvlink-<vault>
#     once no other subscription uses it;
#   - the diagnostic setting "kvlink";
#   - kvlink's access policy (access-policy vaults) or its Key Vault Reader assignment (RBAC vaults).
# Best effort: what cannot be removed is listed at the end; `azd down` then goes on.
set -euo pipefail

while IFS= read -r line; do
  if [[ "$line" =~ ^([A-Za-z_][A-Za-z0-9_]*)=\"(.*)\"$ ]]; then
    export "${BASH_REMATCH[1]}=${BASH_REMATCH[2]//\\\"/\"}"
  fi
done < <(azd env get-values)

principal_id="${AZURE_FUNCTION_IDENTITY_PRINCIPAL_ID:-}"
if [[ -z "${KVLINK_VAULT_IDS:-}" || -z "$principal_id" ]]; then
  echo "predown: nothing was applied to any vault (no KVLINK_VAULT_IDS or no provisioned identity)."
  exit 0
fi

key_vault_reader=21090545-7ca7-4776-b22c-e363652d74d2
leftovers=()
lower() { tr '[:upper:]' '[:lower:]'; }

IFS=',' read -r -a vault_ids <<<"$KVLINK_VAULT_IDS"
for raw_id in "${vault_ids[@]}"; do
  vault_id="$(echo "$raw_id" | tr -d '[:space:]')"
  [[ -n "$vault_id" ]] || continue
  IFS='/' read -r -a parts <<<"$vault_id"
  [[ "${#parts[@]}" -eq 9 ]] || { leftovers+=("$vault_id: not a vault resource id"); continue; }
  sub="${parts[2]}" rg="${parts[4]}" vault="${parts[8]}"
  topic="egst-kvlink-$(echo "$vault" | lower)"
  echo "Removing kvlink from vault $vault..."

  # Generic ARM calls (az rest): a DELETE of something already gone succeeds.
  topic_id="/subscriptions/$sub/resourceGroups/$rg/providers/Microsoft.EventGrid/systemTopics/$topic"
  if az rest --method get --url "$topic_id?api-version=2022-06-15" --output none 2>/dev/null; then
    az rest --method delete --url "$topic_id/eventSubscriptions/kvlink-on-secret-event?api-version=2022-06-15" --output none \
      || leftovers+=("$vault: event subscription kvlink-on-secret-event on $topic")
    # The delete is asynchronous: wait until the topic lists no subscription of ours.
    for _ in $(seq 1 12); do
      remaining="$(az rest --method get --url "$topic_id/eventSubscriptions?api-version=2022-06-15" \
        --query "length(value)" --output tsv 2>/dev/null || echo unknown)"
      [[ "$remaining" == 0 ]] && break
      sleep 5
    done
    if [[ "$remaining" == 0 ]]; then
      az rest --method delete --url "$topic_id?api-version=2022-06-15" --output none \
        || leftovers+=("$vault: system topic $topic")
    else
      leftovers+=("$vault: system topic $topic kept (${remaining:-unknown} other subscription(s) on it)")
    fi
  fi

  az rest --method delete --url "$vault_id/providers/Microsoft.Insights/diagnosticSettings/kvlink?api-version=2021-05-01-preview" \
    --output none || leftovers+=("$vault: diagnostic setting kvlink")

  if ! rbac="$(az resource show --ids "$vault_id" --query properties.enableRbacAuthorization --output tsv 2>/dev/null)"; then
    leftovers+=("$vault: cannot read the vault to remove kvlink's access")
    continue
  fi
  if [[ "$(echo "$rbac" | lower)" == "true" ]]; then
    az role assignment delete --assignee "$principal_id" --role "$key_vault_reader" --scope "$vault_id" --output none \
      || leftovers+=("$vault: Key Vault Reader assignment of $principal_id")
  else
    az keyvault delete-policy --subscription "$sub" --resource-group "$rg" --name "$vault" \
      --object-id "$principal_id" --output none \
      || leftovers+=("$vault: access policy of $principal_id")
  fi
done

if [[ "${#leftovers[@]}" -gt 0 ]]; then
  echo "predown: could not remove everything; clean these up by hand:" >&2
  printf '  - %s\n' "${leftovers[@]}" >&2
fi
exit 0
