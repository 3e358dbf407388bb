// kvlink's own resources, provisioned by `azd provision` (and `azd up`) into one resource group that
// `azd down` deletes. Subscription scope, as Microsoft's azd Functions templates do, so the template
// creates the resource group itself and everything azd removes is in that group.
//
// What is NOT here, on purpose: kvlink's footprint on the watched vaults (access policy or Key Vault
// Reader, the AuditEvent diagnostic setting, the Event Grid system topic and its subscription). Those
// live in other teams' resource groups; infra/vaults.bicep applies them from the postdeploy hook and
// scripts/predown.* removes them. If they were deployed from here, `azd down` would delete the vaults'
// resource groups: azd deletes every resource group the deployment touched (azd
// resourceGroupsFromDeployment / DeleteSubscriptionDeployment; Azure/azure-dev#2916).
//
// Facts relied on (sources):
// - Flex Consumption site shape (functionAppConfig: blob deployment storage with a user-assigned
//   identity, runtime, scaleAndConcurrency), FC1 plan: Azure-Samples/functions-quickstart-python-http-azd
//   infra/core/host/functions-flexconsumption.bicep; https://learn.microsoft.com/azure/azure-functions/flex-consumption-plan
// - Identity-based AzureWebJobsStorage (__credential, __clientId, __blobServiceUri/__queueServiceUri/
//   __tableServiceUri) and trigger connections (KVLINK_EVENTHUB__fullyQualifiedNamespace):
//   https://learn.microsoft.com/azure/azure-functions/functions-reference#connecting-to-host-storage-with-an-identity
// - APPLICATIONINSIGHTS_AUTHENTICATION_STRING 'ClientId=<id>;Authorization=AAD' + Monitoring Metrics
//   Publisher when App Insights has local auth disabled: Azure-Samples/functions-quickstart-python-azd-eventgrid-blob
// - Built-in role ids: https://learn.microsoft.com/azure/role-based-access-control/built-in-roles
// - Key Vault Reader lists secret metadata and cannot read values; access policy "list" suffices to
//   list secrets: https://learn.microsoft.com/azure/key-vault/general/rbac-guide
// - Diagnostic settings: an Event Hub destination must be in the vault's region and is reached with a
//   namespace rule holding Manage, Send and Listen (so the namespace keeps local auth):
//   https://learn.microsoft.com/azure/azure-monitor/essentials/diagnostic-settings ; MicrosoftDocs/azure-docs#119932
// - System topics: one per source, in the source's subscription and region:
//   https://learn.microsoft.com/azure/event-grid/system-topics
// - AzureFunction event subscription endpoint ({site id}/functions/{name}) and its validation need the
//   deployed function: https://learn.microsoft.com/azure/event-grid/handler-functions
// - Dead-lettering with a topic's user-assigned identity (Storage Blob Data Contributor):
//   https://learn.microsoft.com/azure/event-grid/managed-service-identity
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the azd environment; part of every resource name and the azd-env-name tag.')
param environmentName string

// Flex Consumption runs in these regions only; a region outside them would fail late, after the resource
// group and storage exist. The list, and the @allowed way of restricting azd's location prompt, are those of
// Microsoft's azd sample Azure-Samples/functions-quickstart-python-http-azd, infra/main.bicep at commit
// 7ed4638bc03858a3b2657f0dbbdd1db0af103ebb (2025-11-24; the list as it has stood since fe29236, 2025-05-06).
// `az functionapp list-flexconsumption-locations` gives today's list. vaultsLocation stays free: the vaults
// may be anywhere, only the app needs Flex Consumption.
@minLength(1)
@allowed([
  'australiaeast'
  'australiasoutheast'
  'brazilsouth'
  'canadacentral'
  'centralindia'
  'centralus'
  'eastasia'
  'eastus'
  'eastus2'
  'eastus2euap'
  'francecentral'
  'germanywestcentral'
  'italynorth'
  'japaneast'
  'koreacentral'
  'northcentralus'
  'northeurope'
  'norwayeast'
  'southafricanorth'
  'southcentralus'
  'southeastasia'
  'southindia'
  'spaincentral'
  'swedencentral'
  'uaenorth'
  'uksouth'
  'ukwest'
  'westcentralus'
  'westeurope'
  'westus'
  'westus2'
  'westus3'
])
@description('Region for every kvlink resource. The watched vaults must be in this region too (diagnostic settings stream only to an Event Hub in the vault\'s region), unless vaultsLocation moves the Event Hub: one azd environment per vault region (docs/deploy.md, "Several regions and subscriptions").')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Region of the Event Hub the vaults stream their audit logs to, when it differs from location: the watched vaults\' region, when that region has no Flex Consumption. Empty: location.')
param vaultsLocation string = ''

