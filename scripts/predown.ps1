# azd predown hook (Windows / PowerShell 7): remove kvlink's footprint from the watched vaults before
# `azd down` deletes kvlink's resource group. Same steps as scripts/predown.sh; see that file for the why.
# Best effort: what cannot be removed is listed at the end; `azd down` then goes on.
$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest
# Failures are collected, not thrown: native commands report through $LASTEXITCODE here.
$PSNativeCommandUseErrorActionPreference = $false

$e = @{}
foreach ($line in (azd env get-values)) {
    if ($line -match '^([A-Za-z_][A-Za-z0-9_]*)="(.*)"$') {
        $e[$Matches[1]] = $Matches[2] -replace '\\"', '"'
    }
}
$principalId = $e['AZURE_FUNCTION_IDENTITY_PRINCIPAL_ID']
if (-not $e['KVLINK_VAULT_IDS'] -or -not $principalId) {
    Write-Host 'predown: nothing was applied to any vault (no KVLINK_VAULT_IDS or no provisioned identity).'
    exit 0
}

$keyVaultReader = '21090545-7ca7-4776-b22c-e363652d74d2'
$leftovers = [System.Collections.Generic.List[string]]::new()

foreach ($raw in ($e['KVLINK_VAULT_IDS'] -split ',')) {
    $vaultId = $raw.Trim()
    if (-not $vaultId) { continue }
    $parts = $vaultId -split '/'
    if ($parts.Count -ne 9) { $leftovers.Add("${vaultId}: not a vault resource id"); continue }
    $sub, $rg, $vault = $parts[2], $parts[4], $parts[8]
    $topic = "egst-kvlink-$($vault.ToLowerInvariant())"
    Write-Host "Removing kvlink from vault $vault..."

    # Generic ARM calls (az rest): a DELETE of something already gone succeeds.
    $topicId = "/subscriptions/$sub/resourceGroups/$rg/providers/Microsoft.EventGrid/systemTopics/$topic"
    az rest --method get --url "${topicId}?api-version=2022-06-15" --output none 2>$null
    if ($LASTEXITCODE -eq 0) {
        az rest --method delete --url "$topicId/eventSubscriptions/kvlink-on-secret-event?api-version=2022-06-15" --output none
        if ($LASTEXITCODE -ne 0) { $leftovers.Add("${vault}: event subscription kvlink-on-secret-event on $topic") }
        # The delete is asynchronous: wait until the topic lists no subscription of ours.
        $remaining = 'unknown'
        for ($i = 0; $i -lt 12; $i++) {
            $remaining = az rest --method get --url "$topicId/eventSubscriptions?api-version=2022-06-15" --query 'length(value)' --output tsv 2>$null
            if ($LASTEXITCODE -ne 0 -or -not $remaining) { $remaining = 'unknown' }
            if ($remaining -eq '0') { break }
            Start-Sleep -Seconds 5
        }
        if ($remaining -eq '0') {
            az rest --method delete --url "${topicId}?api-version=2022-06-15" --output none
            if ($LASTEXITCODE -ne 0) { $leftovers.Add("${vault}: system topic $topic") }
        }
        else {
            $leftovers.Add("${vault}: system topic $topic kept ($remaining other subscription(s) on it)")
        }
    }

    az rest --method delete --url "$vaultId/providers/Microsoft.Insights/diagnosticSettings/kvlink?api-version=2021-05-01-preview" --output none
    if ($LASTEXITCODE -ne 0) { $leftovers.Add("${vault}: diagnostic setting kvlink") }

    $rbac = az resource show --ids $vaultId --query properties.enableRbacAuthorization --output tsv 2>$null
    if ($LASTEXITCODE -ne 0) { $leftovers.Add("${vault}: cannot read the vault to remove kvlink's access"); continue }
    if ("$rbac".ToLowerInvariant() -eq 'true') {
        az role assignment delete --assignee $principalId --role $keyVaultReader --scope $vaultId --output none
        if ($LASTEXITCODE -ne 0) { $leftovers.Add("${vault}: Key Vault Reader assignment of $principalId") }
    }
    else {
        az keyvault delete-policy --subscription $sub --resource-group $rg --name $vault --object-id $principalId --output none
        if ($LASTEXITCODE -ne 0) { $leftovers.Add("${vault}: access policy of $principalId") }
    }
}

if ($leftovers.Count -gt 0) {
    Write-Warning 'predown: could not remove everything; clean these up by hand:'
    $leftovers | ForEach-Object { Write-Warning "  - $_" }
}
exit 0
