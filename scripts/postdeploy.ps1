# azd postdeploy hook (Windows / PowerShell 7): apply kvlink's footprint on the watched vaults
# (infra/vaults.bicep). Same steps, checks and messages as scripts/postdeploy.sh; see that file for the why.
# Everything is checked before anything changes; idempotent: every step is an ARM PUT of a named resource.
$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest
$PSNativeCommandUseErrorActionPreference = $true
Set-Location (Join-Path $PSScriptRoot '..')

# The azd environment: values set with `azd env set` and main.bicep's outputs (KVLINK_VAULT_IDS is one,
# so a value typed at azd's prompt for vaultIds arrives here too).
$envValues = @{}
foreach ($line in (azd env get-values)) {
    if ($line -match '^([A-Za-z_][A-Za-z0-9_]*)="(.*)"$') {
        $envValues[$Matches[1]] = $Matches[2] -replace '\\"', '"'
    }
}
$required = 'AZURE_ENV_NAME', 'AZURE_LOCATION', 'AZURE_SUBSCRIPTION_ID', 'AZURE_RESOURCE_GROUP', 'AZURE_RESOURCE_TOKEN',
    'AZURE_FUNCTION_APP_NAME', 'AZURE_FUNCTION_APP_ID', 'AZURE_FUNCTION_IDENTITY_PRINCIPAL_ID', 'AZURE_EVENTGRID_IDENTITY_ID',
    'AZURE_STORAGE_ACCOUNT_ID', 'EVENTGRID_DEADLETTER_CONTAINER', 'EVENTHUB_NAME', 'EVENTHUB_DIAGNOSTICS_RULE_ID', 'KVLINK_VAULT_IDS',
    'SERVICE_API_URI'
foreach ($name in $required) {
    if (-not $envValues[$name]) {
        throw "postdeploy: $name is not set in the azd environment; run 'azd provision' first (it records main.bicep's outputs)."
    }
}
$e = $envValues
$token = $e.AZURE_RESOURCE_TOKEN
$keyVaultReader = '21090545-7ca7-4776-b22c-e363652d74d2'
function Get-Region([string]$value) { ($value -replace '\s', '').ToLowerInvariant() }
# The vaults' region: the Event Hub's (EVENTHUB_LOCATION; the app's region unless KVLINK_VAULTS_LOCATION moved the hub).
$hubLocation = if ($e['EVENTHUB_LOCATION']) { $e['EVENTHUB_LOCATION'] } else { $e.AZURE_LOCATION }

# 1. Every id must be a vault resource id; nothing is asked of Azure before all of them are.
$vaultIds = @()
foreach ($raw in ($e.KVLINK_VAULT_IDS -split ',')) {
    $vaultId = $raw.Trim()
    if (-not $vaultId) { continue }
    $parts = $vaultId -split '/'
    if ($parts.Count -ne 9 -or "$($parts[6])/$($parts[7])" -ne 'Microsoft.KeyVault/vaults') {
        throw "postdeploy: '$vaultId' in KVLINK_VAULT_IDS is not a vault resource id (/subscriptions/<id>/resourceGroups/<rg>/providers/Microsoft.KeyVault/vaults/<name>). Nothing was changed."
    }
    $vaultIds += $vaultId
}
if ($vaultIds.Count -eq 0) { throw 'postdeploy: KVLINK_VAULT_IDS names no vault. Nothing was changed.' }

# 2. Read each vault (permission model, region); all are read before any is refused: one region per environment.
$rbacOf = @{}
$elsewhere = @()
foreach ($vaultId in $vaultIds) {
    $vaultName = ($vaultId -split '/')[8]
    $vault = az resource show --ids $vaultId --query '{location: location, rbac: properties.enableRbacAuthorization}' --output json | ConvertFrom-Json
    if ((Get-Region $vault.location) -ne (Get-Region $hubLocation)) {
        $elsewhere += "$vaultName ($($vault.location)): $vaultId"
    }
    $rbacOf[$vaultId] = $vault.rbac -eq $true
}
if ($elsewhere.Count -gt 0) {
    $list = ($elsewhere | ForEach-Object { "  - $_" }) -join "`n"
    throw @"
postdeploy: this environment's ($($e.AZURE_ENV_NAME)) Event Hub is in $hubLocation; these vaults are not:
$list
A vault's audit logs stream only to an Event Hub in its own region, and one kvlink reads one hub, so
kvlink watches the vaults of one region per azd environment. Keep only $hubLocation vaults here
(azd env set KVLINK_VAULT_IDS ..., then azd provision), and for each other region:
  azd env new kvlink-<region> && azd env set AZURE_LOCATION <region> && azd env set KVLINK_VAULT_IDS <that region's vault ids> && azd up
(where <region> has no Flex Consumption, keep AZURE_LOCATION a region that has it and set KVLINK_VAULTS_LOCATION <region>)
(docs/deploy.md, 'Several regions and subscriptions'). Nothing was changed.
"@
}