@description('Comma-separated resource ids of the vaults kvlink watches (any resource group or subscription of this tenant).')
param vaultIds string

@description('KVLINK_DEVOPS_ORGS: comma-separated Azure DevOps organizations kvlink may touch.')
param devopsOrgs string

@description('KVLINK_DEVOPS_PROJECTS: comma-separated org/project the audit scans; every project when empty.')
param devopsProjects string = ''

@allowed([
  'apply'
  'report'
])
@description('KVLINK_MODE: apply, or report (plan and log, write nothing).')
param mode string = 'apply'

@allowed([
  'prune'
  'ignore'
])
@description('KVLINK_UNLINKED_GROUPS: what the audit does to discovered groups nobody linked.')
param unlinkedGroups string = 'prune'

@description('KVLINK_MAX_REMOVAL_FRACTION: mass-removal guard, a number from 0 to 1.')
param maxRemovalFraction string = '0.5'

@description('KVLINK_AUDIT_SCHEDULE: NCRONTAB schedule of the nightly audit.')
param auditSchedule string = '0 0 2 * * *'

@minValue(0)
@maxValue(3650)
param expiryWarningDays int = 30

@minValue(1)
@maxValue(256)
param vaultConcurrency int = 32

@minValue(1)
@maxValue(64)
param devopsConcurrency int = 4

@allowed([
  'DEBUG'
  'INFO'
  'WARNING'
  'ERROR'
  'CRITICAL'
])
@description('KVLINK_SDK_LOG_LEVEL: level of the Azure SDK, httpx, urllib3 and aiohttp loggers in the app. WARNING keeps their per-request INFO lines out of Application Insights.')
param sdkLogLevel string = 'WARNING'

@description('KVLINK_SYNC_ASYNC_GROUPS: a POST /api/sync over more groups than this answers 202 and runs on the kvlink-sync queue.')
@minValue(0)
@maxValue(100000)
param syncAsyncGroups int = 20

@description('KVLINK_DEVOPS_URL: Azure DevOps base URL.')
param devopsUrl string = 'https://dev.azure.com'

@description('KVLINK_VAULT_URL: vault URL template; {vault} is replaced by the vault name.')
param vaultUrl string = 'https://{vault}${environment().suffixes.keyvaultDns}'

@description('Create an Event Grid custom topic for kvlink\'s notifications and set KVLINK_NOTIFY_TOPIC_ENDPOINT.')
param enableNotifications bool = false

@description('E-mail address for the audit alert (drift, open errors, no audit for 26 h). Empty: the alert still fires in Azure Monitor, but no action group and no e-mail.')
param alertEmail string = ''

@description('Optional name overrides; empty means abbreviation + resource token.')
param resourceGroupName string = ''
param functionAppName string = ''
param storageAccountName string = ''

var abbrs = loadJsonContent('abbreviations.json')
var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}
// Must equal the service name in azure.yaml: that is how `azd deploy` finds the app.
var serviceName = 'api'

var appName = !empty(functionAppName) ? functionAppName : '${abbrs.webSitesFunctions}${resourceToken}'
var deploymentContainerName = 'app-package-${take(appName, 32)}-${take(resourceToken, 7)}'
var deadLetterContainerName = 'eventgrid-deadletter'
var auditHubName = '${abbrs.eventHubNamespacesEventHubs}kvlink-audit'
// A diagnostic setting streams only to an Event Hub in the vault's region; the app may read the hub from
// another region, so the hub follows the vaults and the app can stay where Flex Consumption runs.
var eventHubLocation = empty(vaultsLocation) ? location : vaultsLocation

// KVLINK_ALLOWED_VAULTS: the vault names, taken from the resource ids (the last segment).
var vaultIdList = filter(split(vaultIds, ','), id => !empty(trim(id)))
var vaultNames = [for id in vaultIdList: toLower(last(split(trim(id), '/')))]

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: !empty(resourceGroupName) ? resourceGroupName : '${abbrs.resourcesResourceGroups}${environmentName}'
  location: location
  tags: tags
}

