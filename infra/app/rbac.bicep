metadata description = 'Every role assignment on kvlink\'s own resources, in one place, named guid(scope, principal, role) so re-deploying never duplicates one. Access to the watched vaults is granted at each vault (core/keyvault/vault-access.bicep).'

@description('Principal id of the function app\'s user-assigned identity.')
param functionPrincipalId string
@description('Principal id of the identity Event Grid dead-letters with.')
param eventGridPrincipalId string

param storageAccountName string
param deadLetterContainerName string
param applicationInsightsName string
param eventHubNamespaceName string
param eventHubName string
@description('Custom topic for notifications; empty when notifications are off.')
param notifyTopicName string = ''

// Built-in role definition ids (https://learn.microsoft.com/azure/role-based-access-control/built-in-roles)
var storageBlobDataOwner = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
var storageBlobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
var storageQueueDataContributor = '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
var storageTableDataContributor = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
var monitoringMetricsPublisher = '3913510d-42f4-4e42-8a64-420c390055eb'
var eventHubsDataReceiver = 'a638d3c7-ab3a-418d-83e6-5f17a39d4fde'
var eventGridDataSender = 'd5a91429-5739-47e2-a06b-3470a27159e7'

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName

  resource blobServices 'blobServices' existing = {
    name: 'default'

    resource deadLetters 'containers' existing = {
      name: deadLetterContainerName
    }
  }
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource eventHubNamespace 'Microsoft.EventHub/namespaces@2024-01-01' existing = {
  name: eventHubNamespaceName

  resource hub 'eventhubs' existing = {
    name: eventHubName
  }
}

resource notifyTopic 'Microsoft.EventGrid/topics@2022-06-15' existing = if (!empty(notifyTopicName)) {
  name: notifyTopicName
}

// AzureWebJobsStorage (host state, timer and Event Hubs checkpoints) and the deployment package.
resource blobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, functionPrincipalId, storageBlobDataOwner)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwner)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Queues: the host's own, and kvlink-sync, which POST /api/sync sends to and run_sync_job reads and deletes from
// (identity-based AzureWebJobsStorage with a queue trigger: https://learn.microsoft.com/azure/azure-functions/functions-reference#connecting-to-host-storage-with-an-identity).
resource queueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, functionPrincipalId, storageQueueDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageQueueDataContributor)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// kvlink's registry: kvlinklinks, kvlinkleases, kvlinkpending, kvlinkvaultwork, kvlinkaudit, kvlinkbroken (kvlink creates them).
resource tableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, functionPrincipalId, storageTableDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageTableDataContributor)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Application Insights with local auth disabled accepts telemetry only from this role.
resource metricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(applicationInsights.id, functionPrincipalId, monitoringMetricsPublisher)
  scope: applicationInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisher)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// on_vault_log reads the audit-log hub (and only that hub) with its identity.
resource hubReceiver 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(eventHubNamespace::hub.id, functionPrincipalId, eventHubsDataReceiver)
  scope: eventHubNamespace::hub
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', eventHubsDataReceiver)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource notifySender 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(notifyTopicName)) {
  name: guid(notifyTopic.id, functionPrincipalId, eventGridDataSender)
  scope: notifyTopic
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', eventGridDataSender)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Event Grid writes undeliverable secret events to the dead-letter container, and nowhere else.
resource deadLetterWriter 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage::blobServices::deadLetters.id, eventGridPrincipalId, storageBlobDataContributor)
  scope: storage::blobServices::deadLetters
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributor)
    principalId: eventGridPrincipalId
    principalType: 'ServicePrincipal'
  }
}
