# azd postdeploy hook (Windows / PowerShell 7): apply kvlink's footprint on the watched vaults
# (infra/vaults.bicep). Same steps as scripts/postdeploy.sh; see that file for the why.
# Idempotent: every step is an ARM PUT of a named resource.
$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest
$PSNativeCommandUseErrorActionPreference = $true
Set-Location (Join-Path $PSScriptRoot '..')

# The azd environment: values set with `azd env set` and main.bicep's outputs.
$envValues = @{}
foreach ($line in (azd env get-values)) {
    if ($line -match '^([A-Za-z_][A-Za-z0-9_]*)="(.*)"$') {
        $envValues[$Matches[1]] = $Matches[2] -replace '\\"', '"'
    }
}
$required = 'AZURE_ENV_NAME', 'AZURE_LOCATION', 'AZURE_SUBSCRIPTION_ID', 'AZURE_RESOURCE_GROUP', 'AZURE_FUNCTION_APP_NAME',
    'AZURE_FUNCTION_APP_ID', 'AZURE_FUNCTION_IDENTITY_PRINCIPAL_ID', 'AZURE_EVENTGRID_IDENTITY_ID', 'AZURE_STORAGE_ACCOUNT_ID',
    'EVENTGRID_DEADLETTER_CONTAINER', 'EVENTHUB_NAME', 'EVENTHUB_DIAGNOSTICS_RULE_ID', 'KVLINK_VAULT_IDS'
foreach ($name in $required) {
    if (-not $envValues[$name]) {
        throw "postdeploy: $name is not set in the azd environment; run 'azd provision' first."
    }
}
$e = $envValues