// The identity kvlink runs as: storage, the Event Hub, the vaults (list only), Azure DevOps, notifications.
module identity 'core/identity/user-assigned-identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: '${abbrs.managedIdentityUserAssignedIdentities}${resourceToken}'
    location: location
    tags: tags
  }
}

// A separate identity for Event Grid: it may only write dead letters, and cannot act as kvlink.
module eventGridIdentity 'core/identity/user-assigned-identity.bicep' = {
  name: 'event-grid-identity'
  scope: rg
  params: {
    name: '${abbrs.managedIdentityUserAssignedIdentities}evgt-${resourceToken}'
    location: location
    tags: tags
  }
}

module storage 'core/storage/storage-account.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: !empty(storageAccountName) ? storageAccountName : '${abbrs.storageStorageAccounts}${resourceToken}'
    location: location
    tags: tags
    containers: [
      deploymentContainerName
      deadLetterContainerName
    ]
    // Long POST /api/sync runs go through this queue to run_sync_job (kvlink_core/workqueue.py SYNC_QUEUE);
    // the host creates kvlink-sync-poison itself when a message is given up.
    queues: [
      'kvlink-sync'
    ]
  }
}

module monitoring 'core/monitor/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: '${abbrs.operationalInsightsWorkspaces}${resourceToken}'
    applicationInsightsName: '${abbrs.insightsComponents}${resourceToken}'
    location: location
    tags: tags
  }
}

// Tells someone when the nightly audit finds drift or errors, or stops running (docs/operations.md, "Alerts and logs").
module auditAlert 'core/monitor/audit-alert.bicep' = {
  name: 'audit-alert'
  scope: rg
  params: {
    name: 'alert-kvlink-audit-${resourceToken}'
    location: location
    tags: tags
    workspaceId: monitoring.outputs.logAnalyticsId
    alertEmail: alertEmail
  }
}

module eventHub 'core/eventhub/eventhub.bicep' = {
  name: 'eventhub'
  scope: rg
  params: {
    namespaceName: '${abbrs.eventHubNamespaces}${resourceToken}'
    eventHubName: auditHubName
    location: eventHubLocation
    tags: tags
  }
}

module notifyTopic 'core/eventgrid/custom-topic.bicep' = if (enableNotifications) {
  name: 'notify-topic'
  scope: rg
  params: {
    name: '${abbrs.eventGridTopics}${resourceToken}'
    location: location
    tags: tags
  }
}

// Every setting kvlink reads, by the names in the Configuration table (docs/deploy.md). Not set in Azure, on
// purpose: KVLINK_EMULATOR (local stand-ins only), KVLINK_CA_BUNDLE (public CAs suffice) and
// AZURE_DEVOPS_PAT (kvlink uses an Entra token of its managed identity for Azure DevOps).
var appSettings = {
  AZURE_CLIENT_ID: identity.outputs.clientId
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identity.outputs.clientId
  AzureWebJobsStorage__blobServiceUri: storage.outputs.blobEndpoint
  AzureWebJobsStorage__queueServiceUri: storage.outputs.queueEndpoint
  AzureWebJobsStorage__tableServiceUri: storage.outputs.tableEndpoint
  APPLICATIONINSIGHTS_CONNECTION_STRING: monitoring.outputs.applicationInsightsConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identity.outputs.clientId};Authorization=AAD'
  KVLINK_DEVOPS_ORGS: devopsOrgs
  KVLINK_ALLOWED_VAULTS: join(vaultNames, ',')
  KVLINK_MODE: mode
  KVLINK_DEVOPS_URL: devopsUrl
  KVLINK_VAULT_URL: vaultUrl
  KVLINK_MAX_REMOVAL_FRACTION: maxRemovalFraction
  KVLINK_UNLINKED_GROUPS: unlinkedGroups
  KVLINK_EVENTHUB__fullyQualifiedNamespace: eventHub.outputs.fullyQualifiedNamespace
  KVLINK_EVENTHUB__credential: 'managedidentity'
  KVLINK_EVENTHUB__clientId: identity.outputs.clientId
  KVLINK_EVENTHUB_NAME: eventHub.outputs.eventHubName
  KVLINK_AUDIT_SCHEDULE: auditSchedule
  KVLINK_DEVOPS_PROJECTS: devopsProjects
  KVLINK_EXPIRY_WARNING_DAYS: string(expiryWarningDays)
  KVLINK_VAULT_CONCURRENCY: string(vaultConcurrency)
  KVLINK_DEVOPS_CONCURRENCY: string(devopsConcurrency)
  KVLINK_SYNC_ASYNC_GROUPS: string(syncAsyncGroups)
  KVLINK_NOTIFY_TOPIC_ENDPOINT: enableNotifications ? notifyTopic!.outputs.endpoint : ''
  KVLINK_SDK_LOG_LEVEL: sdkLogLevel
}

