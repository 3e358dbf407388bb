#!/usr/bin/env bash
# azd predown hook: remove this environment's footprint from the watched vaults before `azd down` deletes
# kvlink's resource group. `azd down` only deletes that group; the vaults' resource groups are left alone,
# so what postdeploy put there (infra/vaults.bicep) is removed here -- only what carries this
# environment's resource token (AZURE_RESOURCE_TOKEN), never another environment's:
#   - the Event Grid subscription kvlink-<token>; the system topic too if kvlink created it (tag kvlink)
#     and no other subscription is left on it -- a topic the vault already had is kept;
#   - the diagnostic setting kvlink-<token>;
#   - kvlink's access policy (access-policy vaults), or the Key Vault Reader assignment kvlink made
#     (description "kvlink <token>"; a grant that was there before kvlink is kept).
# The vaults: KVLINK_APPLIED_VAULT_IDS (every vault postdeploy ever touched) and KVLINK_VAULT_IDS.
# Best effort: it says what it removed, lists what it could not remove, and `azd down` then goes on.
set -euo pipefail

while IFS= read -r line; do
  if [[ "$line" =~ ^([A-Za-z_][A-Za-z0-9_]*)=\"(.*)\"$ ]]; then
    export "${BASH_REMATCH[1]}=${BASH_REMATCH[2]//\\\"/\"}"
  fi
done < <(azd env get-values)

principal_id="${AZURE_FUNCTION_IDENTITY_PRINCIPAL_ID:-}"
token="${AZURE_RESOURCE_TOKEN:-}"
all_ids="${KVLINK_APPLIED_VAULT_IDS:-}${KVLINK_APPLIED_VAULT_IDS:+,}${KVLINK_VAULT_IDS:-}"
if [[ -z "${all_ids//,/}" || -z "$principal_id" ]]; then
  echo "predown: nothing was applied to any vault (no KVLINK_APPLIED_VAULT_IDS or KVLINK_VAULT_IDS, or no provisioned identity)."
  exit 0
fi
if [[ -z "$token" ]]; then
  echo "predown: AZURE_RESOURCE_TOKEN is not set, so this environment's names on the vaults are unknown; run 'azd provision' (it records the token), then 'azd down' again. Nothing was removed from the vaults." >&2
  exit 1
fi

key_vault_reader=21090545-7ca7-4776-b22c-e363652d74d2
api=2022-06-15
name="kvlink-$token"
removed=()
leftovers=()
seen=","
lower() { tr '[:upper:]' '[:lower:]'; }
errors="$(mktemp)"
trap 'rm -f "$errors"' EXIT

IFS=',' read -r -a vault_ids <<<"$all_ids"
for raw_id in "${vault_ids[@]}"; do
  vault_id="$(echo "$raw_id" | tr -d '[:space:]')"
  [[ -n "$vault_id" ]] || continue
  [[ "$seen" == *",$(echo "$vault_id" | lower),"* ]] && continue
  seen+="$(echo "$vault_id" | lower),"
  IFS='/' read -r -a parts <<<"$vault_id"
  [[ "${#parts[@]}" -eq 9 ]] || { leftovers+=("$vault_id: not a vault resource id"); continue; }
  sub="${parts[2]}" rg="${parts[4]}" vault="${parts[8]}"
  echo "Removing this environment's kvlink ($name) from vault $vault..."

  # The vault's system topic, wherever it is in the vault's subscription. A subscription that never
  # registered Event Grid has none.
  if topics="$(az eventgrid system-topic list --subscription "$sub" --query "[].[id, source, tags.kvlink]" --output tsv 2>"$errors")"; then
    while IFS=$'\t' read -r topic_id topic_source topic_token; do
      [[ -n "$topic_id" && "$(echo "$topic_source" | lower)" == "$(echo "$vault_id" | lower)" ]] || continue
      topic="${topic_id##*/}"
      # Generic ARM calls (az rest): Event Grid answers a DELETE of something already gone with success.
      if az rest --method delete --url "$topic_id/eventSubscriptions/$name?api-version=$api" --output none; then
        removed+=("$vault: event subscription $name on system topic $topic")
      else
        leftovers+=("$vault: event subscription $name on system topic $topic")
        continue
      fi
      if [[ -z "$topic_token" || "$topic_token" == None ]]; then
        echo "  system topic $topic was not made by kvlink: kept"
        continue
      fi
      # kvlink made it (this or another environment): delete it once nobody subscribes. The subscription
      # delete is asynchronous: wait until the topic lists none.
      remaining=unknown
      for _ in $(seq 1 12); do
        remaining="$(az rest --method get --url "$topic_id/eventSubscriptions?api-version=$api" \
          --query "length(value)" --output tsv 2>/dev/null || echo unknown)"
        [[ "$remaining" == 0 ]] && break
        sleep 5
      done
      if [[ "$remaining" == 0 ]]; then
        if az rest --method delete --url "$topic_id?api-version=$api" --output none; then
          removed+=("$vault: system topic $topic")
        else
          leftovers+=("$vault: system topic $topic")
        fi
      else
        echo "  system topic $topic kept: ${remaining} other subscription(s) still use it"
      fi
    done <<<"$topics"
  elif ! grep -q MissingSubscriptionRegistration "$errors"; then
    leftovers+=("$vault: cannot list the system topics of subscription $sub to remove event subscription $name")
  fi

  if az rest --method delete --url "$vault_id/providers/Microsoft.Insights/diagnosticSettings/$name?api-version=2021-05-01-preview" --output none; then
    removed+=("$vault: diagnostic setting $name")
  else
    leftovers+=("$vault: diagnostic setting $name")
  fi

  if ! rbac="$(az resource show --ids "$vault_id" --query properties.enableRbacAuthorization --output tsv)"; then
    leftovers+=("$vault: cannot read the vault to remove kvlink's access")
    continue
  fi
  if [[ "$(echo "$rbac" | lower)" == "true" ]]; then
    # Only the assignment kvlink made, never an equivalent grant someone made before.
    if ! assignments="$(az role assignment list --assignee "$principal_id" --role "$key_vault_reader" --scope "$vault_id" \
      --query "[].[id, scope, description]" --output tsv)"; then
      leftovers+=("$vault: Key Vault Reader assignment of $principal_id")
      continue
    fi
    while IFS=$'\t' read -r assignment_id assignment_scope description; do
      [[ -n "$assignment_id" && "$(echo "$assignment_scope" | lower)" == "$(echo "$vault_id" | lower)" ]] || continue
      if [[ "$description" != "kvlink $token" ]]; then
        echo "  Key Vault Reader assignment ${assignment_id##*/} was not made by kvlink: kept"
      elif az role assignment delete --ids "$assignment_id" --output none; then
        removed+=("$vault: Key Vault Reader assignment of $principal_id")
      else
        leftovers+=("$vault: Key Vault Reader assignment ${assignment_id##*/} of $principal_id")
      fi
    done <<<"$assignments"
  else
    if az keyvault delete-policy --subscription "$sub" --resource-group "$rg" --name "$vault" \
      --object-id "$principal_id" --output none; then
      removed+=("$vault: access policy of $principal_id")
    else
      leftovers+=("$vault: access policy of $principal_id")
    fi
  fi
done

if [[ "${#removed[@]}" -gt 0 ]]; then
  echo "predown: removed this environment's kvlink from the vaults:"
  printf '  - %s\n' "${removed[@]}"
fi
if [[ "${#leftovers[@]}" -gt 0 ]]; then
  echo "predown: could not remove everything; clean these up by hand:" >&2
  printf '  - %s\n' "${leftovers[@]}" >&2
fi
exit 0