# 1. Event Grid validates an AzureFunction endpoint against the app's function list: wait for on_secret_event.
Write-Host "Waiting for $($e.AZURE_FUNCTION_APP_NAME) to list on_secret_event..."
$listed = $false
for ($attempt = 1; $attempt -le 20 -and -not $listed; $attempt++) {
    $PSNativeCommandUseErrorActionPreference = $false
    az functionapp function show --resource-group $e.AZURE_RESOURCE_GROUP --name $e.AZURE_FUNCTION_APP_NAME `
        --function-name on_secret_event --query name --output tsv 2>$null | Out-Null
    $listed = $LASTEXITCODE -eq 0
    $PSNativeCommandUseErrorActionPreference = $true
    if (-not $listed) { Start-Sleep -Seconds 15 }
}
if (-not $listed) {
    throw "postdeploy: on_secret_event is not listed on $($e.AZURE_FUNCTION_APP_NAME) after 5 minutes; check the deployment, then run 'azd hooks run postdeploy'."
}

# 2. Each vault: its permission model decides access policy vs Key Vault Reader; it must be in kvlink's
#    region (a diagnostic setting streams only to an Event Hub in the vault's region).
function Get-Region([string]$value) { ($value -replace '\s', '').ToLowerInvariant() }
$vaults = @()
foreach ($raw in ($e.KVLINK_VAULT_IDS -split ',')) {
    $vaultId = $raw.Trim()
    if (-not $vaultId) { continue }
    $parts = $vaultId -split '/'
    if ($parts.Count -ne 9 -or "$($parts[6])/$($parts[7])" -ne 'Microsoft.KeyVault/vaults') {
        throw "postdeploy: '$vaultId' in KVLINK_VAULT_IDS is not a vault resource id (/subscriptions/<id>/resourceGroups/<rg>/providers/Microsoft.KeyVault/vaults/<name>)."
    }
    $vaultName = $parts[8]
    $vault = az resource show --ids $vaultId --query '{location: location, rbac: properties.enableRbacAuthorization}' --output json | ConvertFrom-Json
    if ((Get-Region $vault.location) -ne (Get-Region $e.AZURE_LOCATION)) {
        throw "postdeploy: vault $vaultName is in $($vault.location) but kvlink's Event Hub is in $($e.AZURE_LOCATION); diagnostic settings stream only within a region. Deploy kvlink in $($vault.location), or watch only vaults in $($e.AZURE_LOCATION)."
    }
    $rbac = $vault.rbac -eq $true
    # Event Grid allows one system topic per source: a topic someone else made for this vault blocks ours.
    $topicName = "egst-kvlink-$($vaultName.ToLowerInvariant())"
    $topics = az eventgrid system-topic list --subscription $parts[2] --query '[].{name: name, source: source}' --output json | ConvertFrom-Json
    foreach ($topic in $topics) {
        if ($topic.source -ieq $vaultId -and $topic.name -ne $topicName) {
            throw "postdeploy: vault $vaultName already has the Event Grid system topic '$($topic.name)' (only one is allowed per vault). Remove it, or move its subscriptions to '$topicName' after this deployment creates it."
        }
    }
    Write-Host ("  {0}: {1}" -f $vaultName, $(if ($rbac) { 'RBAC vault -> Key Vault Reader' } else { 'access policies -> list on secrets' }))
    $vaults += @{ id = $vaultId; rbac = $rbac }
}
if ($vaults.Count -eq 0) { throw 'postdeploy: KVLINK_VAULT_IDS names no vault.' }

# 3. One subscription-scope deployment applies everything, in every vault's own resource group.
$parameters = @{
    '$schema'      = 'https://schema.management.azure.com/schemas/2019-04-01/deploymentParameters.json#'
    contentVersion = '1.0.0.0'
    parameters     = @{
        environmentName             = @{ value = $e.AZURE_ENV_NAME }
        vaults                      = @{ value = $vaults }
        functionAppId               = @{ value = $e.AZURE_FUNCTION_APP_ID }
        functionPrincipalId         = @{ value = $e.AZURE_FUNCTION_IDENTITY_PRINCIPAL_ID }
        eventGridIdentityId         = @{ value = $e.AZURE_EVENTGRID_IDENTITY_ID }
        eventHubAuthorizationRuleId = @{ value = $e.EVENTHUB_DIAGNOSTICS_RULE_ID }
        eventHubName                = @{ value = $e.EVENTHUB_NAME }
        deadLetterStorageAccountId  = @{ value = $e.AZURE_STORAGE_ACCOUNT_ID }
        deadLetterContainerName     = @{ value = $e.EVENTGRID_DEADLETTER_CONTAINER }
    }
}
$parametersFile = New-TemporaryFile
try {
    $parameters | ConvertTo-Json -Depth 10 | Set-Content -Path $parametersFile -Encoding utf8
    $envName = $e.AZURE_ENV_NAME.Substring(0, [Math]::Min(50, $e.AZURE_ENV_NAME.Length))
    Write-Host "Applying kvlink's access, diagnostic settings and Event Grid subscriptions to the vaults..."
    az deployment sub create `
        --subscription $e.AZURE_SUBSCRIPTION_ID `
        --name "kvlink-vaults-$envName" `
        --location $e.AZURE_LOCATION `
        --template-file infra/vaults.bicep `
        --parameters "@$parametersFile" `
        --output none
}
finally {
    Remove-Item -Path $parametersFile -ErrorAction SilentlyContinue
}
Write-Host "Done. Secret events now reach on_secret_event; audit logs reach $($e.EVENTHUB_NAME)."

# 4. What azd cannot do: Azure DevOps users are not Azure resources, so someone lets the identity in.
#    The identity's name is its display name in Entra ID, what the "Add users" dialog searches for.
$identity = if ($e['AZURE_FUNCTION_IDENTITY_NAME']) { $e['AZURE_FUNCTION_IDENTITY_NAME'] } else { "the id-... managed identity in $($e.AZURE_RESOURCE_GROUP) (run 'azd provision' to record its name)" }
$clientId = if ($e['AZURE_FUNCTION_IDENTITY_CLIENT_ID']) { $e['AZURE_FUNCTION_IDENTITY_CLIENT_ID'] } else { 'unknown' }
$orgs = if ($e['KVLINK_DEVOPS_ORGS']) { $e['KVLINK_DEVOPS_ORGS'] } else { 'unset' }
$uri = if ($e['SERVICE_API_URI']) { $e['SERVICE_API_URI'] } else { '<SERVICE_API_URI>' }
$checkSettings = "`$env:KVLINK_DEVOPS_ORGS='$($e['KVLINK_DEVOPS_ORGS'])'; `$env:KVLINK_ALLOWED_VAULTS='$($e['KVLINK_ALLOWED_VAULTS'])';"
if ($e['KVLINK_DEVOPS_PROJECTS']) { $checkSettings += " `$env:KVLINK_DEVOPS_PROJECTS='$($e['KVLINK_DEVOPS_PROJECTS'])';" }
Write-Host ''
Write-Host "Azure DevOps identity: $identity (client id $clientId)"
Write-Host "Manual step (README 'The one manual step'): in each organization of KVLINK_DEVOPS_ORGS ($orgs), Organization settings > Users > Add users: that identity, access level Basic, added to every project it should audit (Project Readers); then in each project Pipelines > Library > Security: Administrator; and at least Reader on the service connections its groups use."
Write-Host "Check: curl.exe -fsS '$uri/api/health'; $checkSettings python -m kvlink_core audit --dry-run --json  # with Azurite running; `"unreached`": [] means Azure DevOps answers (README 'Verify the deployment')"
