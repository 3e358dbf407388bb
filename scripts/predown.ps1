# azd predown hook (Windows / PowerShell 7): remove this environment's footprint from the watched vaults
# before `azd down` deletes kvlink's resource group. Same steps and messages as scripts/predown.sh; see that
# file for the why. Only what carries this environment's token (kvlink-$token) is removed; a system topic
# only if kvlink made it (tag kvlink) and nobody else subscribes; a Key Vault Reader grant only if kvlink
# made it (description "kvlink $token"). Best effort: says what it removed, lists what it could not.
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
$token = $e['AZURE_RESOURCE_TOKEN']
# Every vault postdeploy ever touched (KVLINK_APPLIED_VAULT_IDS), and the current list.
$ids = @((("$($e['KVLINK_APPLIED_VAULT_IDS']),$($e['KVLINK_VAULT_IDS'])") -split ',') | ForEach-Object { $_.Trim() } | Where-Object { $_ })
if ($ids.Count -eq 0 -or -not $principalId) {
    Write-Host 'predown: nothing was applied to any vault (no KVLINK_APPLIED_VAULT_IDS or KVLINK_VAULT_IDS, or no provisioned identity).'
    exit 0
}
if (-not $token) {
    Write-Error "predown: AZURE_RESOURCE_TOKEN is not set, so this environment's names on the vaults are unknown; run 'azd provision' (it records the token), then 'azd down' again. Nothing was removed from the vaults." -ErrorAction Continue
    exit 1
}

$keyVaultReader = '21090545-7ca7-4776-b22c-e363652d74d2'
$api = '2022-06-15'
$name = "kvlink-$token"
$removed = [System.Collections.Generic.List[string]]::new()
$leftovers = [System.Collections.Generic.List[string]]::new()
$seen = @{}

foreach ($vaultId in $ids) {
    if ($seen.ContainsKey($vaultId.ToLowerInvariant())) { continue }
    $seen[$vaultId.ToLowerInvariant()] = $true
    $parts = $vaultId -split '/'
    if ($parts.Count -ne 9) { $leftovers.Add("${vaultId}: not a vault resource id"); continue }
    $sub, $rg, $vault = $parts[2], $parts[4], $parts[8]
    Write-Host "Removing this environment's kvlink ($name) from vault $vault..."

    # The vault's system topic, wherever it is in the vault's subscription; a subscription that never
    # registered Event Grid (MissingSubscriptionRegistration) has none.
    $listing = az eventgrid system-topic list --subscription $sub --query '[].{id: id, source: source, kvlink: tags.kvlink}' --output json 2>&1
    if ($LASTEXITCODE -eq 0) {
        # 2>&1 also caught az's warnings: keep only its output.
        $json = ($listing | Where-Object { $_ -isnot [System.Management.Automation.ErrorRecord] }) | Out-String
        foreach ($topic in ($json | ConvertFrom-Json)) {
            if ($topic.source -ine $vaultId) { continue }
            $topicName = ($topic.id -split '/')[-1]
            az rest --method delete --url "$($topic.id)/eventSubscriptions/${name}?api-version=$api" --output none
            if ($LASTEXITCODE -ne 0) { $leftovers.Add("${vault}: event subscription $name on system topic $topicName"); continue }
            $removed.Add("${vault}: event subscription $name on system topic $topicName")
            if (-not $topic.kvlink) { Write-Host "  system topic $topicName was not made by kvlink: kept"; continue }
            # kvlink made it: delete it once nobody subscribes (the subscription delete is asynchronous).
            $remaining = 'unknown'
            for ($i = 0; $i -lt 12; $i++) {
                $remaining = az rest --method get --url "$($topic.id)/eventSubscriptions?api-version=$api" --query 'length(value)' --output tsv 2>$null
                if ($LASTEXITCODE -ne 0 -or -not $remaining) { $remaining = 'unknown' }
                if ($remaining -eq '0') { break }
                Start-Sleep -Seconds 5
            }
            if ($remaining -eq '0') {
                az rest --method delete --url "$($topic.id)?api-version=$api" --output none
                if ($LASTEXITCODE -eq 0) { $removed.Add("${vault}: system topic $topicName") } else { $leftovers.Add("${vault}: system topic $topicName") }
            }
            else {
                Write-Host "  system topic $topicName kept: $remaining other subscription(s) still use it"
            }
        }
    }
    elseif ("$listing" -notmatch 'MissingSubscriptionRegistration') {
        $leftovers.Add("${vault}: cannot list the system topics of subscription $sub to remove event subscription $name")
    }

    az rest --method delete --url "$vaultId/providers/Microsoft.Insights/diagnosticSettings/${name}?api-version=2021-05-01-preview" --output none
    if ($LASTEXITCODE -eq 0) { $removed.Add("${vault}: diagnostic setting $name") } else { $leftovers.Add("${vault}: diagnostic setting $name") }

    $rbac = az resource show --ids $vaultId --query properties.enableRbacAuthorization --output tsv
    if ($LASTEXITCODE -ne 0) { $leftovers.Add("${vault}: cannot read the vault to remove kvlink's access"); continue }
    if ("$rbac".ToLowerInvariant() -eq 'true') {
        # Only the assignment kvlink made, never an equivalent grant someone made before.
        $assignments = az role assignment list --assignee $principalId --role $keyVaultReader --scope $vaultId `
            --query '[].{id: id, scope: scope, description: description}' --output json
        if ($LASTEXITCODE -ne 0) { $leftovers.Add("${vault}: Key Vault Reader assignment of $principalId"); continue }
        foreach ($assignment in (($assignments | Out-String) | ConvertFrom-Json)) {
            if ($assignment.scope -ine $vaultId) { continue }
            $assignmentName = ($assignment.id -split '/')[-1]
            if ($assignment.description -ne "kvlink $token") {
                Write-Host "  Key Vault Reader assignment $assignmentName was not made by kvlink: kept"
                continue
            }
            az role assignment delete --ids $assignment.id --output none
            if ($LASTEXITCODE -eq 0) { $removed.Add("${vault}: Key Vault Reader assignment of $principalId") }
            else { $leftovers.Add("${vault}: Key Vault Reader assignment $assignmentName of $principalId") }
        }
    }
    else {
        az keyvault delete-policy --subscription $sub --resource-group $rg --name $vault --object-id $principalId --output none
        if ($LASTEXITCODE -eq 0) { $removed.Add("${vault}: access policy of $principalId") } else { $leftovers.Add("${vault}: access policy of $principalId") }
    }
}

if ($removed.Count -gt 0) {
    Write-Host "predown: removed this environment's kvlink from the vaults:"
    $removed | ForEach-Object { Write-Host "  - $_" }
}
if ($leftovers.Count -gt 0) {
    Write-Warning 'predown: could not remove everything; clean these up by hand:'
    $leftovers | ForEach-Object { Write-Warning "  - $_" }
}
exit 0