# 3. Resource providers in the app's subscription and every vault's; registering a registered one changes nothing.
$subscriptions = @($e.AZURE_SUBSCRIPTION_ID)
foreach ($vaultId in $vaultIds) {
    $sub = ($vaultId -split '/')[2]
    if ($subscriptions -notcontains $sub) { $subscriptions += $sub }
}
foreach ($sub in $subscriptions) {
    foreach ($namespace in 'Microsoft.EventGrid', 'Microsoft.Insights') {
        Write-Host "Registering $namespace in subscription $sub (no change when it already is)..."
        try {
            az provider register --namespace $namespace --subscription $sub --wait --output none
        }
        catch {
            throw "postdeploy: could not register $namespace in subscription $sub. Someone with Contributor (or */register/action) there runs: az provider register --namespace $namespace --subscription $sub --wait. No vault was changed."
        }
    }
}

# 4. Per vault: reuse its system topic if it has one (one per vault); leave an equivalent Key Vault Reader
#    grant alone (ARM refuses a second one: RoleAssignmentExists).
$vaults = @()
foreach ($vaultId in $vaultIds) {
    $parts = $vaultId -split '/'
    $vaultName = $parts[8]
    $topicName, $topicGroup = '', ''
    $topicNote = "new system topic egst-kvlink-$token-$($vaultName.ToLowerInvariant())"
    $topics = az eventgrid system-topic list --subscription $parts[2] --query '[].{name: name, resourceGroup: resourceGroup, source: source, kvlink: tags.kvlink}' --output json | ConvertFrom-Json
    foreach ($topic in $topics) {
        if ($topic.source -ine $vaultId) { continue }
        if ($topic.kvlink -eq $token) {
            $topicNote = "its system topic $($topic.name) (this environment's)"
        }
        else {
            $topicName, $topicGroup = $topic.name, $topic.resourceGroup
            $topicNote = "its existing system topic $($topic.name) (kept; kvlink adds its subscription kvlink-$token)"
        }
    }
    $grant = $true
    $access = 'access policies -> list on secrets'
    if ($rbacOf[$vaultId]) {
        $access = 'RBAC vault -> Key Vault Reader'
        $grants = az role assignment list --assignee $e.AZURE_FUNCTION_IDENTITY_PRINCIPAL_ID --role $keyVaultReader `
            --scope $vaultId --query '[].{name: name, scope: scope, description: description}' --output json | ConvertFrom-Json
        foreach ($existing in $grants) {
            if ($existing.scope -ieq $vaultId -and $existing.description -ne "kvlink $token") {
                $grant = $false
                $access = "RBAC vault -> Key Vault Reader already granted (assignment $($existing.name); kept, and left in place by azd down)"
            }
        }
    }
    Write-Host "  ${vaultName}: $access; $topicNote"
    $vaults += @{ id = $vaultId; rbac = $rbacOf[$vaultId]; grantReader = $grant; topicName = $topicName; topicResourceGroup = $topicGroup }
}

# 5. Event Grid validates an AzureFunction endpoint with the app's eventgrid_extension system key, which the
#    host makes on its first start: wake the app (GET /api/health), then check until on_secret_event and the key
#    are listed (postdeploy.sh says where this comes from). At most 30 checks, 15 s apart, each wake at most 20 s;
#    the key's value is never read into the script (the query answers true or false).
$checks, $interval = 30, 15
$health = "$($e.SERVICE_API_URI.TrimEnd('/'))/api/health"
$appName = $e.AZURE_FUNCTION_APP_NAME
Write-Host "Waking $appName ($health) and waiting until it lists on_secret_event and its eventgrid_extension key..."
$functionListed, $keyListed = 'no', 'no'
for ($attempt = 1; $attempt -le $checks; $attempt++) {
    # The request is what starts an instance; its answer (or a time-out while the host starts) is not needed.
    try { Invoke-WebRequest -Uri $health -TimeoutSec 20 -UseBasicParsing | Out-Null } catch { }
    $PSNativeCommandUseErrorActionPreference = $false
    if ($functionListed -eq 'no') {
        az functionapp function show --resource-group $e.AZURE_RESOURCE_GROUP --name $appName `
            --function-name on_secret_event --query name --output tsv 2>$null | Out-Null
        if ($LASTEXITCODE -eq 0) { $functionListed = 'yes' }
    }
    if ($functionListed -eq 'yes' -and $keyListed -eq 'no') {
        $hasKey = az functionapp keys list --resource-group $e.AZURE_RESOURCE_GROUP --name $appName `
            --query 'systemKeys.eventgrid_extension != null' --output tsv 2>$null
        if ($LASTEXITCODE -eq 0 -and "$hasKey".Trim() -eq 'true') { $keyListed = 'yes' }
    }
    $PSNativeCommandUseErrorActionPreference = $true
    if ($functionListed -eq 'yes' -and $keyListed -eq 'yes') {
        Write-Host "  $appName is ready (check $attempt of $checks)."
        break
    }
    Write-Host "  not yet (check $attempt of $checks): on_secret_event listed: $functionListed, eventgrid_extension key listed: $keyListed"
    if ($attempt -eq $checks) {
        $missing = if ($functionListed -eq 'no') { 'the function on_secret_event' } else { 'the system key eventgrid_extension' }
        throw "postdeploy: $appName still does not list $missing after $checks checks $interval s apart, so Event Grid could not validate the subscription. Check that the deployment succeeded and the app starts ($health should answer, Application Insights shows the host's start-up errors), then run 'azd hooks run postdeploy'. No vault was changed."
    }
    Start-Sleep -Seconds $interval
}

# 6. Remember every vault this environment ever touched before touching one, for `azd down`.
$applied = @(($e['KVLINK_APPLIED_VAULT_IDS'] -split ',') | Where-Object { $_ })
foreach ($vaultId in $vaultIds) {
    if (-not ($applied | Where-Object { $_ -ieq $vaultId })) { $applied += $vaultId }
}
azd env set KVLINK_APPLIED_VAULT_IDS ($applied -join ',')

# 7. One subscription-scope deployment applies everything, in every vault's own resource group.
$parameters = @{
    '$schema'      = 'https://schema.management.azure.com/schemas/2019-04-01/deploymentParameters.json#'
    contentVersion = '1.0.0.0'
    parameters     = @{
        environmentName             = @{ value = $e.AZURE_ENV_NAME }
        resourceToken               = @{ value = $token }
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
    Write-Host "Applying kvlink's access, diagnostic settings and Event Grid subscriptions to the vaults..."
    try {
        az deployment sub create `
            --subscription $e.AZURE_SUBSCRIPTION_ID `
            --name "kvlink-vaults-$token" `
            --location $e.AZURE_LOCATION `
            --template-file infra/vaults.bicep `
            --parameters "@$parametersFile" `
            --output none
    }
    catch {
        throw "postdeploy: the deployment kvlink-vaults-$token failed (its error is above; docs/troubleshooting.md lists the usual ones). What it applied is named kvlink-${token}: run 'azd hooks run postdeploy' again once fixed (it changes nothing twice), or 'azd down' to remove it."
    }
}
finally {
    Remove-Item -Path $parametersFile -ErrorAction SilentlyContinue
}
Write-Host "Done. Secret events now reach on_secret_event; audit logs reach $($e.EVENTHUB_NAME) (diagnostic setting and event subscription kvlink-$token)."

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
Write-Host "Manual step (docs/deploy.md, 'The one manual step'): in each organization of KVLINK_DEVOPS_ORGS ($orgs), Organization settings > Users > Add users: that identity, access level Basic, added to every project it should audit (Project Readers); then in each project Pipelines > Library > Security: Administrator; and at least Reader on the service connections its groups use."
Write-Host "Check: curl.exe -fsS '$uri/api/health'; $checkSettings python -m kvlink_core audit --dry-run --json  # with Azurite running; `"unreached`": [] means Azure DevOps answers (docs/deploy.md, 'Verify the deployment')"
Write-Host "End-to-end proof (docs/deploy.md, 'Smoke test'), once a group is linked: python -m kvlink_core smoke --vault <vault> --group <org>/<project>/<group id>  # with your own az login: a canary secret must reach the group and leave it"
