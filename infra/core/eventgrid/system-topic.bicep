metadata description = 'The Event Grid system topic of one watched vault, and kvlink\'s subscription delivering secret events to on_secret_event (retry policy, dead letters to a blob container). Deploy it after the function code: Event Grid validates an Azure Function endpoint when the subscription is created.'

param name string
@description('The vault\'s region: a system topic lives where its source does.')
param location string
param tags object = {}

@description('Resource id of the watched vault.')
param vaultId string

@description('User-assigned identity Event Grid dead-letters with (Storage Blob Data Contributor on the dead-letter container).')
param deliveryIdentityId string

param subscriptionName string = 'kvlink-on-secret-event'
@description('The function that receives the events: {function app id}/functions/on_secret_event.')
param functionResourceId string

@description('Storage account and container for events Event Grid gives up on.')
param deadLetterStorageAccountId string
param deadLetterContainerName string

param maxDeliveryAttempts int = 30
param eventTimeToLiveInMinutes int = 1440

resource systemTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' = {
  name: name
  location: location
  tags: tags
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${deliveryIdentityId}': {}
    }
  }
  properties: {
    source: vaultId
    topicType: 'Microsoft.KeyVault.vaults'
  }
}

resource toFunction 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = {
  parent: systemTopic
  name: subscriptionName
  properties: {
    // Event Grid schema: azure.functions.EventGridEvent reads Event Grid-schema keys.
    eventDeliverySchema: 'EventGridSchema'
    destination: {
      endpointType: 'AzureFunction'
      properties: {
        resourceId: functionResourceId
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
      }
    }
    // Key Vault publishes no delete, disable or recover event: those come from the audit log.
    filter: {
      includedEventTypes: [
        'Microsoft.KeyVault.SecretNewVersionCreated'
        'Microsoft.KeyVault.SecretNearExpiry'
        'Microsoft.KeyVault.SecretExpired'
      ]
    }
    retryPolicy: {
      maxDeliveryAttempts: maxDeliveryAttempts
      eventTimeToLiveInMinutes: eventTimeToLiveInMinutes
    }
    deadLetterWithResourceIdentity: {
      identity: {
        type: 'UserAssigned'
        userAssignedIdentity: deliveryIdentityId
      }
      deadLetterDestination: {
        endpointType: 'StorageBlob'
        properties: {
          resourceId: deadLetterStorageAccountId
          blobContainerName: deadLetterContainerName
        }
      }
    }
  }
}

output id string = systemTopic.id
output name string = systemTopic.name
output subscriptionId string = toFunction.id
