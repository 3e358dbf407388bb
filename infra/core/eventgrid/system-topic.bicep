metadata description = 'The Event Grid system topic of one watched vault, and kvlink\'s subscription delivering secret events to on_secret_event (retry policy, dead letters to a blob container). Deploy it after the function code: Event Grid validates an Azure Function endpoint when the subscription is created.'

@description('The system topic: kvlink\'s (egst-kvlink-<resource token>-<vault>) or the vault\'s existing one.')
param name string
@description('False: the vault already has a system topic (only one is allowed per source); kvlink adds its subscription to it and leaves the topic as it is.')
param createTopic bool = true
@description('The vault\'s region: a system topic lives where its source does.')
param location string
param tags object = {}
@description('Tags a topic kvlink creates (kvlink: <resource token>), so predown deletes only topics kvlink made.')
param resourceToken string

@description('Resource id of the watched vault.')
param vaultId string

@description('User-assigned identity Event Grid dead-letters with (Storage Blob Data Contributor on the dead-letter container).')
param deliveryIdentityId string

@description('Carries the environment (kvlink-<resource token>): one subscription per environment on the topic.')
param subscriptionName string
@description('The function that receives the events: {function app id}/functions/on_secret_event.')
param functionResourceId string

@description('Storage account and container for events Event Grid gives up on.')
param deadLetterStorageAccountId string
param deadLetterContainerName string

param maxDeliveryAttempts int = 30
param eventTimeToLiveInMinutes int = 1440

resource systemTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' = if (createTopic) {
  name: name
  location: location
  tags: union(tags, {
    kvlink: resourceToken
  })
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

// Named through the topic (not `parent`) so the same resource serves a topic kvlink creates and one it reuses.
resource toFunction 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = {
  #disable-next-line use-parent-property
  name: '${name}/${subscriptionName}'
  dependsOn: [
    systemTopic
  ]
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
    // Dead letters are written with the topic's identity, which kvlink sets only on a topic it creates;
    // on a reused topic an event Event Grid gives up on is left to the nightly audit.
    deadLetterWithResourceIdentity: createTopic ? deadLetter : null
  }
}

var deadLetter = {
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

output id string = resourceId('Microsoft.EventGrid/systemTopics', name)
output name string = name
output created bool = createTopic
output subscriptionId string = toFunction.id