module functionApp 'core/host/flex-function-app.bicep' = {
  name: 'function-app'
  scope: rg
  params: {
    name: appName
    planName: '${abbrs.webServerFarms}${resourceToken}'
    location: location
    tags: union(tags, {
      'azd-service-name': serviceName
    })
    identityId: identity.outputs.id
    storageAccountName: storage.outputs.name
    deploymentContainerName: deploymentContainerName
    runtimeName: 'python'
    runtimeVersion: '3.13'
    appSettings: appSettings
  }
}

module rbac 'app/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    functionPrincipalId: identity.outputs.principalId
    eventGridPrincipalId: eventGridIdentity.outputs.principalId
    storageAccountName: storage.outputs.name
    deadLetterContainerName: deadLetterContainerName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    eventHubNamespaceName: eventHub.outputs.namespaceName
    eventHubName: eventHub.outputs.eventHubName
    notifyTopicName: enableNotifications ? notifyTopic!.outputs.name : ''
  }
}

// Outputs become azd environment values; the postdeploy and predown hooks read them.
output AZURE_LOCATION string = location
// Part of every name kvlink puts on or beside a vault (infra/vaults.bicep), so two environments watching
// the same vault never share (or overwrite, or delete) one another's diagnostic setting or subscription.
output AZURE_RESOURCE_TOKEN string = resourceToken
// The vaults as provisioned: azd keeps a value typed at its prompt for vaultIds in the environment's
// config, not its variables; as an output it reaches `azd env get-values`, which the hooks read.
output KVLINK_VAULT_IDS string = vaultIds
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output AZURE_FUNCTION_APP_ID string = functionApp.outputs.id
output SERVICE_API_NAME string = functionApp.outputs.name
output SERVICE_API_URI string = functionApp.outputs.uri
output AZURE_FUNCTION_IDENTITY_PRINCIPAL_ID string = identity.outputs.principalId
output AZURE_FUNCTION_IDENTITY_CLIENT_ID string = identity.outputs.clientId
// The managed identity's name is its display name in Microsoft Entra ID: what Azure DevOps' "Add users"
// dialog searches for (docs/deploy.md, "The one manual step").
output AZURE_FUNCTION_IDENTITY_NAME string = identity.outputs.name
output AZURE_EVENTGRID_IDENTITY_ID string = eventGridIdentity.outputs.id
output AZURE_STORAGE_ACCOUNT_ID string = storage.outputs.id
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output EVENTGRID_DEADLETTER_CONTAINER string = deadLetterContainerName
output EVENTHUB_NAMESPACE string = eventHub.outputs.namespaceName
output EVENTHUB_NAME string = eventHub.outputs.eventHubName
// The region every watched vault must be in (the hooks check it before changing anything).
output EVENTHUB_LOCATION string = eventHubLocation
output EVENTHUB_DIAGNOSTICS_RULE_ID string = eventHub.outputs.diagnosticsRuleId
output KVLINK_ALLOWED_VAULTS string = join(vaultNames, ',')
output KVLINK_NOTIFY_TOPIC_ENDPOINT string = enableNotifications ? notifyTopic!.outputs.endpoint : ''
output APPLICATIONINSIGHTS_CONNECTION_STRING string = monitoring.outputs.applicationInsightsConnectionString
output AZURE_LOG_ANALYTICS_WORKSPACE_ID string = monitoring.outputs.logAnalyticsId
output KVLINK_AUDIT_ALERT_NAME string = auditAlert.outputs.alertRuleName
